//! Settings: every app setting and its command-line flag, read once at start. Each flag can be given
//! as an environment variable (what Function App settings and `local.settings.json` provide); the
//! README's settings table lists them all. Wrong values fail at start with the setting and the fix.

use std::path::PathBuf;
use std::time::Duration;

use secrecy::SecretString;

pub mod host;
pub mod settings;

pub use self::host::HostLimits;
pub use self::settings::{EmbeddedConfig, GoldSettings, HandlerSettings, WarehouseConfig};

use crate::model::time::parse_clock;
use crate::storage::{AzureAuth, Backend, Container, StorageConfig};

/// A setting is wrong; the message names it and says how to fix it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// Where the lake lives. With no `LAKE` settings it is a local folder.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Lake (storage)")]
pub struct LakeArgs {
    /// Local lake folder, used when no LAKE connection is configured.
    #[arg(long, env = "PATIENTFLOW_DATA_DIR", default_value = "patientflow-data")]
    pub data_dir: PathBuf,
    /// Azure Storage connection string for the lake (`UseDevelopmentStorage=true` for Azurite).
    #[arg(long = "lake", env = "LAKE", hide_env_values = true, value_name = "CONNECTION_STRING")]
    lake: Option<RedactedString>,
    /// Storage account name, for identity-based connections (no secrets).
    #[arg(long, env = "LAKE__accountName", value_name = "ACCOUNT")]
    lake_account_name: Option<String>,
    /// Blob endpoint for identity-based connections (default: ACCOUNT.blob.core.windows.net, over HTTPS).
    #[arg(long, env = "LAKE__blobServiceUri", value_name = "URL")]
    lake_blob_service_uri: Option<String>,
    /// `managedidentity` to use the Function App's managed identity (default when identity-based).
    #[arg(long, env = "LAKE__credential", value_name = "CREDENTIAL")]
    lake_credential: Option<String>,
    /// Client id of a user-assigned managed identity.
    #[arg(long, env = "LAKE__clientId", value_name = "CLIENT_ID")]
    lake_client_id: Option<String>,
    /// Container for raw events.
    #[arg(long, env = "PATIENTFLOW_BRONZE_CONTAINER", default_value = "bronze")]
    bronze_container: String,
    /// Container for refined rows.
    #[arg(long, env = "PATIENTFLOW_SILVER_CONTAINER", default_value = "silver")]
    silver_container: String,
    /// Container for the star schema.
    #[arg(long, env = "PATIENTFLOW_GOLD_CONTAINER", default_value = "gold")]
    gold_container: String,
    /// Container for rejected events.
    #[arg(long, env = "PATIENTFLOW_QUARANTINE_CONTAINER", default_value = "quarantine")]
    quarantine_container: String,
}

/// A string whose `Debug` never shows its value (connection strings, keys).
#[derive(Clone)]
pub struct RedactedString(SecretString);

impl std::fmt::Debug for RedactedString {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl std::str::FromStr for RedactedString {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(SecretString::from(s)))
    }
}

