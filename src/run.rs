//! `patientflow run`: the whole pipeline on this machine. Simulates a hospital network (or reads an
//! NDJSON file), then delivers what the Functions host would: Event Hubs batches per partition to
//! `ingest_bronze`, one blob trigger per new bronze file to `refine_silver`, one timer call to
//! `build_gold` (gold and the warehouse load), then reads the KPI report.
//!
//! The handler is reached one of two ways ([`Via`]): in this process, where each stage calls the
//! function's own pipeline step with what the host would deliver (the default: no envelope to build,
//! encode, send and decode), or over HTTP on a loopback port with the host's exact envelopes
//! (`--via-host`, and `patientflow bench`, which measures the handler as Azure runs it). Both write
//! the same lake, byte for byte (tested).
//!
//! Stages overlap as under the host: the blob trigger fires for a bronze file as soon as it lands, so
//! silver refines run while bronze ingest goes on (`silver_concurrency` at a time), and the gold timer
//! fires once both are done. In this process, gold also begins early: once ingest is done, each Event
//! Hubs partition is folded as soon as its silver is complete, while the others are refined, and the
//! timer folds what is left and loads. Each stage reports its wall time and when it started, and
//! splits its invocations' time into the handler's own (what Azure bills) and the local host's share (reading
//! the input, building envelopes, HTTP on loopback): see [`StageReport`].

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use chrono::NaiveDateTime;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::mpsc;

use crate::app::{AppState, GoldSettings, WarehouseConfig};
use crate::functions::{build_gold, ingest_bronze, refine_silver};
use crate::local_host::envelopes::{self, HubEvent, HubPartition};
use crate::local_host::{Invocation, LocalHost};
use crate::pipeline::bronze::{self, EventBatch};
use crate::pipeline::gold::{self, GoldMetrics};
use crate::pipeline::silver::{self, SilverMetrics};
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
    /// How the stages reach the handler.
    pub via: Via,
}

/// How `run` reaches the handler.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Via {
    /// In this process: each stage calls the function's own pipeline step (bronze ingest, silver
    /// refine, the gold job) with what the host would deliver — a batch's events, a bronze file,
    /// the timer's time — and no envelope or HTTP in between.
    #[default]
    InProcess,
    /// As the Functions host: every invocation is the host's HTTP envelope, posted to the handler
    /// on a loopback port.
    Host,
}

/// The handler, as the stages reach it.
#[derive(Clone)]
pub enum Handler {
    /// Over HTTP on a loopback port, with the host's envelopes.
    Host(Arc<LocalHost>),
    /// In this process.
    InProcess(AppState),
}

impl Handler {
    fn via(&self) -> Via {
        match self {
            Handler::Host(_) => Via::Host,
            Handler::InProcess(_) => Via::InProcess,
        }
    }

    /// Lands one batch in bronze: whether it created a file, and the file's key.
    async fn ingest(&self, delivery: Delivery, split: &mut Split) -> anyhow::Result<(bool, Option<String>)> {
        match (self, delivery.load) {
            (Handler::Host(host), Load::Envelope(body)) => {
                let invocation = host.invoke_timed(ingest_bronze::NAME, body, &delivery.id).await?;
                split.invocation(&invocation);
                let answer = &invocation.response.return_value;
                let created = answer.get("created").and_then(Value::as_bool) == Some(true);
                Ok((created, answer.get("key").and_then(Value::as_str).map(str::to_string)))
            }
            (Handler::InProcess(state), Load::Batch(batch)) => {
                let started = Instant::now();
                let m = bronze::ingest(state.lake().await?, &batch).await?;
                split.handler += started.elapsed();
                Ok((m.created, Some(m.key)))
            }
            _ => bail!("a batch was built for the other way of reaching the handler (a bug in `run`)"),
        }
    }

    /// Refines one bronze file, as its blob trigger would; `w` names the worker.
    async fn refine(&self, lake: &Lake, stem: &BatchStem, now: &NaiveDateTime, w: usize) -> anyhow::Result<Refined> {
        let started = Instant::now();
        match self {
            Handler::Host(host) => {
                // The host reads the blob and sends it base64-encoded (`dataType: binary`).
                let key = stem.key();
                let bytes = lake.get(Container::Bronze, &key).await?;
                let uri = lake.uri(Container::Bronze, &key);
                let body = envelopes::blob_trigger_bytes(&uri, &stem.name(), Some(&bytes), now, &format!("silver-{w}"));
                drop(bytes);
                let built = started.elapsed();
                let invocation = host.invoke_timed(refine_silver::NAME, body, &format!("silver-{stem}")).await?;
                let mut split = Split { host: built, ..Split::default() };
                split.invocation(&invocation);
                let metrics = serde_json::from_value(invocation.response.return_value)
                    .context("refine_silver returned no metrics")?;
                Ok(Refined { metrics, split })
            }
            Handler::InProcess(state) => {
                let metrics = silver::process_from_lake(state.lake().await?, stem).await?;
                Ok(Refined { metrics, split: Split { handler: started.elapsed(), ..Split::default() } })
            }
        }
    }

    /// Starts folding each partition as soon as its silver is complete (in this process only: the
    /// host's timer folds every partition at once), fed through the [`Folding`] it returns.
    fn fold_partitions(
        &self,
        now: NaiveDateTime,
    ) -> Option<(Folding, tokio::task::JoinHandle<anyhow::Result<EarlyBuilds>>)> {
        match self {
            Handler::Host(_) => None,
            Handler::InProcess(state) => {
                let (complete, partitions) = mpsc::unbounded_channel();
                let min_rows = (state.gold().max_rows_per_build / 2) as u64;
                let failed = Arc::default();
                let folding = fold_partitions(state.clone(), now, partitions, Arc::clone(&failed));
                Some((Folding { complete, min_rows, failed }, tokio::spawn(folding)))
            }
        }
    }

    /// Fires the gold timer at `now`, after the builds `early` committed.
    async fn gold_timer(&self, now: &NaiveDateTime, early: Option<GoldMetrics>) -> anyhow::Result<GoldTimer> {
        let started = Instant::now();
        match self {
            Handler::Host(host) => {
                if early.is_some() {
                    bail!("builds before the timer are made in this process only (a bug in `run`)");
                }
                let body = serde_json::to_vec(&envelopes::timer(build_gold::NAME, now, false, "gold"))?;
                let built = started.elapsed();
                let invocation = host.invoke_timed(build_gold::NAME, body, "gold-timer").await?;
                let (handler, transport) = (invocation.handler, invocation.transport());
                Ok(GoldTimer { job: invocation.response.return_value, handler, built, transport })
            }
            Handler::InProcess(state) => {
                let job = serde_json::to_value(build_gold::on_timer_after(state, *now, false, early).await?)?;
                Ok(GoldTimer { job, handler: started.elapsed(), built: Duration::ZERO, transport: Duration::ZERO })
            }
        }
    }
}

