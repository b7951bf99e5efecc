//! Builds the envelopes the Functions host sends, exactly as reference §2.4 shows them: Event Hubs
//! batches (`cardinality: many`, `dataType: binary`), blob-trigger calls and timer calls. Used by
//! `patientflow run` (which plays the host locally) and by the tests.

use chrono::NaiveDateTime;
use serde_json::{Value, json};

use crate::functions::invocation::to_base64;
use crate::model::time::rfc3339;

/// One event as a producer sent it, with its position in the partition.
#[derive(Debug, Clone)]
pub struct HubEvent {
    /// Body bytes.
    pub body: Vec<u8>,
    /// Sequence number within the partition.
    pub sequence_number: i64,
    /// Offset within the partition.
    pub offset: i64,
    /// When Event Hubs accepted it.
    pub enqueued_time: NaiveDateTime,
    /// The producer's partition key.
    pub partition_key: Option<String>,
}

/// Where a batch comes from.
#[derive(Debug, Clone)]
pub struct HubPartition<'a> {
    /// `<namespace>.servicebus.windows.net`.
    pub namespace: &'a str,
    /// Event hub name.
    pub event_hub: &'a str,
    /// Consumer group.
    pub consumer_group: &'a str,
    /// Partition id.
    pub partition_id: &'a str,
}

fn sys(method: &str, now: &NaiveDateTime, guid: &str) -> Value {
    json!({ "MethodName": method, "UtcNow": rfc3339(now), "RandGuid": guid })
}

/// A JSON value as the host double-encodes arrays: a string holding the JSON text.
fn encoded(v: Value) -> Value {
    Value::String(v.to_string())
}

/// The envelope of one Event Hubs batch invocation (binding name `events`).
pub fn event_hub_batch(p: &HubPartition<'_>, events: &[HubEvent], now: &NaiveDateTime, guid: &str) -> Value {
    let context = json!({
        "IsCheckpointingAfterInvocation": true,
        "FullyQualifiedNamespace": p.namespace,
        "EventHubName": p.event_hub,
        "ConsumerGroup": p.consumer_group,
        "PartitionId": p.partition_id,
    });
    let bodies: Vec<Value> = events.iter().map(|e| Value::String(to_base64(&e.body))).collect();
    let offsets: Vec<Value> = events.iter().map(|e| Value::String(e.offset.to_string())).collect();
    let seqs: Vec<Value> = events.iter().map(|e| json!(e.sequence_number)).collect();
    // The host writes EnqueuedTimeUtc without a zone suffix (reference §2.4a).
    let enqueued: Vec<Value> =
        events.iter().map(|e| Value::String(e.enqueued_time.format("%Y-%m-%dT%H:%M:%S%.f").to_string())).collect();
    let keys: Vec<Value> = events.iter().map(|e| e.partition_key.clone().map_or(Value::Null, Value::String)).collect();
    let props: Vec<Value> = events.iter().map(|_| json!({})).collect();
    let system: Vec<Value> = events
        .iter()
        .zip(&enqueued)
        .map(|(e, t)| {
            json!({
                "x-opt-sequence-number": e.sequence_number,
                "x-opt-offset": e.offset.to_string(),
                "x-opt-enqueued-time": t,
                "SequenceNumber": e.sequence_number,
                "Offset": e.offset,
                "OffsetString": e.offset.to_string(),
                "PartitionKey": e.partition_key,
                "EnqueuedTimeUtc": t,
            })
        })
        .collect();
    json!({
        "Data": { "events": encoded(Value::Array(bodies)) },
        "Metadata": {
            "TriggerPartitionContext": context.clone(),
            "PartitionContext": context,
            "PartitionKeyArray": encoded(Value::Array(keys)),
            "OffsetArray": encoded(Value::Array(offsets.clone())),
            "OffsetStringArray": encoded(Value::Array(offsets)),
            "SequenceNumberArray": encoded(Value::Array(seqs)),
            "EnqueuedTimeUtcArray": encoded(Value::Array(enqueued)),
            "PropertiesArray": encoded(Value::Array(props)),
            "SystemPropertiesArray": encoded(Value::Array(system)),
            "sys": sys("ingest_bronze", now, guid),
        }
    })
}

/// The envelope of a blob-trigger invocation. `content` is `None` for deferred binding (the host
/// then sends a descriptor instead of the bytes).
pub fn blob_trigger(uri: &str, name: &str, content: Option<&[u8]>, now: &NaiveDateTime, guid: &str) -> Value {
    let blob = match content {
        Some(bytes) => Value::String(to_base64(bytes)),
        None => json!({
            "Source": "AzureStorageBlobs",
            "Content": { "IsEmpty": false, "Length": 0, "MediaType": "application/octet-stream" }
        }),
    };
    let length = content.map_or(0, <[u8]>::len);
    json!({
        "Data": { "blob": blob },
        "Metadata": {
            "Uri": encoded(Value::String(uri.to_string())),
            "name": encoded(Value::String(name.to_string())),
            "Properties": {
                "LastModified": rfc3339(now),
                "ContentLength": length,
                "ContentType": "application/octet-stream",
                "BlobType": 0,
                "Metadata": {}
            },
            "Metadata": {},
            "sys": sys("refine_silver", now, guid),
        }
    })
}

/// The envelope of a timer invocation.
pub fn timer(method: &str, now: &NaiveDateTime, past_due: bool, guid: &str) -> Value {
    json!({
        "Data": { "timer": { "Schedule": { "AdjustForDST": true }, "ScheduleStatus": null, "IsPastDue": past_due } },
        "Metadata": { "sys": sys(method, now, guid) }
    })
}
