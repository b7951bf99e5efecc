//! The Azure Synapse dedicated SQL pool loader. Loading gold build N: `COPY INTO` round-robin staging
//! heaps straight from the build's parquet files in ADLS Gen2 (`.dfs` endpoint, the workspace's managed
//! identity), then, in one transaction, replace the replicated dimensions and the fact days whose gold
//! file changed and record N in `dbo.LoadLog`; then refresh statistics and the replicated caches.
//! No MERGE: its `WHEN NOT MATCHED … INSERT` is not allowed on REPLICATE targets (reference §8.3).
//! Statements go as SQL batches (`simple_query`): Synapse rejects tiberius' `sp_executesql` RPC form.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use async_trait::async_trait;
use secrecy::{ExposeSecret, SecretString};
use tiberius::{AuthMethod, Client, Config, EncryptionLevel};
use tokio::net::TcpStream;
use tokio_util::compat::{Compat, TokioAsyncWriteCompatExt};

use super::{Error, FactChanges, LoadMetrics, Result, Warehouse, fact_changes};
use crate::pipeline::gold::manifest::Manifest;
use crate::storage::Lake;

/// The star-schema DDL, applied by `patientflow warehouse init`.
pub const SCHEMA: &str = include_str!("../../sql/synapse/001_schema.sql");
/// The seed notebook's KPI queries as views (parity checks while migrating), applied after [`SCHEMA`].
pub const SEED_KPI_VIEWS: &str = include_str!("../../sql/synapse/002_seed_kpi_views.sql");

/// Longest a TCP connection to the pool may take to open.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// The Entra ID scope of Azure SQL and Synapse SQL.
pub const SQL_SCOPE: &str = "https://database.windows.net/.default";

/// How to sign in to the pool.
pub enum SynapseAuth {
    /// The Function App's managed identity (optionally user-assigned).
    ManagedIdentity {
        /// Client id of a user-assigned identity.
        client_id: Option<String>,
    },
    /// The developer's Azure CLI / azd sign-in.
    Developer,
    /// SQL authentication.
    Sql {
        /// User name.
        user: String,
        /// Password.
        password: SecretString,
    },
}

impl std::fmt::Debug for SynapseAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SynapseAuth::ManagedIdentity { client_id } => {
                f.debug_struct("ManagedIdentity").field("client_id", client_id).finish()
            }
            SynapseAuth::Developer => f.write_str("Developer"),
            SynapseAuth::Sql { user, .. } => {
                f.debug_struct("Sql").field("user", user).field("password", &"<redacted>").finish()
            }
        }
    }
}

/// Synapse settings (see `config::SynapseArgs`).
#[derive(Debug)]
pub struct SynapseConfig {
    /// `<workspace>.sql.azuresynapse.net`.
    pub server: String,
    /// The dedicated pool (database) name.
    pub database: String,
    /// Sign-in.
    pub auth: SynapseAuth,
    /// Where COPY INTO reads gold: `https://<account>.dfs.core.windows.net/<gold container>`.
    pub gold_url: String,
    /// Time limit of one statement batch (COPY INTO can take minutes).
    pub command_timeout: Duration,
}

/// Checks an identifier-like value from settings (server, database, URL path parts) so it can be
/// placed in SQL text: never spliced in raw.
pub fn check_setting(name: &str, value: &str, extra: &[char]) -> Result<()> {
    let ok = !value.is_empty()
        && value.len() <= 400
        && value.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c) || extra.contains(&c));
    if ok {
        Ok(())
    } else {
        Err(Error::Database(format!(
            "{name}={value:?} has characters that cannot be used; use letters, digits, '-', '_' and '.'"
        )))
    }
}

/// A T-SQL Unicode string literal.
fn lit(s: &str) -> String {
    format!("N{}", plain_lit(s))
}