/// One gold timer call: the gold job's report, and where its time went.
struct GoldTimer {
    job: Value,
    /// The handler's own time.
    handler: Duration,
    /// The host's time building the envelope.
    built: Duration,
    /// The round trip beyond the handler's time.
    transport: Duration,
}

/// One refine: its metrics and where its time went.
struct Refined {
    metrics: SilverMetrics,
    split: Split,
}

/// Wall time, rows and the handler/host split of one stage.
///
/// `handler_seconds` and `host_seconds` are sums over the stage's invocations (several run at once),
/// so either can exceed the wall `seconds`; on a machine with fewer cores than invocations in flight
/// both include waiting for a core.
#[derive(Debug, Clone, Serialize)]
pub struct StageReport {
    /// Stage name.
    pub stage: &'static str,
    /// Wall seconds, from the stage's first invocation to its last answer. Bronze and silver overlap
    /// (see `start_seconds`): their walls do not add up to the run's.
    pub seconds: f64,
    /// When the stage started, in seconds after the run started.
    pub start_seconds: f64,
    /// The handler's own time in this stage's invocations, summed: from a request's body having
    /// arrived to its response being ready. What Azure bills.
    pub handler_seconds: f64,
    /// The local host's share, summed: reading or simulating the events and building envelopes
    /// (bronze), reading each bronze blob and building its envelope (silver), and every
    /// invocation's round trip beyond the handler's time (`loopback_seconds`).
    pub host_seconds: f64,
    /// The part of `host_seconds` that is round trips beyond the handler's time: HTTP on loopback
    /// both ways and, when more invocations are in flight than there are cores, waiting for one.
    pub loopback_seconds: f64,
    /// Rows the stage consumed.
    pub rows: u64,
    /// Rows per second.
    pub rows_per_second: f64,
    /// The process's peak resident memory (Linux `VmHWM`) when the stage ended, in bytes.
    pub peak_memory_bytes: Option<u64>,
}

impl StageReport {
    fn new(stage: &'static str, start: Duration, elapsed: Duration, rows: u64, split: Split) -> Self {
        let seconds = elapsed.as_secs_f64();
        Self {
            stage,
            seconds,
            start_seconds: start.as_secs_f64(),
            handler_seconds: split.handler.as_secs_f64(),
            host_seconds: split.host.as_secs_f64(),
            loopback_seconds: split.loopback.as_secs_f64(),
            rows,
            rows_per_second: if seconds > 0.0 { rows as f64 / seconds } else { 0.0 },
            peak_memory_bytes: crate::telemetry::peak_memory_bytes(),
        }
    }
}

/// Where a stage's time went: the handler's own, and the local host's (of which `loopback` in
/// round trips beyond the handler).
#[derive(Debug, Clone, Copy, Default)]
struct Split {
    handler: Duration,
    host: Duration,
    loopback: Duration,
}

impl Split {
    /// Adds one invocation: its handler time, and the rest of its round trip to the host's share.
    fn invocation(&mut self, i: &Invocation) {
        self.handler += i.handler;
        self.host += i.transport();
        self.loopback += i.transport();
    }

    fn add(&mut self, other: Split) {
        self.handler += other.handler;
        self.host += other.host;
        self.loopback += other.loopback;
    }
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
    /// CPU seconds this process used from the first stage's start to the report's end (all
    /// threads: the handler's, and the local host's when it runs in this process). Stages overlap,
    /// so this is the run's, not a sum of the stages'.
    pub cpu_seconds: f64,
    /// What the simulator injected (when simulating).
    pub injected: Option<Tally>,
    /// The Event Hubs partitions gold folded before the timer, each as soon as its silver was
    /// complete (the last one usually after silver has ended), in order (see [`Folding`]); the
    /// timer folded the rest.
    pub gold_early_partitions: Vec<String>,
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
                "{:<8} {:>8.3} s  {:>10} rows  {:>12.0} rows/s  (from {:.3} s; handler {:.3} s, local host {:.3} s)\n",
                s.stage, s.seconds, s.rows, s.rows_per_second, s.start_seconds, s.handler_seconds, s.host_seconds
            ));
        }
        out
    }
}

/// One batch for a partition's worker, in the form its handler takes.
struct Delivery {
    /// Names the invocation.
    id: String,
    load: Load,
}

enum Load {
    /// The host's Event Hubs envelope.
    Envelope(Vec<u8>),
    /// The batch the handler would decode from it.
    Batch(Box<EventBatch>),
}

/// What the producer did: events sent, what the simulator injected, and its busy time (all of its
/// time but the waits for a partition's worker to take a batch).
struct Produced {
    events: u64,
    tally: Option<Tally>,
    busy: Duration,
}

