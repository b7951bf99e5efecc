//! The lake: one API over a local folder, Azurite and Azure Blob/ADLS Gen2, built on `object_store`.
//!
//! A [`Lake`] holds one store per container (`bronze`, `silver`, `gold`, `quarantine`). Writes are
//! whole-object puts, so a reader never sees half a file; [`Lake::put_if_absent`] is the
//! create-if-absent primitive (`If-None-Match: *` on Azure, an atomic link on disk) that makes
//! replays no-ops and lets two racing gold builds detect each other.

pub mod keys;
pub mod parquet;

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::azure::{AzureAuthorizer, MicrosoftAzure, MicrosoftAzureBuilder};
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use secrecy::{ExposeSecret, SecretString};
use tracing::instrument;

/// Azurite's documented well-known development account.
pub const EMULATOR_ACCOUNT: &str = "devstoreaccount1";
/// Azurite's documented well-known development key (public; not a secret).
pub const EMULATOR_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
const EMULATOR_BLOB_ENDPOINT: &str = "http://127.0.0.1:10000/devstoreaccount1";

/// Storage errors. `Unavailable` means retry later; `Config` means fix the settings.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The storage settings are wrong; the message names the setting and the fix.
    #[error("{0}")]
    Config(String),
    /// The store could not be reached or refused the request.
    #[error("storage {container}/{key}: {detail}")]
    Store {
        /// Container name.
        container: String,
        /// Blob key.
        key: String,
        /// What object_store reported, with secrets removed (see [`redact`]).
        detail: String,
    },
    /// Opening the lake took too long (retried on the next use).
    #[error("{0}")]
    Timeout(String),
    /// The object does not exist.
    #[error("storage {container}/{key}: not found")]
    NotFound {
        /// Container name.
        container: String,
        /// Blob key.
        key: String,
    },
    /// Creating a container failed.
    #[error("could not create container `{container}`: {detail}")]
    CreateContainer {
        /// Container name.
        container: String,
        /// Why.
        detail: String,
    },
}

/// Result alias for storage calls.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The four lake containers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Container {
    /// Raw events with their Event Hubs position.
    Bronze,
    /// Typed, validated rows.
    Silver,
    /// The star schema.
    Gold,
    /// Events that cannot be rows, with a reason.
    Quarantine,
}

impl Container {
    /// All containers, in pipeline order.
    pub const ALL: [Container; 4] = [Container::Bronze, Container::Silver, Container::Gold, Container::Quarantine];

    fn index(self) -> usize {
        self as usize
    }

    /// The default container name.
    pub fn default_name(self) -> &'static str {
        match self {
            Container::Bronze => "bronze",
            Container::Silver => "silver",
            Container::Gold => "gold",
            Container::Quarantine => "quarantine",
        }
    }
}

/// How to authenticate to an Azure storage account.
pub enum AzureAuth {
    /// Shared key (connection strings, Azurite).
    AccessKey(SecretString),
    /// A SAS token (connection strings with `SharedAccessSignature`).
    Sas(SecretString),
    /// Managed identity (system-assigned, or user-assigned with a client id).
    ManagedIdentity {
        /// Client id of a user-assigned identity.
        client_id: Option<String>,
    },
    /// Whatever `object_store` finds: workload identity, Azure CLI, managed identity.
    Auto,
}

impl fmt::Debug for AzureAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AzureAuth::AccessKey(_) => f.write_str("AccessKey(<redacted>)"),
            AzureAuth::Sas(_) => f.write_str("Sas(<redacted>)"),
            AzureAuth::ManagedIdentity { client_id } => {
                f.debug_struct("ManagedIdentity").field("client_id", client_id).finish()
            }
            AzureAuth::Auto => f.write_str("Auto"),
        }
    }
}

/// Where the lake lives.
#[derive(Debug)]
pub enum Backend {
    /// A local folder; each container is a sub-folder.
    Local {
        /// The lake's root folder.
        root: PathBuf,
    },
    /// An Azure storage account (or Azurite).
    Azure {
        /// Account name.
        account: String,
        /// Blob endpoint, e.g. `https://acct.blob.core.windows.net` or Azurite's
        /// `http://127.0.0.1:10000/devstoreaccount1`.
        blob_endpoint: String,
        /// Credentials.
        auth: AzureAuth,
    },
    /// In memory (tests).
    Memory,
}

