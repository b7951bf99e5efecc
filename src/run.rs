//! `patientflow run`: the whole pipeline on this machine. Simulates a hospital network (or reads an
//! NDJSON file), then plays the Functions host: Event Hubs batches per partition to `ingest_bronze`,
//! one blob-trigger call per new bronze file to `refine_silver`, one timer call to `build_gold`
//! (gold and the warehouse load), then reads the KPI report. Each stage is timed.

use std::collections::{BTreeMap, HashSet};
use std::io::BufRead;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chrono::NaiveDateTime;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::mpsc;

use crate::app::{AppState, GoldSettings, WarehouseConfig};
use crate::functions::{build_gold, ingest_bronze, refine_silver};
use crate::local_host::LocalHost;
use crate::local_host::envelopes::{self, HubEvent, HubPartition};
use crate::pipeline::silver::SilverMetrics;
use crate::simulate::{SimulationConfig, Simulator, Tally};
use crate::storage::keys::{BatchStem, patient_flow_prefix};
use crate::storage::{Container, Lake, StorageConfig};

/// Where events come from.
#[derive(Debug, Clone)]
pub enum Source {
    /// The simulator.
    Simulate {
        /// Simulator settings.
        config: SimulationConfig,
        /// How many events.
        count: u64,
    },
    /// An NDJSON file, one event body per line.
    File(PathBuf),
}

/// How to run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Event source.
    pub source: Source,
    /// Event Hubs partitions to spread events over (by partition key).
    pub partitions: u32,
    /// Events per `ingest_bronze` invocation (`maxEventBatchSize`).
    pub batch_size: usize,
    /// Event hub name recorded in bronze.
    pub event_hub: String,
    /// The clock, kept in the host's order: events are enqueued one millisecond apart with the last
    /// one at `now`, and the blob triggers and the gold timer fire at `now` (so no event is enqueued
    /// after the build that folds it in). The simulator generates its events at the first enqueued
    /// time.
    pub now: NaiveDateTime,
    /// `refine_silver` invocations in flight (`extensions.blobs.maxDegreeOfParallelism`).
    pub silver_concurrency: usize,
    /// Show a progress bar on a terminal.
    pub progress: bool,
}

/// Wall time and rows of one stage.
#[derive(Debug, Clone, Serialize)]
pub struct StageReport {
    /// Stage name.
    pub stage: &'static str,
    /// Wall seconds.
    pub seconds: f64,
    /// Rows the stage consumed.
    pub rows: u64,
    /// Rows per second.
    pub rows_per_second: f64,
    /// The process's peak resident memory (Linux `VmHWM`) when the stage ended, in bytes.
    pub peak_memory_bytes: Option<u64>,
}

impl StageReport {
    fn new(stage: &'static str, elapsed: Duration, rows: u64) -> Self {
        let seconds = elapsed.as_secs_f64();
        Self {
            stage,
            seconds,
            rows,
            rows_per_second: if seconds > 0.0 { rows as f64 / seconds } else { 0.0 },
            peak_memory_bytes: peak_memory_bytes(),
        }
    }
}

/// Peak resident memory of this process so far (Linux `VmHWM`), in bytes.
pub fn peak_memory_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// What a run did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RunReport {
    /// Events sent.
    pub events: u64,
    /// `ingest_bronze` invocations.
    pub batches: u64,
    /// Bronze files written.
    pub bronze_files_created: u64,
    /// Batches whose bronze file already existed (replays).
    pub bronze_replays: u64,
    /// Bronze files refined in this run.
    pub silver_files: u64,
    /// Silver rows written.
    pub silver_rows: u64,
    /// Events quarantined, by reason.
    pub quarantined: BTreeMap<String, u64>,
    /// Duplicates dropped in silver.
    pub duplicates_dropped: u64,
    /// Events silver dropped because another silver file already held them (re-deliveries).
    pub redelivered: u64,
    /// Rows corrected, by rule.
    pub corrected: BTreeMap<String, u64>,
    /// Per-stage timings.
    pub stages: Vec<StageReport>,
    /// What the simulator injected (when simulating).
    pub injected: Option<Tally>,
    /// The gold job (build and warehouse load).
    pub gold: Option<Value>,
    /// The KPI report from the warehouse.
    pub report: Option<crate::warehouse::report::Report>,
}