/// Produces batch envelopes on a blocking thread: simulate or read, partition by key, number, batch.
fn produce(
    start: Vec<(i64, i64)>,
    options: RunOptions,
    senders: Vec<mpsc::Sender<Delivery>>,
    progress: indicatif::ProgressBar,
) -> anyhow::Result<Produced> {
    let started = Instant::now();
    let blocked = std::cell::Cell::new(Duration::ZERO);
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
        let id = format!("{p}-{}", buffer[0].sequence_number);
        progress.inc(buffer.len() as u64);
        let load = match options.via {
            Via::Host => Load::Envelope(envelopes::event_hub_batch_bytes(&hub, buffer, &last, &id)),
            Via::InProcess => Load::Batch(Box::new(envelopes::event_batch(&hub, buffer, &last))),
        };
        buffer.clear();
        let waiting = Instant::now();
        let sent = senders[p].blocking_send(Delivery { id: format!("bronze-{id}"), load });
        blocked.set(blocked.get() + waiting.elapsed());
        sent.context("the handler stopped accepting batches")
    };
    let mut push = |body: Bytes, key: Option<String>, buffers: &mut Vec<Vec<HubEvent>>| -> anyhow::Result<()> {
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
                push(e.body.into(), Some(e.partition_key), &mut buffers)?;
            }
            Some(sim.tally().clone())
        }
        Source::File(path) => {
            // Per partition: events numbered below `marks` came from an earlier chunk than the one
            // read now; those below `owned` own their bodies already.
            let (mut marks, mut owned) = (vec![i64::MIN; partitions], vec![i64::MIN; partitions]);
            for chunk in LineChunks::open(path)? {
                let chunk = chunk?;
                for line in event_lines(&chunk) {
                    push(chunk.slice_ref(line), partition_key(line), &mut buffers)?;
                }
                for (p, buffer) in buffers.iter_mut().enumerate() {
                    owned[p] = detach_waiting(buffer, owned[p], marks[p]);
                    marks[p] = buffer.last().map_or(i64::MIN, |e| e.sequence_number + 1);
                }
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
    Ok(Produced { events: count, tally, busy: started.elapsed().saturating_sub(blocked.get()) })
}

/// Copies the bodies of a partition's waiting events numbered from `owned` to below `mark` (those
/// that have waited through a whole chunk) out of the chunk they were read from, and returns the
/// number below which every waiting body is its own. A body shares its chunk's buffer; an event
/// waits until its partition's batch is full, so a partition that gets few events would otherwise
/// hold a chunk for each one — with this, at most the chunk read now and the one before are held,
/// however unevenly the keys spread.
fn detach_waiting(buffer: &mut [HubEvent], owned: i64, mark: i64) -> i64 {
    let from = buffer.partition_point(|e| e.sequence_number < owned);
    let to = buffer.partition_point(|e| e.sequence_number < mark);
    for e in buffer.iter_mut().take(to).skip(from) {
        e.body = Bytes::copy_from_slice(&e.body);
    }
    owned.max(mark)
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
    let mut n = 0;
    for chunk in LineChunks::open(path)? {
        n += event_lines(&chunk?).count() as u64;
    }
    Ok(n)
}

/// The events of a chunk of NDJSON lines: each line without its trailing carriage return; blank
/// lines send nothing.
fn event_lines(chunk: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut start = 0;
    memchr::memchr_iter(b'\n', chunk).chain(std::iter::once(chunk.len())).filter_map(move |end| {
        let line = &chunk[start.min(end)..end];
        start = end + 1;
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        (!line.iter().all(u8::is_ascii_whitespace)).then_some(line)
    })
}

/// An NDJSON file read as chunks of whole lines (the last chunk may end without a line break).
/// Each event's body is then a shared slice of its chunk: no allocation and no copy per line, where
/// a line read on its own is both (a sixth of the producer's time on 1M events).
struct LineChunks {
    file: std::fs::File,
    path: std::path::PathBuf,
    /// Bytes read at a time (a chunk also holds the line the one before cut).
    size: usize,
    /// The start of a line the last chunk cut, carried into the next.
    carry: Vec<u8>,
    done: bool,
}

impl LineChunks {
    fn open(path: &std::path::Path) -> anyhow::Result<Self> {
        Self::with_size(path, 1 << 20)
    }

    fn with_size(path: &std::path::Path, size: usize) -> anyhow::Result<Self> {
        let file = std::fs::File::open(path).with_context(|| format!("cannot open --input {}", path.display()))?;
        Ok(Self { file, path: path.to_path_buf(), size: size.max(1), carry: Vec::new(), done: false })
    }

    fn read_chunk(&mut self) -> std::io::Result<Option<Bytes>> {
        use std::io::Read as _;
        let mut chunk = Vec::with_capacity(self.carry.len() + self.size);
        chunk.append(&mut self.carry);
        loop {
            let read = (&mut self.file).take(self.size as u64).read_to_end(&mut chunk)?;
            if read == 0 {
                self.done = true;
                return Ok((!chunk.is_empty()).then(|| chunk.into()));
            }
            // Whole lines go out; the cut line waits for the rest. A line longer than a chunk
            // makes the chunk grow until its end is read.
            if let Some(last) = memchr::memrchr(b'\n', &chunk) {
                self.carry = chunk.split_off(last + 1);
                return Ok(Some(chunk.into()));
            }
        }
    }
}

impl Iterator for LineChunks {
    type Item = anyhow::Result<Bytes>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let read = self.read_chunk();
        read.with_context(|| format!("cannot read {}", self.path.display())).transpose()
    }
}

/// The producer's partition key for a raw line: its `patient_id`, when it is a string.
///
/// Lines that open with `{"patient_id":"…"` (the simulator's, and the seed producer's, which
/// write it first) have the key read from there, the rest of the line unread: parsing a whole
/// line took a quarter of the producer's time. A key with an escape or a control character, or a
/// line in any other shape, is parsed as JSON. Which partition a line goes to only spreads the
/// work (silver judges the line itself), so a malformed line that opens like a good one may go to
/// its patient's partition instead of the next one in turn.
fn partition_key(line: &[u8]) -> Option<String> {
    const OPENING: &[u8] = br#"{"patient_id":""#;
    if let Some(rest) = line.strip_prefix(OPENING)
        && let Some(end) = rest.iter().position(|&b| b == b'"' || b == b'\\' || b < 0x20)
        && rest[end] == b'"'
        && let Ok(id) = std::str::from_utf8(&rest[..end])
    {
        return Some(id.to_string());
    }
    #[derive(serde::Deserialize)]
    struct Key<'a> {
        #[serde(borrow)]
        patient_id: Option<std::borrow::Cow<'a, str>>,
    }
    serde_json::from_slice::<Key<'_>>(line).ok()?.patient_id.map(std::borrow::Cow::into_owned)
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

/// Runs the bronze stage: every event through `ingest_bronze`. Each bronze file a batch creates is
/// announced on `landed` (the host's blob trigger fires as soon as a blob lands). `clock` is the
/// run's start.
pub async fn bronze_stage(
    handler: &Handler,
    lake: &Lake,
    options: &RunOptions,
    report: &mut RunReport,
    landed: Option<mpsc::UnboundedSender<BatchStem>>,
    clock: Instant,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let partitions = options.partitions.max(1) as usize;
    let mut senders = Vec::with_capacity(partitions);
    let mut workers = Vec::with_capacity(partitions);
    for _ in 0..partitions {
        // Two batches in flight per partition at most: memory is bounded by batch size, not history.
        let (tx, mut rx) = mpsc::channel::<Delivery>(2);
        senders.push(tx);
        let handler = handler.clone();
        let landed = landed.clone();
        // Like the host: one partition's batches are delivered one after another.
        workers.push(tokio::spawn(async move {
            let (mut batches, mut created, mut replays, mut split) = (0u64, 0u64, 0u64, Split::default());
            while let Some(delivery) = rx.recv().await {
                let (new, key) = handler.ingest(delivery, &mut split).await?;
                batches += 1;
                if new {
                    created += 1;
                    // A file not announced here (no key in the answer) is found by the sweep.
                    if let (Some(stem), Some(landed)) = (key.as_deref().and_then(BatchStem::parse_key), &landed) {
                        let _ = landed.send(stem);
                    }
                } else {
                    replays += 1;
                }
            }
            anyhow::Ok((batches, created, replays, split))
        }));
    }
    drop(landed);
    let producer_options = RunOptions { via: handler.via(), ..options.clone() };
    let bar = progress_bar(options);
    let start = hub_positions(lake, partitions).await?;
    let producer = tokio::task::spawn_blocking(move || produce(start, producer_options, senders, bar));
    let mut failure = None;
    let mut split = Split::default();
    for w in workers {
        match w.await? {
            Ok((b, c, r, s)) => {
                report.batches += b;
                report.bronze_files_created += c;
                report.bronze_replays += r;
                split.add(s);
            }
            Err(e) => failure = failure.or(Some(e)),
        }
    }
    let produced = producer.await?;
    if let Some(e) = failure {
        return Err(e.context("bronze ingest failed"));
    }
    let produced = produced?;
    split.host += produced.busy;
    report.events = produced.events;
    report.injected = produced.tally;
    report.stages.push(StageReport::new(
        "bronze",
        started.duration_since(clock),
        started.elapsed(),
        produced.events,
        split,
    ));
    Ok(())
}