/// A T-SQL string literal (COPY INTO takes plain literals for its locations).
fn plain_lit(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// How many times a load plans again when another load changed the pool under it.
const PLAN_ATTEMPTS: usize = 3;

const COPY_OPTIONS: &str = "WITH (FILE_TYPE = 'PARQUET', CREDENTIAL = (IDENTITY = 'Managed Identity'))";

/// The staging tables of one load: private to it (named by build and load id), so concurrent loads
/// never see each other's rows.
fn staging(table: &str, build: u64, load_id: &str) -> String {
    format!("stg.{table}_b{build}_{load_id}")
}

/// A fresh load id: 16 hex digits.
pub fn new_load_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// The SQL batch that loads build `manifest.build` (golden-tested; review it with
/// `patientflow warehouse sql`). `changes` were computed against the pool holding build
/// `loaded_from` (`None`: empty); `load_id` names this load's private staging tables.
///
/// Concurrency: staging tables are private to the load, created and filled outside the transaction
/// (dedicated pools take no DDL inside a user transaction). The transaction starts by updating the
/// one row of `dbo.LoadLock`, which holds that row's exclusive lock until commit, so loads swap one
/// at a time (`sp_getapplock` does not exist in dedicated pools). Then it re-reads the loaded build
/// into `@planned`, and every change is guarded by it: unless the pool still holds `loaded_from`,
/// nothing changes (a stale build, or a plan made against a state another load has since replaced).
/// No `IF … BEGIN … END`: one guarded statement per change. The batch ends by selecting the loaded
/// build, so the caller sees whether its swap happened.
pub fn load_sql(
    gold_url: &str,
    manifest: &Manifest,
    changes: &FactChanges,
    loaded_from: Option<u64>,
    load_id: &str,
) -> Result<String> {
    let base = gold_url.trim_end_matches('/');
    if !base.starts_with("https://") || !base.contains(".dfs.") {
        return Err(Error::Database(format!(
            "SYNAPSE_GOLD_URL={base} must be the https .dfs endpoint of the gold container (COPY INTO with a managed identity requires it)"
        )));
    }
    check_setting("SYNAPSE_GOLD_URL", base.trim_start_matches("https://"), &['/'])?;
    if load_id.is_empty() || load_id.len() > 32 || !load_id.chars().all(|c| c.is_ascii_alphanumeric()) {
        return Err(Error::Database(format!("load id {load_id:?} must be 1 to 32 letters or digits")));
    }
    let file = |key: &str| -> Result<String> {
        check_setting("gold file", key, &['/', '='])?;
        Ok(plain_lit(&format!("{base}/{key}")))
    };
    let days = |list: &mut dyn Iterator<Item = &String>| -> Result<String> {
        let mut out = Vec::new();
        for d in list {
            check_setting("visit date", d, &[])?;
            out.push(format!("'{d}'"));
        }
        Ok(out.join(", "))
    };
    let build = manifest.build;
    let stg = |table: &str| staging(table, build, load_id);
    let mut sql = String::new();
    let w = &mut sql;
    let _ = writeln!(w, "-- patientflow: load gold build {build} ({}) into the dedicated SQL pool.", manifest.build_id);
    let _ =
        writeln!(w, "-- 1. Stage: COPY INTO round-robin heaps private to this load, from the build's parquet files.");
    for (table, key) in [
        ("DimDepartment", Some(&manifest.dim_department)),
        ("DimPatient", manifest.dim_patient.first().map(|f| &f.file)),
        ("DimTime", Some(&manifest.dim_time)),
        ("FactPatientFlow", None),
    ] {
        let _ = writeln!(
            w,
            "CREATE TABLE {} WITH (DISTRIBUTION = ROUND_ROBIN, HEAP) AS SELECT * FROM dbo.{table} WHERE 1 = 0;",
            stg(table)
        );
        if let Some(key) = key {
            let _ = writeln!(w, "COPY INTO {} FROM {} {COPY_OPTIONS};", stg(table), file(key)?);
        }
    }
    if !changes.replace.is_empty() {
        let sources = changes.replace.iter().map(|(_, f)| file(f)).collect::<Result<Vec<_>>>()?;
        let _ = writeln!(w, "COPY INTO {} FROM {} {COPY_OPTIONS};", stg("FactPatientFlow"), sources.join(",\n    "));
    }
    let _ =
        writeln!(w, "-- 2. Swap in one transaction, one load at a time (the LoadLock row). Every change is guarded");
    let _ = writeln!(w, "--    by @planned: the pool must still hold the build this load was planned against.");
    let _ = writeln!(w, "BEGIN TRANSACTION;");
    let _ = writeln!(w, "UPDATE dbo.LoadLock SET holder = {}, taken_at = SYSUTCDATETIME();", lit(&manifest.build_id));
    let _ = writeln!(
        w,
        "DECLARE @planned BIT = (SELECT CASE WHEN ISNULL(MAX(build), 0) = {} THEN 1 ELSE 0 END FROM dbo.LoadLog);",
        loaded_from.unwrap_or(0)
    );
    for table in ["DimDepartment", "DimPatient", "DimTime"] {
        let _ = writeln!(w, "DELETE FROM dbo.{table} WHERE @planned = 1;");
        let _ = writeln!(w, "INSERT INTO dbo.{table} SELECT * FROM {} WHERE @planned = 1;", stg(table));
    }
    let touched: Vec<&String> = changes.replace.iter().map(|(d, _)| d).chain(changes.remove.iter()).collect();
    if !touched.is_empty() {
        let list = days(&mut touched.into_iter())?;
        let _ = writeln!(w, "DELETE FROM dbo.FactPatientFlow WHERE @planned = 1 AND visit_date IN ({list});");
        let _ = writeln!(w, "DELETE FROM dbo.LoadedPartition WHERE @planned = 1 AND visit_date IN ({list});");
    }
    if !changes.replace.is_empty() {
        let _ =
            writeln!(w, "INSERT INTO dbo.FactPatientFlow SELECT * FROM {} WHERE @planned = 1;", stg("FactPatientFlow"));
        // Dedicated pools take no multi-row VALUES: one SELECT per row, UNION ALL.
        let rows: Vec<String> = changes
            .replace
            .iter()
            .enumerate()
            .map(|(i, (d, f))| {
                if i == 0 {
                    format!("SELECT '{d}' AS visit_date, {} AS source", lit(f))
                } else {
                    format!("SELECT '{d}', {}", lit(f))
                }
            })
            .collect();
        let _ = writeln!(
            w,
            "INSERT INTO dbo.LoadedPartition (visit_date, source)\n    SELECT visit_date, source FROM (\n        {}\n    ) AS p WHERE @planned = 1;",
            rows.join("\n        UNION ALL ")
        );
    }
    let as_of = manifest.as_of.trim_end_matches('Z');
    check_setting("as_of", as_of, &[':'])?;
    let _ = writeln!(w, "DECLARE @fact_rows BIGINT = (SELECT COUNT_BIG(*) FROM dbo.FactPatientFlow);");
    let _ = writeln!(
        w,
        "INSERT INTO dbo.LoadLog (build, build_id, as_of, loaded_at, fact_rows)\n    SELECT {build}, {}, '{as_of}', SYSUTCDATETIME(), @fact_rows WHERE @planned = 1;",
        lit(&manifest.build_id)
    );
    let _ = writeln!(w, "COMMIT TRANSACTION;");
    let _ = writeln!(
        w,
        "-- 3. Drop this load's staging; statistics; rebuild the replicated caches now rather than on the first query."
    );
    for table in ["DimDepartment", "DimPatient", "DimTime", "FactPatientFlow"] {
        let _ = writeln!(w, "DROP TABLE {};", stg(table));
    }
    for table in ["DimDepartment", "DimPatient", "DimTime", "FactPatientFlow"] {
        let _ = writeln!(w, "UPDATE STATISTICS dbo.{table};");
    }
    for (table, column) in [("DimDepartment", "department_sk"), ("DimPatient", "patient_sk"), ("DimTime", "time_key")] {
        let _ = writeln!(w, "SELECT TOP 1 {column} FROM dbo.{table};");
    }
    let _ = writeln!(w, "SELECT MAX(build) AS loaded_build FROM dbo.LoadLog;");
    Ok(sql)
}

/// Drops one load's staging tables (those that exist): after the load, or after it failed.
pub fn drop_staging_sql(build: u64, load_id: &str) -> String {
    let mut sql = String::new();
    for table in ["DimDepartment", "DimPatient", "DimTime", "FactPatientFlow"] {
        let name = staging(table, build, load_id);
        let _ = writeln!(sql, "IF OBJECT_ID(N'{name}') IS NOT NULL DROP TABLE {name};");
    }
    sql
}

/// Gets an Entra ID access token for the SQL scope.
pub async fn access_token(auth: &SynapseAuth) -> Result<SecretString> {
    use azure_core::credentials::TokenCredential;
    let fail = |e: azure_core::Error| Error::Database(format!("cannot get an Entra ID token for Synapse: {e}"));
    let credential: std::sync::Arc<dyn TokenCredential> = match auth {
        SynapseAuth::ManagedIdentity { client_id } => {
            let options = azure_identity::ManagedIdentityCredentialOptions {
                user_assigned_id: client_id.clone().map(azure_identity::UserAssignedId::ClientId),
                ..Default::default()
            };
            azure_identity::ManagedIdentityCredential::new(Some(options)).map_err(fail)?
        }
        SynapseAuth::Developer => azure_identity::DeveloperToolsCredential::new(None).map_err(fail)?,
        SynapseAuth::Sql { .. } => return Err(Error::Database("SQL authentication needs no token".into())),
    };
    let token = credential.get_token(&[SQL_SCOPE], None).await.map_err(fail)?;
    Ok(SecretString::from(token.token.secret().to_string()))
}

/// A Synapse dedicated SQL pool as a [`Warehouse`].
pub struct Synapse {
    config: std::sync::Arc<SynapseConfig>,
}

type SqlClient = Client<Compat<TcpStream>>;

impl Synapse {
    /// A loader for `config` (connects per operation: loads are minutes apart).
    pub fn new(config: std::sync::Arc<SynapseConfig>) -> Result<Self> {
        check_setting("SYNAPSE_SERVER", &config.server, &[])?;
        check_setting("SYNAPSE_DATABASE", &config.database, &[])?;
        Ok(Self { config })
    }

    async fn connect(&self) -> Result<SqlClient> {
        let db = |e: tiberius::error::Error| Error::Database(e.to_string());
        let mut config = Config::new();
        config.host(&self.config.server);
        config.port(1433);
        config.database(&self.config.database);
        config.encryption(EncryptionLevel::Required);
        config.application_name("patientflow");
        config.command_timeout(Some(self.config.command_timeout));
        // Reach the server first (bounded), so an unreachable server is reported as such, naming
        // it, before any sign-in.
        let unreachable = |e: String| Error::Database(format!("cannot reach {}: {e}", self.config.server));
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(config.get_addr()))
            .await
            .map_err(|_| unreachable(format!("no answer within {} s", CONNECT_TIMEOUT.as_secs())))?
            .map_err(|e| unreachable(e.to_string()))?;
        match &self.config.auth {
            SynapseAuth::Sql { user, password } => {
                config.authentication(AuthMethod::sql_server(user, password.expose_secret()))
            }
            other => config.authentication(AuthMethod::aad_token(access_token(other).await?.expose_secret())),
        }
        tcp.set_nodelay(true).map_err(|e| Error::Database(e.to_string()))?;
        Client::connect(config, tcp.compat_write()).await.map_err(db)
    }

    /// Applies the schema DDL (idempotent).
    pub async fn init(&self) -> Result<()> {
        let mut client = self.connect().await?;
        for script in [SCHEMA, SEED_KPI_VIEWS] {
            client
                .simple_query(script)
                .await
                .map_err(|e| Error::Database(e.to_string()))?
                .into_results()
                .await
                .map_err(|e| Error::Database(e.to_string()))?;
        }
        Ok(())
    }

    async fn state(client: &mut SqlClient) -> Result<(Option<u64>, BTreeMap<String, String>)> {
        let db = |e: tiberius::error::Error| Error::Database(e.to_string());
        let results = client
            .simple_query("SELECT MAX(build) FROM dbo.LoadLog; SELECT CONVERT(VARCHAR(10), visit_date, 23), source FROM dbo.LoadedPartition;")
            .await
            .map_err(db)?
            .into_results()
            .await
            .map_err(db)?;
        let build = results.first().and_then(|r| r.first()).and_then(|row| row.get::<i64, _>(0)).map(|b| b as u64);
        let mut loaded = BTreeMap::new();
        for row in results.get(1).into_iter().flatten() {
            if let (Some(d), Some(f)) = (row.get::<&str, _>(0), row.get::<&str, _>(1)) {
                loaded.insert(d.to_string(), f.to_string());
            }
        }
        Ok((build, loaded))
    }
}

