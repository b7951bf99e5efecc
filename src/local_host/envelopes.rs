//! Builds the envelopes the Functions host sends, exactly as reference §2.4 shows them: Event Hubs
//! batches (`cardinality: many`, `dataType: binary`), blob-trigger calls and timer calls. Used by
//! `patientflow run` (which plays the host locally, or hands the handler what the host would) and by the tests.
//!
//! Two forms of each trigger envelope:
//! - [`event_hub_batch`] and [`blob_trigger`] build a `serde_json::Value` tree: readable, close to the
//!   reference's examples, and the oracle the tests compare against;
//! - [`event_hub_batch_bytes`] and [`blob_trigger_bytes`] write the same document straight into a
//!   byte buffer, base64 and the host's double-encoded arrays included, with no tree and no
//!   per-event allocation. `run` and `bench` build an envelope per thousand events and per bronze
//!   file, so this is the local host's main cost (a property test checks both forms agree).

use arrow_array::builder::StringBuilder;
use arrow_array::{Int64Array, TimestampMicrosecondArray};
use chrono::NaiveDateTime;
use serde_json::{Value, json};

use crate::functions::invocation::to_base64;
use crate::model::time::{rfc3339, to_micros};
use crate::pipeline::bronze::{EventBatch, EventColumns};

/// One event as a producer sent it, with its position in the partition.
#[derive(Debug, Clone)]
pub struct HubEvent {
    /// Body bytes (shared: a slice of the chunk of input it was read from, or its own buffer).
    pub body: bytes::Bytes,
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
/// (chrono's `%.f`).
fn host_time(t: &NaiveDateTime) -> String {
    let mut out = Vec::with_capacity(32);
    push_host_time(&mut out, t);
    String::from_utf8(out).unwrap_or_else(|_| t.format("%Y-%m-%dT%H:%M:%S%.f").to_string())
}

/// Appends [`host_time`]'s text, digit by digit: no strftime pattern parsing per call (three
/// timestamps per event in a batch envelope).
fn push_host_time(out: &mut Vec<u8>, t: &NaiveDateTime) {
    use chrono::{Datelike, Timelike};
    let year = t.year();
    if !(0..=9999).contains(&year) {
        out.extend_from_slice(t.format("%Y-%m-%dT%H:%M:%S%.f").to_string().as_bytes());
        return;
    }
    let digits = |out: &mut Vec<u8>, n: u32, width: u32| {
        for i in (0..width).rev() {
            out.push(b'0' + (n / 10u32.pow(i) % 10) as u8);
        }
    };
    digits(out, year as u32, 4);
    out.push(b'-');
    digits(out, t.month(), 2);
    out.push(b'-');
    digits(out, t.day(), 2);
    out.push(b'T');
    digits(out, t.hour(), 2);
    out.push(b':');
    digits(out, t.minute(), 2);
    out.push(b':');
    // A leap second is second 59 with nanoseconds past 1e9; like chrono's %S and %.f, show it as
    // :60 with the fraction modulo one second.
    digits(out, t.second() + t.nanosecond() / 1_000_000_000, 2);
    let nanos = t.nanosecond() % 1_000_000_000;
    if nanos != 0 {
        out.push(b'.');
        if nanos.is_multiple_of(1_000_000) {
            digits(out, nanos / 1_000_000, 3);
        } else if nanos.is_multiple_of(1_000) {
            digits(out, nanos / 1_000, 6);
        } else {
            digits(out, nanos, 9);
        }
    }
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

/// [`event_hub_batch`] written straight to bytes: the same document (property-tested), without a
/// JSON tree. Each double-encoded array is written in place as the string the host sends, base64
/// bodies encoded directly into the buffer; strings that need no escaping (base64, digits,
/// timestamps, the usual partition keys) are copied as they are.
pub fn event_hub_batch_bytes(p: &HubPartition<'_>, events: &[HubEvent], now: &NaiveDateTime, guid: &str) -> Vec<u8> {
    let body_len: usize = events.iter().map(|e| e.body.len()).sum();
    let mut out = Vec::with_capacity(body_len.div_ceil(3) * 4 + events.len() * 440 + 1024);
    let mut time = Vec::with_capacity(32);

    out.extend_from_slice(b"{\"Data\":{\"events\":\"[");
    for (i, e) in events.iter().enumerate() {
        comma(&mut out, i);
        out.extend_from_slice(b"\\\"");
        push_base64(&mut out, &e.body);
        out.extend_from_slice(b"\\\"");
    }
    out.extend_from_slice(b"]\"},\"Metadata\":{\"TriggerPartitionContext\":");
    let context = out.len();
    out.extend_from_slice(b"{\"IsCheckpointingAfterInvocation\":true,\"FullyQualifiedNamespace\":");
    push_str(&mut out, p.namespace);
    out.extend_from_slice(b",\"EventHubName\":");
    push_str(&mut out, p.event_hub);
    out.extend_from_slice(b",\"ConsumerGroup\":");
    push_str(&mut out, p.consumer_group);
    out.extend_from_slice(b",\"PartitionId\":");
    push_str(&mut out, p.partition_id);
    out.push(b'}');
    let context = context..out.len();
    out.extend_from_slice(b",\"PartitionContext\":");
    out.extend_from_within(context);

    out.extend_from_slice(b",\"PartitionKeyArray\":\"[");
    for (i, e) in events.iter().enumerate() {
        comma(&mut out, i);
        push_key_encoded(&mut out, e.partition_key.as_deref());
    }
    out.extend_from_slice(b"]\",\"OffsetArray\":\"[");
    let offsets = out.len();
    for (i, e) in events.iter().enumerate() {
        comma(&mut out, i);
        out.extend_from_slice(b"\\\"");
        push_int(&mut out, e.offset);
        out.extend_from_slice(b"\\\"");
    }
    let offsets = offsets..out.len();
    out.extend_from_slice(b"]\",\"OffsetStringArray\":\"[");
    out.extend_from_within(offsets);
    out.extend_from_slice(b"]\",\"SequenceNumberArray\":\"[");
    for (i, e) in events.iter().enumerate() {
        comma(&mut out, i);
        push_int(&mut out, e.sequence_number);
    }
    out.extend_from_slice(b"]\",\"EnqueuedTimeUtcArray\":\"[");
    for (i, e) in events.iter().enumerate() {
        comma(&mut out, i);
        out.extend_from_slice(b"\\\"");
        push_host_time(&mut out, &e.enqueued_time);
        out.extend_from_slice(b"\\\"");
    }
    out.extend_from_slice(b"]\",\"PropertiesArray\":\"[");
    for i in 0..events.len() {
        comma(&mut out, i);
        out.extend_from_slice(b"{}");
    }
    out.extend_from_slice(b"]\",\"SystemPropertiesArray\":\"[");
    for (i, e) in events.iter().enumerate() {
        comma(&mut out, i);
        time.clear();
        push_host_time(&mut time, &e.enqueued_time);
        out.extend_from_slice(b"{\\\"x-opt-sequence-number\\\":");
        push_int(&mut out, e.sequence_number);
        out.extend_from_slice(b",\\\"x-opt-offset\\\":\\\"");
        push_int(&mut out, e.offset);
        out.extend_from_slice(b"\\\",\\\"x-opt-enqueued-time\\\":\\\"");
        out.extend_from_slice(&time);
        out.extend_from_slice(b"\\\",\\\"SequenceNumber\\\":");
        push_int(&mut out, e.sequence_number);
        out.extend_from_slice(b",\\\"Offset\\\":");
        push_int(&mut out, e.offset);
        out.extend_from_slice(b",\\\"OffsetString\\\":\\\"");
        push_int(&mut out, e.offset);
        out.extend_from_slice(b"\\\",\\\"PartitionKey\\\":");
        push_key_encoded(&mut out, e.partition_key.as_deref());
        out.extend_from_slice(b",\\\"EnqueuedTimeUtc\\\":\\\"");
        out.extend_from_slice(&time);
        out.extend_from_slice(b"\\\"}");
    }
    out.extend_from_slice(b"]\",\"sys\":");
    push_sys(&mut out, "ingest_bronze", now, guid);
    out.extend_from_slice(b"}}");
    out
}

/// The batch `ingest_bronze` decodes from [`event_hub_batch_bytes`] with the same arguments, built
/// without the envelope: what `patientflow run` hands the bronze stage when it calls the handler
/// in this process instead of over HTTP. A property test decodes the envelope and compares.
pub fn event_batch(p: &HubPartition<'_>, events: &[HubEvent], now: &NaiveDateTime) -> EventBatch {
    let n = events.len();
    let mut offsets = StringBuilder::with_capacity(n, n * 8);
    let mut keys = StringBuilder::with_capacity(n, n * 8);
    let mut properties = StringBuilder::with_capacity(n, n * 2);
    // Offsets are written by `itoa`: the digits `{}` writes, without the formatting machinery,
    // which was 30 % of building a batch (callgrind, 100k events).
    let mut digits = itoa::Buffer::new();
    for e in events {
        offsets.append_value(digits.format(e.offset));
        keys.append_option(e.partition_key.as_deref());
        properties.append_value("{}");
    }
    let events = EventColumns {
        body: crate::pipeline::bronze::body_array(events.iter().map(|e| &e.body)),
        sequence_number: Int64Array::from_iter_values(events.iter().map(|e| e.sequence_number)),
        offset: offsets.finish(),
        enqueued_time: TimestampMicrosecondArray::from_iter_values(events.iter().map(|e| to_micros(&e.enqueued_time))),
        partition_key: keys.finish(),
        properties: properties.finish(),
    };
    EventBatch {
        event_hub: p.event_hub.to_string(),
        partition_id: p.partition_id.to_string(),
        ingested_at: *now,
        events,
    }
}

/// [`blob_trigger`] written straight to bytes: the blob's base64 goes directly into the buffer
/// (a bronze file is the bulk of the request), with no intermediate string or tree.
pub fn blob_trigger_bytes(uri: &str, name: &str, content: Option<&[u8]>, now: &NaiveDateTime, guid: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.map_or(0, |c| c.len().div_ceil(3) * 4) + uri.len() + name.len() + 512);
    out.extend_from_slice(b"{\"Data\":{\"blob\":");
    match content {
        Some(bytes) => {
            out.push(b'"');
            push_base64(&mut out, bytes);
            out.push(b'"');
        }
        None => out.extend_from_slice(
            b"{\"Source\":\"AzureStorageBlobs\",\"Content\":{\"IsEmpty\":false,\"Length\":0,\"MediaType\":\"application/octet-stream\"}}",
        ),
    }
    out.extend_from_slice(b"},\"Metadata\":{\"Uri\":\"");
    push_str_encoded(&mut out, uri);
    out.extend_from_slice(b"\",\"name\":\"");
    push_str_encoded(&mut out, name);
    out.extend_from_slice(b"\",\"Properties\":{\"LastModified\":");
    push_str(&mut out, &rfc3339(now));
    out.extend_from_slice(b",\"ContentLength\":");
    push_int(&mut out, content.map_or(0, <[u8]>::len) as i64);
    out.extend_from_slice(
        b",\"ContentType\":\"application/octet-stream\",\"BlobType\":0,\"Metadata\":{}},\"Metadata\":{},\"sys\":",
    );
    push_sys(&mut out, "refine_silver", now, guid);
    out.extend_from_slice(b"}}");
    out
}

/// `,` before every array element but the first.
fn comma(out: &mut Vec<u8>, i: usize) {
    if i > 0 {
        out.push(b',');
    }
}

fn push_int(out: &mut Vec<u8>, n: i64) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// Appends `bytes` as padded base64 (SIMD, as the handler decodes it: see
/// [`append_base64`](crate::functions::invocation::append_base64)).
fn push_base64(out: &mut Vec<u8>, bytes: &[u8]) {
    let base64 = base64_simd::STANDARD;
    // Amortised growth: the crate reserves exactly one value's room.
    out.reserve(base64.encoded_length(bytes.len()));
    base64.encode_append(bytes, out);
}

/// Whether `s` can stand inside a JSON string as it is: no quote, backslash or control character.
fn needs_no_escape(s: &str) -> bool {
    !s.bytes().any(|b| b == b'"' || b == b'\\' || b < 0x20)
}

/// Appends `s` JSON-escaped, without the quotes.
fn push_escaped(out: &mut Vec<u8>, s: &str) {
    if needs_no_escape(s) {
        out.extend_from_slice(s.as_bytes());
        return;
    }
    let start = out.len();
    // serde_json writes "…", escaped (writing to a Vec cannot fail); keep what is inside the quotes.
    let _ = serde_json::to_writer(&mut *out, s);
    out.pop();
    out.remove(start);
}

/// Appends `s` as a JSON string.
fn push_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    push_escaped(out, s);
    out.push(b'"');
}

