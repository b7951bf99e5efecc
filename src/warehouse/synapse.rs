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

const COPY_OPTIONS: &str = "WITH (FILE_TYPE = 'PARQUET', CREDENTIAL = (IDENTITY = 'Managed Identity'))";

/// The SQL batch that loads build `manifest.build` (golden-tested; review it with
/// `patientflow warehouse sql`).
pub fn load_sql(gold_url: &str, manifest: &Manifest, changes: &FactChanges) -> Result<String> {
    let base = gold_url.trim_end_matches('/');
    if !base.starts_with("https://") || !base.contains(".dfs.") {
        return Err(Error::Database(format!(
            "SYNAPSE_GOLD_URL={base} must be the https .dfs endpoint of the gold container (COPY INTO with a managed identity requires it)"
        )));
    }
    check_setting("SYNAPSE_GOLD_URL", base.trim_start_matches("https://"), &['/'])?;
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
    let mut sql = String::new();
    let w = &mut sql;
    let _ = writeln!(
        w,
        "-- patientflow: load gold build {} ({}) into the dedicated SQL pool.",
        manifest.build, manifest.build_id
    );
    let _ = writeln!(w, "-- 1. Stage: COPY INTO round-robin heaps from the build's parquet files.");
    for (table, key) in [
        ("DimDepartment", &manifest.dim_department),
        ("DimPatient", &manifest.dim_patient),
        ("DimTime", &manifest.dim_time),
    ] {
        let _ = writeln!(w, "TRUNCATE TABLE stg.{table};");
        let _ = writeln!(w, "COPY INTO stg.{table} FROM {} {COPY_OPTIONS};", file(key)?);
    }
    let _ = writeln!(w, "TRUNCATE TABLE stg.FactPatientFlow;");
    if !changes.replace.is_empty() {
        let sources = changes.replace.iter().map(|(_, f)| file(f)).collect::<Result<Vec<_>>>()?;
        let _ = writeln!(w, "COPY INTO stg.FactPatientFlow FROM {} {COPY_OPTIONS};", sources.join(",\n    "));
    }
    let _ = writeln!(w, "-- 2. Swap in one transaction; a build already loaded changes nothing.");
    let _ = writeln!(w, "BEGIN TRANSACTION;");
    let _ = writeln!(w, "IF NOT EXISTS (SELECT 1 FROM dbo.LoadLog WHERE build = {})", manifest.build);
    let _ = writeln!(w, "BEGIN");
    for table in ["DimDepartment", "DimPatient", "DimTime"] {
        let _ = writeln!(w, "    DELETE FROM dbo.{table};");
        let _ = writeln!(w, "    INSERT INTO dbo.{table} SELECT * FROM stg.{table};");
    }
    let touched: Vec<&String> = changes.replace.iter().map(|(d, _)| d).chain(changes.remove.iter()).collect();
    if !touched.is_empty() {
        let list = days(&mut touched.into_iter())?;
        let _ = writeln!(w, "    DELETE FROM dbo.FactPatientFlow WHERE visit_date IN ({list});");
        let _ = writeln!(w, "    DELETE FROM dbo.LoadedPartition WHERE visit_date IN ({list});");
    }
    if !changes.replace.is_empty() {
        let _ = writeln!(w, "    INSERT INTO dbo.FactPatientFlow SELECT * FROM stg.FactPatientFlow;");
        // Dedicated pools take no multi-row VALUES: one SELECT per row, UNION ALL.
        let rows: Vec<String> = changes.replace.iter().map(|(d, f)| format!("SELECT '{d}', {}", lit(f))).collect();
        let _ = writeln!(
            w,
            "    INSERT INTO dbo.LoadedPartition (visit_date, source)\n        {};",
            rows.join("\n        UNION ALL ")
        );
    }
    let as_of = manifest.as_of.trim_end_matches('Z');
    check_setting("as_of", as_of, &[':'])?;
    let _ = writeln!(
        w,
        "    INSERT INTO dbo.LoadLog (build, build_id, as_of, loaded_at, fact_rows)\n        SELECT {}, {}, '{as_of}', SYSUTCDATETIME(), COUNT_BIG(*) FROM dbo.FactPatientFlow;",
        manifest.build,
        lit(&manifest.build_id)
    );
    let _ = writeln!(w, "END");
    let _ = writeln!(w, "COMMIT TRANSACTION;");
    let _ = writeln!(w, "-- 3. Statistics, and rebuild the replicated caches now rather than on the first query.");
    for table in ["DimDepartment", "DimPatient", "DimTime", "FactPatientFlow"] {
        let _ = writeln!(w, "UPDATE STATISTICS dbo.{table};");
    }
    for (table, column) in [("DimDepartment", "department_sk"), ("DimPatient", "patient_sk"), ("DimTime", "time_key")] {
        let _ = writeln!(w, "SELECT TOP 1 {column} FROM dbo.{table};");
    }
    Ok(sql)
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
        client
            .simple_query(SCHEMA)
            .await
            .map_err(|e| Error::Database(e.to_string()))?
            .into_results()
            .await
            .map_err(|e| Error::Database(e.to_string()))?;
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
        let (current, loaded) = Self::state(&mut client).await?;
        match current {
            Some(b) if b == manifest.build => return Ok(LoadMetrics { build: b, loaded: false, ..Default::default() }),
            Some(b) if b > manifest.build => return Err(Error::Newer { loaded: b, offered: manifest.build }),
            _ => {}
        }
        let changes = fact_changes(manifest, &loaded);
        let sql = load_sql(&self.config.gold_url, manifest, &changes)?;
        client
            .simple_query(sql)
            .await
            .map_err(|e| Error::Database(format!("load of build {} failed: {e}", manifest.build)))?
            .into_results()
            .await
            .map_err(|e| Error::Database(format!("load of build {} failed: {e}", manifest.build)))?;
        let rows: u64 =
            changes.replace.iter().filter_map(|(d, _)| manifest.fact_patient_flow.get(d).map(|p| p.rows)).sum();
        Ok(LoadMetrics {
            build: manifest.build,
            loaded: true,
            partitions_replaced: changes.replace.len() as u64,
            fact_rows_written: rows,
            fact_rows_total: manifest.rows.get("FactPatientFlow").copied().unwrap_or(0),
        })
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