#[async_trait]
impl Warehouse for Synapse {
    async fn load(&self, _lake: &Lake, manifest: &Manifest) -> Result<LoadMetrics> {
        let mut client = self.connect().await?;
        let failed =
            |e: tiberius::error::Error| Error::Database(format!("load of build {} failed: {e}", manifest.build));
        // A load whose swap found another load's build in place (its plan went stale) plans again.
        for _ in 0..PLAN_ATTEMPTS {
            let (current, loaded) = Self::state(&mut client).await?;
            match current {
                Some(b) if b == manifest.build => {
                    return Ok(LoadMetrics { build: b, loaded: false, ..Default::default() });
                }
                Some(b) if b > manifest.build => return Err(Error::Newer { loaded: b, offered: manifest.build }),
                _ => {}
            }
            let changes = fact_changes(manifest, &loaded);
            let load_id = new_load_id();
            let sql = load_sql(&self.config.gold_url, manifest, &changes, current, &load_id)?;
            let results = match client.simple_query(sql).await {
                Ok(stream) => stream.into_results().await,
                Err(e) => Err(e),
            };
            let results = match results {
                Ok(r) => r,
                Err(e) => {
                    // Best effort: the staging tables are this load's alone, nobody else drops them.
                    if let Ok(stream) = client.simple_query(drop_staging_sql(manifest.build, &load_id)).await {
                        let _ = stream.into_results().await;
                    }
                    return Err(failed(e));
                }
            };
            let now = results.last().and_then(|r| r.first()).and_then(|row| row.get::<i64, _>(0)).map(|b| b as u64);
            if now == Some(manifest.build) {
                let rows: u64 = changes
                    .replace
                    .iter()
                    .filter_map(|(d, _)| manifest.fact_patient_flow.get(d).map(|p| p.rows()))
                    .sum();
                return Ok(LoadMetrics {
                    build: manifest.build,
                    loaded: true,
                    partitions_replaced: changes.replace.len() as u64,
                    fact_rows_written: rows,
                    fact_rows_total: manifest.rows.get("FactPatientFlow").copied().unwrap_or(0),
                });
            }
            tracing::warn!(build = manifest.build, "Another load changed the pool during this load; planning again.");
        }
        Err(Error::Busy(format!(
            "build {} was not loaded: other loads changed the pool during {PLAN_ATTEMPTS} attempts; try again",
            manifest.build
        )))
    }

    async fn loaded_build(&self) -> Result<Option<u64>> {
        let mut client = self.connect().await?;
        Ok(Self::state(&mut client).await?.0)
    }

    async fn report(&self) -> Result<super::report::Report> {
        Err(Error::Database(
            "the KPI report reads the embedded warehouse; query Synapse with the SQL in sql/embedded/report/ adapted to T-SQL".into(),
        ))
    }

    fn name(&self) -> &'static str {
        "synapse"
    }
}
