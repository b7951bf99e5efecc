//! The embedded warehouse: one DuckDB database file. Loading build N replaces the dimensions and the
//! fact partitions whose gold file changed since the loaded build, then records N in `LoadLog` —
//! all in one transaction, so a reader sees build N-1 or build N. Loading N twice changes nothing.
//!
//! The file is open only while a load or a report runs: DuckDB lets one process write a file (or
//! several read it), so a handler that kept it open would lock every other reader out, e.g.
//! `patientflow report` beside `serve`. Within a process, operations on one file take turns (one
//! lock per file); between processes, DuckDB's file lock decides, and an operation that meets it
//! retries for [`LOCK_WAIT`] before it fails with an error saying another process is using the file.
//! The loaded state is read inside the load's transaction, so a load of a build older than the one
//! loaded (a stale load) changes nothing.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema, TimeUnit};
use async_trait::async_trait;
use duckdb::{AccessMode, Config, Connection};

use super::{Error, LoadMetrics, Result, Warehouse};
use crate::pipeline::gold::manifest::Manifest;
use crate::storage::Lake;

/// The schema DDL.
pub const SCHEMA: &str = include_str!("../../sql/embedded/001_schema.sql");

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
pub struct Embedded {
    path: PathBuf,
    lock: Arc<Mutex<()>>,
    lock_wait: Duration,
}

impl Embedded {
    /// Opens (creating if needed) the database at `path`, applies the schema and closes it again.
    pub fn open(path: &Path) -> Result<Self> {
        Self::open_waiting(path, LOCK_WAIT)
    }