impl LakeArgs {
    /// Validates the lake settings into a [`StorageConfig`].
    pub fn storage_config(&self) -> Result<StorageConfig, ConfigError> {
        use secrecy::ExposeSecret;
        let containers =
            [&self.bronze_container, &self.silver_container, &self.gold_container, &self.quarantine_container];
        for (c, name) in Container::ALL.iter().zip(containers) {
            if !valid_container(name) {
                return Err(ConfigError(format!(
                    "container name {name:?} for {} is not valid; use 3-63 lowercase letters, digits and hyphens",
                    c.default_name()
                )));
            }
        }
        let containers = containers.map(|s| s.clone());
        let backend = if let Some(conn) = &self.lake {
            StorageConfig::from_connection_string("LAKE", conn.0.expose_secret())
                .map_err(|e| ConfigError(e.to_string()))?
        } else if self.lake_account_name.is_some() || self.lake_blob_service_uri.is_some() {
            let endpoint = match (&self.lake_blob_service_uri, &self.lake_account_name) {
                (Some(uri), _) => uri.trim_end_matches('/').to_string(),
                (None, Some(account)) => format!("https://{account}.blob.core.windows.net"),
                (None, None) => unreachable!(),
            };
            let account = match &self.lake_account_name {
                Some(a) => a.clone(),
                None => account_from_endpoint(&endpoint).ok_or_else(|| {
                    ConfigError(format!(
                        "cannot tell the storage account from LAKE__blobServiceUri={endpoint}; also set LAKE__accountName"
                    ))
                })?,
            };
            let auth = match self.lake_credential.as_deref().map(str::to_ascii_lowercase).as_deref() {
                None | Some("managedidentity") => AzureAuth::ManagedIdentity { client_id: self.lake_client_id.clone() },
                Some("auto") => AzureAuth::Auto,
                Some(other) => {
                    return Err(ConfigError(format!(
                        "LAKE__credential={other} is not supported; use `managedidentity` (or `auto` for Azure CLI / workload identity)"
                    )));
                }
            };
            Backend::Azure { account, blob_endpoint: endpoint, auth }
        } else {
            Backend::Local { root: self.data_dir.clone() }
        };
        Ok(StorageConfig { backend, containers })
    }
}

fn valid_container(name: &str) -> bool {
    (3..=63).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.contains("--")
}

fn account_from_endpoint(endpoint: &str) -> Option<String> {
    let url = url::Url::parse(endpoint).ok()?;
    let host = url.host_str()?;
    host.split_once(".blob.").map(|(account, _)| account.to_string())
}

/// Settings of the HTTP handler itself. Its limits derive from the host's (see [`host`]).
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Handler")]
pub struct HandlerArgs {
    /// Largest accepted request body, in bytes (default: host.json's Event Hubs maxEventBatchSize ×
    /// PATIENTFLOW_MAX_EVENT_BYTES, base64-encoded, with metadata and a quarter of margin).
    #[arg(long, env = "PATIENTFLOW_MAX_BODY_BYTES")]
    pub max_body_bytes: Option<usize>,
    /// Largest event body the producers send, in bytes (the contract's events are under 1 KiB;
    /// Event Hubs itself allows up to 1 MB).
    #[arg(long, env = "PATIENTFLOW_MAX_EVENT_BYTES", default_value_t = settings::DEFAULT_MAX_EVENT_BYTES)]
    pub max_event_bytes: usize,
    /// Seconds an invocation may run before the handler gives up with 408 (default: derived from
    /// host.json's functionTimeout, strictly shorter; a value may only lower it).
    #[arg(long, env = "PATIENTFLOW_REQUEST_TIMEOUT_SECS")]
    pub request_timeout_secs: Option<u64>,
    /// A fixed clock for the handler (ISO-8601, UTC); default: the real clock.
    #[arg(long = "handler-now", env = "PATIENTFLOW_NOW", value_name = "TIMESTAMP")]
    pub now: Option<String>,
}

impl HandlerArgs {
    /// Validates into [`HandlerSettings`], deriving the limits from the host's.
    pub fn settings(&self, host: &HostLimits) -> Result<HandlerSettings, ConfigError> {
        if self.max_event_bytes == 0 {
            return Err(ConfigError("PATIENTFLOW_MAX_EVENT_BYTES must be at least 1".into()));
        }
        let mut settings = HandlerSettings::derived(host, self.max_event_bytes);
        if let Some(bytes) = self.max_body_bytes {
            if bytes < settings::MIN_BODY_BYTES {
                return Err(ConfigError(format!(
                    "PATIENTFLOW_MAX_BODY_BYTES={bytes} is too small for an Event Hubs batch; use at least {}",
                    settings::MIN_BODY_BYTES
                )));
            }
            settings.max_body_bytes = bytes;
        }
        if let Some(secs) = self.request_timeout_secs {
            let limit = settings.request_timeout;
            if secs == 0 {
                return Err(ConfigError("PATIENTFLOW_REQUEST_TIMEOUT_SECS must be at least 1".into()));
            }
            if Duration::from_secs(secs) > limit {
                let source = host.source.as_ref().map_or("the default".to_string(), |p| p.display().to_string());
                return Err(ConfigError(format!(
                    "PATIENTFLOW_REQUEST_TIMEOUT_SECS={secs} is not shorter than the host allows: functionTimeout ({source}) leaves the handler {} s; lower the setting or raise functionTimeout",
                    limit.as_secs()
                )));
            }
            settings.request_timeout = Duration::from_secs(secs);
        }
        settings.now = match &self.now {
            Some(s) => Some(parse_clock(s).map_err(|e| ConfigError(format!("PATIENTFLOW_NOW: {e}")))?),
            None => None,
        };
        Ok(settings)
    }
}

