//! The gold job: what the `build_gold` timer and the `gold_job` queue function (Data Factory) both
//! do — reconcile bronze with silver (timer), build gold if warranted, then bring the warehouse up
//! to the latest build. The two functions are thin bindings over [`run`]; the warehouse comes in
//! through [`Loader`], so the pipeline core knows nothing of HTTP or of warehouse types.
//!
//! Racing builders (the timer and a Data Factory job, or two instances) cannot both commit a build
//! number. A job whose commit loses checks whether the build that won holds every silver file the
//! job was asked to fold in; if it does, the job's work is done and it reports success with that
//! build. Otherwise it builds again on top, a bounded number of times.

use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::NaiveDateTime;
use serde::Serialize;
use serde_json::Value;

use super::gold::manifest::{self, Manifest};
use super::gold::{self, BuildOutcome, GoldMetrics, GoldOptions};
use super::reconcile::{self, ReconcileReport};
use super::{Error, Result};
use crate::model::time::to_micros;
use crate::storage::Lake;
use crate::storage::keys::BatchStem;

/// Builds a job attempts before it gives up when other builders keep committing first.
pub const MAX_BUILD_ATTEMPTS: usize = 5;

/// What started the job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// The schedule: reconcile, then build only when more than `min_new_files` silver files are
    /// new or a census change is due.
    Timer {
        /// The seed's rule: build when more than this many silver files are new.
        min_new_files: usize,
        /// Bronze files without silver refined per run at most.
        reconcile_max_files: usize,
    },
    /// A request (Data Factory): build whatever is new.
    Request,
}

/// How to run the job.
#[derive(Debug, Clone)]
pub struct JobOptions {
    /// The job's clock (the build's `as_of`).
    pub now: NaiveDateTime,
    /// How long superseded gold files are kept.
    pub retention: Duration,
    /// Silver files per build at most.
    pub max_files_per_build: usize,
    /// Silver rows per build at most.
    pub max_rows_per_build: usize,
    /// What started the job.
    pub trigger: Trigger,
}

impl JobOptions {
    /// How the job's builds build (every partition's silver).
    pub fn gold_options(&self) -> GoldOptions {
        GoldOptions {
            max_files_per_build: self.max_files_per_build,
            max_rows_per_build: self.max_rows_per_build,
            ..GoldOptions::new(self.now, self.retention)
        }
    }
}

/// What a warehouse load reported.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// A clause for the job's summary, when the load changed something.
    pub summary: Option<String>,
    /// The loader's metrics, as they go into the report.
    pub metrics: Value,
}

/// Brings a warehouse up to a committed build (implemented over the configured warehouse).
#[async_trait]
pub trait Loader: Send + Sync {
    /// Loads `manifest` (a build already loaded is a no-op); `Ok(None)` when no warehouse is configured.
    async fn load(&self, lake: &Lake, manifest: &Manifest) -> std::result::Result<Option<Loaded>, String>;
}

/// No warehouse: gold stays in the lake.
pub struct NoWarehouse;

#[async_trait]
impl Loader for NoWarehouse {
    async fn load(&self, _: &Lake, _: &Manifest) -> std::result::Result<Option<Loaded>, String> {
        Ok(None)
    }
}

/// Why the job failed.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// Reconciliation or the build failed.
    #[error(transparent)]
    Build(#[from] Error),
    /// The build is committed, but the warehouse could not be opened or loaded (retry later).
    #[error("{0}")]
    Load(String),
}

