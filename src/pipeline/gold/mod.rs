//! Gold: folds the silver files not yet built into the star schema (DimDepartment, DimPatient SCD2,
//! DimTime, FactPatientFlow) and commits all tables at once.
//!
//! The rule: gold is a function of the set of events folded in. The same events in any order,
//! batches, files and builds, with any replays, give the same tables (but for `bronze_file` and
//! `ingested_at`, which record delivery). See [`build`], [`ledger`] and [`dims::versions`].
//!
//! Layout in the gold container:
//! - `builds/<build id>/dim_department.parquet`, `dim_patient.parquet`, `dim_time.parquet`;
//! - `builds/<build id>/fact_patient_flow/visit_date=YYYY-MM-DD.parquet` — only the days a build
//!   touches (new visits, or open visits whose census flag flips) are rewritten; other days keep
//!   the file an earlier build wrote;
//! - `builds/<build id>/ledger/bucket=NNN.parquet` — the visit ledger (see [`ledger`]), rewritten
//!   per bucket as its patients change;
//! - `_manifests/<build number>.json` — the commit (see [`manifest`]).
//!
//! A crash before the manifest leaves the previous build intact (the next build redoes the work);
//! two racing builds cannot both commit the same number (the loser gets [`Error::Conflict`]).
//! Files no manifest within the retention references are deleted after each commit (see [`retention`]).

pub mod dims;
pub mod fact;
pub mod input;
pub mod keys;
pub mod ledger;
pub mod manifest;
pub mod retention;

pub use self::retention::cleanup;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;

use rustc_hash::{FxHashMap, FxHashSet};
use std::time::{Duration, Instant};

use chrono::NaiveDateTime;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use serde::Serialize;

use arrow_array::RecordBatch;
use arrow_array::cast::AsArray;

use self::dims::{Days, Departments};
use self::fact::FactRow;
use self::input::Visits;
use self::manifest::{BUILDS, FactPartition, Manifest, TableFile};
use super::{Error, Result};
use crate::model::schema::{
    DIM_DEPARTMENT, DIM_DEPARTMENT_LAYOUT, DIM_PATIENT, DIM_PATIENT_LAYOUT, DIM_TIME, DIM_TIME_LAYOUT,
    FACT_PATIENT_FLOW, FACT_PATIENT_FLOW_LAYOUT,
};
use crate::model::time::{rfc3339, to_micros};
use crate::storage::keys::{BatchStem, SEQ_BUCKET, patient_flow_prefix};
use crate::storage::{Container, Lake, parquet};

/// How to build.
#[derive(Debug, Clone)]
pub struct GoldOptions {
    /// The build's clock: `is_currently_admitted` is as of this instant.
    pub now: NaiveDateTime,
    /// How long superseded build files are kept (readers of an older build finish first).
    pub retention: Duration,
    /// At most this many silver files are folded into one build, so a build's memory is bounded
    /// by this, not by how much silver waits; [`build_all`] commits as many builds as needed.
    pub max_files_per_build: usize,
    /// A build stops taking silver files once it holds this many rows (at least one file is
    /// taken), so its memory follows this whatever the size of the files.
    pub max_rows_per_build: usize,
    /// Only the silver files of this Event Hubs partition (its name, as in `partition=0`); `None`
    /// for every partition's. Events are partitioned by patient, so a build of one partition's
    /// files is a build of its own patients: `patientflow run` folds a partition as soon as its
    /// silver is complete, while the other partitions are still being refined.
    pub partition: Option<String>,
}

impl GoldOptions {
    /// Options with the defaults of 1,024 silver files and 262,144 rows per build.
    pub fn new(now: NaiveDateTime, retention: Duration) -> Self {
        Self { now, retention, max_files_per_build: 1024, max_rows_per_build: 262_144, partition: None }
    }
}

/// What a build did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct GoldMetrics {
    /// The committed build number.
    pub build: u64,
    /// Silver files folded in by this build.
    pub silver_files: u64,
    /// Silver rows read.
    pub rows_in: u64,
    /// New visits.
    pub facts_inserted: u64,
    /// Visits whose content (times, bed, department, patient version) a later event changed.
    pub facts_updated: u64,
    /// Fact partitions (days) written.
    pub partitions_written: u64,
    /// New departments.
    pub departments_added: u64,
    /// SCD2 activity.
    pub patients: dims::ScdStats,
    /// Rows per table after the build.
    pub rows: BTreeMap<String, u64>,
    /// Superseded files deleted.
    pub files_cleaned: u64,
    /// Builds committed (more than one when more silver waited than one build takes).
    pub builds: u64,
}

impl GoldMetrics {
    /// Adds the next build's metrics (committed after these): counts add up, the build number and
    /// table sizes are the later build's.
    pub fn absorb(&mut self, next: GoldMetrics) {
        self.build = next.build;
        self.silver_files += next.silver_files;
        self.rows_in += next.rows_in;
        self.facts_inserted += next.facts_inserted;
        self.facts_updated += next.facts_updated;
        self.partitions_written += next.partitions_written;
        self.departments_added += next.departments_added;
        self.patients.new_patients += next.patients.new_patients;
        self.patients.versions_closed += next.patients.versions_closed;
        self.patients.facts_repointed += next.patients.facts_repointed;
        self.rows = next.rows;
        self.files_cleaned += next.files_cleaned;
        self.builds += next.builds;
    }
}

/// The outcome of a build request.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum BuildOutcome {
    /// Nothing new: no silver files to fold and no census change due.
    NothingNew {
        /// The current build, if any.
        build: Option<u64>,
    },
    /// A build was committed.
    Built(GoldMetrics),
}

/// Silver files not yet folded into gold (sorted by key), and the latest manifest.
///
/// The cost follows new silver, not history: per Event Hubs partition it reads silver's sequence
/// index (see `pipeline::silver`, [`BatchStem::index_keys`]) — the names of its bucket folders, the
/// markers of the buckets that hold some sequence number gold has not folded, and the `meta` folder
/// (wide ranges) — and confirms each candidate by its silver file's existence (a marker is written
/// before its file). A file not folded holds such a number, so its marker is in one of those
/// buckets. A partition whose index is not known complete (no `complete` marker yet), or with more
/// unfolded buckets or candidates than a few (a backlog), is listed whole.
pub async fn pending(lake: &Lake) -> Result<(Option<Manifest>, Vec<Path>)> {
    pending_in(lake, None).await
}

/// [`pending`], of one Event Hubs partition only when `only` names one.
async fn pending_in(lake: &Lake, only: Option<&str>) -> Result<(Option<Manifest>, Vec<Path>)> {
    let latest = manifest::latest(lake).await?;
    let empty = manifest::Folded::default();
    let folded = latest.as_ref().map_or(&empty, |m| &m.silver);
    let mut new = Vec::new();
    for folder in lake.list_folders(Container::Silver, &patient_flow_prefix()).await? {
        let name = folder.as_ref().rsplit_once('/').map_or(folder.as_ref(), |(_, name)| name);
        let Some(partition) = name.strip_prefix("partition=") else { continue };
        if only.is_some_and(|only| only != partition) {
            continue;
        }
        new.extend(unfolded(lake, partition, folded).await?);
    }
    new.sort();
    Ok((latest, new))
}

/// Past this many index buckets to list (and half of all the partition's buckets), or this many
/// candidate files to confirm, one listing of the partition's silver files is cheaper (a large
/// backlog, or the first build). Relative to history, so that a run's worth of new batches on a
/// long history still reads the index, not every silver file ever written.
const MAX_INDEX_BUCKETS: usize = 8;
const MAX_CANDIDATES: usize = 512;

