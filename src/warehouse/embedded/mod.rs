//! The embedded warehouse: one DuckDB database file. Gold tables are sets of immutable parquet
//! files; the warehouse records which ones it holds (`LoadedFile`, each with an id) and tags every
//! row with the id of the file it came from (`gold_file_id`). Loading build N, in one transaction:
//! the rows of held files the build no longer has are deleted by their ids (one DELETE per table),
//! the rows of the build's files the warehouse does not hold are appended under new ids, and
//! `LoadedFile` follows. Then N goes into `LoadLog`, so a reader sees build N-1 or build N. Loading
//! N twice changes nothing. The warehouse then holds exactly the rows of the build's files, however
//! far behind it was: no rule about keys is needed, and a delete reads one small integer column,
//! whose row groups zone maps skip (each load's ids follow the largest held, and a file's rows are
//! stored next to each other).
//!
//! DuckDB's threads read the gold files and insert them in parallel through a table function
//! (see `scan.rs`), each fetching its next file while it decodes the current one, so memory holds
//! two files' bytes and a batch per thread, not the build.
//!
//! The file is open only while a load or a report runs: DuckDB lets one process write a file (or
//! several read it), so a handler that kept it open would lock every other reader out, e.g.
//! `patientflow report` beside `serve`. Within a process, operations on one file take turns (one
//! lock per file); between processes, DuckDB's file lock decides, and an operation that meets it
//! retries for [`LOCK_WAIT`] before it fails with an error saying another process is using the file.
//! The loaded state is read inside the load's transaction, so a load of a build older than the one
//! loaded (a stale load) changes nothing.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use duckdb::{AccessMode, Config, Connection};

use super::{Error, GoldFile, LoadMetrics, Result, Table, Warehouse};
use crate::config::EmbeddedConfig;
use crate::pipeline::gold::manifest::Manifest;
use crate::storage::Lake;

mod scan;

/// The schema DDL.
pub const SCHEMA: &str = include_str!("../../../sql/embedded/001_schema.sql");

/// How long an operation waits for another process's lock on the file before it gives up.
pub const LOCK_WAIT: Duration = Duration::from_secs(5);

fn db(e: duckdb::Error) -> Error {
    Error::Database(e.to_string())
}

/// One lock per database file, shared by every [`Embedded`] of this process: DuckDB's own file
/// lock is per process, so two handles in one process must take turns here.
fn process_lock(path: &Path) -> Arc<Mutex<()>> {
    static LOCKS: LazyLock<Mutex<HashMap<PathBuf, Arc<Mutex<()>>>>> = LazyLock::new(Default::default);
    let mut locks = LOCKS.lock().unwrap_or_else(|e| e.into_inner());
    Arc::clone(locks.entry(path.to_path_buf()).or_default())
}

/// Whether DuckDB refused to open the file because another process holds its lock.
fn is_lock_conflict(e: &duckdb::Error) -> bool {
    let m = e.to_string();
    m.contains("Could not set lock on file") || m.contains("Conflicting lock")
}

/// Read-write for loads and the schema, read-only for reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    Write,
    Read,
}

/// A DuckDB database file holding the star schema.
#[derive(Clone)]
pub struct Embedded {
    /// The file and the memory limits of its sessions.
    config: EmbeddedConfig,
    lock: Arc<Mutex<()>>,
    lock_wait: Duration,
}

impl Embedded {
    /// Opens (creating if needed) the database at `path`, applies the schema and closes it again.
    pub fn open(path: &Path) -> Result<Self> {
        Self::open_with(&EmbeddedConfig::from(path.to_path_buf()))
    }

    /// [`open`](Self::open) with the configured memory limit.
    pub fn open_with(config: &EmbeddedConfig) -> Result<Self> {
        Self::open_waiting(config, LOCK_WAIT)
    }