/// What a gold job did.
#[derive(Debug, Clone, Serialize)]
pub struct GoldJobReport {
    /// Bronze files refined by reconciliation (timer runs).
    pub reconcile: Option<ReconcileReport>,
    /// Silver files not yet in gold when the job started.
    pub pending_silver_files: usize,
    /// The threshold applied (`None` when asked to build).
    pub threshold: Option<usize>,
    /// Whether a census change recorded in the latest manifest was due.
    pub census_due: bool,
    /// The build, or why there was none.
    pub build: Option<BuildOutcome>,
    /// The committed build that holds the silver files this job was asked to fold in.
    pub data_build: Option<u64>,
    /// `true` when another builder committed that build first (this job's work was done for it).
    pub built_by_another: bool,
    /// The warehouse load, when one ran.
    pub load: Option<Value>,
    /// Wall seconds of the build.
    pub build_seconds: f64,
    /// The process's peak resident memory (Linux `VmHWM`) when the build ended, before the load,
    /// in bytes: the most it has held so far, so at least what the build needed (in a long-running
    /// handler, earlier invocations count too).
    pub build_peak_memory_bytes: Option<u64>,
    /// Wall seconds of the load.
    pub load_seconds: f64,
    /// One line for humans.
    pub summary: String,
}

/// Whether a census flip recorded in `m` (some fact file's `next_change_us`) is due at `now`.
pub fn census_due(m: &Manifest, now: &NaiveDateTime) -> bool {
    m.next_change_us().is_some_and(|t| t <= to_micros(now))
}

fn holds(m: &Manifest, wanted: &[String]) -> bool {
    wanted.iter().all(|f| BatchStem::parse_key(f).is_some_and(|stem| m.silver.contains(&stem)))
}

/// Runs the job: reconcile (timer), build if warranted, load the latest build.
pub async fn run(
    lake: &Lake,
    loader: &dyn Loader,
    options: &JobOptions,
) -> std::result::Result<GoldJobReport, JobError> {
    run_after(lake, loader, options, None).await
}

/// [`run`], for a caller that committed builds of its own just before (`earlier`, reported
/// together): `patientflow run` folds each Event Hubs partition as soon as its silver is complete,
/// then fires the timer, which folds what is left and loads. The report's build is all of them.
pub async fn run_after(
    lake: &Lake,
    loader: &dyn Loader,
    options: &JobOptions,
    earlier: Option<GoldMetrics>,
) -> std::result::Result<GoldJobReport, JobError> {
    let mut summary = Vec::new();
    let (threshold, reconciled) = match options.trigger {
        Trigger::Timer { min_new_files, reconcile_max_files } => {
            let r = reconcile::reconcile(lake, reconcile_max_files).await?;
            if r.missing > 0 {
                summary.push(r.summary());
            }
            (Some(min_new_files), Some(r))
        }
        Trigger::Request => (None, None),
    };
    let (latest, pending) = gold::pending(lake).await?;
    let due = latest.as_ref().is_some_and(|m| census_due(m, &options.now));
    let mut report = GoldJobReport {
        reconcile: reconciled,
        pending_silver_files: pending.len(),
        threshold,
        census_due: due,
        build: None,
        data_build: latest.as_ref().map(|m| m.build),
        built_by_another: false,
        load: None,
        build_seconds: 0.0,
        load_seconds: 0.0,
        build_peak_memory_bytes: None,
        summary: String::new(),
    };
    match threshold {
        Some(t) if pending.len() <= t && !due => match earlier {
            Some(earlier) => {
                record(BuildOutcome::Built(earlier), &mut report, &mut summary);
                report.build_peak_memory_bytes = crate::telemetry::peak_memory_bytes();
            }
            None => summary.push(format!(
                "{} new silver files, not more than the threshold of {t}, and no census change due: no build",
                pending.len()
            )),
        },
        _ => {
            let wanted: Vec<String> = pending.iter().map(ToString::to_string).collect();
            let started = Instant::now();
            build(lake, options, &wanted, earlier, &mut report, &mut summary).await?;
            report.build_seconds = started.elapsed().as_secs_f64();
            report.build_peak_memory_bytes = crate::telemetry::peak_memory_bytes();
        }
    }
    // Bring the warehouse up to the latest build, also when an earlier load failed after its build.
    if let Some(latest) = manifest::latest(lake).await? {
        let started = Instant::now();
        let loaded = loader.load(lake, &latest).await.map_err(JobError::Load);
        // The load's buffers go back to the system before whatever the process does next.
        crate::memory::release_free_memory();
        if let Some(loaded) = loaded? {
            report.load_seconds = started.elapsed().as_secs_f64();
            summary.extend(loaded.summary);
            report.load = Some(loaded.metrics);
        }
    }
    report.summary = summary.join("; ");
    Ok(report)
}