/// The silver files of one partition that are not folded (see [`pending`]).
async fn unfolded(lake: &Lake, partition: &str, folded: &manifest::Folded) -> Result<Vec<Path>> {
    let meta = lake.list(Container::Silver, &BatchStem::index_meta_folder(partition)).await?;
    if !meta.iter().any(|m| m.location == BatchStem::index_complete(partition)) {
        return unfolded_listed(lake, partition, folded).await;
    }
    let buckets = lake.list_folders(Container::Silver, &BatchStem::index_partition(partition)).await?;
    let open: Vec<Path> = buckets
        .iter()
        .filter_map(|f| BatchStem::parse_index_bucket(f.as_ref()))
        .filter(|&b| {
            let first = b.saturating_mul(SEQ_BUCKET);
            let last = first.saturating_add(SEQ_BUCKET - 1);
            !folded.contains(&BatchStem { partition: partition.to_string(), first_seq: first, last_seq: last })
        })
        .map(|b| BatchStem::index_bucket_folder(partition, b))
        .collect();
    if open.len() > MAX_INDEX_BUCKETS.max(buckets.len() / 2) {
        return unfolded_listed(lake, partition, folded).await;
    }
    // A few listings at a time: on a long history, half the buckets can be hundreds.
    let listings: Vec<_> = open.iter().map(|f| lake.list(Container::Silver, f)).collect();
    let listings = futures::stream::iter(listings).buffered(8);
    let mut markers = meta;
    markers.extend(listings.try_collect::<Vec<_>>().await?.into_iter().flatten());
    let mut candidates: Vec<BatchStem> = markers
        .iter()
        .filter_map(|m| BatchStem::parse_index_key(m.location.as_ref()))
        .filter(|stem| !folded.contains(stem))
        .collect();
    candidates.sort();
    candidates.dedup();
    if candidates.len() > MAX_CANDIDATES {
        return unfolded_listed(lake, partition, folded).await;
    }
    let keys: Vec<Path> = candidates.iter().map(BatchStem::key).collect();
    let found = lake.exist_each(Container::Silver, &keys).await?;
    Ok(keys.into_iter().zip(found).filter(|(_, exists)| *exists).map(|(k, _)| k).collect())
}

/// The silver files of one partition that are not folded, from one listing of them all.
async fn unfolded_listed(lake: &Lake, partition: &str, folded: &manifest::Folded) -> Result<Vec<Path>> {
    let mut new = Vec::new();
    for meta in lake.list(Container::Silver, &BatchStem::partition_prefix(partition)).await? {
        match BatchStem::parse_key(meta.location.as_ref()) {
            Some(stem) if folded.contains(&stem) => {}
            Some(_) => new.push(meta.location),
            None => tracing::warn!(
                key = %meta.location,
                "A file in silver's patient-flow folder is not named like a batch; gold ignores it (remove it)."
            ),
        }
    }
    Ok(new)
}

/// Reads one gold table file (for the build itself and for warehouse loaders).
pub async fn read_table(lake: &Lake, key: &str) -> Result<Vec<arrow_array::RecordBatch>> {
    let bytes = lake.get(Container::Gold, &Path::from(key)).await?;
    parquet::decode(bytes).map(|(_, b)| b).map_err(|e| corrupt(key, e))
}

/// Where each group of pending silver files that must be folded together ends (exclusive
/// indices into `files`, which are sorted by key: by partition, then sequence range).
///
/// The manifest records what is folded as sequence ranges, and a silver file holds only the events
/// of its batch that no other silver file held when it was written (a redelivery with other
/// boundaries holds few or none). So a file's range may be recorded only together with every file
/// that overlaps it: folding a redelivered batch 101–104 alone would mark 103–103 and 104–104 folded
/// while their events were never read. Files whose ranges overlap, directly or through others,
/// form one group, and a build takes whole groups.
fn overlap_groups(files: &[Path]) -> Vec<usize> {
    let mut ends = Vec::new();
    // The open group's partition and the furthest sequence number it reaches.
    let mut open: Option<(String, i64)> = None;
    for (i, key) in files.iter().enumerate() {
        let stem = BatchStem::parse_key(key.as_ref());
        if let (Some((partition, last)), Some(s)) = (&mut open, &stem)
            && *partition == s.partition
            && s.first_seq <= *last
        {
            *last = (*last).max(s.last_seq);
            continue;
        }
        if i > 0 {
            ends.push(i);
        }
        open = stem.map(|s| (s.partition, s.last_seq));
    }
    if !files.is_empty() {
        ends.push(files.len());
    }
    ends
}

/// How many files the whole groups ending at `ends` hold, at most `max` (but at least the first
/// group, however large).
fn whole_groups(ends: &[usize], max: usize) -> usize {
    ends.iter().copied().take_while(|&end| end <= max).last().or(ends.first().copied()).unwrap_or(0)
}

/// Reads silver files a few at a time (decoding on blocking threads) and adds their rows, until
/// `max_rows` are in at the end of a group (see [`overlap_groups`]), or half of them at the end of
/// an Event Hubs partition; returns how many files it took.
///
/// Events are partitioned by patient, so a build that ends where a partition ends leaves none of its
/// patients to the next build of the same backlog. A patient split across two builds costs a
/// rewrite: when the second build's events re-point a few hundred of the first build's facts (a
/// returning patient's new version), every file those facts are in is written again — for a
/// backlog of 1M events in four partitions, builds 2–4 each rewrote all of the previous build's
/// 262,000 rows.
async fn read_silver(
    lake: &Lake,
    files: &[Path],
    groups: &[usize],
    visits: &mut Visits,
    max_rows: usize,
) -> Result<usize> {
    let partition = |i: usize| files.get(i).and_then(|k| BatchStem::parse_key(k.as_ref())).map(|s| s.partition);
    let keys: Vec<String> = files.iter().map(ToString::to_string).collect();
    let mut read = decoded(lake, Container::Silver, keys, |key: &str, bytes| {
        // A file of another layout is read as it is (gold reads plain text columns too).
        let batches = parquet::decode_columns_as(bytes, &input::SILVER_COLUMNS, &input::SILVER_AS_READ)?;
        Ok(input::SilverFile::new(key, batches))
    });
    let mut taken = 0;
    while let Some((key, file)) = read.try_next().await? {
        visits.add_silver_file(&key, &file)?;
        taken += 1;
        if !groups.contains(&taken) {
            continue;
        }
        let full = visits.len() >= max_rows.max(1);
        let half_at_partition_end = visits.len() >= max_rows / 2 && partition(taken) != partition(taken - 1);
        if full || half_at_partition_end {
            break;
        }
    }
    Ok(taken)
}

/// Parquet encodes and uploads on blocking threads, a few at a time, so a build's many files use
/// every core.
struct Uploads<'a> {
    lake: &'a Lake,
    running: futures::stream::FuturesUnordered<futures::future::BoxFuture<'a, Result<()>>>,
}

impl<'a> Uploads<'a> {
    fn new(lake: &'a Lake) -> Self {
        Self { lake, running: Default::default() }
    }

    /// Files encoded at once. Each holds its batch, the encoder's pages and the encoded bytes; with
    /// fewer than four, the build waits on the ledger's and DimPatient's large encodes instead of
    /// laying out facts meanwhile (measured on two cores: two in flight, 0.5 s slower a 1M build
    /// for 20–40 MB less).
    const IN_FLIGHT: usize = 4;

    async fn put(
        &mut self,
        key: String,
        schema: &arrow_schema::SchemaRef,
        layout: &'static parquet::Layout,
        batch: RecordBatch,
    ) -> Result<u64> {
        let rows = batch.num_rows() as u64;
        let (lake, schema) = (self.lake, Arc::clone(schema));
        self.start(Box::pin(async move {
            let bytes = tokio::task::spawn_blocking(move || encode(&schema, layout, &batch))
                .await
                .map_err(|e| Error::Internal(e.to_string()))??;
            lake.put(Container::Gold, &Path::from(key), bytes).await?;
            Ok(())
        }))
        .await?;
        Ok(rows)
    }

    /// Uploads a file encoded elsewhere.
    async fn put_bytes(&mut self, key: String, bytes: bytes::Bytes) -> Result<()> {
        let lake = self.lake;
        self.start(Box::pin(async move { Ok(lake.put(Container::Gold, &Path::from(key), bytes).await?) })).await
    }

    /// Starts `upload` once fewer than [`IN_FLIGHT`](Self::IN_FLIGHT) run.
    async fn start(&mut self, upload: futures::future::BoxFuture<'a, Result<()>>) -> Result<()> {
        while self.running.len() >= Self::IN_FLIGHT {
            self.running.next().await.transpose()?;
        }
        self.running.push(upload);
        Ok(())
    }

    async fn finish(mut self) -> Result<()> {
        while let Some(done) = self.running.next().await {
            done?;
        }
        Ok(())
    }
}