    /// [`open_with`](Self::open_with), waiting at most `lock_wait` (here and in every later
    /// operation) for a file another process holds.
    pub fn open_waiting(config: &EmbeddedConfig, lock_wait: Duration) -> Result<Self> {
        let path = config.path.as_path();
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        std::fs::create_dir_all(&dir).map_err(|e| Error::Database(format!("cannot create {}: {e}", dir.display())))?;
        // One lock per file, whatever relative path names it.
        let file = path.file_name().ok_or_else(|| Error::Database(format!("{} is not a file path", path.display())))?;
        let key = dir.canonicalize().unwrap_or(dir).join(file);
        let this = Self { config: config.clone(), lock: process_lock(&key), lock_wait };
        this.session(Access::Write, |c| {
            reset_older_layout(c, path)?;
            c.execute_batch(SCHEMA).map_err(db)
        })?;
        Ok(this)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.config.path
    }

    /// Opens the file, runs `f`, closes the file: the whole time holding this process's lock on it.
    fn session<T>(&self, access: Access, f: impl FnOnce(&mut Connection) -> Result<T>) -> Result<T> {
        let _turn = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let started = Instant::now();
        let mut conn = self.connect(access)?;
        let connected = started.elapsed();
        let out = f(&mut conn);
        let worked = started.elapsed();
        conn.close().map_err(|(_, e)| db(e))?;
        // Opening and closing a DuckDB file costs milliseconds each (≈ 13 ms to open one here), which
        // the tail of a run pays on one thread: at debug level, each session says where its time went.
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        tracing::debug!(
            ?access,
            open_ms = ms(connected),
            work_ms = ms(worked - connected),
            close_ms = ms(started.elapsed() - worked),
            "Warehouse session."
        );
        out
    }

    fn connect(&self, access: Access) -> Result<Connection> {
        let deadline = Instant::now() + self.lock_wait;
        let mut pause = Duration::from_millis(20);
        loop {
            let (config, limit, setting) = match access {
                Access::Read => (
                    Config::default().access_mode(AccessMode::ReadOnly),
                    &self.config.report_memory_limit,
                    "PATIENTFLOW_REPORT_MEMORY_LIMIT",
                ),
                // Writes start on one DuckDB thread (its client thread spins while workers run, which
                // small statements only pay for); a load sets every core once it has work to do.
                Access::Write => (
                    Config::default().access_mode(AccessMode::ReadWrite).and_then(|c| c.threads(1)),
                    &self.config.memory_limit,
                    "PATIENTFLOW_WAREHOUSE_MEMORY_LIMIT",
                ),
            };
            let config = config
                .map_err(db)?
                // Past the limit DuckDB spills to `<file>.tmp` rather than growing with the tables.
                .max_memory(limit)
                .map_err(|e| {
                    Error::Database(format!(
                        "DuckDB refused the memory limit {limit:?} ({e}); set {setting} to e.g. 256MB"
                    ))
                })?;
            match Connection::open_with_flags(&self.config.path, config) {
                Ok(c) => return Ok(c),
                Err(e) if is_lock_conflict(&e) && Instant::now() < deadline => {
                    std::thread::sleep(pause.min(deadline.saturating_duration_since(Instant::now())));
                    pause = (pause * 2).min(Duration::from_millis(500));
                }
                Err(e) if is_lock_conflict(&e) => {
                    return Err(Error::Busy(format!(
                        "the embedded warehouse {} is in use by another process (a load is in progress) and stayed so for {:?}; try again in a moment",
                        self.config.path.display(),
                        self.lock_wait
                    )));
                }
                Err(e) => return Err(Error::Database(format!("cannot open {}: {e}", self.config.path.display()))),
            }
        }
    }