/// The refines of one silver stage: metrics per bronze file, the time split, and when the first
/// refine started and the last one ended.
#[derive(Default)]
struct Refines {
    metrics: Vec<SilverMetrics>,
    split: Split,
    first: Option<Instant>,
    last: Option<Instant>,
}

impl Refines {
    fn merge(&mut self, other: Refines) {
        self.metrics.extend(other.metrics);
        self.split.add(other.split);
        self.first = match (self.first, other.first) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.last = self.last.max(other.last);
    }
}

/// The bronze files waiting for their blob trigger, served in order of Event Hubs partition (by
/// name, as announced partitions are: see [`Completion`]), then sequence number — `BatchStem`'s own
/// order — rather than as they landed: once ingest is done, one partition's silver is complete
/// after another, so gold can fold the first while the rest are refined.
#[derive(Default)]
struct RefineQueue {
    state: std::sync::Mutex<Waiting>,
    ready: tokio::sync::Notify,
}

/// What a [`RefineQueue`] holds.
#[derive(Default)]
struct Waiting {
    files: std::collections::BTreeSet<BatchStem>,
    /// No more files come.
    closed: bool,
}

impl RefineQueue {
    fn lock(&self) -> std::sync::MutexGuard<'_, Waiting> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn push(&self, stem: BatchStem) {
        self.lock().files.insert(stem);
        self.ready.notify_one();
    }

    /// No more files come: workers finish what is queued and stop.
    fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_waiters();
    }

    /// The next file in order, waiting for one; `None` once closed and drained.
    async fn next(&self) -> Option<BatchStem> {
        loop {
            // Registered before the queue is looked at, so a push or close in between is not missed.
            let ready = self.ready.notified();
            {
                let mut waiting = self.lock();
                if let Some(stem) = waiting.files.pop_first() {
                    return Some(stem);
                }
                if waiting.closed {
                    return None;
                }
            }
            ready.await;
        }
    }
}

/// Where `run` sends the Event Hubs partitions that gold may fold while silver goes on.
pub struct Folding {
    /// Receives each partition's name.
    pub complete: mpsc::UnboundedSender<String>,
    /// A partition is sent only when this run refined at least this many silver rows of it: half a
    /// build, where a build of every partition's silver (the timer's) ends at a partition's end as
    /// well (see `gold::read_silver`; it may begin with earlier partitions' files). A smaller
    /// partition is left to the timer, which folds it with its neighbours into one build, rather
    /// than into a build of its own with small files.
    pub min_rows: u64,
    /// Set when ingest or silver failed: the build under way is finished, no other is begun.
    pub failed: Arc<std::sync::atomic::AtomicBool>,
}

/// Which Event Hubs partitions have all their bronze files of this run refined, announced on
/// `folding` one after another by name (Event Hubs partition ids are numbers: 0, 1, 10, …, 2, as
/// silver's keys sort), each once: a partition's silver is complete once ingest is done (its files
/// are known) and each of them has been refined. Partitions of too few rows are passed over.
#[derive(Default)]
struct Completion {
    /// Files to refine per partition; known once ingest is done.
    expected: Option<BTreeMap<String, usize>>,
    /// Files refined and their silver rows, per partition.
    refined: BTreeMap<String, (usize, u64)>,
    /// Partitions decided so far (a prefix of `expected`'s keys): announced, or too small.
    decided: usize,
    folding: Option<Folding>,
}

impl Completion {
    fn refined(&mut self, partition: &str, rows: u64) {
        let refined = self.refined.entry(partition.to_string()).or_default();
        *refined = (refined.0 + 1, refined.1 + rows);
        self.announce();
    }