/// Rows of the new ledger segment and DimPatient file collected before they go to their encoders
/// (a chunk ends at the first patient boundary past it): a fraction of a build's rows, and large
/// enough that handing a chunk over costs nothing next to encoding it.
const FOLD_CHUNK_ROWS: usize = 64 * 1024;

/// Encodes a gold file with its table's [`Layout`](parquet::Layout).
fn encode(schema: &arrow_schema::SchemaRef, layout: &parquet::Layout, batch: &RecordBatch) -> Result<bytes::Bytes> {
    Ok(parquet::encode_layout(schema, std::slice::from_ref(batch), layout)?)
}

/// Builds gold from the silver files not yet folded in, and commits it. Does nothing (and writes
/// nothing) when there is nothing new.
///
/// Gold is a function of the set of events folded in: the new events are merged into the ledger
/// rows of the patients they concern (each visit keeps its winning event, the latest by
/// [`OrderKey`](input::OrderKey), so a redelivered or older event changes nothing), and those
/// patients' SCD2 versions and fact rows are recomputed from their visits. Only what differs is
/// written: a ledger segment and a DimPatient file for the changed patients (and the older
/// DimPatient files they leave), and new fact files for the rows that changed, moved or flipped —
/// the files those rows leave are rewritten; every other file is kept as it is.
pub async fn build(lake: &Lake, options: &GoldOptions) -> Result<BuildOutcome> {
    let mut phases = Phases::start();
    let (latest, pending_files) = pending_in(lake, options.partition.as_deref()).await?;
    phases.mark("list pending silver");
    let base = latest.as_ref().map(|m| m.build);
    match build_on(lake, options, phases, latest, pending_files).await {
        Err(e) if !matches!(e, Error::Conflict(_)) => Err(overtaken(lake, base, e).await),
        other => other,
    }
}

/// Whether `e` is an object missing from the lake (the cleanup's test for a manifest another
/// cleanup deleted; a build that fails treats any failure alike, see [`overtaken`]).
fn is_not_found(e: &Error) -> bool {
    matches!(e, Error::Storage(crate::storage::Error::NotFound { .. }))
}

/// A build failed. When another builder committed a build since this one began, that is the race,
/// not damage: this build could not have committed (its number is taken), and what stopped it may be
/// the winner's doing — its cleanup deletes the folders of builds that lost its number (this one's
/// too, while it runs: a file this build wrote goes missing, or, on a local lake, a folder it is
/// writing into is removed under it) and a merge may drop the files this build started from. It is
/// reported as [`Error::Conflict`], so the build is retried on the new state, where a real fault
/// shows again; otherwise the error stands.
async fn overtaken(lake: &Lake, base: Option<u64>, error: Error) -> Error {
    match manifest::build_numbers(lake).await {
        Ok(numbers) if numbers.last().copied() > base => Error::Conflict(format!(
            "another gold build was committed while this one ran, which then stopped ({error})"
        )),
        _ => error,
    }
}

