//! `build_gold`: the timer-triggered function. Counts the silver files not yet folded into gold;
//! with more than the threshold (`PATIENTFLOW_GOLD_MIN_NEW_FILES`, the seed's ADF rule "more than 5
//! new silver files") it builds gold and loads the warehouse; otherwise it says why it did nothing.
//! Past-due runs behave the same. The HTTP (Data Factory) trigger calls the same [`gold_job`].

use axum::Json;
use axum::extract::State;
use bytes::Bytes;
use chrono::NaiveDateTime;
use serde::Serialize;
use serde_json::Value;

use super::FunctionError;
use super::invocation::{InvokeRequest, InvokeResponse};
use crate::app::AppState;
use crate::pipeline::gold::{self, BuildOutcome, GoldOptions, manifest};
use crate::warehouse::LoadMetrics;

/// Function name (folder, module and route).
pub const NAME: &str = "build_gold";
/// The trigger binding's name in function.json.
pub const BINDING: &str = "timer";

/// What a gold job did.
#[derive(Debug, Clone, Serialize)]
pub struct GoldJobReport {
    /// Silver files not yet in gold when the job started.
    pub pending_silver_files: usize,
    /// The threshold applied (`None` when forced).
    pub threshold: Option<usize>,
    /// The build, or why there was none.
    pub build: Option<BuildOutcome>,
    /// The warehouse load, when one ran.
    pub load: Option<LoadMetrics>,
    /// Wall seconds of the build.
    pub build_seconds: f64,
    /// Wall seconds of the load.
    pub load_seconds: f64,
    /// One line for humans.
    pub summary: String,
}

/// Builds gold if warranted, then brings the warehouse up to the latest build. With `threshold`
/// set, builds only when more than that many silver files are new.
pub async fn gold_job(
    state: &AppState,
    now: NaiveDateTime,
    threshold: Option<usize>,
) -> Result<GoldJobReport, FunctionError> {
    let lake = state.lake().await?;
    let (_, pending) = gold::pending(lake).await?;
    let mut report = GoldJobReport {
        pending_silver_files: pending.len(),
        threshold,
        build: None,
        load: None,
        build_seconds: 0.0,
        load_seconds: 0.0,
        summary: String::new(),
    };
    if let Some(t) = threshold
        && pending.len() <= t
    {
        report.summary = format!("{} new silver files, not more than the threshold of {t}: no build", pending.len());
    } else {
        let options = GoldOptions {
            max_files_per_build: state.gold().max_files_per_build,
            ..GoldOptions::new(now, state.gold().retention)
        };
        let (outcome, took) = gold::build_all(lake, &options).await?;
        report.build_seconds = took.as_secs_f64();
        report.summary = match &outcome {
            BuildOutcome::Built(m) => format!(
                "gold build {} folded {} silver files in {} build(s): {} visits new, {} updated, {} days written",
                m.build, m.silver_files, m.builds, m.facts_inserted, m.facts_updated, m.partitions_written
            ),
            BuildOutcome::NothingNew { .. } => "nothing new for gold".to_string(),
        };
        report.build = Some(outcome);
    }
    // Bring the warehouse up to the latest build, also when an earlier load failed after its build.
    if let Some(warehouse) = state.warehouse().await?
        && let Some(latest) = manifest::latest(lake).await?
    {
        let started = std::time::Instant::now();
        let load = warehouse.load(lake, &latest).await.map_err(|e| FunctionError::Unavailable(e.to_string()))?;
        report.load_seconds = started.elapsed().as_secs_f64();
        if load.loaded {
            report.summary.push_str(&format!(
                "; {} warehouse loaded build {} ({} fact rows)",
                warehouse.name(),
                load.build,
                load.fact_rows_total
            ));
        }
        report.load = Some(load);
    }
    Ok(report)
}

/// POST /build_gold
pub async fn handle(State(state): State<AppState>, body: Bytes) -> Result<Json<InvokeResponse>, FunctionError> {
    let req = InvokeRequest::from_slice(&body)?;
    let timer = req.binding(BINDING)?;
    if !timer.is_object() {
        return Err(FunctionError::BadRequest(format!(
            "Data.{BINDING} is not a TimerInfo object; this function takes a timer trigger"
        )));
    }
    let past_due = timer.get("IsPastDue").and_then(Value::as_bool).unwrap_or(false);
    let now = req.utc_now().unwrap_or_else(|| state.clock());
    let report = gold_job(&state, now, Some(state.gold().min_new_files)).await?;
    tracing::info!(
        pending = report.pending_silver_files,
        past_due,
        build_seconds = report.build_seconds,
        load_seconds = report.load_seconds,
        summary = %report.summary,
        "Gold timer run."
    );
    Ok(Json(InvokeResponse {
        logs: vec![report.summary.clone()],
        return_value: serde_json::to_value(&report).unwrap_or_default(),
        ..Default::default()
    }))
}