/// Gold build and warehouse settings.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Gold and warehouse")]
pub struct GoldArgs {
    /// The build_gold timer builds only when more than this many silver files are new.
    #[arg(long, env = "PATIENTFLOW_GOLD_MIN_NEW_FILES", default_value_t = 5)]
    pub gold_min_new_files: usize,
    /// Silver files folded into one gold build at most; more waiting means more builds in a run
    /// (a build's memory is bounded by this, not by the backlog).
    #[arg(long, env = "PATIENTFLOW_GOLD_MAX_FILES_PER_BUILD", default_value_t = 1024)]
    pub gold_max_files_per_build: usize,
    /// Silver rows folded into one gold build at most (it stops taking files past this): a
    /// build's memory follows this, whatever the size of the files.
    #[arg(long, env = "PATIENTFLOW_GOLD_MAX_ROWS_PER_BUILD", default_value_t = 262_144)]
    pub gold_max_rows_per_build: usize,
    /// Hours superseded gold build files are kept before cleanup.
    #[arg(long, env = "PATIENTFLOW_GOLD_RETENTION_HOURS", default_value_t = 168)]
    pub gold_retention_hours: u64,
    /// Bronze files without a silver file (e.g. sent to the poison queue) that one timer run
    /// refines at most; the rest wait for the next run.
    #[arg(long, env = "PATIENTFLOW_RECONCILE_MAX_FILES", default_value_t = 64)]
    pub reconcile_max_files: usize,
    /// Warehouse gold is loaded into: `embedded` (a DuckDB file), `synapse` or `none` (default:
    /// `embedded` in builds with DuckDB; builds without it must choose).
    #[arg(long, env = "PATIENTFLOW_WAREHOUSE")]
    pub warehouse: Option<String>,
    /// The embedded warehouse file (default: DATA_DIR/warehouse.duckdb).
    #[arg(long, env = "PATIENTFLOW_WAREHOUSE_PATH")]
    pub warehouse_path: Option<PathBuf>,
    /// Memory the embedded warehouse (DuckDB) may use for a load, e.g. `256MB` or `1GB`; past it
    /// DuckDB spills to `<warehouse file>.tmp`.
    #[arg(long, env = "PATIENTFLOW_WAREHOUSE_MEMORY_LIMIT", default_value = settings::DEFAULT_WAREHOUSE_MEMORY_LIMIT)]
    pub warehouse_memory_limit: String,
    /// Memory the embedded warehouse (DuckDB) may use for the KPI report and other reads, e.g.
    /// `128MB` or `1GB`; past it DuckDB spills to `<warehouse file>.tmp`.
    #[arg(long, env = "PATIENTFLOW_REPORT_MEMORY_LIMIT", default_value = settings::DEFAULT_REPORT_MEMORY_LIMIT)]
    pub report_memory_limit: String,
    /// Synapse settings.
    #[command(flatten)]
    pub synapse: SynapseArgs,
    /// Hosts Data Factory callbacks may go to (comma-separated; `*.` for subdomains); https only.
    #[arg(long, env = "PATIENTFLOW_ADF_CALLBACK_HOSTS", default_value = crate::adf::DEFAULT_CALLBACK_HOSTS)]
    pub adf_callback_hosts: String,
    /// Also allow http callbacks to loopback addresses (local development only).
    #[arg(long, env = "PATIENTFLOW_ADF_ALLOW_HTTP_LOOPBACK", default_value_t = false)]
    pub adf_allow_http_loopback: bool,
}