    /// [`open`](Self::open), waiting at most `lock_wait` (here and in every later operation) for a
    /// file another process holds.
    pub fn open_waiting(path: &Path, lock_wait: Duration) -> Result<Self> {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        std::fs::create_dir_all(&dir).map_err(|e| Error::Database(format!("cannot create {}: {e}", dir.display())))?;
        // One lock per file, whatever relative path names it.
        let file = path.file_name().ok_or_else(|| Error::Database(format!("{} is not a file path", path.display())))?;
        let key = dir.canonicalize().unwrap_or(dir).join(file);
        let this = Self { path: path.to_path_buf(), lock: process_lock(&key), lock_wait };
        this.session(Access::Write, |c| c.execute_batch(SCHEMA).map_err(db))?;
        Ok(this)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens the file, runs `f`, closes the file: the whole time holding this process's lock on it.
    fn session<T>(&self, access: Access, f: impl FnOnce(&mut Connection) -> Result<T>) -> Result<T> {
        let _turn = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let mut conn = self.connect(access)?;
        let out = f(&mut conn);
        conn.close().map_err(|(_, e)| db(e))?;
        out
    }

    fn connect(&self, access: Access) -> Result<Connection> {
        let deadline = Instant::now() + self.lock_wait;
        let mut pause = Duration::from_millis(20);
        loop {
            let config = Config::default()
                .access_mode(if access == Access::Read { AccessMode::ReadOnly } else { AccessMode::ReadWrite })
                .map_err(db)?;
            match Connection::open_with_flags(&self.path, config) {
                Ok(c) => return Ok(c),
                Err(e) if is_lock_conflict(&e) && Instant::now() < deadline => {
                    std::thread::sleep(pause.min(deadline.saturating_duration_since(Instant::now())));
                    pause = (pause * 2).min(Duration::from_millis(500));
                }
                Err(e) if is_lock_conflict(&e) => {
                    return Err(Error::Busy(format!(
                        "the embedded warehouse {} is in use by another process (a load is in progress) and stayed so for {:?}; try again in a moment",
                        self.path.display(),
                        self.lock_wait
                    )));
                }
                Err(e) => return Err(Error::Database(format!("cannot open {}: {e}", self.path.display()))),
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
        let this = Self { path: self.path.clone(), lock: Arc::clone(&self.lock), lock_wait: self.lock_wait };
        tokio::task::spawn_blocking(move || this.session(access, f))
            .await
            .map_err(|e| Error::Database(format!("warehouse task failed: {e}")))?
    }
}

/// The loaded build and the gold file of each loaded fact partition (visit date → file).
type LoadedState = (Option<u64>, std::collections::BTreeMap<String, String>);

fn loaded(conn: &Connection) -> Result<LoadedState> {
    let build: Option<i64> = conn.query_row("SELECT max(build) FROM LoadLog", [], |r| r.get(0)).map_err(db)?;
    let mut stmt = conn.prepare("SELECT visit_date, file FROM LoadedPartition").map_err(db)?;
    let files = stmt
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
        .map_err(db)?
        .collect::<std::result::Result<_, _>>()
        .map_err(db)?;
    Ok((build.map(|b| b as u64), files))
}

#[async_trait]
impl Warehouse for Embedded {
    async fn load(&self, lake: &Lake, manifest: &Manifest) -> Result<LoadMetrics> {
        let manifest = manifest.clone();
        let lake = lake.clone();
        let handle = tokio::runtime::Handle::current();
        self.blocking(Access::Write, move |conn| apply(conn, &manifest, &lake, &handle)).await
    }

    async fn loaded_build(&self) -> Result<Option<u64>> {
        self.blocking(Access::Read, |c| loaded(c).map(|(b, _)| b)).await
    }

    async fn report(&self) -> Result<super::report::Report> {
        self.blocking(Access::Read, |c| super::report::query_embedded(c)).await
    }

    fn name(&self) -> &'static str {
        "embedded"
    }
}

/// Gold stores UTC milliseconds (`Timestamp(Millisecond, "UTC")`); the warehouse's columns are
/// `TIMESTAMP` (naive, UTC by convention), so the KPI SQL never depends on the session's time zone.
/// Converts every timestamp column to naive microseconds, the arrow type of DuckDB's `TIMESTAMP`.
fn naive_timestamps(batch: RecordBatch) -> Result<RecordBatch> {
    let schema = batch.schema();
    let naive = DataType::Timestamp(TimeUnit::Microsecond, None);
    if !schema.fields().iter().any(|f| matches!(f.data_type(), DataType::Timestamp(..)) && *f.data_type() != naive) {
        return Ok(batch);
    }
    let mut fields = Vec::with_capacity(schema.fields().len());
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
    for (field, column) in schema.fields().iter().zip(batch.columns()) {
        if let DataType::Timestamp(..) = field.data_type() {
            let us = crate::model::schema::gold_column_micros(column.as_ref()).ok_or_else(|| {
                Error::Database(format!(
                    "gold column `{}` is {}; the warehouse loads millisecond or microsecond timestamps",
                    field.name(),
                    field.data_type()
                ))
            })?;
            fields.push(Field::new(field.name(), naive.clone(), field.is_nullable()));
            columns.push(Arc::new(us));
        } else {
            fields.push(field.as_ref().clone());
            columns.push(Arc::clone(column));
        }
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).map_err(|e| Error::Database(e.to_string()))
}

/// Applies a load in one transaction that first reads what is loaded: a build already loaded
/// changes nothing, an older one is refused. Gold files are read one at a time (on this blocking
/// thread, through the runtime), so memory holds one fact day, not the whole build.
fn apply(conn: &mut Connection, manifest: &Manifest, lake: &Lake, rt: &tokio::runtime::Handle) -> Result<LoadMetrics> {
    let tx = conn.transaction().map_err(db)?;
    let (current, files) = loaded(&tx)?;
    match current {
        Some(b) if b == manifest.build => {
            let total: i64 = tx.query_row("SELECT count(*) FROM FactPatientFlow", [], |r| r.get(0)).map_err(db)?;
            return Ok(LoadMetrics { build: b, loaded: false, fact_rows_total: total as u64, ..Default::default() });
        }
        Some(b) if b > manifest.build => return Err(Error::Newer { loaded: b, offered: manifest.build }),
        _ => {}
    }
    let changes = super::fact_changes(manifest, &files);
    let patients: Vec<String> = manifest.dim_patient.iter().map(|f| f.file.clone()).collect();
    let dims = [
        ("DimDepartment", vec![manifest.dim_department.clone()]),
        ("DimPatient", patients),
        ("DimTime", vec![manifest.dim_time.clone()]),
    ];
    for (table, files) in dims {
        let mut batches = Vec::new();
        for file in &files {
            batches.extend(rt.block_on(crate::pipeline::gold::read_table(lake, file))?);
        }
        tx.execute(&format!("DELETE FROM {table}"), []).map_err(db)?;
        let mut appender = tx.appender(table).map_err(db)?;
        for b in batches {
            appender.append_record_batch(naive_timestamps(b)?).map_err(db)?;
        }
        appender.flush().map_err(db)?;
    }
    let mut written = 0;
    let partitions = changes.replace.len() as u64;
    for (day, file) in &changes.replace {
        let mut batches = Vec::new();
        for f in file.split('|') {
            batches.extend(rt.block_on(crate::pipeline::gold::read_table(lake, f))?);
        }
        tx.execute("DELETE FROM FactPatientFlow WHERE visit_date = CAST(? AS DATE)", [day]).map_err(db)?;
        tx.execute("DELETE FROM LoadedPartition WHERE visit_date = ?", [day]).map_err(db)?;
        let mut appender = tx.appender("FactPatientFlow").map_err(db)?;
        for b in batches {
            written += b.num_rows() as u64;
            appender.append_record_batch(naive_timestamps(b)?).map_err(db)?;
        }
        appender.flush().map_err(db)?;
        drop(appender);
        tx.execute("INSERT INTO LoadedPartition VALUES (?, ?)", [day, file]).map_err(db)?;
    }
    for day in &changes.remove {
        tx.execute("DELETE FROM FactPatientFlow WHERE visit_date = CAST(? AS DATE)", [day]).map_err(db)?;
        tx.execute("DELETE FROM LoadedPartition WHERE visit_date = ?", [day]).map_err(db)?;
    }
    let total: i64 = tx.query_row("SELECT count(*) FROM FactPatientFlow", [], |r| r.get(0)).map_err(db)?;
    let as_of = manifest.as_of.trim_end_matches('Z').to_string();
    tx.execute(
        "INSERT INTO LoadLog VALUES (?, ?, CAST(? AS TIMESTAMP), ?)",
        duckdb::params![manifest.build as i64, manifest.build_id, as_of, total],
    )
    .map_err(db)?;
    tx.commit().map_err(db)?;
    Ok(LoadMetrics {
        build: manifest.build,
        loaded: true,
        partitions_replaced: partitions,
        fact_rows_written: written,
        fact_rows_total: total as u64,
    })
}
