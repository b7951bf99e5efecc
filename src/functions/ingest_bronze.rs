//! `ingest_bronze`: the Event Hubs-triggered function (`cardinality: many`, `dataType: binary`).
//! Decodes the host's batch envelope (reference §2.4a) and lands it in bronze as one file.

use axum::Json;
use axum::extract::State;
use bytes::Bytes;
use serde_json::Value;

use super::FunctionError;
use super::invocation::{
    InvokeRequest, InvokeResponse, base64_bytes, host_array, host_string, metadata_array, unwrap_json,
};
use crate::model::time::parse_utc;
use crate::pipeline::bronze::{self, EventBatch, RawEvent};
use crate::state::AppState;

/// Function name (folder, module and route).
pub const NAME: &str = "ingest_bronze";
/// The trigger binding's name in function.json.
pub const BINDING: &str = "events";

/// POST /ingest_bronze
pub async fn handle(State(state): State<AppState>, body: Bytes) -> Result<Json<InvokeResponse>, FunctionError> {
    let req = InvokeRequest::from_slice(&body)?;
    let batch = decode_batch(&req, state.clock())?;
    let retry = req.retry_count();
    // The envelope (base64 text, ~4/3 of the events) is no longer needed once decoded: free it
    // before the bronze file is encoded, so a batch's peak is its events, not the envelope too.
    drop(req);
    drop(body);
    let lake = state.lake().await?;
    let m = bronze::ingest(lake, &batch).await?;
    tracing::info!(
        key = %m.key,
        events = m.events,
        body_bytes = m.body_bytes,
        file_bytes = m.file_bytes,
        created = m.created,
        retry,
        "Bronze batch ingested."
    );
    let verb = if m.created { "wrote" } else { "already had (replay, nothing written)" };
    // ReturnValue is ignored by the host (no `$return` binding) but tells local runners what happened.
    Ok(Json(InvokeResponse {
        logs: vec![format!("bronze {verb} {} ({} events)", m.key, m.events)],
        return_value: serde_json::to_value(&m).unwrap_or_default(),
        ..Default::default()
    }))
}

/// Turns the host's Event Hubs batch envelope into an [`EventBatch`].
pub fn decode_batch(req: &InvokeRequest, now: chrono::NaiveDateTime) -> Result<EventBatch, FunctionError> {
    let events = host_array(BINDING, req.binding(BINDING)?).map_err(|_| {
        FunctionError::BadRequest(format!(
            "Data.{BINDING} is not an array of events; set \"cardinality\": \"many\" on the eventHubTrigger binding"
        ))
    })?;
    let n = events.len();
    let context = ["TriggerPartitionContext", "PartitionContext"]
        .iter()
        .find_map(|k| req.metadata.get(*k))
        .map(|v| unwrap_json(v))
        .ok_or_else(|| {
            FunctionError::BadRequest(
                "Metadata has no TriggerPartitionContext or PartitionContext; this function takes an Event Hubs trigger".into(),
            )
        })?;
    let partition_id = context
        .get("PartitionId")
        .and_then(host_string)
        .ok_or_else(|| FunctionError::BadRequest("Metadata.PartitionContext has no PartitionId".into()))?;
    let event_hub = context.get("EventHubName").and_then(host_string).unwrap_or_default();

    let seqs = metadata_array(req, "SequenceNumberArray", n)?.ok_or_else(|| {
        FunctionError::BadRequest(
            "Metadata has no SequenceNumberArray; bronze files are named by sequence number".into(),
        )
    })?;
    let enqueued = metadata_array(req, "EnqueuedTimeUtcArray", n)?.ok_or_else(|| {
        FunctionError::BadRequest(
            "Metadata has no EnqueuedTimeUtcArray; silver needs each event's enqueued time".into(),
        )
    })?;
    let offsets = match metadata_array(req, "OffsetStringArray", n)? {
        Some(o) => Some(o),
        None => metadata_array(req, "OffsetArray", n)?,
    };
    let keys = metadata_array(req, "PartitionKeyArray", n)?;
    let props = metadata_array(req, "PropertiesArray", n)?;

    let mut out = Vec::with_capacity(n);
    for (i, event) in events.iter().enumerate() {
        let body = match event {
            Value::String(b64) => base64_bytes(&format!("Data.{BINDING}[{i}]"), b64)?,
            _ => {
                return Err(FunctionError::BadRequest(format!(
                    "Data.{BINDING}[{i}] is not a base64 string; set \"dataType\": \"binary\" on the eventHubTrigger binding"
                )));
            }
        };
        let sequence_number = as_i64(&seqs[i])
            .ok_or_else(|| FunctionError::BadRequest(format!("Metadata.SequenceNumberArray[{i}] is not an integer")))?;
        let enqueued_time = enqueued[i].as_str().and_then(parse_utc).ok_or_else(|| {
            FunctionError::BadRequest(format!("Metadata.EnqueuedTimeUtcArray[{i}] is not a timestamp"))
        })?;
        out.push(RawEvent {
            body: Bytes::from(body),
            sequence_number,
            offset: offsets.as_ref().and_then(|o| scalar_text(&o[i])),
            enqueued_time,
            partition_key: keys.as_ref().and_then(|k| scalar_text(&k[i])),
            properties: props.as_ref().map(|p| p[i].to_string()),
        });
    }
    Ok(EventBatch { event_hub, partition_id, ingested_at: req.utc_now().unwrap_or(now), events: out })
}

fn as_i64(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}
