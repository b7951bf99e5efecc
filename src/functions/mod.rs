//! The Functions: thin HTTP handlers the host POSTs to at `/<function name>`. Each decodes the host's
//! envelope, calls the pipeline core, and encodes the response; only this layer knows HTTP.

pub mod build_gold;
pub mod gold_job;
pub mod gold_webhook;
pub mod ingest_bronze;
pub mod invocation;
pub mod refine_silver;

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::json;

use crate::pipeline;
use crate::state::AppState;

/// Function names: folder under `functions/`, module name and route are the same word.
pub const FUNCTIONS: [&str; 5] =
    [ingest_bronze::NAME, refine_silver::NAME, build_gold::NAME, gold_webhook::NAME, gold_job::NAME];

/// All function routes.
pub fn router() -> axum::Router<AppState> {
    axum::Router::new()
        .route(&format!("/{}", ingest_bronze::NAME), post(ingest_bronze::handle))
        .route(&format!("/{}", refine_silver::NAME), post(refine_silver::handle))
        .route(&format!("/{}", build_gold::NAME), post(build_gold::handle))
        .route(&format!("/{}", gold_webhook::NAME), post(gold_webhook::handle))
        .route(&format!("/{}", gold_job::NAME), post(gold_job::handle))
}

/// Why an invocation failed. Any non-2xx fails the invocation, so the host retries (Event Hubs and
/// timer functions with their retry policy, blob triggers up to the poison threshold).
#[derive(Debug, thiserror::Error)]
pub enum FunctionError {
    /// The envelope is not what this function's binding sends (a deployment or caller bug).
    #[error("{0}")]
    BadRequest(String),
    /// The input file cannot be processed at all (corrupt).
    #[error("{0}")]
    Unprocessable(String),
    /// Storage or the warehouse is unreachable or failed: retry later.
    #[error("{0}")]
    Unavailable(String),
    /// Another build committed first.
    #[error("{0}")]
    Conflict(String),
    /// A bug.
    #[error("{0}")]
    Internal(String),
}

impl FunctionError {
    fn status(&self) -> StatusCode {
        match self {
            FunctionError::BadRequest(_) => StatusCode::BAD_REQUEST,
            FunctionError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            FunctionError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            FunctionError::Conflict(_) => StatusCode::CONFLICT,
            FunctionError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl From<pipeline::Error> for FunctionError {
    fn from(e: pipeline::Error) -> Self {
        match e {
            pipeline::Error::InvalidInput(m) => FunctionError::BadRequest(m),
            e @ pipeline::Error::Corrupt { .. } => FunctionError::Unprocessable(e.to_string()),
            pipeline::Error::Storage(e) => FunctionError::Unavailable(e.to_string()),
            pipeline::Error::Conflict(m) => FunctionError::Conflict(m),
            e @ pipeline::Error::Internal(_) => FunctionError::Internal(e.to_string()),
        }
    }
}

impl From<pipeline::job::JobError> for FunctionError {
    fn from(e: pipeline::job::JobError) -> Self {
        match e {
            pipeline::job::JobError::Build(e) => e.into(),
            pipeline::job::JobError::Load(m) => FunctionError::Unavailable(m),
        }
    }
}

impl From<crate::storage::Error> for FunctionError {
    fn from(e: crate::storage::Error) -> Self {
        FunctionError::Unavailable(e.to_string())
    }
}

impl IntoResponse for FunctionError {
    fn into_response(self) -> Response {
        let status = self.status();
        // Logged once, here at the edge, inside the invocation's span. Messages carry keys, field
        // names and counts — never event content.
        if status.is_server_error() {
            tracing::error!(error = %self, status = status.as_u16(), "Invocation failed.");
        } else {
            tracing::warn!(error = %self, status = status.as_u16(), "Invocation rejected.");
        }
        let message = match &self {
            FunctionError::Internal(_) => "internal error; see the handler's log".to_string(),
            other => other.to_string(),
        };
        (status, Json(json!({ "error": message, "status": status.as_u16() }))).into_response()
    }
}
