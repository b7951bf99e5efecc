//! The validated settings the handler runs with. Built from the flags and app settings in
//! [`super`], or directly by tests and `run`; nothing here reads the environment.

use std::sync::Arc;
use std::time::Duration;

use chrono::NaiveDateTime;

use super::host::HostLimits;

/// Default of `PATIENTFLOW_MAX_EVENT_BYTES`: the largest event body producers are expected to send.
/// The contract's events are under 1 KiB; this leaves sixteen times that for free text.
pub const DEFAULT_MAX_EVENT_BYTES: usize = 16 * 1024;
/// What the host's Event Hubs envelope adds per event besides its base64 body: its entries in
/// `SequenceNumberArray`, `OffsetArray`, `EnqueuedTimeUtcArray`, `PartitionKeyArray`,
/// `PropertiesArray` and `SystemPropertiesArray`, JSON-encoded twice (reference §2.4a).
pub const EVENT_METADATA_BYTES: usize = 2 * 1024;
/// The smallest body limit accepted: one blob-trigger call for a small bronze file.
pub const MIN_BODY_BYTES: usize = 1024 * 1024;

/// The body limit for batches of `max_batch` events of at most `max_event_bytes` each: base64 of
/// every body plus its metadata, with a quarter on top for the envelope and the blob trigger (a
/// bronze file of the same batch, base64-encoded, is smaller). Never below [`MIN_BODY_BYTES`].
pub fn body_limit(max_batch: usize, max_event_bytes: usize) -> usize {
    let per_event = max_event_bytes.div_ceil(3) * 4 + EVENT_METADATA_BYTES;
    max_batch.saturating_mul(per_event).saturating_mul(5).div_ceil(4).max(MIN_BODY_BYTES)
}

/// Handler settings (see `config::HandlerArgs` for their app-setting names and defaults).
#[derive(Debug, Clone)]
pub struct HandlerSettings {
    /// Largest accepted request body in bytes.
    pub max_body_bytes: usize,
    /// Longest an invocation may take before the handler answers 408; shorter than the host's
    /// `functionTimeout`.
    pub request_timeout: Duration,
    /// A fixed clock (tests, reproducible runs); `None` is the real clock.
    pub now: Option<NaiveDateTime>,
}

impl HandlerSettings {
    /// The limits derived from the host's: the invocation timeout from `functionTimeout`, the
    /// body limit from `maxEventBatchSize` × `max_event_bytes`.
    pub fn derived(host: &HostLimits, max_event_bytes: usize) -> Self {
        Self {
            max_body_bytes: body_limit(host.max_event_batch_size, max_event_bytes),
            request_timeout: host.handler_timeout(),
            now: None,
        }
    }
}

/// `maxEventBatchSize` in the shipped host.json (and `run`'s and `bench`'s default batch size).
pub const SHIPPED_MAX_EVENT_BATCH_SIZE: usize = 2000;

impl Default for HandlerSettings {
    /// The limits for the shipped host.json's batches and the shortest default `functionTimeout`
    /// (for `run`, `bench` and tests, which have no host; `serve` reads the real host.json).
    fn default() -> Self {
        let host = HostLimits { max_event_batch_size: SHIPPED_MAX_EVENT_BATCH_SIZE, ..HostLimits::default() };
        Self::derived(&host, DEFAULT_MAX_EVENT_BYTES)
    }
}

/// Gold settings (see `config::GoldArgs`).
#[derive(Debug, Clone)]
pub struct GoldSettings {
    /// The timer builds only when more than this many silver files are new (the seed's ADF rule),
    /// or when a census change its manifest records is due.
    pub min_new_files: usize,
    /// How long superseded gold build files are kept.
    pub retention: Duration,
    /// Where Data Factory callbacks may go.
    pub adf_callbacks: crate::adf::CallbackPolicy,
    /// Silver files folded into one gold build at most (bounds a build's memory).
    pub max_files_per_build: usize,
    /// Silver rows folded into one gold build at most (bounds a build's memory).
    pub max_rows_per_build: usize,
    /// Bronze files without a silver file that one timer run refines at most (reconciliation).
    pub reconcile_max_files: usize,
}

impl Default for GoldSettings {
    fn default() -> Self {
        Self {
            min_new_files: 5,
            retention: Duration::from_secs(7 * 24 * 3600),
            adf_callbacks: crate::adf::CallbackPolicy::default(),
            max_files_per_build: 1024,
            max_rows_per_build: 262_144,
            reconcile_max_files: 64,
        }
    }
}

/// Which warehouse gold is loaded into.
#[derive(Debug, Clone)]
pub enum WarehouseConfig {
    /// None: gold stays in the lake only.
    None,
    /// The embedded DuckDB database (only in builds with `embedded-warehouse`).
    Embedded(EmbeddedConfig),
    /// An Azure Synapse dedicated SQL pool.
    Synapse(Arc<crate::warehouse::synapse::SynapseConfig>),
}

/// Default of `PATIENTFLOW_WAREHOUSE_MEMORY_LIMIT`: DuckDB's memory for a load. Past it DuckDB
/// spills to a temporary folder beside the database file instead of growing (its own default, 80 %
/// of the machine, let the KPI report over 10M facts take 2.6 GB). A load fills whatever it is
/// given, and more (DuckDB's allocations around its buffer pool): an eleventh 1M run onto one lake,
/// the load's resident memory sampled, peaked at 269 MB with 128 MB, 238 MB with 96 MB and 194 MB
/// with 64 MB, in about the same time with 96 MB (2.33–2.84 s against 2.24–2.74 s) but slower with
/// 64 MB (its checkpoint 1.2 s against 0.5–0.7 s). Earlier, 192 MB peaked at 264–325 MB over ten
/// runs (docs/performance-log.md).
pub const DEFAULT_WAREHOUSE_MEMORY_LIMIT: &str = "96MB";

/// Default of `PATIENTFLOW_REPORT_MEMORY_LIMIT`: DuckDB's memory for the KPI report (and other reads).
/// Over 10M facts the report took as long with 128 MB as with 256 MB (10.5–11.7 s), and `run`'s
/// report stage stayed at gold's peak in nine runs of ten (474–516 MB by the eighth run with 256 MB)
/// (docs/performance-log.md).
pub const DEFAULT_REPORT_MEMORY_LIMIT: &str = "128MB";

/// The embedded DuckDB warehouse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmbeddedConfig {
    /// The database file.
    pub path: std::path::PathBuf,
    /// DuckDB's `memory_limit` for loads (e.g. `256MB`, `1GB`).
    pub memory_limit: String,
    /// DuckDB's `memory_limit` for the report and other reads.
    pub report_memory_limit: String,
}

impl From<std::path::PathBuf> for EmbeddedConfig {
    /// The file at `path`, with the default memory limit.
    fn from(path: std::path::PathBuf) -> Self {
        Self {
            path,
            memory_limit: DEFAULT_WAREHOUSE_MEMORY_LIMIT.into(),
            report_memory_limit: DEFAULT_REPORT_MEMORY_LIMIT.into(),
        }
    }
}