/// Appends the JSON text of the string `s` escaped once more, as it stands inside a host-encoded
/// value (`"\"s\""` once the outer quotes are added).
fn push_str_encoded(out: &mut Vec<u8>, s: &str) {
    if needs_no_escape(s) {
        out.extend_from_slice(b"\\\"");
        out.extend_from_slice(s.as_bytes());
        out.extend_from_slice(b"\\\"");
    } else {
        push_escaped(out, &serde_json::to_string(s).unwrap_or_default());
    }
}

/// A partition key inside a double-encoded array: its JSON text (`null` when absent), escaped.
fn push_key_encoded(out: &mut Vec<u8>, key: Option<&str>) {
    match key {
        Some(k) => push_str_encoded(out, k),
        None => out.extend_from_slice(b"null"),
    }
}

/// The `sys` object: `{"MethodName":…,"UtcNow":…,"RandGuid":…}`.
fn push_sys(out: &mut Vec<u8>, method: &str, now: &NaiveDateTime, guid: &str) {
    out.extend_from_slice(b"{\"MethodName\":");
    push_str(out, method);
    out.extend_from_slice(b",\"UtcNow\":");
    push_str(out, &rfc3339(now));
    out.extend_from_slice(b",\"RandGuid\":");
    push_str(out, guid);
    out.push(b'}');
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
    use proptest::prelude::*;

    #[test]
    fn host_times_match_chrono() {
        let leap = chrono::NaiveDate::from_ymd_opt(2016, 12, 31).unwrap().and_hms_nano_opt(23, 59, 59, 1_250_000_000);
        let times = [
            "2026-11-24T12:00:00",
            "2026-11-24T12:00:00.250",
            "2026-11-24T12:00:00.123456",
            "2024-02-29T23:59:59.000001",
            "0001-01-01T00:00:00.000000001",
        ]
        .map(|t| parse_utc(t).unwrap());
        let far = chrono::NaiveDate::from_ymd_opt(12345, 6, 7).unwrap().and_hms_opt(8, 9, 10).unwrap();
        for t in times.into_iter().chain(leap).chain([far]) {
            assert_eq!(host_time(&t), t.format("%Y-%m-%dT%H:%M:%S%.f").to_string());
        }
    }

    /// The envelope with every host-encoded value decoded once more, so two documents compare by
    /// meaning (a tree serializes object keys sorted, the writer in the host's order).
    fn decoded(v: &Value) -> Value {
        let mut v = v.clone();
        for (_, x) in v["Metadata"].as_object_mut().unwrap().iter_mut() {
            if let Value::String(s) = x {
                *x = serde_json::from_str(s).unwrap();
            }
        }
        if let Some(Value::String(s)) = v["Data"].get("events") {
            v["Data"]["events"] = serde_json::from_str(s).unwrap();
        }
        v
    }

    #[test]
    fn the_batch_writer_produces_the_same_document() {
        let now = parse_utc("2026-11-24T12:00:00.123456").unwrap();
        let events: Vec<HubEvent> = (0..5)
            .map(|i| HubEvent {
                body: if i == 2 {
                    bytes::Bytes::from_static(&[0xff, b'"', b'\\', b'\n'])
                } else {
                    format!("{{\"patient_id\":\"p{i}\"}}").into()
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
        let tree = event_hub_batch(&p, &events, &now, "g");
        let bytes = event_hub_batch_bytes(&p, &events, &now, "g");
        let written: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(decoded(&written), decoded(&tree));
        // The arrays really are double-encoded strings, as the host sends them.
        assert!(written["Data"]["events"].is_string());
        assert!(written["Metadata"]["SystemPropertiesArray"].is_string());
        assert!(written["Metadata"]["PartitionContext"].is_object());
    }

    #[test]
    fn the_blob_writer_produces_the_same_document() {
        let now = parse_utc("2026-11-24T12:00:00").unwrap();
        let uri = "http://127.0.0.1:10000/devstoreaccount1/bronze/patient-flow/partition=0/0-9.parquet";
        for content in [Some(&b"PAR1\x00\xff"[..]), Some(&b""[..]), None] {
            let tree = blob_trigger(uri, "partition=0/0-9", content, &now, "g");
            let written: Value =
                serde_json::from_slice(&blob_trigger_bytes(uri, "partition=0/0-9", content, &now, "g")).unwrap();
            assert_eq!(written, tree);
        }
    }

    fn hub_event() -> impl Strategy<Value = HubEvent> {
        (
            proptest::collection::vec(any::<u8>(), 0..48),
            any::<i64>(),
            any::<i64>(),
            // Any instant of 1900–2100, to the nanosecond (whole, milli- and microsecond fractions too).
            (-2_208_988_800i64..4_102_444_800, prop_oneof![Just(0u32), 0..1000u32, 0..1_000_000_000u32]),
            proptest::option::of(any::<String>()),
        )
            .prop_map(|(body, sequence_number, offset, (secs, frac), partition_key)| {
                let nanos = match frac {
                    f if f < 1000 => f * 1_000_000,
                    f => f,
                };
                let enqueued_time =
                    chrono::DateTime::from_timestamp(secs, nanos % 1_000_000_000).unwrap_or_default().naive_utc();
                HubEvent { body: body.into(), sequence_number, offset, enqueued_time, partition_key }
            })
    }

    proptest! {
        /// The writers and the trees agree on any events, keys and names: control characters,
        /// quotes, backslashes and non-ASCII text included.
        #[test]
        fn the_writers_agree_with_the_trees(
            events in proptest::collection::vec(hub_event(), 0..12),
            names in proptest::array::uniform4(any::<String>()),
            guid in any::<String>(),
            content in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..200)),
        ) {
            let now = parse_utc("2026-11-24T12:00:00.5").unwrap();
            let p = HubPartition {
                namespace: &names[0],
                event_hub: &names[1],
                consumer_group: &names[2],
                partition_id: &names[3],
            };
            let written: Value = serde_json::from_slice(&event_hub_batch_bytes(&p, &events, &now, &guid)).unwrap();
            prop_assert_eq!(decoded(&written), decoded(&event_hub_batch(&p, &events, &now, &guid)));

            let tree = blob_trigger(&names[0], &names[1], content.as_deref(), &now, &guid);
            let written: Value =
                serde_json::from_slice(&blob_trigger_bytes(&names[0], &names[1], content.as_deref(), &now, &guid))
                    .unwrap();
            prop_assert_eq!(written, tree);
        }

        /// What `run` hands bronze in-process is exactly what the handler decodes from the envelope
        /// the host would have sent: bodies byte for byte, numbers, offsets, times, keys, properties.
        #[test]
        fn the_batch_built_in_process_is_the_batch_the_handler_decodes(
            events in proptest::collection::vec(hub_event(), 1..12),
            partition in "[0-9]{1,2}",
            // Event hub names as Event Hubs allows them (letters, digits, `.`, `-`, `_`): the
            // handler unwraps host-encoded strings, so a name written as JSON text (`"\"\""`) would
            // decode differently, and no hub can be named so.
            hub in "[A-Za-z0-9][A-Za-z0-9._-]{0,49}",
        ) {
            let now = parse_utc("2026-11-24T12:00:00.5").unwrap();
            let p = HubPartition {
                namespace: "ns.servicebus.windows.net",
                event_hub: &hub,
                consumer_group: "$Default",
                partition_id: &partition,
            };
            let envelope = event_hub_batch_bytes(&p, &events, &now, "g");
            let decoded = crate::functions::ingest_bronze::decode_batch(&envelope, now).unwrap();
            prop_assert_eq!(event_batch(&p, &events, &now), decoded.batch);
        }
    }
}