    /// Runs `f` with a read-write connection on a blocking thread; the file is open only meanwhile.
    pub async fn with_conn<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        self.blocking(Access::Write, f).await
    }

    async fn blocking<T: Send + 'static>(
        &self,
        access: Access,
        f: impl FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.session(access, f))
            .await
            .map_err(|e| Error::Database(format!("warehouse task failed: {e}")))?
    }

    /// DuckDB's out-of-memory error names its own `SET memory_limit`; ours names the setting that
    /// sets it, and its value.
    fn explain_out_of_memory(&self, access: Access, e: Error) -> Error {
        let Error::Database(message) = &e else { return e };
        if !message.contains("Out of Memory") {
            return e;
        }
        let (setting, limit, what) = match access {
            Access::Write => ("PATIENTFLOW_WAREHOUSE_MEMORY_LIMIT", &self.config.memory_limit, "the load"),
            Access::Read => ("PATIENTFLOW_REPORT_MEMORY_LIMIT", &self.config.report_memory_limit, "the report"),
        };
        let first = message.lines().next().unwrap_or_default();
        Error::Database(format!(
            "{first} — {what} needs more memory than {setting} ({limit}) gives DuckDB; set {setting} higher, e.g. 512MB"
        ))
    }
}

/// A warehouse written by an earlier layout cannot be loaded incrementally: one loaded before gold
/// tables were file sets records fact days (`LoadedPartition`), not files, one loaded before rows
/// were tagged with their file has no `gold_file_id` to delete by, and one loaded before DimPatient
/// had its durable key has no `patient_key` (see the README, "Upgrading"). It is derived data: its
/// tables are dropped (the schema recreates them) and its load log emptied, so the next load brings
/// the build in whole.
fn reset_older_layout(conn: &Connection, path: &Path) -> Result<()> {
    // One look at the catalog: DuckDB's `information_schema` views cost a few milliseconds each to
    // plan (four of them took 22-25 ms of each opening of the warehouse), `duckdb_columns()` one.
    let mut stmt = conn
        .prepare(
            "SELECT table_name, column_name FROM duckdb_columns() \
             WHERE database_name = current_database() AND schema_name = 'main' \
             AND table_name IN ('LoadedPartition', 'FactPatientFlow', 'DimPatient')",
        )
        .map_err(db)?;
    let columns: Vec<(String, String)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .map_err(db)?
        .collect::<std::result::Result<_, _>>()
        .map_err(db)?;
    let has_table = |table: &str| columns.iter().any(|(t, _)| t == table);
    let has_column = |table: &str, column: &str| columns.iter().any(|(t, c)| t == table && c == column);
    let file_sets = has_table("LoadedPartition");
    let facts = has_table("FactPatientFlow");
    let current = has_column("FactPatientFlow", "gold_file_id") && has_column("DimPatient", "patient_key");
    if !file_sets && (current || !facts) {
        return Ok(());
    }
    tracing::warn!(
        warehouse = %path.display(),
        "The embedded warehouse was written by an older layout; emptying it so the next load brings gold in whole."
    );
    conn.execute_batch(
        "BEGIN TRANSACTION;
         DROP TABLE IF EXISTS DimDepartment; DROP TABLE IF EXISTS DimPatient; DROP TABLE IF EXISTS DimTime;
         DROP TABLE IF EXISTS FactPatientFlow; DROP TABLE IF EXISTS LoadedFile; DROP TABLE IF EXISTS LoadedPartition;
         DROP TABLE IF EXISTS LoadLog;
         COMMIT;",
    )
    .map_err(db)
}

/// The gold files the warehouse holds rows of, with their ids (`LoadedFile`).
type HeldFiles = BTreeMap<(Table, String), i64>;

/// The loaded build and the gold files the warehouse holds rows of.
fn loaded(conn: &Connection) -> Result<(Option<u64>, HeldFiles)> {
    let build: Option<i64> = conn.query_row("SELECT max(build) FROM LoadLog", [], |r| r.get(0)).map_err(db)?;
    let mut stmt = conn.prepare("SELECT table_name, file, file_id FROM LoadedFile").map_err(db)?;
    let rows: Vec<(String, String, i64)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .map_err(db)?
        .collect::<std::result::Result<_, _>>()
        .map_err(db)?;
    let mut files = BTreeMap::new();
    for (table, file, id) in rows {
        let t = Table::parse(&table).ok_or_else(|| {
            Error::Database(format!(
                "LoadedFile names an unknown table {table:?}; the warehouse was written by another version — delete it and load again"
            ))
        })?;
        files.insert((t, file), id);
    }
    Ok((build.map(|b| b as u64), files))
}