/// [`build`] from the latest manifest and the silver files it has not folded, without telling a
/// lost race from a missing file.
async fn build_on(
    lake: &Lake,
    options: &GoldOptions,
    mut phases: Phases,
    latest: Option<Manifest>,
    pending_files: Vec<Path>,
) -> Result<BuildOutcome> {
    let as_of = to_micros(&options.now);
    let (prev, mut new_files) = match &latest {
        // That rebuild takes every partition's silver: it is left to a build of all partitions.
        Some(m) if m.ledger.is_none() && options.partition.is_some() => {
            return Ok(BuildOutcome::NothingNew { build: Some(m.build) });
        }
        // Gold built before the ledger existed cannot be updated by the rules below: it is rebuilt
        // from silver (every silver file is kept), continuing the build numbers.
        Some(m) if m.ledger.is_none() => {
            tracing::warn!(build = m.build, "Gold predates the visit ledger; rebuilding it from silver.");
            let all = lake.list(Container::Silver, &patient_flow_prefix()).await?;
            let fresh = Manifest { build: m.build, ledger: Some(Vec::new()), ..Default::default() };
            (fresh, all.into_iter().map(|m| m.location).collect())
        }
        Some(m) => (m.clone(), pending_files),
        None => (Manifest { ledger: Some(Vec::new()), ..Default::default() }, pending_files),
    };
    // Sorted by key: `pending` sorts, and a listing is sorted.
    let groups = overlap_groups(&new_files);
    new_files.truncate(whole_groups(&groups, options.max_files_per_build.max(1)));
    let due = |f: &TableFile| f.next_change_us.is_some_and(|t| t <= as_of);
    let any_due = prev.fact_patient_flow.values().flat_map(|p| &p.files).any(due);
    if new_files.is_empty() && !any_due {
        return Ok(BuildOutcome::NothingNew { build: latest.map(|m| m.build) });
    }

    let mut visits = Visits::default();
    let taken = read_silver(lake, &new_files, &groups, &mut visits, options.max_rows_per_build).await?;
    new_files.truncate(taken);
    phases.mark("read silver");
    let build = prev.build + 1;
    let mut silver = prev.silver.clone();
    for key in &new_files {
        silver
            .insert(&BatchStem::parse_key(key.as_ref()).ok_or_else(|| Error::Internal(format!("{key} is no batch")))?);
    }
    // Deterministic per input: the same silver files and clock give the same build id and bytes.
    let build_id = format!("{build:010}-{:016x}", keys::build_nonce(&silver, as_of));
    let dir = format!("{BUILDS}/{build_id}");
    let mut metrics = GoldMetrics {
        build,
        builds: 1,
        silver_files: new_files.len() as u64,
        rows_in: visits.len() as u64,
        ..Default::default()
    };

    let mut departments = Departments::new();
    if !prev.dim_department.is_empty() {
        dims::read_departments(&read_table(lake, &prev.dim_department).await?, &mut departments)?;
    }
    metrics.departments_added = dims::add_departments(&mut departments, &visits) as u64;
    phases.mark("departments");

    // The ledger rows of the patients this build sees: newest segment first, each patient from the
    // newest segment that holds it.
    let prev_ledger = prev.ledger.clone().unwrap_or_default();
    if prev_ledger.len() != prev.dim_patient.len() {
        return Err(Error::Corrupt {
            key: manifest::manifest_key(prev.build).to_string(),
            detail: format!(
                "{} ledger segments but {} DimPatient files; they must pair up (remove the gold container's \
                 _manifests to rebuild gold from silver)",
                prev_ledger.len(),
                prev.dim_patient.len()
            ),
        });
    }
    let mut segments: Vec<(TableFile, TableFile)> =
        prev_ledger.into_iter().zip(prev.dim_patient.iter().cloned()).collect();
    // Compaction: the small segments frequent small builds leave behind are merged once there are
    // enough of them, so a lookup reads a bounded number of sidecars.
    let small = segments.iter().rposition(|(l, _)| l.rows as usize >= ledger::SMALL_SEGMENT_ROWS).map_or(0, |i| i + 1);
    if segments.len() - small >= ledger::MAX_SMALL_SEGMENTS {
        let merged = merge_segments(lake, &segments[small..], &dir).await?;
        segments.truncate(small);
        segments.push(merged);
    }
    let mut wanted: Vec<i64> = visits.iter().map(|v| v.patient_key).collect();
    wanted.sort_unstable();
    wanted.dedup();
    let mut home: FxHashMap<i64, usize> = FxHashMap::default();
    let (looked_for, mut sidecars, mut decoded_segments, mut decoded_rows) = (wanted.len(), 0, 0, 0);
    // Each sidecar is decoded and matched against the build's keys on a blocking thread, a few at
    // once (a lookup reads every sidecar when no patient returns); a segment's hits then leave out
    // the patients a newer segment already holds.
    let newest_first: Vec<String> = segments.iter().rev().map(|(l, _)| ledger::keys_file(&l.file)).collect();
    let sought = Arc::new(wanted.clone());
    let mut matched = decoded(lake, Container::Gold, newest_first, move |key: &str, bytes| {
        let keys =
            ledger::decode_keys(key, &whole(key, bytes)?).map_err(|e| parquet::ParquetError::new(e.to_string()))?;
        Ok(ledger::matching(&sought, &keys))
    });
    for s in (0..segments.len()).rev() {
        if wanted.is_empty() {
            break;
        }
        let file = &segments[s].0.file;
        sidecars += 1;
        let (_, mut hits) =
            matched.try_next().await?.ok_or_else(|| Error::Internal("a ledger sidecar was left unread".into()))?;
        hits.retain(|k| wanted.binary_search(k).is_ok());
        if hits.is_empty() {
            continue;
        }
        let hits: FxHashSet<i64> = hits.into_iter().collect();
        decoded_segments += 1;
        decoded_rows += segments[s].0.rows;
        ledger::decode(file, &read_table(lake, file).await?, |k| hits.contains(&k), &mut visits)?;
        home.extend(hits.iter().map(|&k| (k, s)));
        wanted.retain(|k| !hits.contains(k));
    }
    tracing::debug!(
        patients = looked_for,
        found = home.len(),
        segments = segments.len(),
        sidecars,
        decoded_segments,
        decoded_rows,
        "Ledger lookup."
    );
    drop(wanted);
    phases.mark("ledger lookup");
    visits.rank();
    for bucket in &mut visits.buckets {
        bucket.sort();
    }

    // Patient by patient (buckets and their records are in patient key order), visit by visit.
    // The new ledger segment and DimPatient file are encoded while they are built, a chunk at a
    // time on threads of their own: memory holds their compressed pages, not all their rows. Their
    // row counts are not known yet, which only a bloom filter's size needs, and neither layout has one.
    let chunk = FOLD_CHUNK_ROWS.min(visits.len());
    let mut rows = FoldRows {
        segment: ledger::SegmentBuilder::with_capacity(chunk, &visits),
        segment_file: parquet::StreamEncoder::new(
            Arc::clone(&ledger::LEDGER),
            ledger::LEDGER_LAYOUT.writer_properties(0),
        )?,
        patients: dims::PatientsBuilder::with_capacity(chunk),
        patients_file: parquet::StreamEncoder::new(Arc::clone(&DIM_PATIENT), DIM_PATIENT_LAYOUT.writer_properties(0))?,
    };
    let folded = fold_patients(&visits, &home, as_of, |pid, winners, versions| rows.append(pid, winners, versions))?;
    let FoldRows { mut segment, mut segment_file, patients: mut new_patients, mut patients_file } = rows;
    (metrics.patients, metrics.facts_inserted, metrics.facts_updated) =
        (folded.stats, folded.facts_inserted, folded.facts_updated);
    let Fold { mut by_day, leaving, leaving_days, leavers, segment_rows, patient_rows, .. } = folded;

    phases.mark("patients and visits");
    // Fact rows, the segment and the DimPatient rows own their data: the records are no longer needed.
    drop(visits);
    // The records were the build's largest allocation; the facts allocate in other sizes.
    crate::memory::release_free_memory();
    let mut uploads = Uploads::new(lake);

    // DimPatient and the ledger: one new segment for the changed patients; the DimPatient files
    // they leave are rewritten without them (a segment whose patients all left is dropped).
    let mut dropped: BTreeSet<usize> = BTreeSet::new();
    for (&s, ids) in &leavers {
        let old = &segments[s].1;
        let mut kept = Vec::new();
        for b in read_table(lake, &old.file).await? {
            let id = b
                .column_by_name("patient_id")
                .and_then(|c| c.as_string_opt::<i32>())
                .ok_or_else(|| Error::Corrupt { key: old.file.clone(), detail: "no `patient_id` column".into() })?;
            let keep: arrow_array::BooleanArray =
                id.iter().map(|p| Some(!ids.contains(p.unwrap_or_default()))).collect();
            kept.push(arrow_select::filter::filter_record_batch(&b, &keep)?);
        }
        let batch = arrow_select::concat::concat_batches(&DIM_PATIENT, &kept)?;
        if batch.num_rows() == 0 {
            dropped.insert(s);
            continue;
        }
        let file = format!("{dir}/dim_patient/rest-{s:05}.parquet");
        let rows = uploads.put(file.clone(), &DIM_PATIENT, &DIM_PATIENT_LAYOUT, batch).await?;
        segments[s].1 = TableFile { file, rows, ..Default::default() };
    }
    let mut segments: Vec<(TableFile, TableFile)> =
        segments.into_iter().enumerate().filter(|(s, _)| !dropped.contains(s)).map(|(_, x)| x).collect();
    if segment.patients() > 0 {
        // Both files' last rows go to their encoders before either is waited for. They are
        // finished here, not beside the facts: encoding them while the facts are laid out held
        // 15–25 MB more at the build's peak (measured over a ninth 1M run onto one lake).
        segment_file.write(segment.take_rows()?)?;
        patients_file.write(new_patients.take_rows()?)?;
        let (segment_bytes, patient_bytes) = (segment_file.finish()?, patients_file.finish()?);
        let file = format!("{dir}/ledger/segment.parquet");
        uploads.put(ledger::keys_file(&file), &ledger::KEYS, &ledger::KEYS_LAYOUT, segment.finish_keys()?).await?;
        uploads.put_bytes(file.clone(), segment_bytes).await?;
        let ledger_file = TableFile { file, rows: segment_rows, ..Default::default() };
        let file = format!("{dir}/dim_patient/segment.parquet");
        uploads.put_bytes(file.clone(), patient_bytes).await?;
        let (rows, fresh) = (patient_rows, leavers.is_empty());
        segments.push((ledger_file, TableFile { file, rows, fresh, ..Default::default() }));
    }
    drop(leavers);
    phases.mark("dim_patient and ledger");

    // Facts, day by day: the days rows leave or land on, and the days whose files' census flag
    // flips or that are small enough to compact. A day's files are read, merged with its new rows
    // and written before the next day is read, so memory holds the build's new rows and one day,
    // not every day the build touches. A row that moves keeps its first ingestion time, read first
    // (two columns) from the files it leaves, whichever day is written first.
    let mut partitions = prev.fact_patient_flow.clone();
    let mut touched: BTreeSet<i32> = by_day.keys().copied().collect();
    touched.extend(leaving_days.iter().copied());
    touched.extend(partitions.iter().filter(|(_, p)| p.files.iter().any(due)).filter_map(|(day, _)| day_number(day)));
    let leaving_files: Vec<String> = leaving_days
        .iter()
        .filter_map(|&day| partitions.get(&day_name(day)))
        .flat_map(|p| p.files.iter().map(|f| f.file.clone()))
        .collect();
    let (first_seen, holding) = first_ingestions(lake, leaving_files, &leaving).await?;
    phases.mark("facts: rows that leave");
    let mut rewrites = Rewrites::default();
    for &day in &touched {
        let name = day_name(day);
        let part = partitions.remove(&name).unwrap_or_default();
        let is_settled_small = |f: &TableFile| f.next_change_us.is_none() && (f.rows as usize) < fact::MIN_FILE_ROWS;
        let compact = part.files.iter().filter(|f| is_settled_small(f)).count() + 1 >= fact::MAX_SMALL_FILES;
        let mut new = by_day.remove(&day).unwrap_or_default();
        for (_, row) in &mut new {
            // The first ingestion time is kept: it says when gold first knew the visit.
            row.ingested_us = first_seen.get(&row.fact_id).copied().unwrap_or(row.ingested_us);
        }
        let mut files = Vec::new();
        let mut rewritten = Vec::new();
        for f in part.files {
            let why = if due(&f) {
                &mut rewrites.due
            } else if holding.contains(f.file.as_str()) {
                &mut rewrites.holding
            } else if compact && is_settled_small(&f) {
                &mut rewrites.compacted
            } else {
                files.push(f);
                continue;
            };
            *why += f.rows;
            rewritten.push(f.file);
        }
        let mut kept = Vec::new();
        let mut read = decoded(lake, Container::Gold, rewritten, |_: &str, bytes| fact::read(bytes));
        while let Some((key, batches)) = read.try_next().await? {
            for b in batches {
                kept.push(fact::without(&key, b, &leaving)?);
            }
        }
        if !new.is_empty() || kept.iter().any(|b| b.num_rows() > 0) {
            metrics.partitions_written += 1;
        }
        let key = format!("{dir}/fact_patient_flow/visit_date={name}");
        for (n, out) in fact::lay_out_day(&key, new, kept, day, as_of)?.enumerate() {
            let out = out?;
            let file = format!("{key}/part-{n:04}.parquet");
            let rows = uploads.put(file.clone(), &FACT_PATIENT_FLOW, &FACT_PATIENT_FLOW_LAYOUT, out.batch).await?;
            let discharge_days = out.discharge_days.into_iter().map(day_name).collect();
            files.push(TableFile { file, rows, fresh: out.fresh, next_change_us: out.next_change_us, discharge_days });
        }
        if !files.is_empty() {
            partitions.insert(name, partition(files));
        }
    }

    tracing::debug!(
        due = rewrites.due,
        holding = rewrites.holding,
        compacted = rewrites.compacted,
        "Fact rows rewritten, by why their file was."
    );
    phases.mark("facts");
    // DimTime: every hour of each day a fact references.
    let mut days = Days::new();
    for (name, p) in &partitions {
        days.extend(day_number(name));
        days.extend(p.discharge_days.iter().filter_map(|d| day_number(d)));
    }
    let dim_department = format!("{dir}/dim_department.parquet");
    let dim_time = format!("{dir}/dim_time.parquet");
    let mut rows = BTreeMap::new();
    rows.insert(
        "DimDepartment".into(),
        uploads
            .put(
                dim_department.clone(),
                &DIM_DEPARTMENT,
                &DIM_DEPARTMENT_LAYOUT,
                dims::departments_batch(&departments)?,
            )
            .await?,
    );
    rows.insert(
        "DimTime".into(),
        uploads.put(dim_time.clone(), &DIM_TIME, &DIM_TIME_LAYOUT, dims::time_batch(&days)?).await?,
    );
    rows.insert("DimPatient".into(), segments.iter().map(|(_, d)| d.rows).sum());
    rows.insert("FactPatientFlow".into(), partitions.values().map(FactPartition::rows).sum());
    uploads.finish().await?;
    metrics.rows = rows.clone();

    let (ledger, dim_patient) = segments.into_iter().unzip();
    let mut manifest = Manifest {
        build,
        build_id,
        as_of: rfc3339(&options.now),
        silver,
        dim_department,
        dim_patient,
        dim_time,
        fact_patient_flow: partitions,
        rows,
        ledger: Some(ledger),
        removed: Vec::new(),
    };
    let now_referenced: HashSet<String> = manifest.files().into_iter().collect();
    manifest.removed = latest.as_ref().map(|m| m.removed_by(&now_referenced)).unwrap_or_default();
    phases.mark("uploads");
    manifest::commit(lake, &manifest).await?;
    phases.mark("commit");
    metrics.files_cleaned = cleanup(lake, options).await.unwrap_or_else(|error| {
        tracing::warn!(%error, "Gold cleanup failed; it is retried after the next build.");
        0
    });
    phases.mark("cleanup");
    Ok(BuildOutcome::Built(metrics))
}