impl GoldArgs {
    /// Validates the gold settings.
    pub fn gold_settings(&self) -> Result<GoldSettings, ConfigError> {
        if self.gold_retention_hours == 0 {
            return Err(ConfigError(
                "PATIENTFLOW_GOLD_RETENTION_HOURS must be at least 1: readers of the previous build need its files"
                    .into(),
            ));
        }
        let adf_callbacks = crate::adf::CallbackPolicy::parse(&self.adf_callback_hosts, self.adf_allow_http_loopback);
        if adf_callbacks.hosts.is_empty() {
            return Err(ConfigError(
                "PATIENTFLOW_ADF_CALLBACK_HOSTS is empty; list the hosts Data Factory callbacks may go to, e.g. *.clouddatahub.net".into(),
            ));
        }
        if self.gold_max_files_per_build == 0 {
            return Err(ConfigError("PATIENTFLOW_GOLD_MAX_FILES_PER_BUILD must be at least 1".into()));
        }
        if self.gold_max_rows_per_build == 0 {
            return Err(ConfigError("PATIENTFLOW_GOLD_MAX_ROWS_PER_BUILD must be at least 1".into()));
        }
        Ok(GoldSettings {
            max_files_per_build: self.gold_max_files_per_build,
            max_rows_per_build: self.gold_max_rows_per_build,
            min_new_files: self.gold_min_new_files,
            retention: Duration::from_secs(self.gold_retention_hours * 3600),
            adf_callbacks,
            reconcile_max_files: self.reconcile_max_files,
        })
    }

    /// Validates the warehouse choice; the embedded file defaults to `<data_dir>/warehouse.duckdb`.
    /// Unset means `embedded` in a build with DuckDB; a build without it must be told (see
    /// [`NO_EMBEDDED_WAREHOUSE`]).
    pub fn warehouse_config(&self, data_dir: &std::path::Path) -> Result<WarehouseConfig, ConfigError> {
        let choice = self.warehouse.as_deref().map(str::trim).map(str::to_ascii_lowercase);
        match choice.as_deref() {
            None | Some("embedded" | "duckdb") => {
                if cfg!(feature = "embedded-warehouse") {
                    Ok(WarehouseConfig::Embedded(EmbeddedConfig {
                        path: self.warehouse_path.clone().unwrap_or_else(|| data_dir.join("warehouse.duckdb")),
                        memory_limit: memory_limit("PATIENTFLOW_WAREHOUSE_MEMORY_LIMIT", &self.warehouse_memory_limit)?,
                        report_memory_limit: memory_limit(
                            "PATIENTFLOW_REPORT_MEMORY_LIMIT",
                            &self.report_memory_limit,
                        )?,
                    }))
                } else {
                    Err(ConfigError(NO_EMBEDDED_WAREHOUSE.into()))
                }
            }
            Some("synapse") => Ok(WarehouseConfig::Synapse(std::sync::Arc::new(self.synapse.config()?))),
            Some("none") => Ok(WarehouseConfig::None),
            Some(other) => Err(ConfigError(format!(
                "PATIENTFLOW_WAREHOUSE={other:?} is not a warehouse; use `embedded`, `synapse` or `none`"
            ))),
        }
    }
}

/// A DuckDB memory size: a number and a unit (`KB`, `MB`, `GB`, `TB`, or `KiB` … `TiB`); `setting`
/// names it in the error.
fn memory_limit(setting: &str, value: &str) -> Result<String, ConfigError> {
    let value = value.trim();
    let split = value.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(value.len());
    let (number, unit) = value.split_at(split);
    let units = ["KB", "MB", "GB", "TB", "KIB", "MIB", "GIB", "TIB"];
    match number.parse::<f64>() {
        Ok(n) if n > 0.0 && units.contains(&unit.trim().to_ascii_uppercase().as_str()) => {
            Ok(format!("{number}{}", unit.trim()))
        }
        _ => Err(ConfigError(format!(
            "{setting}={value:?} is not a memory size; use a number and a unit, e.g. 256MB or 1GB"
        ))),
    }
}