impl RunReport {
    fn add_silver(&mut self, m: &SilverMetrics) {
        self.silver_files += 1;
        self.silver_rows += m.rows_out;
        self.duplicates_dropped += m.duplicates_dropped;
        self.redelivered += m.redelivered;
        for (k, v) in &m.quarantined {
            *self.quarantined.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &m.corrected {
            *self.corrected.entry(k.clone()).or_default() += v;
        }
    }

    /// Human-readable summary (no patient data).
    pub fn render(&self) -> String {
        let mut out = String::new();
        let q: u64 = self.quarantined.values().sum();
        out.push_str(&format!(
            "events {}  batches {}  bronze files {} (replays {})\n",
            self.events, self.batches, self.bronze_files_created, self.bronze_replays
        ));
        out.push_str(&format!(
            "silver files {}  rows {}  quarantined {}  duplicates dropped {}  redelivered {}\n",
            self.silver_files, self.silver_rows, q, self.duplicates_dropped, self.redelivered
        ));
        let reasons: Vec<String> =
            self.quarantined.iter().filter(|(_, v)| **v > 0).map(|(k, v)| format!("{k}={v}")).collect();
        if !reasons.is_empty() {
            out.push_str(&format!("quarantine by reason: {}\n", reasons.join(" ")));
        }
        let fixes: Vec<String> = self.corrected.iter().map(|(k, v)| format!("{k}={v}")).collect();
        out.push_str(&format!("corrections: {}\n", fixes.join(" ")));
        if let Some(summary) = self.gold.as_ref().and_then(|g| g["summary"].as_str()) {
            out.push_str(&format!("gold: {summary}\n"));
        }
        for s in &self.stages {
            out.push_str(&format!(
                "{:<8} {:>8.3} s  {:>10} rows  {:>12.0} rows/s\n",
                s.stage, s.seconds, s.rows, s.rows_per_second
            ));
        }
        out
    }
}

struct Envelope {
    partition: usize,
    body: Vec<u8>,
}

/// Produces batch envelopes on a blocking thread: simulate or read, partition by key, number, batch.
fn produce(
    start: Vec<(i64, i64)>,
    options: RunOptions,
    senders: Vec<mpsc::Sender<Envelope>>,
    progress: indicatif::ProgressBar,
) -> anyhow::Result<(u64, Option<Tally>)> {
    let partitions = senders.len();
    let ids: Vec<String> = (0..partitions).map(|p| p.to_string()).collect();
    let mut buffers: Vec<Vec<HubEvent>> = (0..partitions).map(|_| Vec::with_capacity(options.batch_size)).collect();
    let mut next_seq: Vec<i64> = start.iter().map(|p| p.0).collect();
    let mut next_offset: Vec<i64> = start.iter().map(|p| p.1).collect();
    let mut count: u64 = 0;
    let now = options.now;
    // Enqueued times end at `now`: event i of n is enqueued at now - (n - 1 - i) ms.
    let total = match &options.source {
        Source::Simulate { count: n, .. } => *n,
        Source::File(path) => count_events(path)?,
    };
    let first_enqueued = first_enqueued(now, total)?;
    let flush = |p: usize, buffer: &mut Vec<HubEvent>| -> anyhow::Result<()> {
        if buffer.is_empty() {
            return Ok(());
        }
        let last = buffer.last().map(|e| e.enqueued_time).unwrap_or(now);
        let hub = HubPartition {
            namespace: "local.servicebus.windows.net",
            event_hub: &options.event_hub,
            consumer_group: "$Default",
            partition_id: &ids[p],
        };
        let guid = format!("{p}-{}", buffer[0].sequence_number);
        let body = envelopes::event_hub_batch_bytes(&hub, buffer, &last, &guid);
        buffer.clear();
        senders[p].blocking_send(Envelope { partition: p, body }).context("the handler stopped accepting batches")
    };
    let mut push = |body: Vec<u8>, key: Option<String>, buffers: &mut Vec<Vec<HubEvent>>| -> anyhow::Result<()> {
        let p = match &key {
            Some(k) => (xxhash_rust::xxh3::xxh3_64(k.as_bytes()) % partitions as u64) as usize,
            None => (count % partitions as u64) as usize,
        };
        let len = body.len() as i64;
        buffers[p].push(HubEvent {
            body,
            sequence_number: next_seq[p],
            offset: next_offset[p],
            enqueued_time: first_enqueued + chrono::Duration::milliseconds(count as i64),
            partition_key: key,
        });
        next_seq[p] += 1;
        next_offset[p] += len;
        count += 1;
        progress.inc(1);
        if buffers[p].len() >= options.batch_size {
            let mut full = std::mem::replace(&mut buffers[p], Vec::with_capacity(options.batch_size));
            flush(p, &mut full)?;
        }
        Ok(())
    };
    let tally = match &options.source {
        Source::Simulate { config, count: n } => {
            // The producer makes each event before the hub enqueues it: generated at the first
            // enqueued time, no clean admission lies after its own enqueued time.
            let mut sim = Simulator::new(SimulationConfig { now: first_enqueued, ..config.clone() });
            for e in sim.by_ref().take(*n as usize) {
                push(e.body, Some(e.partition_key), &mut buffers)?;
            }
            Some(sim.tally().clone())
        }
        Source::File(path) => {
            let file = std::fs::File::open(path).with_context(|| format!("cannot open --input {}", path.display()))?;
            for line in std::io::BufReader::with_capacity(1 << 20, file).split(b'\n') {
                let mut line = line.with_context(|| format!("cannot read {}", path.display()))?;
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                let key = partition_key(&line);
                push(line, key, &mut buffers)?;
            }
            None
        }
    };
    for (p, buffer) in buffers.iter_mut().enumerate() {
        flush(p, buffer)?;
    }
    progress.finish_and_clear();
    if count != total {
        bail!("{count} events were read but {total} were counted first; was the --input file changed during the run?");
    }
    Ok((count, tally))
}

/// The enqueued time of the first of `total` events one millisecond apart, the last at `now`.
pub fn first_enqueued(now: NaiveDateTime, total: u64) -> anyhow::Result<NaiveDateTime> {
    i64::try_from(total.saturating_sub(1))
        .ok()
        .and_then(chrono::Duration::try_milliseconds)
        .and_then(|span| now.checked_sub_signed(span))
        .with_context(|| format!("{total} events one millisecond apart cannot end at --now {now}; send fewer events"))
}

/// Events in an NDJSON file: its lines that are not blank (what `run` sends).
fn count_events(path: &std::path::Path) -> anyhow::Result<u64> {
    let file = std::fs::File::open(path).with_context(|| format!("cannot open --input {}", path.display()))?;
    let mut n = 0;
    for line in std::io::BufReader::with_capacity(1 << 20, file).split(b'\n') {
        let line = line.with_context(|| format!("cannot read {}", path.display()))?;
        n += u64::from(!line.iter().all(u8::is_ascii_whitespace));
    }
    Ok(n)
}

/// The producer's partition key for a raw line: its `patient_id`, when it has a plain one.
fn partition_key(line: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Key<'a> {
        #[serde(borrow)]
        patient_id: Option<&'a str>,
    }
    serde_json::from_slice::<Key<'_>>(line).ok()?.patient_id.map(str::to_string)
}