/// The lake's settings: a backend and the container names.
#[derive(Debug)]
pub struct StorageConfig {
    /// Where the lake lives.
    pub backend: Backend,
    /// Container names, indexed like [`Container::ALL`].
    pub containers: [String; 4],
}

impl StorageConfig {
    /// A local folder with the default container names.
    pub fn local(root: impl Into<PathBuf>) -> Self {
        Self { backend: Backend::Local { root: root.into() }, containers: default_names() }
    }

    /// An in-memory lake with the default container names (tests).
    pub fn memory() -> Self {
        Self { backend: Backend::Memory, containers: default_names() }
    }

    /// Parses an Azure Storage connection string (`UseDevelopmentStorage=true`, or
    /// `AccountName=…;AccountKey=…[;BlobEndpoint=…]`, or `…;SharedAccessSignature=…`).
    /// `setting` is the name of the setting it came from, used in error messages.
    pub fn from_connection_string(setting: &str, conn: &str) -> Result<Backend> {
        let mut parts = std::collections::HashMap::new();
        for part in conn.split(';').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, v) = part.split_once('=').ok_or_else(|| {
                Error::Config(format!(
                    "{setting} is not a storage connection string (a part has no `=`); use `UseDevelopmentStorage=true` for Azurite or the account's connection string from the portal"
                ))
            })?;
            parts.insert(k.to_ascii_lowercase(), v.to_string());
        }
        if parts.get("usedevelopmentstorage").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
            let endpoint = match parts.get("developmentstorageproxyuri") {
                Some(proxy) => format!("{}/{EMULATOR_ACCOUNT}", proxy.trim_end_matches('/')),
                None => EMULATOR_BLOB_ENDPOINT.to_string(),
            };
            return Ok(Backend::Azure {
                account: EMULATOR_ACCOUNT.to_string(),
                blob_endpoint: endpoint,
                auth: AzureAuth::AccessKey(SecretString::from(EMULATOR_KEY)),
            });
        }
        let account = parts.get("accountname").cloned().ok_or_else(|| {
            Error::Config(format!(
                "{setting} has no AccountName; copy the full connection string from the storage account's Access keys page, or use `UseDevelopmentStorage=true` for Azurite"
            ))
        })?;
        let blob_endpoint = match parts.get("blobendpoint") {
            Some(e) => e.trim_end_matches('/').to_string(),
            None => {
                let protocol = parts.get("defaultendpointsprotocol").map_or("https", String::as_str);
                let suffix = parts.get("endpointsuffix").map_or("core.windows.net", String::as_str);
                format!("{protocol}://{account}.blob.{suffix}")
            }
        };
        let auth = if let Some(key) = parts.get("accountkey") {
            AzureAuth::AccessKey(SecretString::from(key.clone()))
        } else if let Some(sas) = parts.get("sharedaccesssignature") {
            AzureAuth::Sas(SecretString::from(sas.clone()))
        } else {
            return Err(Error::Config(format!(
                "{setting} has neither AccountKey nor SharedAccessSignature; add one, or use identity-based settings ({setting}__accountName / {setting}__blobServiceUri) instead"
            )));
        };
        Ok(Backend::Azure { account, blob_endpoint, auth })
    }

    /// A one-line description without secrets, for logs.
    pub fn describe(&self) -> String {
        match &self.backend {
            Backend::Local { root } => format!("local folder {}", root.display()),
            Backend::Azure { blob_endpoint, .. } => format!("azure blob {blob_endpoint}"),
            Backend::Memory => "in-memory".to_string(),
        }
    }
}

fn default_names() -> [String; 4] {
    Container::ALL.map(|c| c.default_name().to_string())
}

/// Whether a create-if-absent put wrote the object or found it already there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    /// The object was written.
    Created,
    /// An object of that name already existed; nothing was written.
    AlreadyExists,
}

