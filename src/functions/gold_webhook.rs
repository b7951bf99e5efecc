//! `gold_webhook`: the HTTP-triggered function Data Factory's Webhook activity calls. It answers 202
//! at once (ADF allows one minute) and enqueues a job for `gold_job` through its queue output binding;
//! the job builds gold, loads the warehouse and POSTs the result to `callBackUri`. A callback URL that
//! is not https on an allowed host is refused here, before anything is queued.

use axum::Json;
use axum::extract::State;
use bytes::Bytes;
use serde_json::{Value, json};

use super::FunctionError;
use super::invocation::{InvokeRequest, InvokeResponse};
use crate::adf::GoldJobMessage;
use crate::model::time::rfc3339;
use crate::state::AppState;

/// Function name (folder, module and route).
pub const NAME: &str = "gold_webhook";
/// The HTTP trigger binding's name.
pub const BINDING: &str = "req";

fn respond(status: u16, body: Value, job: Option<String>, log: String) -> Json<InvokeResponse> {
    let mut outputs = serde_json::Map::new();
    outputs.insert(
        "res".into(),
        json!({ "statusCode": status, "headers": {"Content-Type": "application/json"}, "body": body }),
    );
    if let Some(job) = job {
        // A JSON string is not base64, so the host writes it to the queue as is.
        outputs.insert("job".into(), Value::String(job));
    }
    Json(InvokeResponse { outputs, logs: vec![log], return_value: Value::Null })
}

/// POST /gold_webhook
pub async fn handle(State(state): State<AppState>, body: Bytes) -> Result<Json<InvokeResponse>, FunctionError> {
    let req = InvokeRequest::from_slice(&body)?;
    let http = req.binding(BINDING)?;
    // Body is a string of JSON (payload mode); tolerate an object too.
    let payload: Value = match http.get("Body") {
        Some(Value::String(s)) => match serde_json::from_str(s) {
            Ok(v) => v,
            Err(_) => {
                return Ok(respond(
                    400,
                    json!({"error": "the body is not JSON"}),
                    None,
                    "gold webhook: body is not JSON".into(),
                ));
            }
        },
        Some(v @ Value::Object(_)) => v.clone(),
        _ => Value::Null,
    };
    let Some(callback) = payload.get("callBackUri").and_then(Value::as_str) else {
        let msg = "the body has no callBackUri; call this function from a Data Factory Webhook activity";
        return Ok(respond(400, json!({ "error": msg }), None, format!("gold webhook refused: {msg}")));
    };
    if let Err(reason) = state.gold().adf_callbacks.check(callback) {
        tracing::warn!(%reason, "Data Factory callback refused.");
        return Ok(respond(400, json!({ "error": reason }), None, format!("gold webhook refused: {reason}")));
    }
    let run_id = payload
        .get("runId")
        .and_then(Value::as_str)
        .or_else(|| http.get("Query").and_then(|q| q.get("runId")).and_then(Value::as_str))
        .map(str::to_string)
        .unwrap_or_else(|| format!("cb-{:016x}", xxhash_rust::xxh3::xxh3_64(callback.as_bytes())));
    let now = req.utc_now().unwrap_or_else(|| state.clock());
    let job =
        GoldJobMessage { run_id: run_id.clone(), call_back_uri: callback.to_string(), requested_at: rfc3339(&now) };
    let job = serde_json::to_string(&job).map_err(|e| FunctionError::Internal(e.to_string()))?;
    tracing::info!(run_id = %run_id, "Gold build queued for Data Factory.");
    Ok(respond(
        202,
        json!({ "accepted": true, "runId": run_id }),
        Some(job),
        format!("queued gold build for ADF run {run_id}"),
    ))
}