    /// A refine or ingest failed: the builds begin no other (see [`Folding::failed`]).
    fn fail(&self) {
        if let Some(folding) = &self.folding {
            folding.failed.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }

    fn expect(&mut self, expected: BTreeMap<String, usize>) {
        self.expected = Some(expected);
        self.announce();
    }

    fn announce(&mut self) {
        let (Some(expected), Some(folding)) = (&self.expected, &self.folding) else { return };
        for (partition, &files) in expected.iter().skip(self.decided) {
            let (refined, rows) = self.refined.get(partition).copied().unwrap_or_default();
            if refined < files {
                break;
            }
            if rows >= folding.min_rows {
                let _ = folding.complete.send(partition.clone());
            }
            self.decided += 1;
        }
    }
}

type SharedCompletion = Arc<std::sync::Mutex<Completion>>;

fn lock(completion: &SharedCompletion) -> std::sync::MutexGuard<'_, Completion> {
    completion.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Refines every bronze file `files` serves, `silver_concurrency` at a time, each as its blob
/// trigger would, counting each refined file in `completion`. Ends when `files` is closed and
/// drained.
async fn refine_all(
    handler: &Handler,
    lake: &Lake,
    options: &RunOptions,
    files: Arc<RefineQueue>,
    completion: SharedCompletion,
) -> anyhow::Result<Refines> {
    let mut workers = Vec::new();
    for w in 0..options.silver_concurrency.max(1) {
        let (handler, lake, files, now) = (handler.clone(), lake.clone(), Arc::clone(&files), options.now);
        let completion = Arc::clone(&completion);
        workers.push(tokio::spawn(async move {
            let mut done = Refines::default();
            while let Some(stem) = files.next().await {
                done.first.get_or_insert(Instant::now());
                let refined = match handler.refine(&lake, &stem, &now, w).await {
                    Ok(refined) => refined,
                    Err(e) => {
                        lock(&completion).fail();
                        return Err(e);
                    }
                };
                lock(&completion).refined(&stem.partition, refined.metrics.rows_out);
                done.split.add(refined.split);
                done.last = Some(Instant::now());
                done.metrics.push(refined.metrics);
            }
            anyhow::Ok(done)
        }));
    }
    let mut all = Refines::default();
    let mut failure = None;
    for w in workers {
        match w.await? {
            Ok(done) => all.merge(done),
            Err(e) => failure = failure.or(Some(e)),
        }
    }
    match failure {
        Some(e) => Err(e),
        None => Ok(all),
    }
}

/// Bronze files that have no silver file yet, minus `skip` (the host's blob receipts, played
/// locally: a file with a silver file was refined already).
async fn unrefined(lake: &Lake, skip: &HashSet<String>) -> anyhow::Result<Vec<BatchStem>> {
    let done: HashSet<String> = lake
        .list(Container::Silver, &patient_flow_prefix())
        .await?
        .into_iter()
        .map(|m| m.location.to_string())
        .collect();
    Ok(lake
        .list(Container::Bronze, &patient_flow_prefix())
        .await?
        .into_iter()
        .filter(|m| !done.contains(m.location.as_ref()) && !skip.contains(m.location.as_ref()))
        .filter_map(|m| BatchStem::parse_key(m.location.as_ref()))
        .collect())
}

/// Folds the refines into the report and adds the silver stage's row.
fn silver_report(report: &mut RunReport, refines: Refines, clock: Instant) -> anyhow::Result<()> {
    let mut rows_in = 0;
    for m in &refines.metrics {
        if !m.balances() {
            bail!("silver accounting does not balance for {}", m.bronze_file);
        }
        rows_in += m.rows_in;
        report.add_silver(m);
    }
    let now = Instant::now();
    let first = refines.first.unwrap_or(now);
    let wall = refines.last.unwrap_or(first).saturating_duration_since(first);
    report.stages.push(StageReport::new(
        "silver",
        first.saturating_duration_since(clock),
        wall,
        rows_in,
        refines.split,
    ));
    Ok(())
}

/// Runs the silver stage alone: one `refine_silver` per bronze file that has no silver file yet,
/// `silver_concurrency` at a time.
pub async fn silver_stage(
    handler: &Handler,
    lake: &Lake,
    options: &RunOptions,
    report: &mut RunReport,
) -> anyhow::Result<()> {
    let clock = Instant::now();
    let files = Arc::new(RefineQueue::default());
    for stem in unrefined(lake, &HashSet::new()).await? {
        files.push(stem);
    }
    files.close();
    let refines = refine_all(handler, lake, options, files, SharedCompletion::default()).await?;
    silver_report(report, refines, clock)
}

/// Runs bronze and silver overlapped, as the host does: each bronze file is refined as soon as its
/// batch lands, while ingest goes on. When ingest is done, the bronze files still without silver
/// that it did not announce (replayed batches, files an earlier run left unrefined) are queued
/// too, so the files refined are exactly those [`silver_stage`] after [`bronze_stage`] would
/// refine. From then on, each Event Hubs partition whose files are all refined (and that holds
/// enough rows) is sent to `folding` (see [`Folding`]), one after another; the channel closes when
/// the stage ends, however it ends, and a failure is flagged to the builds first.
pub async fn bronze_and_silver_stages(
    handler: &Handler,
    lake: &Lake,
    options: &RunOptions,
    report: &mut RunReport,
    clock: Instant,
    folding: Option<Folding>,
) -> anyhow::Result<()> {
    let files = Arc::new(RefineQueue::default());
    let completion = SharedCompletion::new(std::sync::Mutex::new(Completion { folding, ..Completion::default() }));
    // Each file bronze announces is queued for its refine, and remembered.
    let (landed, mut arrivals) = mpsc::unbounded_channel::<BatchStem>();
    let forward = {
        let files = Arc::clone(&files);
        tokio::spawn(async move {
            let mut announced = Vec::new();
            while let Some(stem) = arrivals.recv().await {
                announced.push(stem.clone());
                files.push(stem);
            }
            announced
        })
    };
    let refiner = {
        let (handler, lake, options, files) = (handler.clone(), lake.clone(), options.clone(), Arc::clone(&files));
        let completion = Arc::clone(&completion);
        tokio::spawn(async move { refine_all(&handler, &lake, &options, files, completion).await })
    };
    // The bronze stage's senders close `landed` when it ends, failed or not; the refiner then
    // finishes the files already announced.
    let bronze = bronze_stage(handler, lake, options, report, Some(landed), clock).await;
    let announced = forward.await.context("the queue of landed bronze files stopped");
    // Ingest is done: the files it did not announce are queued too, and each partition's are known.
    let swept = match (&bronze, &announced) {
        (Ok(()), Ok(announced)) => unrefined(lake, &announced.iter().map(|s| s.key().to_string()).collect()).await,
        _ => Ok(Vec::new()),
    };
    if let (Ok(()), Ok(announced), Ok(swept)) = (&bronze, &announced, &swept) {
        let mut expected: BTreeMap<String, usize> = BTreeMap::new();
        for stem in announced.iter().chain(swept) {
            *expected.entry(stem.partition.clone()).or_default() += 1;
        }
        lock(&completion).expect(expected);
        for stem in swept {
            files.push(stem.clone());
        }
    }
    files.close();
    let refined = match refiner.await {
        Ok(refined) => refined,
        Err(e) => Err(anyhow::Error::new(e).context("the silver refines stopped")),
    };
    let outcome = bronze.and(announced).and(swept).and(refined);
    // However the stage ended, no partition is announced after this: the channel closes.
    {
        let mut completion = lock(&completion);
        if outcome.is_err() {
            completion.fail();
        }
        completion.folding = None;
    }
    let refined = outcome?;
    silver_report(report, refined, clock)
}

/// The builds `patientflow run` commits before the timer: each Event Hubs partition's, as soon as
/// its silver is complete, while the next partitions are refined.
#[derive(Debug, Default)]
pub struct EarlyBuilds {
    /// The builds, reported together.
    metrics: Option<GoldMetrics>,
    /// When the first began.
    first: Option<Instant>,
    /// Their time, summed.
    busy: Duration,
    /// The partitions folded, in order.
    partitions: Vec<String>,
}

/// Folds each partition `complete` names as soon as it arrives, one after another (one build per
/// partition, or more when it holds more rows than a build takes), until the channel closes.
async fn fold_partitions(
    state: AppState,
    now: NaiveDateTime,
    mut complete: mpsc::UnboundedReceiver<String>,
    failed: Arc<std::sync::atomic::AtomicBool>,
) -> anyhow::Result<EarlyBuilds> {
    let lake = state.lake().await?;
    let options = state.job_options(now, crate::pipeline::job::Trigger::Request).gold_options();
    let mut early = EarlyBuilds::default();
    let mut waiting = Instant::now();
    while let Some(partition) = complete.recv().await {
        if failed.load(std::sync::atomic::Ordering::SeqCst) {
            break;
        }
        let started = Instant::now();
        early.first.get_or_insert(started);
        let options = gold::GoldOptions { partition: Some(partition.clone()), ..options.clone() };
        let (outcome, _) = gold::build_all(lake, &options).await?;
        early.busy += started.elapsed();
        tracing::debug!(
            partition,
            waited_ms = (started - waiting).as_secs_f64() * 1e3,
            built_ms = started.elapsed().as_secs_f64() * 1e3,
            "Partition folded into gold while silver goes on."
        );
        waiting = Instant::now();
        early.partitions.push(partition);
        if let gold::BuildOutcome::Built(m) = outcome {
            match &mut early.metrics {
                Some(all) => all.absorb(m),
                None => early.metrics = Some(m),
            }
        }
    }
    Ok(early)
}

/// Runs the gold stage: one timer invocation of `build_gold`, which builds gold and loads the
/// warehouse. `run` gives its handler a threshold of 0, so everything new is folded in. The job
/// reports its build and load times; the rest of the handler's time (finding what is new, opening
/// the warehouse) counts to gold. When partitions were folded while silver was refined (`early`),
/// the stage began with the first of those builds, and the timer's report includes them.
pub async fn gold_stage(
    handler: &Handler,
    options: &RunOptions,
    report: &mut RunReport,
    clock: Instant,
    early: EarlyBuilds,
) -> anyhow::Result<()> {
    let started = Instant::now();
    report.gold_early_partitions = early.partitions;
    let GoldTimer { mut job, handler, built, transport } = handler.gold_timer(&options.now, early.metrics).await?;
    let ended = Instant::now();
    let rows_in = job["build"]["rows_in"].as_u64().unwrap_or(0);
    let seconds = |k: &str| Duration::try_from_secs_f64(job[k].as_f64().unwrap_or(0.0)).unwrap_or_default();
    let (build_time, load_time) = (seconds("build_seconds"), seconds("load_seconds"));
    let (start, build_wall) = match early.first {
        // From the first partition's build to the timer's load.
        Some(first) => {
            job["build_seconds"] = (early.busy + build_time).as_secs_f64().into();
            (first.duration_since(clock), ended.saturating_duration_since(first).saturating_sub(load_time))
        }
        None => (started.duration_since(clock), build_time),
    };
    let gold_split =
        Split { handler: handler.saturating_sub(load_time) + early.busy, host: built + transport, loopback: transport };
    let mut gold = StageReport::new("gold", start, build_wall, rows_in, gold_split);
    // The job loads right after it builds: gold's peak is the one taken when the build ended.
    if let Some(peak) = job["build_peak_memory_bytes"].as_u64() {
        gold.peak_memory_bytes = Some(peak);
    }
    report.stages.push(gold);
    let loaded = job["load"]["fact_rows_written"].as_u64().unwrap_or(0);
    let load_split = Split { handler: load_time, ..Split::default() };
    report.stages.push(StageReport::new("load", start + build_wall, load_time, loaded, load_split));
    report.gold = Some(job);
    Ok(())
}

/// Runs every stage against `lake`, reaching the handler as `options.via` says, and reads the KPI
/// report from the warehouse (if one is configured). The report is read in this process, as
/// `patientflow report` would: neither the handler's time nor the local host's.
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
    let handler = match options.via {
        Via::Host => Handler::Host(Arc::new(
            LocalHost::start(state.clone()).await.context("cannot start the handler on a loopback port")?,
        )),
        Via::InProcess => Handler::InProcess(state.clone()),
    };
    let mut report = RunReport::default();
    let clock = Instant::now();
    let cpu = crate::telemetry::process_cpu_time();
    let result = async {
        let (partitions, folding) = handler.fold_partitions(options.now).unzip();
        let stages = bronze_and_silver_stages(&handler, &lake, &options, &mut report, clock, partitions).await;
        // A build under way when a stage failed is finished, not cut off; no other is begun.
        let early = match folding {
            Some(folding) => folding.await?,
            None => Ok(EarlyBuilds::default()),
        };
        stages?;
        gold_stage(&handler, &options, &mut report, clock, early?).await?;
        let started = Instant::now();
        if let Some(w) = state.warehouse().await.map_err(|e| anyhow::anyhow!(e.to_string()))? {
            let loaded = report.gold.as_ref().and_then(|job| job["load"]["build"].as_u64());
            let mut kpis = w.report().await.with_context(|| match loaded {
                Some(build) => {
                    format!("every stage ran and the warehouse holds build {build}, but its KPI report failed")
                }
                None => "every stage ran, but the KPI report failed".to_string(),
            })?;
            kpis.quarantine_by_reason = crate::pipeline::quarantine::list(&lake, None, 0).await?.by_reason;
            report.report = Some(kpis);
        }
        let (start, wall) = (started.duration_since(clock), started.elapsed());
        report.stages.push(StageReport::new("report", start, wall, 0, Split::default()));
        report.cpu_seconds = crate::telemetry::process_cpu_time().saturating_sub(cpu).as_secs_f64();
        anyhow::Ok(())
    }
    .await;
    if let Handler::Host(host) = handler
        && let Ok(host) = Arc::try_unwrap(host)
    {
        host.stop().await;
    }
    result.map(|()| report)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::app::HandlerSettings;
    use crate::model::time::parse_utc;
    use crate::simulate::DirtRates;

