//! The embedded warehouse: one DuckDB database file. Loading build N replaces the dimensions and the
//! fact partitions whose gold file changed since the loaded build, then records N in `LoadLog` —
//! all in one transaction, so a reader sees build N-1 or build N. Loading N twice changes nothing.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use duckdb::Connection;

use super::{Error, LoadMetrics, Result, Warehouse};
use crate::pipeline::gold::manifest::Manifest;
use crate::storage::Lake;

/// The schema DDL.
pub const SCHEMA: &str = include_str!("../../sql/embedded/001_schema.sql");

fn db(e: duckdb::Error) -> Error {
    Error::Database(e.to_string())
}

/// A DuckDB database file holding the star schema.
pub struct Embedded {
    path: PathBuf,
    conn: Arc<Mutex<Connection>>,
}

impl Embedded {
    /// Opens (creating if needed) the database at `path` and applies the schema.
    pub fn open(path: &Path) -> Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| Error::Database(format!("cannot create {}: {e}", dir.display())))?;
        }
        let conn =
            Connection::open(path).map_err(|e| Error::Database(format!("cannot open {}: {e}", path.display())))?;
        conn.execute_batch(SCHEMA).map_err(db)?;
        Ok(Self { path: path.to_path_buf(), conn: Arc::new(Mutex::new(conn)) })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` with the connection on a blocking thread.
    pub async fn with_conn<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let conn = Arc::clone(&self.conn);
        tokio::task::spawn_blocking(move || {
            let mut guard = conn.lock().map_err(|_| Error::Database("the connection lock is poisoned".into()))?;
            f(&mut guard)
        })
        .await
        .map_err(|e| Error::Database(format!("load task failed: {e}")))?
    }
}

struct Plan {
    build: u64,
    build_id: String,
    as_of: String,
    dims: [(&'static str, String); 3],
    /// (visit date, gold file) of each fact day to replace.
    replace: Vec<(String, String)>,
    drop: Vec<String>,
    lake: Lake,
}

/// The loaded build and the gold file of each loaded fact partition (visit date, file).
type LoadedState = (Option<u64>, Vec<(String, String)>);

fn loaded(conn: &Connection) -> Result<LoadedState> {
    let build: Option<i64> = conn.query_row("SELECT max(build) FROM LoadLog", [], |r| r.get(0)).map_err(db)?;
    let mut stmt = conn.prepare("SELECT visit_date, file FROM LoadedPartition").map_err(db)?;
    let files = stmt
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
        .map_err(db)?
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(db)?;
    Ok((build.map(|b| b as u64), files))
}

#[async_trait]
impl Warehouse for Embedded {
    async fn load(&self, lake: &Lake, manifest: &Manifest) -> Result<LoadMetrics> {
        let (current, files) = self.with_conn(|c| loaded(c)).await?;
        if let Some(b) = current {
            if b == manifest.build {
                let total = self.fact_rows().await?;
                return Ok(LoadMetrics { build: b, loaded: false, fact_rows_total: total, ..Default::default() });
            }
            if b > manifest.build {
                return Err(Error::Newer { loaded: b, offered: manifest.build });
            }
        }
        let changes = super::fact_changes(manifest, &files.into_iter().collect());
        let plan = Plan {
            build: manifest.build,
            build_id: manifest.build_id.clone(),
            as_of: manifest.as_of.clone(),
            dims: [
                ("DimDepartment", manifest.dim_department.clone()),
                ("DimPatient", manifest.dim_patient.clone()),
                ("DimTime", manifest.dim_time.clone()),
            ],
            replace: changes.replace,
            drop: changes.remove,
            lake: lake.clone(),
        };
        let handle = tokio::runtime::Handle::current();
        self.with_conn(move |conn| apply(conn, plan, &handle)).await
    }

    async fn loaded_build(&self) -> Result<Option<u64>> {
        self.with_conn(|c| loaded(c).map(|(b, _)| b)).await
    }

    async fn report(&self) -> Result<super::report::Report> {
        self.with_conn(|c| super::report::query_embedded(c)).await
    }

    fn name(&self) -> &'static str {
        "embedded"
    }
}

impl Embedded {
    async fn fact_rows(&self) -> Result<u64> {
        self.with_conn(|c| {
            c.query_row("SELECT count(*) FROM FactPatientFlow", [], |r| r.get::<_, i64>(0))
                .map(|n| n as u64)
                .map_err(db)
        })
        .await
    }
}

/// Applies a load in one transaction. Gold files are read one at a time (on this blocking thread,
/// through the runtime), so memory holds one fact day, not the whole build.
fn apply(conn: &mut Connection, plan: Plan, rt: &tokio::runtime::Handle) -> Result<LoadMetrics> {
    let tx = conn.transaction().map_err(db)?;
    for (table, file) in plan.dims {
        let batches = rt.block_on(crate::pipeline::gold::read_table(&plan.lake, &file))?;
        tx.execute(&format!("DELETE FROM {table}"), []).map_err(db)?;
        let mut appender = tx.appender(table).map_err(db)?;
        for b in batches {
            appender.append_record_batch(b).map_err(db)?;
        }
        appender.flush().map_err(db)?;
    }
    let mut written = 0;
    let partitions = plan.replace.len() as u64;
    for (day, file) in plan.replace {
        let batches = rt.block_on(crate::pipeline::gold::read_table(&plan.lake, &file))?;
        tx.execute("DELETE FROM FactPatientFlow WHERE visit_date = CAST(? AS DATE)", [&day]).map_err(db)?;
        tx.execute("DELETE FROM LoadedPartition WHERE visit_date = ?", [&day]).map_err(db)?;
        let mut appender = tx.appender("FactPatientFlow").map_err(db)?;
        for b in batches {
            written += b.num_rows() as u64;
            appender.append_record_batch(b).map_err(db)?;
        }
        appender.flush().map_err(db)?;
        drop(appender);
        tx.execute("INSERT INTO LoadedPartition VALUES (?, ?)", [&day, &file]).map_err(db)?;
    }
    for day in plan.drop {
        tx.execute("DELETE FROM FactPatientFlow WHERE visit_date = CAST(? AS DATE)", [&day]).map_err(db)?;
        tx.execute("DELETE FROM LoadedPartition WHERE visit_date = ?", [&day]).map_err(db)?;
    }
    let total: i64 = tx.query_row("SELECT count(*) FROM FactPatientFlow", [], |r| r.get(0)).map_err(db)?;
    let as_of = plan.as_of.trim_end_matches('Z').to_string();
    tx.execute(
        "INSERT INTO LoadLog VALUES (?, ?, CAST(? AS TIMESTAMP), ?)",
        duckdb::params![plan.build as i64, plan.build_id, as_of, total],
    )
    .map_err(db)?;
    tx.commit().map_err(db)?;
    Ok(LoadMetrics {
        build: plan.build,
        loaded: true,
        partitions_replaced: partitions,
        fact_rows_written: written,
        fact_rows_total: total as u64,
    })
}