/// What a build without DuckDB says when the warehouse setting is unset or `embedded`.
pub const NO_EMBEDDED_WAREHOUSE: &str =
    "this build has no embedded warehouse: set PATIENTFLOW_WAREHOUSE=synapse (with the SYNAPSE_* settings) or none";

/// Azure Synapse dedicated SQL pool settings (used when `PATIENTFLOW_WAREHOUSE=synapse`).
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Synapse")]
pub struct SynapseArgs {
    /// The workspace's SQL endpoint, e.g. `myws.sql.azuresynapse.net`.
    #[arg(long, env = "SYNAPSE_SERVER")]
    pub synapse_server: Option<String>,
    /// The dedicated SQL pool (database) name.
    #[arg(long, env = "SYNAPSE_DATABASE")]
    pub synapse_database: Option<String>,
    /// Sign-in: `managedidentity` (default), `developer` (Azure CLI / azd) or `sql`.
    #[arg(long, env = "SYNAPSE_AUTH", default_value = "managedidentity")]
    pub synapse_auth: String,
    /// Client id of a user-assigned managed identity.
    #[arg(long, env = "SYNAPSE_CLIENT_ID")]
    pub synapse_client_id: Option<String>,
    /// SQL user (with SYNAPSE_AUTH=sql).
    #[arg(long, env = "SYNAPSE_USER")]
    pub synapse_user: Option<String>,
    /// SQL password (with SYNAPSE_AUTH=sql).
    #[arg(long, env = "SYNAPSE_PASSWORD", hide_env_values = true)]
    synapse_password: Option<RedactedString>,
    /// Where COPY INTO reads gold: `https://<account>.dfs.core.windows.net/<gold container>`.
    #[arg(long, env = "SYNAPSE_GOLD_URL")]
    pub synapse_gold_url: Option<String>,
    /// Seconds one load batch may run (COPY INTO of a large build takes minutes).
    #[arg(long, env = "SYNAPSE_COMMAND_TIMEOUT_SECS", default_value_t = 1800)]
    pub synapse_command_timeout_secs: u64,
}

impl SynapseArgs {
    /// Validates into a [`crate::warehouse::synapse::SynapseConfig`].
    pub fn config(&self) -> Result<crate::warehouse::synapse::SynapseConfig, ConfigError> {
        use crate::warehouse::synapse::{SynapseAuth, SynapseConfig};
        let need = |v: &Option<String>, name: &str, example: &str| {
            v.clone().ok_or_else(|| ConfigError(format!("PATIENTFLOW_WAREHOUSE=synapse needs {name} (e.g. {example})")))
        };
        let server = need(&self.synapse_server, "SYNAPSE_SERVER", "myworkspace.sql.azuresynapse.net")?;
        let database = need(&self.synapse_database, "SYNAPSE_DATABASE", "patientflow")?;
        let gold_url = need(&self.synapse_gold_url, "SYNAPSE_GOLD_URL", "https://mylake.dfs.core.windows.net/gold")?;
        let auth = match self.synapse_auth.to_ascii_lowercase().as_str() {
            "managedidentity" => SynapseAuth::ManagedIdentity { client_id: self.synapse_client_id.clone() },
            "developer" => SynapseAuth::Developer,
            "sql" => SynapseAuth::Sql {
                user: need(&self.synapse_user, "SYNAPSE_USER", "loader")?,
                password: self
                    .synapse_password
                    .as_ref()
                    .map(|p| p.0.clone())
                    .ok_or_else(|| ConfigError("SYNAPSE_AUTH=sql needs SYNAPSE_PASSWORD".into()))?,
            },
            other => {
                return Err(ConfigError(format!(
                    "SYNAPSE_AUTH={other:?} is not supported; use managedidentity, developer or sql"
                )));
            }
        };
        if self.synapse_command_timeout_secs == 0 {
            return Err(ConfigError("SYNAPSE_COMMAND_TIMEOUT_SECS must be at least 1".into()));
        }
        Ok(SynapseConfig {
            server,
            database,
            auth,
            gold_url,
            command_timeout: Duration::from_secs(self.synapse_command_timeout_secs),
        })
    }
}