fn progress_bar(options: &RunOptions) -> indicatif::ProgressBar {
    let total = match &options.source {
        Source::Simulate { count, .. } => Some(*count),
        Source::File(_) => None,
    };
    if !options.progress {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::with_draw_target(total, indicatif::ProgressDrawTarget::stderr());
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} bronze {pos}/{len} events {per_sec} {eta}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar
}

/// Where each local partition continues: (next sequence number, next offset). A lake that already
/// holds bronze files is a hub that has already delivered events, so a second `run` appends after
/// them instead of reusing sequence numbers (which bronze would rightly treat as replays).
pub async fn hub_positions(lake: &Lake, partitions: usize) -> anyhow::Result<Vec<(i64, i64)>> {
    let mut last: Vec<Option<BatchStem>> = vec![None; partitions];
    for meta in lake.list(Container::Bronze, &patient_flow_prefix()).await? {
        let Some(stem) = BatchStem::parse_key(meta.location.as_ref()) else { continue };
        let Ok(p) = stem.partition.parse::<usize>() else { continue };
        if p < partitions && last[p].as_ref().is_none_or(|s| s.last_seq < stem.last_seq) {
            last[p] = Some(stem);
        }
    }
    let mut positions = Vec::with_capacity(partitions);
    for stem in last {
        let Some(stem) = stem else {
            positions.push((0, 0));
            continue;
        };
        let bytes = lake.get(Container::Bronze, &stem.key()).await?;
        let (_, batches) = crate::storage::parquet::decode(bytes)?;
        let next_offset = batches
            .last()
            .filter(|b| b.num_rows() > 0)
            .and_then(|b| {
                use arrow_array::cast::AsArray;
                let i = b.num_rows() - 1;
                let offset = b.column_by_name("offset")?.as_string::<i32>().value(i).parse::<i64>().ok()?;
                Some(offset + b.column_by_name("body")?.as_binary::<i32>().value(i).len() as i64)
            })
            .unwrap_or(0);
        positions.push((stem.last_seq + 1, next_offset));
    }
    Ok(positions)
}