/// What folding a run of patients yields besides their ledger records and DimPatient versions.
#[derive(Default)]
struct Fold {
    stats: dims::ScdStats,
    facts_inserted: u64,
    facts_updated: u64,
    /// The patients' new or changed fact rows by visit day (`true`: a fact gold did not hold).
    by_day: BTreeMap<i32, Vec<(bool, FactRow)>>,
    /// Facts whose old rows leave their files, and those rows' visit days.
    leaving: FxHashSet<i64>,
    leaving_days: BTreeSet<i32>,
    /// The changed patients, by the ledger segment that held them.
    leavers: BTreeMap<usize, FxHashSet<String>>,
    segment_rows: u64,
    patient_rows: u64,
}

/// Folds the patients of `visits` (bucket by bucket, in patient key order, visit by visit), handing
/// each changed patient's id, winning records (its ledger rows) and SCD2 versions (its DimPatient
/// rows) to `changed`.
fn fold_patients<'v>(
    visits: &'v Visits,
    home: &FxHashMap<i64, usize>,
    as_of: i64,
    mut changed: impl FnMut(&'v str, &[&'v input::Visit], &[dims::PatientVersion]) -> Result<()>,
) -> Result<Fold> {
    // A day's rows are mostly the build's new visits: each day's vector starts at their number,
    // instead of doubling its way there (copying its rows at every step, and holding up to twice
    // their memory). Days that end up with no rows are dropped below.
    let mut new_visits: BTreeMap<i32, usize> = BTreeMap::new();
    for bucket in &visits.buckets {
        for visit in bucket.rows.chunk_by(|a, b| a.fact_id == b.fact_id) {
            if let Some(v) = visit.iter().find(|v| !v.known) {
                *new_visits.entry(keys::epoch_days(v.admission_us)).or_default() += 1;
            }
        }
    }
    let by_day = new_visits.into_iter().map(|(day, n)| (day, Vec::with_capacity(n))).collect();
    let mut out = Fold { by_day, ..Fold::default() };
    let (mut old_winners, mut new_winners): (Vec<&'v input::Visit>, Vec<&'v input::Visit>) = (Vec::new(), Vec::new());
    let (mut old_versions, mut new_versions): (Vec<dims::PatientVersion>, Vec<dims::PatientVersion>) =
        (Vec::new(), Vec::new());
    let closed = |v: &[dims::PatientVersion]| v.iter().filter(|x| x.effective_to.is_some()).count() as u64;
    for bucket in &visits.buckets {
        for patient in bucket.rows.chunk_by(|a, b| a.patient_key == b.patient_key) {
            old_winners.clear();
            new_winners.clear();
            let mut is_changed = false;
            for visit in patient.chunk_by(|a, b| a.fact_id == b.fact_id) {
                // The winner: the latest event; for the same event twice, the copy folded first.
                let Some(best) =
                    visit.iter().max_by_key(|v| (visits.order_key(v), v.known, std::cmp::Reverse(v.input)))
                else {
                    continue;
                };
                new_winners.push(best);
                is_changed |= !best.known;
                old_winners.extend(visit.iter().filter(|v| v.known));
            }
            if !is_changed {
                continue;
            }
            let pid = bucket.patient_id(&patient[0]);
            dims::versions(visits, pid, &mut new_winners, &mut new_versions);
            let mut old_rows: FxHashMap<i64, FactRow> = FxHashMap::default();
            if old_winners.is_empty() {
                out.stats.new_patients += 1;
                out.stats.versions_closed += closed(&new_versions);
            } else {
                dims::versions(visits, pid, &mut old_winners, &mut old_versions);
                out.stats.versions_closed += closed(&new_versions).saturating_sub(closed(&old_versions));
                for v in &old_winners {
                    let row = FactRow::of(visits, v, &old_versions, as_of).ok_or_else(uncovered)?;
                    old_rows.insert(row.fact_id, row);
                }
            }
            for v in &new_winners {
                let row = FactRow::of(visits, v, &new_versions, as_of).ok_or_else(uncovered)?;
                match old_rows.get(&row.fact_id) {
                    Some(old) if old.same_row(&row) => continue,
                    Some(old) => {
                        let same_event = (&old.partition_id, old.sequence_number, old.enqueued_us)
                            == (&row.partition_id, row.sequence_number, row.enqueued_us);
                        if same_event {
                            out.stats.facts_repointed += 1;
                        } else if !old.same_visit_content(&row) {
                            out.facts_updated += 1;
                        }
                        out.leaving.insert(old.fact_id);
                        out.leaving_days.insert(old.visit_date);
                        out.by_day.entry(row.visit_date).or_default().push((false, row));
                    }
                    None => {
                        out.facts_inserted += 1;
                        out.by_day.entry(row.visit_date).or_default().push((true, row));
                    }
                }
            }
            out.segment_rows += new_winners.len() as u64;
            out.patient_rows += new_versions.len() as u64;
            if let Some(&s) = home.get(&patient[0].patient_key) {
                out.leavers.entry(s).or_default().insert(pid.to_string());
            }
            changed(pid, &new_winners, &new_versions)?;
        }
    }
    out.by_day.retain(|_, rows| !rows.is_empty());
    Ok(out)
}

/// The new ledger segment's and DimPatient file's rows, appended patient by patient and handed to
/// their encoders a chunk at a time.
struct FoldRows {
    segment: ledger::SegmentBuilder,
    segment_file: parquet::StreamEncoder,
    patients: dims::PatientsBuilder,
    patients_file: parquet::StreamEncoder,
}