#[async_trait]
impl Warehouse for Embedded {
    async fn load(&self, lake: &Lake, manifest: &Manifest) -> Result<LoadMetrics> {
        let manifest = manifest.clone();
        let lake = lake.clone();
        let handle = tokio::runtime::Handle::current();
        let loaded = self.blocking(Access::Write, move |conn| apply(conn, &manifest, &lake, &handle)).await;
        loaded.map_err(|e| self.explain_out_of_memory(Access::Write, e))
    }

    async fn loaded_build(&self) -> Result<Option<u64>> {
        self.blocking(Access::Read, |c| loaded(c).map(|(b, _)| b)).await
    }

    async fn report(&self) -> Result<super::report::Report> {
        let report = self.blocking(Access::Read, |c| super::report::query_embedded(c)).await;
        report.map_err(|e| self.explain_out_of_memory(Access::Read, e))
    }

    fn name(&self) -> &'static str {
        "embedded"
    }
}

/// Applies a load in one transaction that first reads what is loaded: a build already loaded
/// changes nothing, an older one is refused.
fn apply(conn: &mut Connection, manifest: &Manifest, lake: &Lake, rt: &tokio::runtime::Handle) -> Result<LoadMetrics> {
    let tx = conn.transaction().map_err(db)?;
    let (current, held) = loaded(&tx)?;
    match current {
        Some(b) if b == manifest.build => {
            let total: i64 = tx.query_row("SELECT count(*) FROM FactPatientFlow", [], |r| r.get(0)).map_err(db)?;
            return Ok(LoadMetrics { build: b, loaded: false, fact_rows_total: total as u64, ..Default::default() });
        }
        Some(b) if b > manifest.build => return Err(Error::Newer { loaded: b, offered: manifest.build }),
        _ => {}
    }
    // Measured before this load deletes anything: the holes earlier loads left.
    let vacuum = tables_to_vacuum(&tx)?;
    let changes = super::file_changes(manifest, &held.keys().cloned().collect());
    // New ids follow the largest held (an id freed with the newest file may come back; it names no
    // row by then: the file's rows went in the same transaction).
    let first_id = tx.query_row("SELECT coalesce(max(file_id), 0) + 1 FROM LoadedFile", [], |r| r.get::<_, i64>(0));
    let first_id = first_id.map_err(db)?;
    let added: Vec<(&GoldFile, i64)> = load_order(&changes).into_iter().zip(first_id..).collect();
    let mut phases = BTreeMap::new();
    let mut clock = Instant::now();
    let mut lap = |phase: &'static str| {
        phases.insert(phase, clock.elapsed().as_secs_f64());
        clock = Instant::now();
    };

    // From here on every core works: the delete scans, the insert reads and inserts a run of
    // consecutive files per core (see `scan`), laid out as one thread would lay them, so DuckDB
    // need not keep the order rows arrive in, and the checkpoint compresses.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    tx.execute_batch(&format!("SET threads = {cores}; SET preserve_insertion_order = false;")).map_err(db)?;

    // 1. The rows of the files the build no longer has, by their ids.
    let removed: Vec<i64> = changes.removed.iter().filter_map(|key| held.get(key).copied()).collect();
    if !removed.is_empty() {
        let ids = id_list(&removed);
        for table in Table::ALL.into_iter().filter(|&t| changes.removed.iter().any(|(r, _)| *r == t)) {
            tx.execute(&format!("DELETE FROM {table} WHERE {} IN ({ids})", scan::GOLD_FILE_ID), []).map_err(db)?;
        }
    }
    lap("delete");

    // 2. The rows of the added files, each tagged with its file's id.
    let feed = Arc::new(scan::Feed::new(lake, rt));
    scan::register(&tx, &feed)?;
    let mut written: BTreeMap<Table, u64> = BTreeMap::new();
    for table in Table::ALL {
        let files: Vec<scan::Read> =
            added.iter().filter(|(f, _)| f.table == table).map(|(f, id)| (f.file.clone(), *id, f.rows)).collect();
        if !files.is_empty() {
            written.insert(table, scan::insert(&tx, &feed, table, files, cores)?);
        }
    }
    drop(feed);
    lap("insert");

    // 3. What the warehouse holds now, and the build.
    record_files(&tx, &removed, &added)?;
    let total: i64 = tx.query_row("SELECT count(*) FROM FactPatientFlow", [], |r| r.get(0)).map_err(db)?;
    let as_of = manifest.as_of.trim_end_matches('Z').to_string();
    tx.execute(
        "INSERT INTO LoadLog VALUES (?, ?, CAST(? AS TIMESTAMP), ?)",
        duckdb::params![manifest.build as i64, manifest.build_id, as_of, total],
    )
    .map_err(db)?;
    tx.commit().map_err(db)?;
    lap("commit");
    // The checkpoint (compressing the new rows into the file) is what closing the file would do;
    // done here it is timed, on every core, as nothing else runs by now.
    checkpoint(conn, &vacuum)?;
    lap("checkpoint");
    Ok(LoadMetrics {
        build: manifest.build,
        loaded: true,
        files_added: changes.added.len() as u64,
        files_removed: changes.removed.len() as u64,
        patient_rows_written: written.get(&Table::DimPatient).copied().unwrap_or(0),
        fact_rows_written: written.get(&Table::FactPatientFlow).copied().unwrap_or(0),
        fact_rows_total: total as u64,
        vacuumed: vacuum.iter().map(|t| t.to_string()).collect(),
        phase_seconds: phases,
    })
}

