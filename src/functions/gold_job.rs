//! `gold_job`: the queue-triggered function that does what Data Factory asked through
//! `gold_webhook`: runs the gold job ([`crate::pipeline::job`]: builds gold with no threshold — or
//! finds the build another builder committed with the same data — and loads the warehouse), and POSTs `{Output, Error,
//! StatusCode}` to the callback — on failure too. Idempotent on the run id: the outcome is recorded in
//! `gold/_adf_runs/<run id>.json`, so a redelivered message re-sends the recorded result instead of
//! building again, and a delivered one is a no-op.

use axum::Json;
use axum::extract::State;
use bytes::Bytes;
use object_store::path::Path;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::FunctionError;
use super::invocation::{InvokeRequest, InvokeResponse, host_string};
use crate::adf::{self, GoldJobMessage};
use crate::pipeline::job::{self, JobError, Trigger};
use crate::state::AppState;
use crate::storage::Container;

/// Function name (folder, module and route).
pub const NAME: &str = "gold_job";
/// The queue trigger binding's name.
pub const BINDING: &str = "job";

/// What was recorded for a run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunRecord {
    /// The callback body.
    pub callback: Value,
    /// Whether the callback was delivered.
    pub delivered: bool,
}

fn run_key(run_id: &str) -> Path {
    let safe = run_id.len() <= 100 && run_id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    let name =
        if safe { run_id.to_string() } else { format!("h-{:016x}", xxhash_rust::xxh3::xxh3_64(run_id.as_bytes())) };
    Path::from(format!("_adf_runs/{name}.json"))
}

/// POST /gold_job
pub async fn handle(State(state): State<AppState>, body: Bytes) -> Result<Json<InvokeResponse>, FunctionError> {
    let req = InvokeRequest::from_slice(&body)?;
    let raw = host_string(req.binding(BINDING)?)
        .ok_or_else(|| FunctionError::BadRequest("Data.job is not a queue message string".into()))?;
    let job: GoldJobMessage = match serde_json::from_str(&raw) {
        Ok(j) => j,
        Err(e) => {
            // A message we cannot read will never become readable: do not retry it.
            tracing::error!(error = %e, "Gold job message is not a job; dropped.");
            return Ok(Json(InvokeResponse::logs(vec![format!("gold job: not a job message ({e}); dropped")])));
        }
    };
    let url = match state.gold().adf_callbacks.check(&job.call_back_uri) {
        Ok(u) => u,
        Err(reason) => {
            tracing::warn!(run_id = %job.run_id, %reason, "Data Factory callback refused.");
            return Ok(Json(InvokeResponse::logs(vec![format!(
                "gold job {}: callback refused: {reason}",
                job.run_id
            )])));
        }
    };
    let lake = state.lake().await?;
    let key = run_key(&job.run_id);
    let record = match lake.get(Container::Gold, &key).await {
        Ok(bytes) => serde_json::from_slice::<RunRecord>(&bytes).ok(),
        Err(crate::storage::Error::NotFound { .. }) => None,
        Err(e) => return Err(e.into()),
    };
    let record = match record {
        Some(r) if r.delivered => {
            return Ok(Json(InvokeResponse::logs(vec![format!("gold job {}: already done and reported", job.run_id)])));
        }
        Some(r) => r,
        None => {
            let now = req.utc_now().unwrap_or_else(|| state.clock());
            let callback = match job::run(lake, &state, &state.job_options(now, Trigger::Request)).await {
                Ok(report) => adf::callback_body(Ok(&serde_json::to_value(&report).unwrap_or_default())),
                Err(e @ (JobError::Load(_) | JobError::Build(crate::pipeline::Error::Storage(_)))) => {
                    adf::callback_body(Err(("GOLD_DEPENDENCY_FAILED", &e.to_string())))
                }
                Err(e) => adf::callback_body(Err(("GOLD_BUILD_FAILED", &e.to_string()))),
            };
            let r = RunRecord { callback, delivered: false };
            lake.put(Container::Gold, &key, Bytes::from(serde_json::to_vec(&r).unwrap_or_default())).await?;
            r
        }
    };
    // A failed delivery fails the invocation: the queue redelivers, and the recorded result is re-sent.
    adf::send_callback(&url, &record.callback).await.map_err(FunctionError::Unavailable)?;
    let done = RunRecord { delivered: true, ..record.clone() };
    lake.put(Container::Gold, &key, Bytes::from(serde_json::to_vec(&done).unwrap_or_default())).await?;
    let status = record.callback["StatusCode"].as_str().unwrap_or("").to_string();
    tracing::info!(run_id = %job.run_id, status = %status, "Data Factory callback delivered.");
    Ok(Json(InvokeResponse {
        logs: vec![format!("gold job {}: callback delivered (StatusCode {status})", job.run_id)],
        return_value: record.callback,
        ..Default::default()
    }))
}
