//! State shared by every function: the lake (opened on first use), the warehouse (opened on first
//! use), the settings and the clock. Below the routes: it knows nothing of HTTP, so the command
//! line and the pipeline's job use it as they are.

use std::sync::Arc;
use std::time::Duration;

use chrono::NaiveDateTime;
use tokio::sync::OnceCell;

use crate::config::{GoldSettings, HandlerSettings, WarehouseConfig};
use crate::model::time::now_utc;
use crate::storage::{Lake, StorageConfig};
use crate::warehouse::Warehouse;

/// Longest the first use waits for the lake to open (credential, container creation). Every call it
/// makes is bounded by its own timeouts; this bounds the whole, so the init lock is never held
/// longer and the next invocation retries.
pub const LAKE_OPEN_TIMEOUT: Duration = Duration::from_secs(90);

struct Inner {
    storage: StorageConfig,
    lake: OnceCell<Lake>,
    warehouse_config: WarehouseConfig,
    warehouse: OnceCell<Option<Arc<dyn Warehouse>>>,
    settings: HandlerSettings,
    gold: GoldSettings,
}

/// State shared by every function.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

impl AppState {
    /// State whose lake opens on first use, with no warehouse and default gold settings.
    pub fn new(storage: StorageConfig, settings: HandlerSettings) -> Self {
        Self::build(storage, None, settings, WarehouseConfig::None, GoldSettings::default())
    }

    /// State around an already open lake, with no warehouse and default gold settings.
    pub fn with_lake(lake: Lake, settings: HandlerSettings) -> Self {
        Self::build(StorageConfig::memory(), Some(lake), settings, WarehouseConfig::None, GoldSettings::default())
    }

    /// The general constructor.
    pub fn build(
        storage: StorageConfig,
        lake: Option<Lake>,
        settings: HandlerSettings,
        warehouse: WarehouseConfig,
        gold: GoldSettings,
    ) -> Self {
        Self(Arc::new(Inner {
            storage,
            lake: OnceCell::new_with(lake),
            warehouse_config: warehouse,
            warehouse: OnceCell::new(),
            settings,
            gold,
        }))
    }

    /// The warehouse, opened on first use; `None` when none is configured.
    pub async fn warehouse(&self) -> crate::warehouse::Result<Option<Arc<dyn Warehouse>>> {
        use crate::warehouse::Error;
        self.0
            .warehouse
            .get_or_try_init(|| async {
                match &self.0.warehouse_config {
                    WarehouseConfig::None => Ok(None),
                    #[cfg(feature = "embedded-warehouse")]
                    WarehouseConfig::Embedded(config) => {
                        let config = config.clone();
                        let w = tokio::task::spawn_blocking(move || {
                            crate::warehouse::embedded::Embedded::open_with(&config)
                        })
                        .await
                        .map_err(|e| Error::Database(format!("opening the embedded warehouse panicked: {e}")))??;
                        Ok(Some(Arc::new(w) as Arc<dyn Warehouse>))
                    }
                    #[cfg(not(feature = "embedded-warehouse"))]
                    WarehouseConfig::Embedded(_) => Err(Error::Database(crate::config::NO_EMBEDDED_WAREHOUSE.into())),
                    WarehouseConfig::Synapse(config) => {
                        let w = crate::warehouse::synapse::Synapse::new(Arc::clone(config))?;
                        Ok(Some(Arc::new(w) as Arc<dyn Warehouse>))
                    }
                }
            })
            .await
            .cloned()
    }

    /// Gold settings.
    pub fn gold(&self) -> &GoldSettings {
        &self.0.gold
    }

    /// The lake, opening it (and creating containers) on first use. A failed or timed-out open is
    /// retried on the next call, so a storage outage at start-up heals without a restart.
    pub async fn lake(&self) -> crate::storage::Result<&Lake> {
        self.0
            .lake
            .get_or_try_init(|| async {
                tokio::time::timeout(LAKE_OPEN_TIMEOUT, Lake::open(&self.0.storage)).await.map_err(|_| {
                    crate::storage::Error::Timeout(format!(
                        "the lake ({}) did not open within {} s; retried on the next invocation",
                        self.0.storage.describe(),
                        LAKE_OPEN_TIMEOUT.as_secs()
                    ))
                })?
            })
            .await
    }

    /// The handler's clock.
    pub fn clock(&self) -> NaiveDateTime {
        self.0.settings.now.unwrap_or_else(now_utc)
    }

    /// The handler's settings.
    pub fn settings(&self) -> &HandlerSettings {
        &self.0.settings
    }
}

/// The job loads into the configured warehouse, opened on first use.
#[async_trait::async_trait]
impl crate::pipeline::job::Loader for AppState {
    async fn load(
        &self,
        lake: &Lake,
        manifest: &crate::pipeline::gold::manifest::Manifest,
    ) -> Result<Option<crate::pipeline::job::Loaded>, String> {
        let Some(warehouse) = self.warehouse().await.map_err(|e| e.to_string())? else { return Ok(None) };
        let load = warehouse.load(lake, manifest).await.map_err(|e| e.to_string())?;
        let summary = load.loaded.then(|| {
            format!("{} warehouse loaded build {} ({} fact rows)", warehouse.name(), load.build, load.fact_rows_total)
        });
        let metrics = serde_json::to_value(&load).map_err(|e| e.to_string())?;
        Ok(Some(crate::pipeline::job::Loaded { summary, metrics }))
    }
}

impl AppState {
    /// The gold job's options for `trigger` at `now`, from the gold settings.
    pub fn job_options(
        &self,
        now: NaiveDateTime,
        trigger: crate::pipeline::job::Trigger,
    ) -> crate::pipeline::job::JobOptions {
        crate::pipeline::job::JobOptions {
            now,
            retention: self.0.gold.retention,
            max_files_per_build: self.0.gold.max_files_per_build,
            max_rows_per_build: self.0.gold.max_rows_per_build,
            trigger,
        }
    }
}