/// The share of a table's stored rows that are deleted ones past which a load's checkpoint
/// reclaims them (see `tables_to_vacuum`).
pub const VACUUM_AT_DELETED_SHARE: f64 = 0.10;

/// The tables whose deleted rows this load's checkpoint reclaims: those where, before the load,
/// they are more than [`VACUUM_AT_DELETED_SHARE`] of the rows stored.
///
/// A delete leaves its rows in their row groups. DuckDB's checkpoint drops a row group once none
/// of its rows is live, and by default also merges neighbouring row groups whose live rows fit in
/// fewer (two into one, three into two), rewriting — decompressing and compressing again — every
/// row they keep. The rows a load deletes are mostly fact rows whose census flag flipped, filed
/// together by when they flip (see `load_order`): most of them empty whole row groups, the rest
/// leave holes in a few. Merging those on every load cost more than the load's inserts once
/// history grew — the tenth of ten 1M runs onto one lake checkpointed for 0.5–1.0 s, rewriting
/// about nine row groups of fact rows, against 0.01 s without merges — while the deleted rows
/// that stayed were 4–7 % of the fact rows stored either way. So a load merges (with DuckDB's own
/// budget, its `max_vacuum_tasks`) only once a table's holes pass the threshold, the way
/// PostgreSQL's autovacuum waits for a share of dead rows: the cost of reclaiming them is paid once
/// per many loads, not by each. Past the threshold every load merges what DuckDB can, as all loads
/// did before (holes scattered thinner than a third of three neighbouring row groups stay either
/// way: DuckDB merges no row groups whose live rows would not fit in fewer).
fn tables_to_vacuum(conn: &Connection) -> Result<Vec<Table>> {
    let mut out = Vec::new();
    for (table, stored, live) in stored_and_live(conn)? {
        if stored > 0 && (stored - live) as f64 > VACUUM_AT_DELETED_SHARE * stored as f64 {
            out.push(table);
        }
    }
    Ok(out)
}

/// Checkpoints the database, merging row groups only when `vacuum` names a table (the setting
/// is the database's: every table's row groups may then merge).
fn checkpoint(conn: &Connection, vacuum: &[Table]) -> Result<()> {
    // With no vacuum tasks DuckDB still drops the row groups with no live rows left.
    let budget = if vacuum.is_empty() { "SET max_vacuum_tasks = 0" } else { "RESET max_vacuum_tasks" };
    conn.execute_batch(&format!("{budget}; CHECKPOINT")).map_err(db)
}

