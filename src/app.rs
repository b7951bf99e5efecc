//! The custom handler's HTTP application: shared state, the router, and serving with graceful
//! shutdown. The listener is bound before any slow setup: the lake opens lazily on first use (and
//! in the background right after binding), so the host's `GET /` probe is answered at once.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::Request;
use axum::routing::get;
use chrono::NaiveDateTime;
use tokio::net::TcpListener;
use tokio::sync::OnceCell;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

use crate::functions::{self, FunctionError};
use crate::model::time::now_utc;
use crate::storage::{Lake, StorageConfig};
use crate::warehouse::Warehouse;

/// Handler settings (see `config::HandlerArgs` for their app-setting names and defaults).
#[derive(Debug, Clone)]
pub struct HandlerSettings {
    /// Largest accepted request body in bytes.
    pub max_body_bytes: usize,
    /// Longest an invocation may take before the handler answers 408.
    pub request_timeout: Duration,
    /// A fixed clock (tests, reproducible runs); `None` is the real clock.
    pub now: Option<NaiveDateTime>,
}

impl Default for HandlerSettings {
    fn default() -> Self {
        Self { max_body_bytes: 256 * 1024 * 1024, request_timeout: Duration::from_secs(600), now: None }
    }
}

/// Gold settings (see `config::GoldArgs`).
#[derive(Debug, Clone)]
pub struct GoldSettings {
    /// The timer builds only when more than this many silver files are new (the seed's ADF rule).
    pub min_new_files: usize,
    /// How long superseded gold build files are kept.
    pub retention: Duration,
    /// Where Data Factory callbacks may go.
    pub adf_callbacks: crate::adf::CallbackPolicy,
    /// Silver files folded into one gold build at most (bounds a build's memory).
    pub max_files_per_build: usize,
}

impl Default for GoldSettings {
    fn default() -> Self {
        Self {
            min_new_files: 5,
            retention: Duration::from_secs(7 * 24 * 3600),
            adf_callbacks: crate::adf::CallbackPolicy::default(),
            max_files_per_build: 1024,
        }
    }
}

/// Which warehouse gold is loaded into.
#[derive(Debug, Clone)]
pub enum WarehouseConfig {
    /// None: gold stays in the lake only.
    None,
    /// The embedded DuckDB database at this path.
    Embedded(std::path::PathBuf),
    /// An Azure Synapse dedicated SQL pool.
    Synapse(Arc<crate::warehouse::synapse::SynapseConfig>),
}

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
    pub async fn warehouse(&self) -> Result<Option<Arc<dyn Warehouse>>, FunctionError> {
        self.0
            .warehouse
            .get_or_try_init(|| async {
                match &self.0.warehouse_config {
                    WarehouseConfig::None => Ok(None),
                    #[cfg(feature = "embedded-warehouse")]
                    WarehouseConfig::Embedded(path) => {
                        let path = path.clone();
                        let w = tokio::task::spawn_blocking(move || crate::warehouse::embedded::Embedded::open(&path))
                            .await
                            .map_err(|e| FunctionError::Internal(e.to_string()))?
                            .map_err(|e| FunctionError::Unavailable(e.to_string()))?;
                        Ok(Some(Arc::new(w) as Arc<dyn Warehouse>))
                    }
                    WarehouseConfig::Synapse(config) => {
                        let w = crate::warehouse::synapse::Synapse::new(Arc::clone(config)).map_err(|e| FunctionError::Unavailable(e.to_string()))?;
                        Ok(Some(Arc::new(w) as Arc<dyn Warehouse>))
                    }
                    #[cfg(not(feature = "embedded-warehouse"))]
                    WarehouseConfig::Embedded(_) => Err(FunctionError::Unavailable(
                        "this build has no embedded warehouse (feature `embedded-warehouse`); set PATIENTFLOW_WAREHOUSE=none".into(),
                    )),
                }
            })
            .await
            .cloned()
    }

    /// Gold settings.
    pub fn gold(&self) -> &GoldSettings {
        &self.0.gold
    }

    /// The lake, opening it (and creating containers) on first use. A failed open is retried on the
    /// next call, so a storage outage at start-up heals without a restart.
    pub async fn lake(&self) -> Result<&Lake, FunctionError> {
        self.0
            .lake
            .get_or_try_init(|| Lake::open(&self.0.storage))
            .await
            .map_err(|e| FunctionError::Unavailable(e.to_string()))
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

/// The full router: `GET /` for the host's readiness probe and pings, plus every function.
pub fn router(state: AppState) -> Router {
    let settings = state.settings().clone();
    Router::new()
        .route("/", get(|| async { "patientflow handler ready" }))
        .merge(functions::router())
        .layer(DefaultBodyLimit::max(settings.max_body_bytes))
        .layer(TimeoutLayer::with_status_code(axum::http::StatusCode::REQUEST_TIMEOUT, settings.request_timeout))
        .layer(TraceLayer::new_for_http().make_span_with(|req: &Request<_>| {
            let invocation_id =
                req.headers().get("x-azure-functions-invocationid").and_then(|v| v.to_str().ok()).unwrap_or("");
            tracing::info_span!("invocation", function = %req.uri().path().trim_start_matches('/'), invocation_id)
        }))
        .with_state(state)
}

/// Serves until `shutdown` completes, then finishes in-flight invocations.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    // Warm the lake in the background: the port is already bound, so the host sees us as ready.
    let warm = state.clone();
    tokio::spawn(async move {
        if let Err(error) = warm.lake().await {
            tracing::warn!(%error, "Lake not reachable yet; will retry on the first invocation.");
        }
    });
    axum::serve(listener, router(state)).with_graceful_shutdown(shutdown).await
}

/// Completes on Ctrl-C or SIGTERM (what the host sends when it stops the worker).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
    tracing::info!("Shutting down after in-flight invocations.");
}