/// The lake: one object store per container.
#[derive(Clone)]
pub struct Lake {
    stores: [Arc<dyn ObjectStore>; 4],
    names: [String; 4],
    base_uri: String,
}

impl fmt::Debug for Lake {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lake").field("base_uri", &self.base_uri).field("containers", &self.names).finish()
    }
}

impl Lake {
    /// Opens the lake and creates missing containers (folders locally, containers on Azure/Azurite).
    pub async fn open(config: &StorageConfig) -> Result<Self> {
        let names = config.containers.clone();
        match &config.backend {
            Backend::Memory => Ok(Self {
                stores: std::array::from_fn(|_| {
                    Arc::new(object_store::memory::InMemory::new()) as Arc<dyn ObjectStore>
                }),
                names,
                base_uri: "memory://".into(),
            }),
            Backend::Local { root } => {
                let mut stores = Vec::with_capacity(4);
                for name in &names {
                    let dir = root.join(name);
                    std::fs::create_dir_all(&dir).map_err(|e| {
                        Error::Config(format!(
                            "cannot create the lake folder {}: {e}; pass a writable --data-dir (PATIENTFLOW_DATA_DIR)",
                            dir.display()
                        ))
                    })?;
                    let fs = LocalFileSystem::new_with_prefix(&dir)
                        .map_err(|e| Error::Config(format!("cannot use lake folder {}: {e}", dir.display())))?;
                    // Blob semantics: delete leaves no empty folders behind.
                    stores.push(Arc::new(fs.with_automatic_cleanup(true)) as Arc<dyn ObjectStore>);
                }
                let root = std::fs::canonicalize(root).unwrap_or_else(|_| root.clone());
                Ok(Self { stores: to_array(stores), names, base_uri: format!("file://{}", root.display()) })
            }
            Backend::Azure { account, blob_endpoint, auth } => {
                let mut stores = Vec::with_capacity(4);
                for name in &names {
                    let store = azure_store(account, blob_endpoint, auth, name)?;
                    ensure_container(&store, account, blob_endpoint, name).await?;
                    stores.push(Arc::new(store) as Arc<dyn ObjectStore>);
                }
                Ok(Self { stores: to_array(stores), names, base_uri: blob_endpoint.clone() })
            }
        }
    }

    fn store(&self, c: Container) -> &Arc<dyn ObjectStore> {
        &self.stores[c.index()]
    }

    /// The configured name of a container.
    pub fn container_name(&self, c: Container) -> &str {
        &self.names[c.index()]
    }

    /// The URI of a blob, as the blob trigger's `Metadata.Uri` would carry it.
    pub fn uri(&self, c: Container, key: &Path) -> String {
        format!("{}/{}/{}", self.base_uri, self.container_name(c), key)
    }

    fn store_error(&self, c: Container, key: &Path, source: object_store::Error) -> Error {
        match source {
            object_store::Error::NotFound { .. } => {
                Error::NotFound { container: self.container_name(c).to_string(), key: key.to_string() }
            }
            source => Error::Store {
                container: self.container_name(c).to_string(),
                key: key.to_string(),
                detail: redact(&source.to_string()),
            },
        }
    }

    /// Writes `bytes` unless an object of that name exists (then nothing is written).
    #[instrument(level = "debug", skip(self, bytes), fields(container = ?c, key = %key, bytes = bytes.len()))]
    pub async fn put_if_absent(&self, c: Container, key: &Path, bytes: Bytes) -> Result<PutOutcome> {
        let opts = PutOptions { mode: PutMode::Create, ..Default::default() };
        match self.store(c).put_opts(key, PutPayload::from_bytes(bytes), opts).await {
            Ok(_) => Ok(PutOutcome::Created),
            Err(object_store::Error::AlreadyExists { .. }) => Ok(PutOutcome::AlreadyExists),
            Err(e) => Err(self.store_error(c, key, e)),
        }
    }