/// The rows each table of [`Table::ALL`] stores (live and deleted) and its live rows, each with its table.
/// DuckDB's `estimated_size` is its count of the rows a table's row groups hold, deleted ones
/// included (`pragma_storage_info`, which lists every column segment, says the same at ten times the
/// cost: 0.1 s over 10M facts). Two statements for all the tables, not two per table: each costs
/// DuckDB a few milliseconds to parse and plan, more than counting the rows.
fn stored_and_live(conn: &Connection) -> Result<Vec<(Table, i64, i64)>> {
    let mut stmt = conn
        .prepare(
            "SELECT table_name, estimated_size FROM duckdb_tables() \
             WHERE database_name = current_database() AND schema_name = 'main'",
        )
        .map_err(db)?;
    let stored: BTreeMap<String, i64> = stmt
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, Option<i64>>(1)?.unwrap_or(0))))
        .map_err(db)?
        .collect::<std::result::Result<_, _>>()
        .map_err(db)?;
    let counts: Vec<String> = Table::ALL.iter().map(|t| format!("(SELECT count(*) FROM {t})")).collect();
    let live: Vec<i64> = conn
        .query_row(&format!("SELECT {}", counts.join(", ")), [], |r| {
            (0..Table::ALL.len()).map(|i| r.get::<_, i64>(i)).collect::<std::result::Result<Vec<_>, _>>()
        })
        .map_err(db)?;
    Ok(Table::ALL
        .into_iter()
        .zip(live)
        .map(|(t, live)| (t, stored.get(&t.to_string()).copied().unwrap_or(0), live))
        .collect())
}

/// The added files in the order the load takes them up (and numbers them): table by table, and
/// fact files by when their census flag next flips, the files no clock replaces last. A later
/// build replaces the files that flip by then together, so their rows, stored next to each other
/// (each scan thread stores the files it takes in this order), leave whole row groups, which
/// DuckDB drops at the checkpoint. Appended in day order they left
/// holes in the row groups of every recent day, which the checkpoint's vacuum rewrote: measured
/// over ten 1M runs onto one lake, the checkpoint 0.5-1.2 s a load from the fifth on, against
/// 0.01-0.6 s (median 0.2) in this order, and 9 % of the stored fact rows deleted ones, against 5 %.
fn load_order(changes: &super::FileChanges) -> Vec<&GoldFile> {
    let mut files: Vec<&GoldFile> = changes.added.iter().collect();
    // Stable: ties keep the build's order (day, then file).
    files.sort_by_key(|f| (f.table, f.next_change_us.unwrap_or(i64::MAX)));
    files
}

/// File ids as the list of an SQL `IN (…)`.
fn id_list(ids: &[i64]) -> String {
    ids.iter().map(i64::to_string).collect::<Vec<_>>().join(", ")
}