/// Runs the bronze stage: every event through `POST /ingest_bronze`.
pub async fn bronze_stage(
    host: &Arc<LocalHost>,
    lake: &Lake,
    options: &RunOptions,
    report: &mut RunReport,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let partitions = options.partitions.max(1) as usize;
    let mut senders = Vec::with_capacity(partitions);
    let mut workers = Vec::with_capacity(partitions);
    for _ in 0..partitions {
        // Two batches in flight per partition at most: memory is bounded by batch size, not history.
        let (tx, mut rx) = mpsc::channel::<Envelope>(2);
        senders.push(tx);
        let host = Arc::clone(host);
        // Like the host: one partition's batches are delivered one after another.
        workers.push(tokio::spawn(async move {
            let (mut batches, mut created, mut replays) = (0u64, 0u64, 0u64);
            while let Some(env) = rx.recv().await {
                let id = format!("bronze-{}-{batches}", env.partition);
                let response = host.invoke_raw(ingest_bronze::NAME, env.body, &id).await?;
                batches += 1;
                match response.return_value.get("created").and_then(Value::as_bool) {
                    Some(true) => created += 1,
                    _ => replays += 1,
                }
            }
            anyhow::Ok((batches, created, replays))
        }));
    }
    let producer_options = options.clone();
    let bar = progress_bar(options);
    let start = hub_positions(lake, partitions).await?;
    let producer = tokio::task::spawn_blocking(move || produce(start, producer_options, senders, bar));
    let mut failure = None;
    for w in workers {
        match w.await? {
            Ok((b, c, r)) => {
                report.batches += b;
                report.bronze_files_created += c;
                report.bronze_replays += r;
            }
            Err(e) => failure = failure.or(Some(e)),
        }
    }
    let produced = producer.await?;
    if let Some(e) = failure {
        return Err(e.context("bronze ingest failed"));
    }
    let (events, tally) = produced?;
    report.events = events;
    report.injected = tally;
    report.stages.push(StageReport::new("bronze", started.elapsed(), events));
    Ok(())
}