    /// Writes `bytes`, replacing any object of that name.
    #[instrument(level = "debug", skip(self, bytes), fields(container = ?c, key = %key, bytes = bytes.len()))]
    pub async fn put(&self, c: Container, key: &Path, bytes: Bytes) -> Result<()> {
        self.store(c).put(key, PutPayload::from_bytes(bytes)).await.map(|_| ()).map_err(|e| self.store_error(c, key, e))
    }

    /// Reads a whole object.
    #[instrument(level = "debug", skip(self), fields(container = ?c, key = %key))]
    pub async fn get(&self, c: Container, key: &Path) -> Result<Bytes> {
        let result = self.store(c).get(key).await.map_err(|e| self.store_error(c, key, e))?;
        result.bytes().await.map_err(|e| self.store_error(c, key, e))
    }

    /// Whether an object exists.
    pub async fn exists(&self, c: Container, key: &Path) -> Result<bool> {
        match self.store(c).head(key).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(self.store_error(c, key, e)),
        }
    }

    /// Whether each of `keys` exists, in order (at most 16 requests in flight).
    pub async fn exist_each(&self, c: Container, keys: &[Path]) -> Result<Vec<bool>> {
        let mut found = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(16) {
            found.extend(futures::future::try_join_all(chunk.iter().map(|k| self.exists(c, k))).await?);
        }
        Ok(found)
    }

    /// Lists every object under `prefix`, sorted by key.
    #[instrument(level = "debug", skip(self), fields(container = ?c, prefix = %prefix))]
    pub async fn list(&self, c: Container, prefix: &Path) -> Result<Vec<ObjectMeta>> {
        let mut items: Vec<ObjectMeta> =
            self.store(c).list(Some(prefix)).try_collect().await.map_err(|e| self.store_error(c, prefix, e))?;
        items.sort_by(|a, b| a.location.cmp(&b.location));
        Ok(items)
    }

    /// Lists every object under `prefix` whose key sorts after `offset` (all of them without one),
    /// sorted by key.
    pub async fn list_after(&self, c: Container, prefix: &Path, offset: Option<&Path>) -> Result<Vec<ObjectMeta>> {
        let Some(offset) = offset else { return self.list(c, prefix).await };
        let mut items: Vec<ObjectMeta> = self
            .store(c)
            .list_with_offset(Some(prefix), offset)
            .try_collect()
            .await
            .map_err(|e| self.store_error(c, prefix, e))?;
        items.sort_by(|a, b| a.location.cmp(&b.location));
        Ok(items)
    }

    /// The folders directly under `prefix`, sorted.
    pub async fn list_folders(&self, c: Container, prefix: &Path) -> Result<Vec<Path>> {
        let mut folders = self
            .store(c)
            .list_with_delimiter(Some(prefix))
            .await
            .map_err(|e| self.store_error(c, prefix, e))?
            .common_prefixes;
        folders.sort();
        Ok(folders)
    }

    /// Deletes an object; deleting a missing object is not an error.
    pub async fn delete(&self, c: Container, key: &Path) -> Result<()> {
        match self.store(c).delete(key).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.store_error(c, key, e)),
        }
    }
}

/// Removes secrets from text that may quote a URL or a connection string (errors from HTTP clients
/// carry the request URL, which holds a SAS token's signature): the value of every `sig` query
/// parameter and of `AccountKey=` / `SharedAccessSignature=` become `REDACTED`.
pub fn redact(text: &str) -> String {
    const MARKERS: [&str; 3] = ["sig=", "accountkey=", "sharedaccesssignature="];
    const ENDS: &[char] = &['&', ';', '"', '\'', ' ', '\n', ')', '>', ',', '`'];
    let lower = text.to_ascii_lowercase();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < text.len() {
        match MARKERS.iter().find(|m| lower[i..].starts_with(*m)) {
            Some(m) => {
                out.push_str(&text[i..i + m.len()]);
                i += m.len();
                let end = text[i..].find(ENDS).map_or(text.len(), |e| i + e);
                if end > i {
                    out.push_str("REDACTED");
                }
                i = end;
            }
            None => {
                let ch = text[i..].chars().next().unwrap_or(' ');
                out.push(ch);
                i += ch.len_utf8();
            }
        }
    }
    out
}