/// Resolves the handler's port: `--port`, else `FUNCTIONS_CUSTOMHANDLER_PORT` (set by the host),
/// else its legacy alias `FUNCTIONS_HTTPWORKER_PORT`.
pub fn handler_port(flag: Option<u16>, env: impl Fn(&str) -> Option<String>) -> Result<u16, ConfigError> {
    if let Some(p) = flag {
        return Ok(p);
    }
    for name in ["FUNCTIONS_CUSTOMHANDLER_PORT", "FUNCTIONS_HTTPWORKER_PORT"] {
        if let Some(v) = env(name) {
            return v.trim().parse::<u16>().map_err(|_| {
                ConfigError(format!(
                    "{name}={v:?} is not a TCP port (0-65535); the Functions host sets it, or pass --port"
                ))
            });
        }
    }
    Err(ConfigError(
        "FUNCTIONS_CUSTOMHANDLER_PORT is not set: the Functions host sets it when it starts the handler; to run it by hand, pass --port 3000"
            .into(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        lake: LakeArgs,
    }

    #[test]
    fn port_comes_from_the_flag_or_the_host_and_errors_name_the_fix() {
        assert_eq!(handler_port(Some(9), |_| None).unwrap(), 9);
        assert_eq!(handler_port(None, |k| (k == "FUNCTIONS_CUSTOMHANDLER_PORT").then(|| "4321".into())).unwrap(), 4321);
        assert_eq!(handler_port(None, |k| (k == "FUNCTIONS_HTTPWORKER_PORT").then(|| "7".into())).unwrap(), 7);
        let e = handler_port(None, |_| None).unwrap_err().to_string();
        assert!(e.contains("FUNCTIONS_CUSTOMHANDLER_PORT") && e.contains("--port"), "{e}");
        let e = handler_port(None, |_| Some("http".into())).unwrap_err().to_string();
        assert!(e.contains("not a TCP port"), "{e}");
    }

    #[test]
    fn lake_defaults_to_a_local_folder_and_never_prints_secrets() {
        let t = T::try_parse_from(["x"]).unwrap();
        assert!(matches!(t.lake.storage_config().unwrap().backend, Backend::Local { .. }));
        let t = T::try_parse_from(["x", "--lake", "AccountName=a;AccountKey=c2VjcmV0"]).unwrap();
        assert!(!format!("{:?}", t.lake).contains("c2VjcmV0"));
        let cfg = t.lake.storage_config().unwrap();
        assert!(!format!("{cfg:?}").contains("c2VjcmV0"));
    }

    #[test]
    fn identity_based_lake_settings() {
        let t = T::try_parse_from(["x", "--lake-blob-service-uri", "https://acct.blob.core.windows.net/"]).unwrap();
        let Backend::Azure { account, auth, .. } = t.lake.storage_config().unwrap().backend else { panic!() };
        assert_eq!(account, "acct");
        assert!(matches!(auth, AzureAuth::ManagedIdentity { client_id: None }));
        let t = T::try_parse_from(["x", "--lake-account-name", "acct", "--lake-credential", "certificate"]).unwrap();
        assert!(t.lake.storage_config().unwrap_err().to_string().contains("LAKE__credential"));
        let t = T::try_parse_from(["x", "--bronze-container", "Bad_Name"]).unwrap();
        assert!(t.lake.storage_config().unwrap_err().to_string().contains("not valid"));
    }

    #[test]
    fn the_warehouse_memory_limit_is_a_size_with_a_unit() {
        const S: &str = "PATIENTFLOW_WAREHOUSE_MEMORY_LIMIT";
        assert_eq!(memory_limit(S, "256MB").unwrap(), "256MB");
        assert_eq!(memory_limit(S, " 1.5 GiB ").unwrap(), "1.5GiB");
        for bad in ["", "256", "lots", "0MB", "-1GB", "12 parsecs"] {
            let e = memory_limit(S, bad).unwrap_err().to_string();
            assert!(e.contains(S) && e.contains("256MB"), "{bad:?}: {e}");
        }
    }
}
