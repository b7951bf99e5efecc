//! The custom handler's HTTP application: the router over the functions, and serving with graceful
//! shutdown. The state the functions share lives in [`crate::state`], below the routes. The listener
//! is bound before any slow setup: the lake opens lazily on first use (and in the background right
//! after binding), so the host's `GET /` probe is answered at once.

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::Request;
use axum::routing::get;
use tokio::net::TcpListener;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

pub use crate::config::{GoldSettings, HandlerSettings, WarehouseConfig};
use crate::functions;
pub use crate::state::AppState;

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