/// Forgets the removed files' ids in `LoadedFile` and records the added files with theirs.
fn record_files(tx: &Connection, removed: &[i64], added: &[(&GoldFile, i64)]) -> Result<()> {
    if !removed.is_empty() {
        tx.execute(&format!("DELETE FROM LoadedFile WHERE file_id IN ({})", id_list(removed)), []).map_err(db)?;
    }
    let mut appender = tx.appender("LoadedFile").map_err(db)?;
    for (f, id) in added {
        appender.append_row(duckdb::params![f.table.name(), f.file.as_str(), *id]).map_err(db)?;
    }
    appender.flush().map_err(db)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(w: &Embedded, access: Access) -> String {
        w.session(access, |c| c.query_row("SELECT current_setting('memory_limit')", [], |r| r.get(0)).map_err(db))
            .unwrap()
    }

    /// Loads (read-write sessions) run under `PATIENTFLOW_WAREHOUSE_MEMORY_LIMIT`, the report and
    /// other reads under `PATIENTFLOW_REPORT_MEMORY_LIMIT`; they default to 96 MB and 128 MB.
    #[test]
    fn loads_and_reads_run_under_their_own_memory_limits() {
        let dir = tempfile::tempdir().unwrap();
        let config = EmbeddedConfig {
            path: dir.path().join("w.duckdb"),
            memory_limit: "64MB".into(),
            report_memory_limit: "32MB".into(),
        };
        let w = Embedded::open_with(&config).unwrap();
        assert_eq!(limit(&w, Access::Write), "61.0 MiB", "64 MB = 61.0 MiB");
        assert_eq!(limit(&w, Access::Read), "30.5 MiB", "32 MB = 30.5 MiB");

        let w = Embedded::open(&dir.path().join("defaults.duckdb")).unwrap();
        assert_eq!(limit(&w, Access::Write), "91.5 MiB", "96 MB");
        assert_eq!(limit(&w, Access::Read), "122.0 MiB", "128 MB");
    }

    /// A load's checkpoint leaves deleted rows in place while, before the load, they are at most a
    /// tenth of a table's stored rows — even where DuckDB would merge row groups — and reclaims
    /// them once they are more; row groups with no live rows are dropped either way.
    #[test]
    fn loads_reclaim_deleted_rows_once_they_pass_a_tenth() {
        const GROUP: i64 = 122_880; // DuckDB's rows per row group
        let dir = tempfile::tempdir().unwrap();
        let w = Embedded::open(&dir.path().join("w.duckdb")).unwrap();
        w.session(Access::Write, |c| {
            let counts = |c: &Connection| {
                let tables = stored_and_live(c)?;
                let (_, stored, live) = tables.into_iter().find(|&(t, ..)| t == Table::DimDepartment).unwrap();
                Ok::<_, Error>((stored, live))
            };
            let run = |sql: &str| c.execute_batch(sql).map_err(db);
            // A "load": the holes measured first, then its changes, then its checkpoint.
            let load = |sql: &str| -> Result<Vec<Table>> {
                let vacuum = tables_to_vacuum(c)?;
                run(sql)?;
                checkpoint(c, &vacuum)?;
                Ok(vacuum)
            };
            load(&format!(
                "INSERT INTO DimDepartment SELECT range, 'ward', 1, range // 4096 FROM range({})",
                12 * GROUP
            ))?;
            // The last row group emptied: dropped, no hole.
            assert_eq!(load(&format!("DELETE FROM DimDepartment WHERE department_sk >= {}", 11 * GROUP))?, vec![]);
            assert_eq!(counts(c)?, (11 * GROUP, 11 * GROUP));

            // Half of each of the first two row groups: 9.1 % of the rows stored, in two row
            // groups DuckDB's default checkpoint would merge into one. Kept, through two loads.
            assert_eq!(
                load(&format!(
                    "DELETE FROM DimDepartment WHERE department_sk < {} AND department_sk % 2 = 0",
                    2 * GROUP
                ))?,
                vec![]
            );
            let holes = (11 * GROUP, 10 * GROUP);
            assert_eq!(counts(c)?, holes);
            assert_eq!(load("INSERT INTO DimDepartment VALUES (-1, 'ward', 1, 0)")?, vec![]);
            assert_eq!(counts(c)?, (holes.0 + 1, holes.1 + 1), "holes under a tenth stay");

            // Half of the third row group too: 13.6 %. The next load reclaims them.
            assert_eq!(
                load(&format!(
                    "DELETE FROM DimDepartment WHERE department_sk BETWEEN {} AND {} AND department_sk % 2 = 0",
                    2 * GROUP,
                    3 * GROUP - 1
                ))?,
                vec![]
            );
            let (stored, live) = counts(c)?;
            assert!(stored - live > GROUP + GROUP / 4, "{stored} {live}");
            assert_eq!(load("INSERT INTO DimDepartment VALUES (-2, 'ward', 1, 0)")?, vec![Table::DimDepartment]);
            let (after, still) = counts(c)?;
            assert_eq!(still, live + 1, "a vacuum keeps every live row");
            assert!(after <= stored + 1 - GROUP, "row groups merged: {after} stored, {still} live");
            assert!(tables_to_vacuum(c)?.is_empty());
            Ok(())
        })
        .unwrap();
    }
}