/// Runs the silver stage: one `POST /refine_silver` per bronze file that has no silver file yet
/// (the host's blob-trigger receipts, played locally), `silver_concurrency` at a time.
pub async fn silver_stage(
    host: &Arc<LocalHost>,
    lake: &Lake,
    options: &RunOptions,
    report: &mut RunReport,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let done: HashSet<String> = lake
        .list(Container::Silver, &patient_flow_prefix())
        .await?
        .into_iter()
        .map(|m| m.location.to_string())
        .collect();
    let pending: Vec<BatchStem> = lake
        .list(Container::Bronze, &patient_flow_prefix())
        .await?
        .into_iter()
        .filter(|m| !done.contains(m.location.as_ref()))
        .filter_map(|m| BatchStem::parse_key(m.location.as_ref()))
        .collect();
    let queue = Arc::new(tokio::sync::Mutex::new(pending.into_iter()));
    let mut workers = Vec::new();
    for w in 0..options.silver_concurrency.max(1) {
        let (host, lake, queue, now) = (Arc::clone(host), lake.clone(), Arc::clone(&queue), options.now);
        workers.push(tokio::spawn(async move {
            let mut metrics = Vec::new();
            loop {
                let next = queue.lock().await.next();
                let Some(stem) = next else { break };
                let key = stem.key();
                // The host reads the blob and sends it base64-encoded (dataType: binary).
                let bytes = lake.get(Container::Bronze, &key).await?;
                let uri = lake.uri(Container::Bronze, &key);
                let envelope = envelopes::blob_trigger(&uri, &stem.name(), Some(&bytes), &now, &format!("silver-{w}"));
                drop(bytes);
                let response = host.invoke(refine_silver::NAME, &envelope, &format!("silver-{stem}")).await?;
                let m: SilverMetrics =
                    serde_json::from_value(response.return_value).context("refine_silver returned no metrics")?;
                metrics.push(m);
            }
            anyhow::Ok(metrics)
        }));
    }
    let mut rows_in = 0;
    for w in workers {
        for m in w.await?? {
            if !m.balances() {
                bail!("silver accounting does not balance for {}", m.bronze_file);
            }
            rows_in += m.rows_in;
            report.add_silver(&m);
        }
    }
    report.stages.push(StageReport::new("silver", started.elapsed(), rows_in));
    Ok(())
}

/// Runs the gold stage: one timer invocation of `build_gold`, which builds gold and loads the
/// warehouse. `run` gives its handler a threshold of 0, so everything new is folded in.
pub async fn gold_stage(host: &Arc<LocalHost>, options: &RunOptions, report: &mut RunReport) -> anyhow::Result<()> {
    let envelope = envelopes::timer(build_gold::NAME, &options.now, false, "gold");
    let response = host.invoke(build_gold::NAME, &envelope, "gold-timer").await?;
    let job = response.return_value;
    let build = &job["build"];
    let rows_in = build["rows_in"].as_u64().unwrap_or(0);
    let seconds = |k: &str| Duration::from_secs_f64(job[k].as_f64().unwrap_or(0.0));
    report.stages.push(StageReport::new("gold", seconds("build_seconds"), rows_in));
    let loaded = job["load"]["fact_rows_written"].as_u64().unwrap_or(0);
    report.stages.push(StageReport::new("load", seconds("load_seconds"), loaded));
    report.gold = Some(job);
    Ok(())
}

/// Runs every stage against `lake`, with the handler in-process on a loopback port, and reads the
/// KPI report from the warehouse (if one is configured).
pub async fn run(
    lake: Lake,
    settings: crate::app::HandlerSettings,
    warehouse: WarehouseConfig,
    gold: GoldSettings,
    options: RunOptions,
) -> anyhow::Result<RunReport> {
    if options.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    let state = AppState::build(StorageConfig::memory(), Some(lake.clone()), settings, warehouse, gold);
    let host = Arc::new(LocalHost::start(state.clone()).await.context("cannot start the handler on a loopback port")?);
    let mut report = RunReport::default();
    let result = async {
        bronze_stage(&host, &lake, &options, &mut report).await?;
        silver_stage(&host, &lake, &options, &mut report).await?;
        gold_stage(&host, &options, &mut report).await?;
        let started = Instant::now();
        if let Some(w) = state.warehouse().await.map_err(|e| anyhow::anyhow!(e.to_string()))? {
            let mut kpis = w.report().await?;
            kpis.quarantine_by_reason = crate::pipeline::quarantine::list(&lake, None, 0).await?.by_reason;
            report.report = Some(kpis);
        }
        report.stages.push(StageReport::new("report", started.elapsed(), 0));
        anyhow::Ok(())
    }
    .await;
    if let Ok(host) = Arc::try_unwrap(host) {
        host.stop().await;
    }
    result.map(|()| report)
}