impl FoldRows {
    /// Appends a changed patient's ledger records and versions; a builder that reached
    /// [`FOLD_CHUNK_ROWS`] hands its rows to its encoder.
    fn append(&mut self, pid: &str, winners: &[&input::Visit], versions: &[dims::PatientVersion]) -> Result<()> {
        for v in winners {
            self.segment.append(pid, v);
        }
        self.patients.append(pid, versions);
        if self.segment.len() >= FOLD_CHUNK_ROWS {
            self.segment_file.write(self.segment.take_rows()?)?;
        }
        if self.patients.len() >= FOLD_CHUNK_ROWS {
            self.patients_file.write(self.patients.take_rows()?)?;
        }
        Ok(())
    }
}

/// Merges ledger segments (oldest first) into one, each patient's records taken from the newest
/// segment that holds the patient, and their DimPatient files (which hold each patient once) into
/// one file.
async fn merge_segments(lake: &Lake, run: &[(TableFile, TableFile)], dir: &str) -> Result<(TableFile, TableFile)> {
    let mut seen: FxHashSet<i64> = FxHashSet::default();
    let mut kept: Vec<RecordBatch> = Vec::new();
    for (segment, _) in run.iter().rev() {
        let mut keys_here: FxHashSet<i64> = FxHashSet::default();
        for b in read_table(lake, &segment.file).await? {
            let keys = input::column(&b, &segment.file, "patient_key", |c| {
                c.as_primitive_opt::<arrow_array::types::Int64Type>()
            })?;
            let keep: arrow_array::BooleanArray = keys.values().iter().map(|k| Some(!seen.contains(k))).collect();
            keys_here.extend(keys.values().iter().copied());
            kept.push(arrow_select::filter::filter_record_batch(&b, &keep)?);
        }
        seen.extend(keys_here);
    }
    let all = arrow_select::concat::concat_batches(&ledger::LEDGER, &kept)?;
    drop(kept);
    let keys = input::column(&all, "merged segment", "patient_key", |c| {
        c.as_primitive_opt::<arrow_array::types::Int64Type>()
    })?;
    // A stable sort by key keeps each patient's records in their order.
    let mut order: Vec<u32> = (0..all.num_rows() as u32).collect();
    order.sort_by_key(|&i| keys.value(i as usize));
    let order = arrow_array::UInt32Array::from(order);
    let columns = all
        .columns()
        .iter()
        .map(|c| arrow_select::take::take(c, &order, None))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let merged = RecordBatch::try_new(Arc::clone(&ledger::LEDGER), columns)?;
    let mut distinct: Vec<i64> = seen.into_iter().collect();
    distinct.sort_unstable();
    let sidecar =
        RecordBatch::try_new(Arc::clone(&ledger::KEYS), vec![Arc::new(arrow_array::Int64Array::from(distinct))])?;
    let file = format!("{dir}/ledger/merged.parquet");
    lake.put(
        Container::Gold,
        &Path::from(ledger::keys_file(&file)),
        encode(&ledger::KEYS, &ledger::KEYS_LAYOUT, &sidecar)?,
    )
    .await?;
    let rows = merged.num_rows() as u64;
    lake.put(Container::Gold, &Path::from(file.as_str()), encode(&ledger::LEDGER, &ledger::LEDGER_LAYOUT, &merged)?)
        .await?;
    let segment = TableFile { file, rows, ..Default::default() };
    let mut patients = Vec::new();
    for (_, dim) in run {
        patients.extend(read_table(lake, &dim.file).await?);
    }
    let patients = arrow_select::concat::concat_batches(&DIM_PATIENT, &patients)?;
    let file = format!("{dir}/dim_patient/merged.parquet");
    let rows = patients.num_rows() as u64;
    lake.put(Container::Gold, &Path::from(file.as_str()), encode(&DIM_PATIENT, &DIM_PATIENT_LAYOUT, &patients)?)
        .await?;
    Ok((segment, TableFile { file, rows, ..Default::default() }))
}

/// Parquet files of `container` fetched a few at a time and decoded by `decode` (given each
/// file's key) on blocking threads, in order.
fn decoded<'a, D, T>(
    lake: &'a Lake,
    container: Container,
    keys: Vec<String>,
    decode: D,
) -> impl futures::Stream<Item = Result<(String, T)>> + 'a
where
    D: Fn(&str, bytes::Bytes) -> std::result::Result<T, parquet::ParquetError> + Clone + Send + 'static,
    T: Send + 'static,
{
    futures::stream::iter(keys)
        .map(move |key| {
            let decode = decode.clone();
            async move {
                let bytes = lake.get(container, &Path::from(key.as_str())).await?;
                let (decoded, key) = tokio::task::spawn_blocking(move || (decode(&key, bytes), key))
                    .await
                    .map_err(|e| Error::Internal(e.to_string()))?;
                Ok((key.clone(), decoded.map_err(|e| corrupt(&key, e))?))
            }
        })
        .buffered(4)
}

/// Every column of a parquet file (for [`decoded`]).
fn whole(_key: &str, bytes: bytes::Bytes) -> std::result::Result<Vec<RecordBatch>, parquet::ParquetError> {
    parquet::decode(bytes).map(|(_, batches)| batches)
}

/// The first ingestion times of the `leaving` fact rows, and which of `files` hold them: reads
/// only the `fact_id` and `ingested_at` columns, a few files at a time.
async fn first_ingestions(
    lake: &Lake,
    files: Vec<String>,
    leaving: &FxHashSet<i64>,
) -> Result<(FxHashMap<i64, i64>, FxHashSet<String>)> {
    let mut first_seen = FxHashMap::default();
    let mut holding = FxHashSet::default();
    if leaving.is_empty() {
        return Ok((first_seen, holding));
    }
    let (scanned, mut rows) = (files.len(), 0);
    let wanted: Arc<Vec<i64>> = Arc::new(leaving.iter().copied().collect());
    // The bloom filter rules most files out without decoding a page.
    let mut read = decoded(lake, Container::Gold, files, move |_key: &str, bytes: bytes::Bytes| {
        match parquet::may_contain_any(bytes.clone(), "fact_id", &wanted)? {
            Some(false) => Ok(Vec::new()),
            Some(true) | None => parquet::decode_columns(bytes, &["fact_id", "ingested_at"]).map(|(_, b)| b),
        }
    });
    while let Some((key, batches)) = read.try_next().await? {
        let key = key.as_str();
        let mut holds = false;
        for b in &batches {
            rows += b.num_rows();
            let ids = input::column(b, key, "fact_id", |c| c.as_primitive_opt::<arrow_array::types::Int64Type>())?;
            let ingested = b
                .column_by_name("ingested_at")
                .and_then(|c| crate::model::schema::gold_column_micros(c.as_ref()))
                .ok_or_else(|| corrupt(key, "no `ingested_at` timestamp column"))?;
            for (i, id) in ids.values().iter().enumerate() {
                if leaving.contains(id) {
                    first_seen.insert(*id, ingested.value(i));
                    holds = true;
                }
            }
        }
        if holds {
            holding.insert(key.to_owned());
        }
    }
    tracing::debug!(
        leaving = leaving.len(),
        scanned,
        rows,
        holding = holding.len(),
        "Fact files the leaving rows may be in."
    );
    Ok((first_seen, holding))
}

fn corrupt(key: &str, e: impl std::fmt::Display) -> Error {
    Error::Corrupt { key: key.to_string(), detail: e.to_string() }
}

/// Rows of the fact files a build rewrites, by why: a census flag flips (`due`), a row leaves
/// (`holding`), or small settled files are merged (`compacted`). Logged at debug level.
#[derive(Default)]
struct Rewrites {
    due: u64,
    holding: u64,
    compacted: u64,
}

/// Logs how long each phase of a build took, at debug level (`RUST_LOG=patientflow=debug`).
struct Phases(Instant);

impl Phases {
    fn start() -> Self {
        Self(Instant::now())
    }

    fn mark(&mut self, phase: &'static str) {
        let now = Instant::now();
        tracing::debug!(phase, ms = (now - self.0).as_secs_f64() * 1e3, "Gold build phase done.");
        self.0 = now;
    }
}

/// A fact partition of `files`, with the discharge days of them all.
fn partition(files: Vec<TableFile>) -> FactPartition {
    let discharge_days: BTreeSet<&String> = files.iter().flat_map(|f| &f.discharge_days).collect();
    let discharge_days = discharge_days.into_iter().cloned().collect();
    FactPartition { files, discharge_days }
}

