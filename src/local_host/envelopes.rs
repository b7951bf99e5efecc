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

/// A timestamp as the host writes `EnqueuedTimeUtc`: no zone suffix, fraction only when non-zero
/// (chrono's `%.f`), formatted without strftime's per-call pattern parsing (a hot path in `run`).
fn host_time(t: &NaiveDateTime) -> String {
    use chrono::{Datelike, Timelike};
    let mut s =
        format!("{:04}-{:02}-{:02}T{:02}:{:02}:{:02}", t.year(), t.month(), t.day(), t.hour(), t.minute(), t.second());
    let nanos = t.nanosecond() % 1_000_000_000;
    if nanos != 0 {
        if nanos.is_multiple_of(1_000_000) {
            s.push_str(&format!(".{:03}", nanos / 1_000_000));
        } else if nanos.is_multiple_of(1_000) {
            s.push_str(&format!(".{:06}", nanos / 1_000));
        } else {
            s.push_str(&format!(".{nanos:09}"));
        }
    }
    s
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
    let enqueued: Vec<Value> = events.iter().map(|e| Value::String(host_time(&e.enqueued_time))).collect();
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

/// [`event_hub_batch`] serialized straight to bytes, without building a JSON tree: the same
/// document (tested), at a fraction of the cost, for `run` and `bench` where the envelope is built
/// for every thousand events.
pub fn event_hub_batch_bytes(p: &HubPartition<'_>, events: &[HubEvent], now: &NaiveDateTime, guid: &str) -> Vec<u8> {
    use base64::Engine;
    use std::fmt::Write as _;
    let body_len: usize = events.iter().map(|e| e.body.len()).sum();
    let mut out = String::with_capacity(body_len * 4 / 3 + events.len() * 400 + 1024);
    let q = |s: &str| serde_json::to_string(s).unwrap_or_default();
    // The host double-encodes arrays: each is a JSON string holding the array's JSON text. Inner
    // strings here (base64, digits, timestamps, ids) need no escaping inside the outer string
    // except their quotes, which become \".
    let mut bodies = String::with_capacity(body_len * 4 / 3 + events.len() * 4);
    let mut offsets = String::new();
    let mut seqs = String::new();
    let mut times = String::new();
    let mut keys = String::new();
    let mut props = String::new();
    let mut system = String::new();
    for (i, e) in events.iter().enumerate() {
        let sep = if i == 0 { "" } else { "," };
        let t = host_time(&e.enqueued_time);
        bodies.push_str(sep);
        bodies.push_str("\\\"");
        base64::engine::general_purpose::STANDARD.encode_string(&e.body, &mut bodies);
        bodies.push_str("\\\"");
        let _ = write!(offsets, "{sep}\\\"{}\\\"", e.offset);
        let _ = write!(seqs, "{sep}{}", e.sequence_number);
        let _ = write!(times, "{sep}\\\"{t}\\\"");
        let key_json = match &e.partition_key {
            Some(k) => serde_json::to_string(k).unwrap_or_default(),
            None => "null".to_string(),
        };
        // The key's JSON text is itself escaped once more inside the outer string.
        let key_inner = q(&key_json);
        let key_inner = &key_inner[1..key_inner.len() - 1];
        let _ = write!(keys, "{sep}{key_inner}");
        let _ = write!(props, "{sep}{{}}");
        let _ = write!(
            system,
            "{sep}{{\\\"x-opt-sequence-number\\\":{s},\\\"x-opt-offset\\\":\\\"{o}\\\",\\\"x-opt-enqueued-time\\\":\\\"{t}\\\",\\\"SequenceNumber\\\":{s},\\\"Offset\\\":{o},\\\"OffsetString\\\":\\\"{o}\\\",\\\"PartitionKey\\\":{key_inner},\\\"EnqueuedTimeUtc\\\":\\\"{t}\\\"}}",
            s = e.sequence_number,
            o = e.offset,
        );
    }
    let context = format!(
        "{{\"IsCheckpointingAfterInvocation\":true,\"FullyQualifiedNamespace\":{},\"EventHubName\":{},\"ConsumerGroup\":{},\"PartitionId\":{}}}",
        q(p.namespace),
        q(p.event_hub),
        q(p.consumer_group),
        q(p.partition_id)
    );
    let _ = write!(
        out,
        "{{\"Data\":{{\"events\":\"[{bodies}]\"}},\"Metadata\":{{\"TriggerPartitionContext\":{context},\"PartitionContext\":{context},\
\"PartitionKeyArray\":\"[{keys}]\",\"OffsetArray\":\"[{offsets}]\",\"OffsetStringArray\":\"[{offsets}]\",\
\"SequenceNumberArray\":\"[{seqs}]\",\"EnqueuedTimeUtcArray\":\"[{times}]\",\"PropertiesArray\":\"[{props}]\",\
\"SystemPropertiesArray\":\"[{system}]\",\"sys\":{}}}}}",
        sys("ingest_bronze", now, guid)
    );
    out.into_bytes()
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::time::parse_utc;

    #[test]
    fn host_times_match_chrono() {
        for t in [
            "2026-11-24T12:00:00",
            "2026-11-24T12:00:00.250",
            "2026-11-24T12:00:00.123456",
            "2024-02-29T23:59:59.000001",
        ] {
            let t = parse_utc(t).unwrap();
            assert_eq!(host_time(&t), t.format("%Y-%m-%dT%H:%M:%S%.f").to_string());
        }
    }

    #[test]
    fn the_fast_batch_writer_produces_the_same_document() {
        let now = parse_utc("2026-11-24T12:00:00.123456").unwrap();
        let events: Vec<HubEvent> = (0..5)
            .map(|i| HubEvent {
                body: if i == 2 {
                    vec![0xff, b'"', b'\\', b'\n']
                } else {
                    format!("{{\"patient_id\":\"p{i}\"}}").into_bytes()
                },
                sequence_number: 100 + i,
                offset: 4096 * i,
                enqueued_time: now + chrono::Duration::milliseconds(i),
                partition_key: (i != 3).then(|| format!("key \"{i}\" \\ x")),
            })
            .collect();
        let p = HubPartition {
            namespace: "ns.servicebus.windows.net",
            event_hub: "hub",
            consumer_group: "$Default",
            partition_id: "3",
        };
        let slow = event_hub_batch(&p, &events, &now, "g");
        let fast: Value = serde_json::from_slice(&event_hub_batch_bytes(&p, &events, &now, "g")).unwrap();
        // Compare after undoing the double encoding, so formatting differences cannot hide.
        let unwrap = |v: &Value| -> Value {
            let mut v = v.clone();
            for (_, x) in v["Metadata"].as_object_mut().unwrap().iter_mut() {
                if let Value::String(s) = x {
                    *x = serde_json::from_str(s).unwrap();
                }
            }
            v["Data"]["events"] = serde_json::from_str(v["Data"]["events"].as_str().unwrap()).unwrap();
            v
        };
        assert_eq!(unwrap(&fast), unwrap(&slow));
    }
}