/// Records the builds' outcome: the job's report holds it and the build the lake holds after it,
/// and the summary says what it did.
fn record(outcome: BuildOutcome, report: &mut GoldJobReport, summary: &mut Vec<String>) {
    let (line, data_build) = match &outcome {
        BuildOutcome::Built(m) => (
            format!(
                "gold build {} folded {} silver files in {} build(s): {} visits new, {} updated, {} days written",
                m.build, m.silver_files, m.builds, m.facts_inserted, m.facts_updated, m.partitions_written
            ),
            Some(m.build),
        ),
        BuildOutcome::NothingNew { build } => ("nothing new for gold".to_string(), *build),
    };
    summary.push(line);
    report.data_build = data_build;
    report.build = Some(outcome);
}

async fn build(
    lake: &Lake,
    options: &JobOptions,
    wanted: &[String],
    mut earlier: Option<GoldMetrics>,
    report: &mut GoldJobReport,
    summary: &mut Vec<String>,
) -> Result<()> {
    let gold_options = options.gold_options();
    for attempt in 1..=MAX_BUILD_ATTEMPTS {
        match gold::build_all(lake, &gold_options).await {
            Ok((outcome, _)) => {
                let outcome = match (earlier.take(), outcome) {
                    (Some(mut earlier), BuildOutcome::Built(m)) => {
                        earlier.absorb(m);
                        BuildOutcome::Built(earlier)
                    }
                    (Some(earlier), BuildOutcome::NothingNew { .. }) => BuildOutcome::Built(earlier),
                    (None, outcome) => outcome,
                };
                record(outcome, report, summary);
                return Ok(());
            }
            Err(Error::Conflict(conflict)) => {
                let latest = manifest::latest(lake).await?;
                if let Some(m) = latest.filter(|m| holds(m, wanted)) {
                    tracing::info!(build = m.build, %conflict, "Another builder committed this job's silver files first.");
                    summary.push(format!(
                        "gold build {} holds this job's {} new silver files (committed by another builder first)",
                        m.build,
                        wanted.len()
                    ));
                    report.data_build = Some(m.build);
                    report.build = earlier.take().map(BuildOutcome::Built);
                    report.built_by_another = true;
                    return Ok(());
                }
                if attempt == MAX_BUILD_ATTEMPTS {
                    return Err(Error::Conflict(conflict));
                }
                tracing::warn!(attempt, %conflict, "Another builder committed first without this job's files; building again.");
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::time::parse_utc;
    use crate::pipeline::gold::manifest::{FactPartition, TableFile};

    /// A census flip is due when any fact file of any partition records one at or before the clock.
    #[test]
    fn a_census_flip_of_any_fact_file_is_due() {
        let now = parse_utc("2026-11-24T12:00:00").unwrap();
        let at = |h: i64| Some(to_micros(&(now + chrono::Duration::hours(h))));
        let file =
            |next: Option<i64>| TableFile { file: "f".into(), rows: 1, next_change_us: next, ..Default::default() };
        let mut m = Manifest::default();
        assert!(!census_due(&m, &now), "no facts");
        m.fact_patient_flow
            .insert("a".into(), FactPartition { files: vec![file(None), file(at(2))], discharge_days: vec![] });
        assert!(!census_due(&m, &now));
        m.fact_patient_flow
            .insert("b".into(), FactPartition { files: vec![file(at(5)), file(at(0))], discharge_days: vec![] });
        assert!(census_due(&m, &now), "b's second file flips now");
        assert!(census_due(&m, &(now + chrono::Duration::hours(2))));
    }
}