fn uncovered() -> Error {
    Error::Internal("a visit's patient has no DimPatient version covering its admission".into())
}

/// Builds, retrying once from the new state if another builder committed first.
pub async fn build_with_retry(lake: &Lake, options: &GoldOptions) -> Result<BuildOutcome> {
    match build(lake, options).await {
        Err(Error::Conflict(first)) => {
            tracing::warn!(conflict = %first, "Another gold build committed first; rebuilding on top of it.");
            build(lake, options).await
        }
        other => other,
    }
}

/// Builds until nothing new is left (each build takes at most `max_files_per_build` silver
/// files), and reports the builds together.
pub async fn build_all(lake: &Lake, options: &GoldOptions) -> Result<(BuildOutcome, Duration)> {
    let started = Instant::now();
    let mut total: Option<GoldMetrics> = None;
    loop {
        // What the last build (or the stages before gold) freed goes back to the system, so each
        // build's peak is its own, not the sum of what earlier work left in the allocator.
        crate::memory::release_free_memory();
        match build_with_retry(lake, options).await? {
            BuildOutcome::Built(m) => match &mut total {
                Some(t) => t.absorb(m),
                None => total = Some(m),
            },
            nothing @ BuildOutcome::NothingNew { .. } => {
                let outcome = total.map_or(nothing, BuildOutcome::Built);
                return Ok((outcome, started.elapsed()));
            }
        }
    }
}

fn day_name(day: i32) -> String {
    chrono::DateTime::from_timestamp(i64::from(day) * 86_400, 0)
        .map(|t| t.format("%Y-%m-%d").to_string())
        .unwrap_or_else(|| day.to_string())
}

fn day_number(name: &str) -> Option<i32> {
    let d = chrono::NaiveDate::parse_from_str(name, "%Y-%m-%d").ok()?;
    Some(keys::epoch_days(d.and_hms_opt(0, 0, 0)?.and_utc().timestamp_micros()))
}

/// Reads the tables of a committed build (for loaders and tests).
pub async fn read_build(lake: &Lake, m: &Manifest) -> Result<GoldTables> {
    let mut facts = Vec::new();
    for f in m.fact_patient_flow.values().flat_map(|p| &p.files) {
        facts.extend(read_table(lake, &f.file).await?);
    }
    let mut patients = Vec::new();
    for f in &m.dim_patient {
        patients.extend(read_table(lake, &f.file).await?);
    }
    Ok(GoldTables {
        build: m.build,
        as_of: m.as_of.clone(),
        dim_department: read_table(lake, &m.dim_department).await?,
        dim_patient: patients,
        dim_time: read_table(lake, &m.dim_time).await?,
        fact_patient_flow: facts,
    })
}

/// A committed build's tables, in memory.
#[derive(Debug, Clone)]
pub struct GoldTables {
    /// Build number.
    pub build: u64,
    /// The build's clock (RFC 3339).
    pub as_of: String,
    /// DimDepartment.
    pub dim_department: Vec<arrow_array::RecordBatch>,
    /// DimPatient.
    pub dim_patient: Vec<arrow_array::RecordBatch>,
    /// DimTime.
    pub dim_time: Vec<arrow_array::RecordBatch>,
    /// FactPatientFlow.
    pub fact_patient_flow: Vec<arrow_array::RecordBatch>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::StorageConfig;
    use proptest::prelude::*;

    /// Three rows of every column of `schema`, distinct values of each column's type.
    fn three_rows(schema: &arrow_schema::SchemaRef) -> RecordBatch {
        use arrow_array::{ArrayRef, BinaryArray, BooleanArray, Date32Array, Float64Array, Int32Array, Int64Array};
        use arrow_schema::DataType;
        let columns: Vec<ArrayRef> = schema
            .fields()
            .iter()
            .map(|f| -> ArrayRef {
                match f.data_type() {
                    DataType::Int64 => Arc::new(Int64Array::from(vec![3, 1, 2])),
                    DataType::Int32 => Arc::new(Int32Array::from(vec![3, 1, 2])),
                    DataType::Float64 => Arc::new(Float64Array::from(vec![3.0, 1.0, 2.0])),
                    DataType::Boolean => Arc::new(BooleanArray::from(vec![true, false, true])),
                    DataType::Date32 => Arc::new(Date32Array::from(vec![3, 1, 2])),
                    DataType::Utf8 => Arc::new(arrow_array::StringArray::from(vec!["c", "a", "b"])),
                    DataType::Binary => Arc::new(BinaryArray::from(vec![b"c".as_slice(), b"a", b"b"])),
                    DataType::Timestamp(..) => {
                        arrow_cast::cast(&Int64Array::from(vec![3, 1, 2]), f.data_type()).expect("a timestamp")
                    }
                    other => panic!("no sample of {other}"),
                }
            })
            .collect();
        RecordBatch::try_new(Arc::clone(schema), columns).unwrap()
    }

    /// The columns of an encoded file that carry statistics.
    fn with_statistics(bytes: bytes::Bytes) -> Vec<String> {
        use ::parquet::file::reader::{FileReader, SerializedFileReader};
        let reader = SerializedFileReader::new(bytes).unwrap();
        let group = reader.metadata().row_group(0);
        group.columns().iter().filter(|c| c.statistics().is_some()).map(|c| c.column_path().string()).collect()
    }

    /// Every lake file keeps its statistics (a reader prunes pages and files by them) but where
    /// nothing can prune by them: patient ids, in files laid out by arrival or by a hash of the
    /// patient, so each file's and page's lowest and highest id span nearly every id; and the
    /// visit ledger and its key sidecars, gold's own state, which only gold reads, whole.
    #[test]
    fn lake_files_keep_statistics_but_where_nothing_can_prune_by_them() {
        use crate::model::schema::{BRONZE, BRONZE_LAYOUT, SILVER, SILVER_LAYOUT};
        let names = |schema: &arrow_schema::SchemaRef, without: &[&str]| -> Vec<String> {
            schema.fields().iter().map(|f| f.name().clone()).filter(|n| !without.contains(&n.as_str())).collect()
        };
        let stats = |schema: &arrow_schema::SchemaRef, layout: &parquet::Layout| {
            with_statistics(encode(schema, layout, &three_rows(schema)).unwrap())
        };
        assert_eq!(stats(&ledger::LEDGER, &ledger::LEDGER_LAYOUT), Vec::<String>::new());
        assert_eq!(stats(&ledger::KEYS, &ledger::KEYS_LAYOUT), Vec::<String>::new());
        assert_eq!(stats(&DIM_PATIENT, &DIM_PATIENT_LAYOUT), names(&DIM_PATIENT, &["patient_id"]));
        for (table, layout) in [
            (&FACT_PATIENT_FLOW, &FACT_PATIENT_FLOW_LAYOUT),
            (&DIM_DEPARTMENT, &DIM_DEPARTMENT_LAYOUT),
            (&DIM_TIME, &DIM_TIME_LAYOUT),
        ] {
            assert_eq!(stats(table, layout), names(table, &[]));
        }
        assert_eq!(stats(&SILVER, &SILVER_LAYOUT), names(&SILVER, &["patient_id"]));
        assert_eq!(stats(&BRONZE, &BRONZE_LAYOUT), names(&BRONZE, &["body", "properties", "partition_key"]));
    }

    /// Every lake table's layout names only columns of its table: a misspelt or renamed column
    /// would otherwise silently fall back to the layer's defaults.
    #[test]
    fn every_layout_names_only_columns_of_its_table() {
        use crate::model::schema::{BRONZE, BRONZE_LAYOUT, QUARANTINE, QUARANTINE_LAYOUT, SILVER, SILVER_LAYOUT};
        let tables: [(&str, &arrow_schema::SchemaRef, &parquet::Layout); 9] = [
            ("bronze", &BRONZE, &BRONZE_LAYOUT),
            ("silver", &SILVER, &SILVER_LAYOUT),
            ("quarantine", &QUARANTINE, &QUARANTINE_LAYOUT),
            ("FactPatientFlow", &FACT_PATIENT_FLOW, &FACT_PATIENT_FLOW_LAYOUT),
            ("DimPatient", &DIM_PATIENT, &DIM_PATIENT_LAYOUT),
            ("DimDepartment", &DIM_DEPARTMENT, &DIM_DEPARTMENT_LAYOUT),
            ("DimTime", &DIM_TIME, &DIM_TIME_LAYOUT),
            ("ledger", &ledger::LEDGER, &ledger::LEDGER_LAYOUT),
            ("ledger keys", &ledger::KEYS, &ledger::KEYS_LAYOUT),
        ];
        for (table, schema, layout) in tables {
            let named = [layout.plain, layout.no_statistics, layout.delta, layout.uncompressed, layout.bloom_filter];
            for column in named.concat() {
                assert!(
                    schema.field_with_name(column).is_ok(),
                    "{table}'s layout names {column}, not one of its columns"
                );
            }
        }
    }

