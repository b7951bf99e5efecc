//! `ingest_bronze`: the Event Hubs-triggered function (`cardinality: many`, `dataType: binary`).
//! Decodes the host's batch envelope (reference §2.4a) and lands it in bronze as one file.
//!
//! The envelope is read in one streaming pass ([`decode_envelope`]): each event's base64 is decoded
//! straight into the body column's buffer, the metadata arrays the file keeps are parsed element by
//! element into their columns, and what bronze does not keep (`SystemPropertiesArray`, the bulk of
//! the metadata) is skipped without being built. No JSON tree, no per-event allocation.

use arrow_array::builder::StringBuilder;
use arrow_array::{BinaryArray, Int64Array, StringArray, TimestampMicrosecondArray};
use arrow_buffer::{Buffer, OffsetBuffer, ScalarBuffer};
use axum::Json;
use axum::extract::State;
use bytes::Bytes;
use chrono::NaiveDateTime;
use serde::Deserialize;
use serde::de::{Deserializer, IgnoredAny};
use serde_json::Value;

use super::FunctionError;
use super::invocation::{
    ElementSink, EnvelopeSink, HostArray, HostScalar, InvokeResponse, Part, append_base64, decode_envelope,
    host_string, unwrap_json, with_host_scalar,
};
use crate::model::time::{parse_utc, parse_utc_micros};
use crate::pipeline::bronze::{self, EventBatch, EventColumns};
use crate::state::AppState;

/// Function name (folder, module and route).
pub const NAME: &str = "ingest_bronze";
/// The trigger binding's name in function.json.
pub const BINDING: &str = "events";