    proptest! {
        /// The key read from a line's opening is the `patient_id` a JSON parser reads, for every
        /// id (escapes, quotes, control characters, any Unicode) and whatever follows it.
        #[test]
        fn a_lines_key_is_its_patient_id_as_json_reads_it(
            id in any::<String>(),
            age in any::<i64>(),
            rest in prop::collection::btree_map("[a-z_]{1,12}", any::<String>(), 0..4),
        ) {
            let mut others = serde_json::Map::new();
            others.insert("age".into(), serde_json::Value::from(age));
            for (k, v) in rest.into_iter().filter(|(k, _)| k != "patient_id") {
                others.insert(k, serde_json::Value::from(v));
            }
            // `patient_id` first, as producers write it; the other fields after it.
            let others = serde_json::to_string(&others).unwrap();
            let line = format!("{{\"patient_id\":{},{}", serde_json::to_string(&id).unwrap(), &others[1..]);
            let parsed: serde_json::Value = serde_json::from_str(&line).unwrap();
            prop_assert_eq!(parsed["patient_id"].as_str(), Some(id.as_str()));
            prop_assert_eq!(partition_key(line.as_bytes()), Some(id.clone()));
            // Spaced out, the same line takes the parser's path, with the same result.
            let spaced = serde_json::to_vec_pretty(&parsed).unwrap();
            prop_assert_eq!(partition_key(&spaced), Some(id));
        }

        /// An input file's events, read in chunks of whole lines of any size, are the lines
        /// std's line reader gives, without a trailing carriage return and blank lines skipped:
        /// lines cut by a chunk's end, longer than a chunk, or last without a line break.
        #[test]
        fn an_input_file_read_in_chunks_sends_the_lines_std_reads(
            pieces in prop::collection::vec(
                prop_oneof![Just("\n"), Just("\r\n"), Just("\r"), Just(" "), Just("\t"), Just("{\"a\":1}"), Just("é"), Just("x")],
                0..40,
            ),
            size in 1usize..12,
        ) {
            use std::io::BufRead as _;
            let text = pieces.concat();
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("events.ndjson");
            std::fs::write(&path, &text).unwrap();
            let mut expected = Vec::new();
            for line in std::io::BufReader::new(std::fs::File::open(&path).unwrap()).split(b'\n') {
                let mut line = line.unwrap();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                if !line.iter().all(u8::is_ascii_whitespace) {
                    expected.push(line);
                }
            }
            for size in [size, 1 << 20] {
                let mut read = Vec::new();
                for chunk in LineChunks::with_size(&path, size).unwrap() {
                    let chunk = chunk.unwrap();
                    read.extend(event_lines(&chunk).map(<[u8]>::to_vec));
                }
                prop_assert_eq!(&read, &expected, "chunks of {} bytes", size);
            }
            prop_assert_eq!(count_events(&path).unwrap(), expected.len() as u64);
        }
    }