    fn keys(stems: &[(&str, i64, i64)]) -> Vec<Path> {
        let mut keys: Vec<Path> = stems
            .iter()
            .map(|&(p, first, last)| BatchStem { partition: p.into(), first_seq: first, last_seq: last }.key())
            .collect();
        keys.sort();
        keys
    }

    /// A redelivered batch 101–104 and the batches 103 and 104 it overlaps are one group; a build
    /// takes whole groups, so their ranges are recorded folded only once all three are read.
    #[test]
    fn files_whose_ranges_overlap_are_folded_together() {
        let files = keys(&[("0", 100, 100), ("0", 101, 104), ("0", 103, 103), ("0", 104, 104), ("0", 105, 105)]);
        assert_eq!(overlap_groups(&files), [1, 4, 5]);
        assert_eq!(whole_groups(&overlap_groups(&files), 2), 1, "the group 101–104 does not fit in two files");
        assert_eq!(whole_groups(&overlap_groups(&files), 4), 4);
        assert_eq!(whole_groups(&[3, 5], 1), 3, "at least the first group, however large");
        // Touching is not overlapping; other partitions never join.
        let files = keys(&[("0", 1, 5), ("0", 6, 9), ("1", 2, 3), ("1", 3, 8), ("1", 9, 9)]);
        assert_eq!(overlap_groups(&files), [1, 2, 4, 5]);
        assert_eq!(overlap_groups(&[]), Vec::<usize>::new());
    }

    /// A failed build is a lost race when another build was committed since this one began (its
    /// cleanup deleted this build's folder: a file gone, or a folder removed under a write), and its
    /// error stays what it is otherwise.
    #[tokio::test]
    async fn a_build_failing_after_another_build_committed_is_a_conflict() {
        let lake = Lake::open(&StorageConfig::memory()).await.unwrap();
        let missing =
            || Error::Storage(crate::storage::Error::NotFound { container: "gold".into(), key: "builds/x".into() });
        let unwritable = || {
            Error::Storage(crate::storage::Error::Store {
                container: "gold".into(),
                key: "builds/x/ledger/segment.parquet".into(),
                detail: "Unable to create dir: No such file or directory".into(),
            })
        };
        assert!(is_not_found(&missing()));
        for error in [missing, unwritable] {
            assert!(matches!(overtaken(&lake, None, error()).await, Error::Storage(_)), "nothing committed since");
        }
        manifest::commit(&lake, &Manifest { build: 1, ..Default::default() }).await.unwrap();
        for error in [missing, unwritable] {
            assert!(matches!(overtaken(&lake, None, error()).await, Error::Conflict(_)), "build 1 came meanwhile");
            assert!(matches!(overtaken(&lake, Some(1), error()).await, Error::Storage(_)), "1 was there before");
        }
        manifest::commit(&lake, &Manifest { build: 2, ..Default::default() }).await.unwrap();
        assert!(matches!(overtaken(&lake, Some(1), unwritable()).await, Error::Conflict(_)));
    }

    /// `(partition, first, width, folded, file written)`: a batch, whether gold folded it, and
    /// whether its silver file exists (else only its index markers do: a refine in flight).
    type Batch = (u8, i64, i64, bool, bool);

    async fn pending_of(batches: &[Batch], indexed: [bool; 2]) -> (Vec<String>, Vec<String>) {
        let lake = Lake::open(&StorageConfig::memory()).await.unwrap();
        let mut folded = manifest::Folded::default();
        let mut expected = std::collections::BTreeSet::new();
        for &(p, first, width, is_folded, written) in batches {
            let stem = BatchStem { partition: p.to_string(), first_seq: first, last_seq: first + width };
            if is_folded {
                folded.insert(&stem);
            }
            if indexed[usize::from(p)] {
                for marker in stem.index_keys() {
                    lake.put(Container::Silver, &marker, bytes::Bytes::new()).await.unwrap();
                }
            }
            if written {
                lake.put(Container::Silver, &stem.key(), bytes::Bytes::new()).await.unwrap();
            }
        }
        for (p, indexed) in indexed.iter().enumerate() {
            if *indexed {
                lake.put(Container::Silver, &BatchStem::index_complete(&p.to_string()), bytes::Bytes::new())
                    .await
                    .unwrap();
            }
        }
        for &(p, first, width, _, written) in batches {
            let stem = BatchStem { partition: p.to_string(), first_seq: first, last_seq: first + width };
            if written && !folded.contains(&stem) {
                expected.insert(stem.key().to_string());
            }
        }
        manifest::commit(&lake, &Manifest { build: 1, silver: folded, ..Default::default() }).await.unwrap();
        let (_, new) = pending(&lake).await.unwrap();
        (new.iter().map(ToString::to_string).collect(), expected.into_iter().collect())
    }

    /// A visit's record, `known` (the ledger's winner so far) or new, sent `sent` hours after
    /// admission on day `day`.
    fn record(visits: &mut Visits, day: i64, sent: i64, known: bool) {
        const HOUR: i64 = 3_600_000_000;
        let admission = 1_700_000_000_000_000 / (24 * HOUR) * (24 * HOUR) + day * 24 * HOUR;
        visits.push(input::Record {
            patient_id: "patient",
            gender: Some("Female"),
            department: Some("ICU"),
            event_hub: "h",
            partition_id: "0",
            bronze_file: "f",
            visit: input::Visit {
                age: Some(40),
                admission_us: admission,
                admission_sent_us: Some(admission),
                sequence_number: sent,
                enqueued_us: admission + sent * HOUR,
                known,
                ..input::Visit::EMPTY
            },
        });
    }

    /// Each day's rows are sized by the build's new records before the fold, but a day only has
    /// rows if a fact on it changed: a late copy of an older event of a visit the ledger holds
    /// (it loses to the ledger's winner) leaves no day behind, so the build touches no partition.
    #[test]
    fn a_fold_leaves_out_the_days_where_nothing_changed() {
        let mut visits = Visits::default();
        record(&mut visits, 0, 5, true);
        record(&mut visits, 0, 1, false);
        visits.rank();
        visits.buckets.iter_mut().for_each(input::Bucket::sort);
        let home = FxHashMap::default();
        let mut changed = 0;
        let fold = fold_patients(&visits, &home, i64::MAX, |_, _, _| {
            changed += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!(changed, 0);
        assert!(fold.by_day.is_empty(), "{:?}", fold.by_day.keys().collect::<Vec<_>>());

        // A new visit on another day of the same patient does change it: one day, one row.
        record(&mut visits, 2, 1, false);
        visits.rank();
        visits.buckets.iter_mut().for_each(input::Bucket::sort);
        let fold = fold_patients(&visits, &home, i64::MAX, |_, _, _| Ok(())).unwrap();
        let days: Vec<usize> = fold.by_day.values().map(Vec::len).collect();
        assert_eq!((days, fold.facts_inserted), (vec![1], 1));
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
        /// Reading silver's sequence index finds exactly the silver files a full listing would find
        /// unfolded: narrow and wide ranges, across bucket boundaries, with markers whose files are
        /// not written yet, and partitions whose index is not complete.
        #[test]
        fn pending_finds_what_a_full_listing_finds(
            batches in prop::collection::vec(
                (0..2u8, 0..6 * SEQ_BUCKET, prop_oneof![0..64i64, (SEQ_BUCKET - 4)..(SEQ_BUCKET + 4), 0..3 * SEQ_BUCKET],
                 any::<bool>(), prop::bool::weighted(0.9)),
                0..24,
            ),
            indexed in [prop::bool::weighted(0.8), prop::bool::weighted(0.8)],
        ) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let (got, expected) = rt.block_on(pending_of(&batches, indexed));
            prop_assert_eq!(got, expected);
        }
    }
}