fn to_array(stores: Vec<Arc<dyn ObjectStore>>) -> [Arc<dyn ObjectStore>; 4] {
    let mut it = stores.into_iter();
    std::array::from_fn(|_| it.next().unwrap_or_else(|| Arc::new(object_store::memory::InMemory::new())))
}

fn azure_store(account: &str, endpoint: &str, auth: &AzureAuth, container: &str) -> Result<MicrosoftAzure> {
    let mut builder = MicrosoftAzureBuilder::new()
        .with_account(account)
        .with_container_name(container)
        .with_endpoint(endpoint.to_string())
        .with_allow_http(endpoint.starts_with("http://"))
        // Fail an invocation within about a minute of an outage and let the host's retry policy
        // take over, rather than holding the invocation for object_store's default three minutes.
        .with_retry(object_store::RetryConfig {
            max_retries: 4,
            retry_timeout: std::time::Duration::from_secs(60),
            ..Default::default()
        });
    builder = match auth {
        AzureAuth::AccessKey(key) => builder.with_access_key(key.expose_secret()),
        AzureAuth::Sas(sas) => {
            let pairs = object_store::azure::split_sas(sas.expose_secret().trim_start_matches('?'))
                .map_err(|e| Error::Config(format!("the storage SAS token is malformed: {e}")))?;
            builder.with_sas_authorization(pairs)
        }
        AzureAuth::ManagedIdentity { client_id } => {
            let b = builder.with_credential_type("managed_identity");
            match client_id {
                Some(id) => b.with_client_id(id),
                None => b,
            }
        }
        AzureAuth::Auto => builder,
    };
    builder
        .build()
        .map_err(|e| Error::Config(format!("cannot configure Azure storage for container `{container}`: {e}")))
}