    /// A partition's events that waited through a whole chunk own their bodies; the others still
    /// share their chunk, and the chunk is freed once no event shares it.
    #[test]
    fn events_that_wait_through_a_chunk_let_it_go() {
        let event = |chunk: &Bytes, range: std::ops::Range<usize>, seq: i64| HubEvent {
            body: chunk.slice(range),
            sequence_number: seq,
            offset: 0,
            enqueued_time: NaiveDateTime::default(),
            partition_key: None,
        };
        let (old, new) = (Bytes::from(b"ab\ncd\n".to_vec()), Bytes::from(b"ef\n".to_vec()));
        let mut buffer = vec![event(&old, 0..2, 7), event(&old, 3..5, 8), event(&new, 0..2, 9)];
        // Events 7 and 8 came from the chunk before the one read last (the mark is 9).
        assert_eq!(detach_waiting(&mut buffer, i64::MIN, 9), 9);
        let bodies: Vec<&[u8]> = buffer.iter().map(|e| &e.body[..]).collect();
        assert_eq!(bodies, [&b"ab"[..], b"cd", b"ef"], "the same bytes");
        assert!(old.is_unique(), "no waiting event holds the older chunk");
        assert!(!new.is_unique(), "event 9 still shares the chunk it was read from");
        // Owned bodies are not copied again; nothing below the mark is left to copy.
        let before = buffer[0].body.as_ptr();
        assert_eq!(detach_waiting(&mut buffer, 9, 9), 9);
        assert_eq!(buffer[0].body.as_ptr(), before);
        assert_eq!(detach_waiting(&mut buffer, 9, 10), 10);
        assert!(new.is_unique());
    }