/// POST /ingest_bronze
pub async fn handle(State(state): State<AppState>, body: Bytes) -> Result<Json<InvokeResponse>, FunctionError> {
    let decoded = decode_batch(&body, state.clock())?;
    // The envelope (base64 text, ~4/3 of the events) is no longer needed once decoded: free it
    // before the bronze file is encoded, so a batch's peak is its events, not the envelope too.
    drop(body);
    let lake = state.lake().await?;
    let m = bronze::ingest(lake, &decoded.batch).await?;
    tracing::info!(
        key = %m.key,
        events = m.events,
        body_bytes = m.body_bytes,
        file_bytes = m.file_bytes,
        created = m.created,
        retry = decoded.retry_count,
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

/// A decoded Event Hubs batch invocation.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodedBatch {
    /// The events and where they came from.
    pub batch: EventBatch,
    /// `Metadata.RetryContext.RetryCount`, when a retry policy re-invokes.
    pub retry_count: Option<i64>,
}

/// Turns the body of the host's Event Hubs batch invocation into an [`EventBatch`], in one pass.
/// `now` is the ingestion time when the envelope has no `sys.UtcNow`.
pub fn decode_batch(body: &[u8], now: NaiveDateTime) -> Result<DecodedBatch, FunctionError> {
    let mut parts = BatchParts::default();
    decode_envelope(body, &mut parts)?;
    parts.finish(now)
}

/// A metadata array as read: `None` when absent, else its length (`None` when not an array) and
/// what the sink collected.
type Read<S> = Option<(Option<usize>, S)>;

/// What the pass collects from the envelope.
#[derive(Default)]
struct BatchParts {
    events: Read<Bodies>,
    other_bindings: Vec<String>,
    trigger_context: Option<Value>,
    partition_context: Option<Value>,
    sequence_numbers: Read<Integers>,
    enqueued_times: Read<Times>,
    offset_strings: Read<Texts>,
    offsets: Read<Texts>,
    partition_keys: Read<Texts>,
    properties: Read<JsonTexts>,
    sys: Option<Value>,
    retry_context: Option<Value>,
}

fn read<'de, S: ElementSink + Default, D: Deserializer<'de>>(slot: &mut Read<S>, d: D) -> Result<(), D::Error> {
    // A key sent twice: the last value wins (as in a JSON tree).
    let mut sink = S::default();
    let n = serde::de::DeserializeSeed::deserialize(HostArray(&mut sink), d)?;
    *slot = Some((n, sink));
    Ok(())
}

impl EnvelopeSink for BatchParts {
    fn entry<'de, D: Deserializer<'de>>(&mut self, part: Part, key: &str, value: D) -> Result<(), D::Error> {
        match (part, key) {
            (Part::Data, BINDING) => read(&mut self.events, value),
            (Part::Data, other) => {
                self.other_bindings.push(other.to_string());
                IgnoredAny::deserialize(value).map(drop)
            }
            (Part::Metadata, "TriggerPartitionContext") => {
                self.trigger_context = Some(Value::deserialize(value)?);
                Ok(())
            }
            (Part::Metadata, "PartitionContext") => {
                self.partition_context = Some(Value::deserialize(value)?);
                Ok(())
            }
            (Part::Metadata, "SequenceNumberArray") => read(&mut self.sequence_numbers, value),
            (Part::Metadata, "EnqueuedTimeUtcArray") => read(&mut self.enqueued_times, value),
            (Part::Metadata, "OffsetStringArray") => read(&mut self.offset_strings, value),
            (Part::Metadata, "OffsetArray") => read(&mut self.offsets, value),
            (Part::Metadata, "PartitionKeyArray") => read(&mut self.partition_keys, value),
            (Part::Metadata, "PropertiesArray") => read(&mut self.properties, value),
            (Part::Metadata, "sys") => {
                self.sys = Some(Value::deserialize(value)?);
                Ok(())
            }
            (Part::Metadata, "RetryContext") => {
                self.retry_context = Some(Value::deserialize(value)?);
                Ok(())
            }
            (Part::Metadata, _) => IgnoredAny::deserialize(value).map(drop),
        }
    }
}

/// A sink that may find a problem with an element; the first one is reported.
trait Checked {
    fn problem(&self) -> Option<&str>;
}

/// A metadata array that must be present, be an array and have one entry per event.
fn required<S: Checked>(slot: Read<S>, name: &str, n: usize, absent: &str) -> Result<S, FunctionError> {
    optional(slot, name, n)?.ok_or_else(|| FunctionError::BadRequest(format!("Metadata has no {name}; {absent}")))
}

/// A metadata array that may be absent; when present, an array with one entry per event.
fn optional<S: Checked>(slot: Read<S>, name: &str, n: usize) -> Result<Option<S>, FunctionError> {
    let Some((len, sink)) = slot else { return Ok(None) };
    let Some(len) = len else {
        return Err(FunctionError::BadRequest(format!("Metadata.{name} is not an array")));
    };
    if len != n {
        return Err(FunctionError::BadRequest(format!(
            "Metadata.{name} has {len} entries but the batch has {n} events"
        )));
    }
    if let Some(problem) = sink.problem() {
        return Err(FunctionError::BadRequest(problem.to_string()));
    }
    Ok(Some(sink))
}

impl BatchParts {
    fn finish(self, now: NaiveDateTime) -> Result<DecodedBatch, FunctionError> {
        let Some((events_len, bodies)) = self.events else {
            let mut found: Vec<&str> = self.other_bindings.iter().map(String::as_str).collect();
            found.sort_unstable();
            return Err(FunctionError::BadRequest(format!(
                "Data has no `{BINDING}` binding (found {found:?}); check the binding name in function.json"
            )));
        };
        let n = events_len.ok_or_else(|| {
            FunctionError::BadRequest(format!(
                "Data.{BINDING} is not an array of events; set \"cardinality\": \"many\" on the eventHubTrigger binding"
            ))
        })?;
        if let Some(problem) = bodies.problem() {
            return Err(FunctionError::BadRequest(problem.to_string()));
        }
        let context = self.trigger_context.or(self.partition_context).ok_or_else(|| {
            FunctionError::BadRequest(
                "Metadata has no TriggerPartitionContext or PartitionContext; this function takes an Event Hubs trigger".into(),
            )
        })?;
        let context = unwrap_json(&context);
        let partition_id = context
            .get("PartitionId")
            .and_then(host_string)
            .ok_or_else(|| FunctionError::BadRequest("Metadata.PartitionContext has no PartitionId".into()))?;
        let event_hub = context.get("EventHubName").and_then(host_string).unwrap_or_default();

        let seqs =
            required(self.sequence_numbers, "SequenceNumberArray", n, "bronze files are named by sequence number")?;
        let enqueued =
            required(self.enqueued_times, "EnqueuedTimeUtcArray", n, "silver needs each event's enqueued time")?;
        let offsets = match optional(self.offset_strings, "OffsetStringArray", n)? {
            Some(o) => Some(o),
            None => optional(self.offsets, "OffsetArray", n)?,
        };
        let keys = optional(self.partition_keys, "PartitionKeyArray", n)?;
        let props = optional(self.properties, "PropertiesArray", n)?;

        let text = |t: Option<Texts>| t.map_or_else(|| StringArray::new_null(n), |mut t| t.column.finish());
        let events = EventColumns::try_new(
            bodies.finish()?,
            Int64Array::from(seqs.values),
            text(offsets),
            TimestampMicrosecondArray::from(enqueued.micros),
            text(keys),
            props.map_or_else(|| StringArray::new_null(n), |mut p| p.column.finish()),
        )
        .map_err(|e| FunctionError::Internal(e.to_string()))?;
        let utc_now = self.sys.as_ref().and_then(|sys| sys.get("UtcNow")).and_then(Value::as_str).and_then(parse_utc);
        let retry_count = self.retry_context.as_ref().and_then(|r| r.get("RetryCount")).and_then(Value::as_i64);
        Ok(DecodedBatch {
            batch: EventBatch { event_hub, partition_id, ingested_at: utc_now.unwrap_or(now), events },
            retry_count,
        })
    }
}

/// `Data.events`: base64 bodies, decoded as they are parsed into one buffer with offsets — the
/// body column's own buffers.
struct Bodies {
    values: Vec<u8>,
    offsets: Vec<i32>,
    problem: Option<String>,
}

impl Default for Bodies {
    fn default() -> Self {
        Self { values: Vec::new(), offsets: vec![0], problem: None }
    }
}

impl Checked for Bodies {
    fn problem(&self) -> Option<&str> {
        self.problem.as_deref()
    }
}

impl Bodies {
    fn push(&mut self, index: usize, value: HostScalar<'_>) {
        if self.problem.is_some() {
            return;
        }
        let HostScalar::Str(b64) = value else {
            self.problem = Some(format!(
                "Data.{BINDING}[{index}] is not a base64 string; set \"dataType\": \"binary\" on the eventHubTrigger binding"
            ));
            return;
        };
        if append_base64(b64, &mut self.values).is_err() {
            self.problem = Some(format!(
                "Data.{BINDING}[{index}] is not base64; set \"dataType\": \"binary\" on the trigger binding in function.json"
            ));
            return;
        }
        match i32::try_from(self.values.len()) {
            Ok(end) => self.offsets.push(end),
            Err(_) => self.problem = Some(format!("Data.{BINDING} holds more than 2 GiB of event bodies")),
        }
    }

    fn finish(self) -> Result<BinaryArray, FunctionError> {
        // Offsets start at 0 and never decrease (each is the buffer's length after a body).
        let offsets = OffsetBuffer::new(ScalarBuffer::from(self.offsets));
        BinaryArray::try_new(offsets, Buffer::from_vec(self.values), None)
            .map_err(|e| FunctionError::Internal(format!("body column: {e}")))
    }
}

impl ElementSink for Bodies {
    fn element<'de, D: Deserializer<'de>>(&mut self, index: usize, value: D) -> Result<(), D::Error> {
        with_host_scalar(value, |v| self.push(index, v))
    }
}

/// `SequenceNumberArray`: integers, or strings holding them.
#[derive(Default)]
struct Integers {
    values: Vec<i64>,
    problem: Option<String>,
}

impl Checked for Integers {
    fn problem(&self) -> Option<&str> {
        self.problem.as_deref()
    }
}

impl ElementSink for Integers {
    fn element<'de, D: Deserializer<'de>>(&mut self, index: usize, value: D) -> Result<(), D::Error> {
        with_host_scalar(value, |v| {
            let n = match v {
                HostScalar::Other(Value::Number(n)) => n.as_i64(),
                HostScalar::Str(s) => s.parse().ok(),
                _ => None,
            };
            match n {
                Some(n) => self.values.push(n),
                None => {
                    self.problem
                        .get_or_insert_with(|| format!("Metadata.SequenceNumberArray[{index}] is not an integer"));
                }
            }
        })
    }
}

/// `EnqueuedTimeUtcArray`: ISO-8601 strings, kept as microseconds.
#[derive(Default)]
struct Times {
    micros: Vec<i64>,
    problem: Option<String>,
}

impl Checked for Times {
    fn problem(&self) -> Option<&str> {
        self.problem.as_deref()
    }
}

impl ElementSink for Times {
    fn element<'de, D: Deserializer<'de>>(&mut self, index: usize, value: D) -> Result<(), D::Error> {
        with_host_scalar(value, |v| {
            let us = match v {
                HostScalar::Str(s) => parse_utc_micros(s),
                _ => None,
            };
            match us {
                Some(us) => self.micros.push(us),
                None => {
                    self.problem
                        .get_or_insert_with(|| format!("Metadata.EnqueuedTimeUtcArray[{index}] is not a timestamp"));
                }
            }
        })
    }
}

/// Offsets and partition keys: text (a number as its digits), null when null.
#[derive(Default)]
struct Texts {
    column: StringBuilder,
}

impl Checked for Texts {
    fn problem(&self) -> Option<&str> {
        None
    }
}

impl ElementSink for Texts {
    fn element<'de, D: Deserializer<'de>>(&mut self, _: usize, value: D) -> Result<(), D::Error> {
        with_host_scalar(value, |v| self.column.append_option(v.text()))
    }
}

/// `PropertiesArray`: each entry's JSON text.
#[derive(Default)]
struct JsonTexts {
    column: StringBuilder,
}

impl Checked for JsonTexts {
    fn problem(&self) -> Option<&str> {
        None
    }
}

impl ElementSink for JsonTexts {
    fn element<'de, D: Deserializer<'de>>(&mut self, _: usize, value: D) -> Result<(), D::Error> {
        with_host_scalar(value, |v| self.column.append_value(v.json_text()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::local_host::envelopes::{HubEvent, HubPartition, event_hub_batch, event_hub_batch_bytes};
    use crate::pipeline::bronze::RawEvent;
    use arrow_array::Array;

    fn now() -> NaiveDateTime {
        parse_utc("2026-11-24T12:00:00").unwrap()
    }

    fn hub_events() -> Vec<HubEvent> {
        let bodies: [&[u8]; 4] = [b"{\"patient_id\":\"a\"}", b"\xff\x00 not json \"\\", b"", b"[1,2]"];
        bodies
            .iter()
            .enumerate()
            .map(|(i, b)| HubEvent {
                body: bytes::Bytes::copy_from_slice(b),
                sequence_number: 41 + i as i64,
                offset: 4096 * i as i64,
                enqueued_time: now() + chrono::Duration::microseconds(1_234_567 * i as i64),
                partition_key: (i % 2 == 0).then(|| format!("key-{i}")),
            })
            .collect()
    }

    fn hub() -> HubPartition<'static> {
        HubPartition { namespace: "ns", event_hub: "patient-flow", consumer_group: "$Default", partition_id: "7" }
    }

    #[test]
    fn decodes_the_envelope_into_the_bronze_columns() {
        let events = hub_events();
        let body = event_hub_batch_bytes(&hub(), &events, &now(), "g");
        let d = decode_batch(&body, now()).unwrap();
        let expected: Vec<RawEvent> = events
            .iter()
            .map(|e| RawEvent {
                body: e.body.clone(),
                sequence_number: e.sequence_number,
                offset: Some(e.offset.to_string()),
                enqueued_time: e.enqueued_time,
                partition_key: e.partition_key.clone(),
                properties: Some("{}".into()),
            })
            .collect();
        assert_eq!(d.batch, EventBatch::from_events("patient-flow", "7", now(), &expected));
        assert_eq!(d.retry_count, None);
    }

    #[test]
    fn real_arrays_and_double_encoded_arrays_decode_alike() {
        let events = hub_events();
        let mut envelope = event_hub_batch(&hub(), &events, &now(), "g");
        let encoded = decode_batch(&serde_json::to_vec(&envelope).unwrap(), now()).unwrap();
        for (part, key) in [("Data", "events"), ("Metadata", "SequenceNumberArray"), ("Metadata", "OffsetStringArray")]
        {
            let text = envelope[part][key].as_str().unwrap().to_string();
            envelope[part][key] = serde_json::from_str(&text).unwrap();
        }
        envelope["Metadata"]["RetryContext"] = serde_json::json!({"RetryCount": 3});
        let real = decode_batch(&serde_json::to_vec(&envelope).unwrap(), now()).unwrap();
        assert_eq!(real.batch, encoded.batch);
        assert_eq!(real.retry_count, Some(3));
        assert_eq!(real.batch.events.body.value(1), b"\xff\x00 not json \"\\");
        assert!(real.batch.events.partition_key.is_null(1));
    }

    #[test]
    fn numbers_and_objects_in_metadata_arrays_keep_their_json_text() {
        let mut envelope = event_hub_batch(&hub(), &hub_events()[..2], &now(), "g");
        envelope["Metadata"]["OffsetStringArray"] = serde_json::json!("[4096, \"x\"]");
        envelope["Metadata"]["PartitionKeyArray"] = serde_json::json!([null, {"b": 1, "a": [true]}]);
        envelope["Metadata"]["PropertiesArray"] = serde_json::json!("[null, {\"z\": 1.5, \"a\": \"\\u00e9\"}]");
        envelope["Metadata"]["SequenceNumberArray"] = serde_json::json!(["9", 10]);
        let d = decode_batch(&serde_json::to_vec(&envelope).unwrap(), now()).unwrap().batch;
        let e = &d.events;
        assert_eq!((e.offset.value(0), e.offset.value(1)), ("4096", "x"));
        assert!(e.partition_key.is_null(0));
        assert_eq!(e.partition_key.value(1), r#"{"a":[true],"b":1}"#);
        assert_eq!((e.properties.value(0), e.properties.value(1)), ("null", r#"{"a":"é","z":1.5}"#));
        assert_eq!(e.sequence_number.values().to_vec(), [9, 10]);
    }
}