/// Creates a container when it does not exist. object_store has no container API, so this signs one
/// `PUT ?restype=container` with the store's own credential (shared key, SAS or bearer token).
async fn ensure_container(store: &MicrosoftAzure, account: &str, endpoint: &str, container: &str) -> Result<()> {
    let fail = |detail: String| Error::CreateContainer { container: container.to_string(), detail: redact(&detail) };
    let credential =
        store.credentials().get_credential().await.map_err(|e| fail(format!("no storage credential: {e}")))?;
    let url = format!("{endpoint}/{container}?restype=container");
    let mut request = http::Request::builder()
        .method(http::Method::PUT)
        .uri(&url)
        .header(http::header::CONTENT_LENGTH, "0")
        .body(object_store::client::HttpRequestBody::empty())
        .map_err(|e| fail(e.to_string()))?;
    AzureAuthorizer::new(&credential, account)
        .try_authorize(&mut request)
        .map_err(|e| fail(format!("cannot sign the request: {e}")))?;
    // Bounded: this runs while the lake's first use waits, and an unreachable endpoint must fail
    // the invocation (the host retries) rather than hold it.
    let client = reqwest::Client::builder()
        .connect_timeout(std::time::Duration::from_secs(10))
        .timeout(std::time::Duration::from_secs(30))
        .build()
        .map_err(|e| fail(format!("cannot build an HTTP client: {e}")))?;
    let mut call = client.put(request.uri().to_string());
    for (name, value) in request.headers() {
        call = call.header(name, value);
    }
    // The request URL carries a SAS token's signature: drop it from the error, and redact the rest.
    let response = call
        .send()
        .await
        .map_err(|e| fail(redact(&format!("storage unreachable at {endpoint}: {}", e.without_url()))))?;
    let status = response.status();
    if status.is_success() || status == reqwest::StatusCode::CONFLICT {
        return Ok(());
    }
    // An identity or SAS that may use a container but not create one: fine if it already exists.
    if store.list_with_delimiter(None).await.is_ok() {
        return Ok(());
    }
    let code = response.headers().get("x-ms-error-code").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    Err(fail(format!(
        "HTTP {status} {code}; create it yourself (`az storage container create -n {container}`) or grant the identity `Storage Blob Data Contributor`"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_connection_strings_without_leaking_keys() {
        let dev = StorageConfig::from_connection_string("LAKE", "UseDevelopmentStorage=true").unwrap();
        let Backend::Azure { account, blob_endpoint, .. } = &dev else { panic!("{dev:?}") };
        assert_eq!(account, EMULATOR_ACCOUNT);
        assert_eq!(blob_endpoint, EMULATOR_BLOB_ENDPOINT);

        let conn =
            "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=c2VjcmV0;EndpointSuffix=core.windows.net";
        let b = StorageConfig::from_connection_string("LAKE", conn).unwrap();
        let shown = format!("{b:?}");
        assert!(shown.contains("https://acct.blob.core.windows.net"), "{shown}");
        assert!(!shown.contains("c2VjcmV0"), "{shown}");

        let azurite = "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=a2V5;BlobEndpoint=http://127.0.0.1:4444/devstoreaccount1;";
        let Backend::Azure { blob_endpoint, .. } = StorageConfig::from_connection_string("LAKE", azurite).unwrap()
        else {
            panic!()
        };
        assert_eq!(blob_endpoint, "http://127.0.0.1:4444/devstoreaccount1");
    }

    #[test]
    fn redaction_removes_signatures_and_keys_only() {
        let url = "error sending request for url (http://127.0.0.1:9/acct/c?restype=container&sv=2022-11-02&sig=AbC%2Bd%3D&se=2030)";
        let shown = redact(url);
        assert!(!shown.contains("AbC%2Bd%3D"), "{shown}");
        assert!(
            shown.contains("sig=REDACTED&se=2030)") && shown.contains("restype=container&sv=2022-11-02"),
            "{shown}"
        );
        let conn = redact("AccountName=a;AccountKey=c2VjcmV0;SharedAccessSignature=sv=1&SIG=zz");
        assert_eq!(conn, "AccountName=a;AccountKey=REDACTED;SharedAccessSignature=REDACTED&SIG=REDACTED");
        assert_eq!(
            redact("patient-flow/partition=3/1-2.parquet: not found"),
            "patient-flow/partition=3/1-2.parquet: not found"
        );
    }

    #[test]
    fn bad_connection_strings_name_the_setting_and_the_fix() {
        let e = StorageConfig::from_connection_string("LAKE", "nonsense").unwrap_err().to_string();
        assert!(e.contains("LAKE") && e.contains("UseDevelopmentStorage=true"), "{e}");
        let e = StorageConfig::from_connection_string("LAKE", "AccountName=a").unwrap_err().to_string();
        assert!(e.contains("AccountKey"), "{e}");
    }

    #[tokio::test]
    async fn create_if_absent_writes_once() -> Result<()> {
        let lake = Lake::open(&StorageConfig::memory()).await?;
        let key = Path::from("a/b.parquet");
        assert_eq!(lake.put_if_absent(Container::Bronze, &key, Bytes::from_static(b"1")).await?, PutOutcome::Created);
        assert_eq!(
            lake.put_if_absent(Container::Bronze, &key, Bytes::from_static(b"2")).await?,
            PutOutcome::AlreadyExists
        );
        assert_eq!(lake.get(Container::Bronze, &key).await?, Bytes::from_static(b"1"));
        assert!(!lake.exists(Container::Silver, &key).await?);
        assert!(matches!(lake.get(Container::Silver, &key).await, Err(Error::NotFound { .. })));
        Ok(())
    }

    #[tokio::test]
    async fn local_lake_creates_container_folders() -> Result<()> {
        let dir = tempfile::tempdir().unwrap();
        let lake = Lake::open(&StorageConfig::local(dir.path())).await?;
        for c in Container::ALL {
            assert!(dir.path().join(c.default_name()).is_dir());
        }
        let key = Path::from("patient-flow/x.parquet");
        lake.put_if_absent(Container::Gold, &key, Bytes::from_static(b"x")).await?;
        assert_eq!(lake.list(Container::Gold, &keys::patient_flow_prefix()).await?.len(), 1);
        Ok(())
    }
}