    #[test]
    fn lines_without_a_plain_patient_id_have_no_key() {
        for line in [&br#"{"age":3}"#[..], br#"{"patient_id":7}"#, br#"{"patient_id":null}"#, b"not json", b""] {
            assert_eq!(partition_key(line), None, "{}", String::from_utf8_lossy(line));
        }
        assert_eq!(partition_key(br#"{"age":3,"patient_id":"a"}"#).as_deref(), Some("a"));
        assert_eq!(partition_key(br#"{"patient_id":"a\"b"}"#).as_deref(), Some("a\"b"));
    }

    fn options(count: u64, seed: u64) -> RunOptions {
        let now = parse_utc("2026-11-24T12:00:00").unwrap();
        let dirt =
            DirtRates { malformed: 0.02, missing_field: 0.02, wrong_type: 0.02, duplicate: 0.03, ..Default::default() };
        RunOptions {
            source: Source::Simulate { config: SimulationConfig { seed, now, hospitals: 3, beds: 50, dirt }, count },
            partitions: 3,
            batch_size: 50,
            event_hub: "patient-flow".into(),
            now,
            silver_concurrency: 2,
            progress: false,
            via: Via::Host,
        }
    }

    async fn host(lake: &Lake, now: NaiveDateTime) -> Handler {
        let settings = HandlerSettings { now: Some(now), ..Default::default() };
        let gold = GoldSettings { min_new_files: 0, ..Default::default() };
        let state = AppState::build(StorageConfig::memory(), Some(lake.clone()), settings, WarehouseConfig::None, gold);
        Handler::Host(Arc::new(LocalHost::start(state).await.unwrap()))
    }

    /// Every silver and quarantine file of a lake, by key.
    async fn refined_files(lake: &Lake) -> BTreeMap<String, bytes::Bytes> {
        let mut files = BTreeMap::new();
        for c in [Container::Silver, Container::Quarantine] {
            for m in lake.list(c, &patient_flow_prefix()).await.unwrap() {
                let bytes = lake.get(c, &m.location).await.unwrap();
                files.insert(format!("{c:?}/{}", m.location), bytes);
            }
        }
        files
    }

    fn counts(r: &RunReport) -> String {
        format!(
            "events {} batches {} created {} replays {} silver {} rows {} quarantined {:?} duplicates {} redelivered {} corrected {:?}",
            r.events,
            r.batches,
            r.bronze_files_created,
            r.bronze_replays,
            r.silver_files,
            r.silver_rows,
            r.quarantined,
            r.duplicates_dropped,
            r.redelivered,
            r.corrected
        )
    }

    #[tokio::test]
    async fn overlapped_stages_refine_what_one_stage_after_the_other_does() {
        let options = options(3_000, 7);
        let (one_by_one, overlapped) =
            (Lake::open(&StorageConfig::memory()).await.unwrap(), Lake::open(&StorageConfig::memory()).await.unwrap());

        let host_a = host(&one_by_one, options.now).await;
        let mut a = RunReport::default();
        let clock = Instant::now();
        bronze_stage(&host_a, &one_by_one, &options, &mut a, None, clock).await.unwrap();
        silver_stage(&host_a, &one_by_one, &options, &mut a).await.unwrap();

        let host_b = host(&overlapped, options.now).await;
        let mut b = RunReport::default();
        bronze_and_silver_stages(&host_b, &overlapped, &options, &mut b, Instant::now(), None).await.unwrap();

        assert_eq!(counts(&b), counts(&a));
        assert_eq!(b.silver_files, b.bronze_files_created);
        assert!(b.quarantined.values().sum::<u64>() > 0 && b.duplicates_dropped > 0, "the dirt reached silver");
        assert!(
            refined_files(&overlapped).await == refined_files(&one_by_one).await,
            "the same silver and quarantine files"
        );

        // The same stage rows, and silver began while bronze was still ingesting (60 batches).
        let stage = |r: &RunReport, name: &str| r.stages.iter().find(|s| s.stage == name).cloned().unwrap();
        let names: Vec<&str> = b.stages.iter().map(|s| s.stage).collect();
        assert_eq!(names, ["bronze", "silver"]);
        let (bronze, silver) = (stage(&b, "bronze"), stage(&b, "silver"));
        assert_eq!((bronze.rows, silver.rows), (stage(&a, "bronze").rows, stage(&a, "silver").rows));
        assert!(
            silver.start_seconds < bronze.start_seconds + bronze.seconds,
            "silver should start before bronze ends: {silver:?} {bronze:?}"
        );
        for s in [&bronze, &silver] {
            assert!(s.handler_seconds > 0.0 && s.host_seconds > 0.0, "{s:?}");
        }
    }

    #[tokio::test]
    async fn bronze_files_left_unrefined_are_refined_after_ingest() {
        let lake = Lake::open(&StorageConfig::memory()).await.unwrap();
        let first = options(600, 1);
        let host = host(&lake, first.now).await;
        bronze_and_silver_stages(&host, &lake, &first, &mut RunReport::default(), Instant::now(), None).await.unwrap();
        // A bronze file whose blob trigger never fired (say, the host stopped before it did).
        let orphan = lake.list(Container::Silver, &patient_flow_prefix()).await.unwrap().remove(3).location;
        lake.delete(Container::Silver, &orphan).await.unwrap();

        let mut second = RunReport::default();
        let (complete, mut announced) = mpsc::unbounded_channel();
        let folding = Folding { complete, min_rows: 1, failed: Arc::default() };
        bronze_and_silver_stages(&host, &lake, &options(600, 2), &mut second, Instant::now(), Some(folding))
            .await
            .unwrap();
        assert_eq!(second.silver_files, second.bronze_files_created + 1, "{}", counts(&second));
        assert!(lake.exists(Container::Silver, &orphan).await.unwrap());
        assert!(unrefined(&lake, &HashSet::new()).await.unwrap().is_empty());
        // Every partition was announced complete, once, in gold's order, and the channel closed.
        let mut partitions = Vec::new();
        while let Some(p) = announced.recv().await {
            partitions.push(p);
        }
        assert_eq!(partitions, ["0", "1", "2"]);
    }

    /// A refine that fails ends the stage with its error, flags the failure to the builds, and closes
    /// the partitions' channel: nothing waits for a partition that cannot complete, and nothing is
    /// announced behind it.
    #[tokio::test]
    async fn a_failed_refine_flags_the_builds_and_closes_the_channel() {
        let lake = Lake::open(&StorageConfig::memory()).await.unwrap();
        // A file in partition 0 that is no bronze file, left without silver: swept and refined once
        // ingest is done, first (the queue serves partition 0 first), and it fails.
        let broken = BatchStem { partition: "0".into(), first_seq: 900_000, last_seq: 900_009 };
        lake.put(Container::Bronze, &broken.key(), Bytes::from_static(b"not parquet")).await.unwrap();
        let options = options(600, 3);
        let host = host(&lake, options.now).await;
        let (complete, mut announced) = mpsc::unbounded_channel();
        let failed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let folding = Folding { complete, min_rows: 1, failed: Arc::clone(&failed) };
        let mut report = RunReport::default();
        let stage = bronze_and_silver_stages(&host, &lake, &options, &mut report, Instant::now(), Some(folding));
        let error = tokio::time::timeout(Duration::from_secs(60), stage).await.unwrap().unwrap_err();
        assert!(format!("{error:#}").contains("Corrupt footer"), "{error:#}");
        assert!(failed.load(std::sync::atomic::Ordering::SeqCst));
        let closed = tokio::time::timeout(Duration::from_secs(10), announced.recv()).await.unwrap();
        assert_eq!(closed, None, "partition 0 never completes, so none after it is announced");
    }

    /// Partitions are announced in gold's order (by name, as silver keys sort), each once, only
    /// once ingest is done and every one of its files is refined — a partition refined early waits
    /// for those before it — and only when they hold enough rows.
    #[test]
    fn partitions_are_announced_in_order_once_all_their_files_are_refined() {
        let (complete, mut announced) = mpsc::unbounded_channel();
        let folding = Folding { complete, min_rows: 10, failed: Arc::default() };
        let mut c = Completion { folding: Some(folding), ..Completion::default() };
        let mut take = || std::iter::from_fn(|| announced.try_recv().ok()).collect::<Vec<String>>();
        for (p, rows) in [("1", 10), ("10", 9), ("0", 5), ("3", 10)] {
            c.refined(p, rows);
        }
        assert!(take().is_empty(), "nothing before ingest is done");
        let expected = [("0", 2), ("1", 1), ("10", 1), ("2", 1), ("3", 1)];
        c.expect(expected.into_iter().map(|(p, n)| (p.to_string(), n)).collect());
        assert!(take().is_empty(), "partition 0 has a file left");
        c.refined("2", 20);
        assert!(take().is_empty(), "2 waits for 0, 1 and 10");
        c.refined("0", 5);
        assert_eq!(take(), ["0", "1", "2", "3"], "10 holds too few rows");
        c.refined("2", 1);
        assert!(take().is_empty(), "announced once");
        let key = |p: &str| BatchStem { partition: p.into(), first_seq: 0, last_seq: 1 }.key().to_string();
        let mut keys: Vec<String> = ["2", "10", "1", "0"].map(key).into();
        keys.sort();
        assert_eq!(keys, ["0", "1", "10", "2"].map(key), "gold's order is the partitions' by name");
    }

    /// The queue serves files by partition, then sequence, whatever order they came in; a worker
    /// waiting on an empty queue wakes for a file, and ends once the queue is closed.
    #[tokio::test]
    async fn the_refine_queue_serves_files_in_order_until_closed() {
        let files = Arc::new(RefineQueue::default());
        let stem = |p: &str, first: i64| BatchStem { partition: p.into(), first_seq: first, last_seq: first + 9 };
        for s in [stem("1", 0), stem("0", 10), stem("0", 0)] {
            files.push(s);
        }
        let mut served = Vec::new();
        for _ in 0..3 {
            let s = files.next().await.unwrap();
            served.push((s.partition, s.first_seq));
        }
        assert_eq!(served, [("0".to_string(), 0), ("0".to_string(), 10), ("1".to_string(), 0)]);
        let worker = tokio::spawn({
            let files = Arc::clone(&files);
            async move {
                let mut n = 0;
                while files.next().await.is_some() {
                    n += 1;
                }
                n
            }
        });
        tokio::task::yield_now().await;
        files.push(stem("2", 0));
        files.close();
        assert_eq!(tokio::time::timeout(Duration::from_secs(10), worker).await.unwrap().unwrap(), 1);
    }
}
