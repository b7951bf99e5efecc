//! The Functions host's wire types for custom handlers, defined once: the request envelope
//! `{"Data": {...}, "Metadata": {...}}` and the response `{"Outputs", "Logs", "ReturnValue"}`,
//! plus the decoding rules of the host's value encoding (reference §2.2): strings, arrays, numbers
//! and URIs arrive JSON-encoded a second time (`"\"x\""`, `"[1,2]"`), objects do not, and a single
//! binary value is plain base64.
//!
//! Two ways to read an envelope: [`InvokeRequest`] (a JSON tree, for the small envelopes of timers
//! and webhooks) and [`decode_envelope`], one streaming pass for the hot paths (Event Hubs batches,
//! blob content): each `Data`/`Metadata` entry goes to an [`EnvelopeSink`] as it is parsed, host
//! arrays element by element ([`HostArray`], [`ElementSink`]), and whatever the sink does not read
//! is skipped without being built.

use std::borrow::Cow;
use std::fmt;

use base64_simd::STANDARD as BASE64;
use serde::de::value::{MapAccessDeserializer, SeqAccessDeserializer};
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::FunctionError;
use crate::model::time::parse_utc;

/// What the host POSTs to `/<FunctionName>`.
#[derive(Debug, Default, Deserialize, Serialize)]
pub struct InvokeRequest {
    /// One entry per input binding (the trigger and any inputs).
    #[serde(rename = "Data", alias = "data", default)]
    pub data: Map<String, Value>,
    /// The trigger's binding data, plus `sys`.
    #[serde(rename = "Metadata", alias = "metadata", default)]
    pub metadata: Map<String, Value>,
}

/// What the handler answers; only meaningful with a 2xx status.
#[derive(Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct InvokeResponse {
    /// Values for declared output bindings.
    #[serde(rename = "Outputs")]
    pub outputs: Map<String, Value>,
    /// Lines the host logs against this invocation.
    #[serde(rename = "Logs")]
    pub logs: Vec<String>,
    /// The `$return` binding's value.
    #[serde(rename = "ReturnValue")]
    pub return_value: Value,
}

impl InvokeResponse {
    /// A response with only log lines.
    pub fn logs(logs: Vec<String>) -> Self {
        Self { logs, ..Default::default() }
    }
}

impl InvokeRequest {
    /// Parses a request body, naming what is wrong when it is not the host's envelope.
    pub fn from_slice(body: &[u8]) -> Result<Self, FunctionError> {
        let value: Value = serde_json::from_slice(body).map_err(|e| {
            FunctionError::BadRequest(format!(
                "the request body is not JSON ({e}); the Functions host sends {{\"Data\":{{…}},\"Metadata\":{{…}}}}"
            ))
        })?;
        if !value.is_object() {
            return Err(FunctionError::BadRequest(
                "the request body is not a JSON object; the Functions host sends {\"Data\":{…},\"Metadata\":{…}}"
                    .into(),
            ));
        }
        serde_json::from_value(value)
            // serde's message can quote the offending value, which may be event content.
            .map_err(|_| FunctionError::BadRequest("the envelope's Data and Metadata must be JSON objects".into()))
    }

    /// A `Data` entry, or a 400 naming the binding.
    pub fn binding(&self, name: &str) -> Result<&Value, FunctionError> {
        self.data.get(name).ok_or_else(|| {
            let found: Vec<&str> = self.data.keys().map(String::as_str).collect();
            FunctionError::BadRequest(format!(
                "Data has no `{name}` binding (found {found:?}); check the binding name in function.json"
            ))
        })
    }

    /// `Metadata.sys.UtcNow`, the host's clock for this invocation.
    pub fn utc_now(&self) -> Option<chrono::NaiveDateTime> {
        self.metadata.get("sys")?.get("UtcNow").and_then(Value::as_str).and_then(parse_utc)
    }

    /// `Metadata.RetryContext.RetryCount`, when a retry policy re-invokes.
    pub fn retry_count(&self) -> Option<i64> {
        self.metadata.get("RetryContext")?.get("RetryCount").and_then(Value::as_i64)
    }
}

/// Undoes the host's second JSON encoding of a value: a string that holds JSON becomes that JSON.
/// Objects (and strings that are not JSON) are returned as they are.
///
/// Borrows what needs no decoding: a batch's event array arrives as a real JSON array of base64
/// strings, the bulk of a request, and is never copied.
pub fn unwrap_json(v: &Value) -> Cow<'_, Value> {
    match v {
        Value::String(s) => serde_json::from_str(s).map_or(Cow::Borrowed(v), Cow::Owned),
        other => Cow::Borrowed(other),
    }
}

/// A host string value (double-encoded: `"\"abc\""`), tolerating the single-encoded form and a
/// bare number. A single-encoded string that reads as a JSON number keeps its own text: an event
/// hub named `0E0` stays `0E0`, not the number's rendering `0.0`.
pub fn host_string(v: &Value) -> Option<String> {
    match unwrap_json(v) {
        Cow::Owned(Value::String(s)) => Some(s),
        Cow::Borrowed(Value::String(s)) => Some(s.clone()),
        Cow::Owned(Value::Number(_)) => v.as_str().map(str::to_string),
        other => other.as_number().map(ToString::to_string),
    }
}

/// A host array value (`"[1,2]"` or a real array).
/// A real array is borrowed, not copied; only a double-encoded one is parsed.
pub fn host_array<'a>(name: &str, v: &'a Value) -> Result<Cow<'a, [Value]>, FunctionError> {
    match unwrap_json(v) {
        Cow::Borrowed(Value::Array(a)) => Ok(Cow::Borrowed(a.as_slice())),
        Cow::Owned(Value::Array(a)) => Ok(Cow::Owned(a)),
        _ => Err(FunctionError::BadRequest(format!("Metadata.{name} is not an array"))),
    }
}

/// An optional metadata array, checked to have `len` entries when present.
pub fn metadata_array<'a>(
    req: &'a InvokeRequest,
    name: &str,
    len: usize,
) -> Result<Option<Cow<'a, [Value]>>, FunctionError> {
    let Some(v) = req.metadata.get(name) else { return Ok(None) };
    let a = host_array(name, v)?;
    if a.len() != len {
        return Err(FunctionError::BadRequest(format!(
            "Metadata.{name} has {} entries but the batch has {len} events",
            a.len()
        )));
    }
    Ok(Some(a))
}

/// Decodes one base64 value (a `dataType: binary` payload).
pub fn base64_bytes(what: &str, s: &str) -> Result<Vec<u8>, FunctionError> {
    BASE64.decode_to_vec(s).map_err(|_| {
        FunctionError::BadRequest(format!(
            "{what} is not base64; set \"dataType\": \"binary\" on the trigger binding in function.json"
        ))
    })
}

/// Encodes bytes as base64 (what a runner sends for binary triggers).
pub fn to_base64(bytes: &[u8]) -> String {
    BASE64.encode_to_string(bytes)
}

/// Decodes base64 text (RFC 4648's alphabet, padded, no bits set past the last byte: what the host
/// sends), appending the bytes to `out`; on error `out` is left as it was.
///
/// SIMD (`base64-simd`): the handler decodes every event body and every bronze file the host sends
/// this way, and the scalar decoder took 5.7 % of the instructions through the host's envelopes
/// (callgrind, 100k events). The crate reserves exactly what each value needs; reserving here first keeps the
/// growth of a buffer that collects many values (a batch's bodies) amortised, not a copy per value.
pub fn append_base64(s: &str, out: &mut Vec<u8>) -> Result<(), base64_simd::Error> {
    out.reserve(BASE64.estimated_decoded_length(s.len()));
    BASE64.decode_append(s, out)
}

const NOT_AN_OBJECT: &str =
    "the request body is not a JSON object; the Functions host sends {\"Data\":{…},\"Metadata\":{…}}";
const PARTS_NOT_OBJECTS: &str = "the envelope's Data and Metadata must be JSON objects";

/// Which part of the envelope an entry is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// `Data`: the input bindings.
    Data,
    /// `Metadata`: the trigger's binding data and `sys`.
    Metadata,
}

/// Receives the entries of `Data` and `Metadata` as [`decode_envelope`] parses them. An entry the
/// sink does not want should be skipped with `IgnoredAny` (nothing is built). Problems with a value
/// are the sink's to keep and report after the pass; an `Err` here means the JSON itself is broken.
pub trait EnvelopeSink {
    /// Reads the value of `<part>.<key>` from `value`.
    fn entry<'de, D: Deserializer<'de>>(&mut self, part: Part, key: &str, value: D) -> Result<(), D::Error>;
}

/// One streaming pass over an envelope with `de`, then the end of the input.
fn read_envelope<'de, R: serde_json::de::Read<'de>, S: EnvelopeSink>(
    mut de: serde_json::Deserializer<R>,
    sink: &mut S,
    shape: &mut Option<&'static str>,
) -> serde_json::Result<()> {
    de::Deserializer::deserialize_any(&mut de, Envelope { sink, shape }).and_then(|()| de.end())
}

/// Reads a request body in one streaming pass, handing each `Data` and `Metadata` entry to `sink`.
/// Errors like [`InvokeRequest::from_slice`]: a body that is not JSON, not an object, or whose
/// `Data`/`Metadata` are not objects is a 400 naming the problem (never quoting content).
pub fn decode_envelope<S: EnvelopeSink>(body: &[u8], sink: &mut S) -> Result<(), FunctionError> {
    let mut shape = None;
    // A body that is UTF-8 throughout (every body the host sends) is checked once, not string by
    // string as a slice reader does; any other body is read as bytes, whose error names the problem.
    let parsed = match std::str::from_utf8(body) {
        Ok(text) => read_envelope(serde_json::Deserializer::from_str(text), sink, &mut shape),
        Err(_) => read_envelope(serde_json::Deserializer::from_slice(body), sink, &mut shape),
    };
    if let Some(problem) = shape {
        return Err(FunctionError::BadRequest(problem.to_string()));
    }
    parsed.map_err(|e| match e.classify() {
        serde_json::error::Category::Data => FunctionError::BadRequest(PARTS_NOT_OBJECTS.into()),
        _ => FunctionError::BadRequest(format!(
            "the request body is not JSON ({e}); the Functions host sends {{\"Data\":{{…}},\"Metadata\":{{…}}}}"
        )),
    })
}

/// Visits any JSON value that is not of the wanted kind: consumes it, and records `problem`.
macro_rules! reject_other_values {
    ($problem:expr) => {
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
            Ok(self.reject($problem))
        }
        fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
            Ok(self.reject($problem))
        }
        fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
            Ok(self.reject($problem))
        }
        fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
            Ok(self.reject($problem))
        }
        fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
            Ok(self.reject($problem))
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(self.reject($problem))
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            while seq.next_element::<IgnoredAny>()?.is_some() {}
            Ok(self.reject($problem))
        }
    };
}

struct Envelope<'a, S> {
    sink: &'a mut S,
    shape: &'a mut Option<&'static str>,
}

impl<S> Envelope<'_, S> {
    fn reject(self, problem: &'static str) {
        self.shape.get_or_insert(problem);
    }
}

impl<'de, S: EnvelopeSink> Visitor<'de> for Envelope<'_, S> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the host's invocation envelope")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<Key<'de>>()? {
            let part = match key.0.as_ref() {
                "Data" | "data" => Part::Data,
                "Metadata" | "metadata" => Part::Metadata,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                    continue;
                }
            };
            map.next_value_seed(PartSeed { sink: &mut *self.sink, shape: &mut *self.shape, part })?;
        }
        Ok(())
    }

    reject_other_values!(NOT_AN_OBJECT);
}

/// An object key, borrowed from the body when it has no escapes.
struct Key<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object key")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_string())))
            }
        }
        d.deserialize_str(V)
    }
}

struct PartSeed<'a, S> {
    sink: &'a mut S,
    shape: &'a mut Option<&'static str>,
    part: Part,
}

impl<S> PartSeed<'_, S> {
    fn reject(self, problem: &'static str) {
        self.shape.get_or_insert(problem);
    }
}

impl<'de, S: EnvelopeSink> DeserializeSeed<'de> for PartSeed<'_, S> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de, S: EnvelopeSink> Visitor<'de> for PartSeed<'_, S> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<Key<'de>>()? {
            map.next_value_seed(EntrySeed { sink: &mut *self.sink, part: self.part, key: key.0.as_ref() })?;
        }
        Ok(())
    }

    reject_other_values!(PARTS_NOT_OBJECTS);
}

struct EntrySeed<'a, S> {
    sink: &'a mut S,
    part: Part,
    key: &'a str,
}

impl<'de, S: EnvelopeSink> DeserializeSeed<'de> for EntrySeed<'_, S> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        self.sink.entry(self.part, self.key, d)
    }
}

/// Receives the elements of a host array one at a time, as they are parsed. A problem with one
/// element is the sink's to keep (the parse goes on); an `Err` means the JSON is broken.
pub trait ElementSink {
    /// Reads element `index` from `value`.
    fn element<'de, D: Deserializer<'de>>(&mut self, index: usize, value: D) -> Result<(), D::Error>;
}

/// A host array value — a real JSON array, or a string holding one (the host's second encoding) —
/// streamed element by element into a sink. Deserializes to the number of elements, or `None` when
/// the value is neither (the value is consumed either way).
pub struct HostArray<'a, S>(pub &'a mut S);

impl<'de, S: ElementSink> DeserializeSeed<'de> for HostArray<'_, S> {
    type Value = Option<usize>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Option<usize>, D::Error> {
        d.deserialize_any(self)
    }
}

impl<S: ElementSink> HostArray<'_, S> {
    fn reject(self, _: ()) -> Option<usize> {
        None
    }

    fn stream<'de, A: SeqAccess<'de>>(self, mut seq: A) -> Result<Option<usize>, A::Error> {
        let mut n = 0;
        while seq.next_element_seed(ElementSeed { sink: &mut *self.0, index: n })?.is_some() {
            n += 1;
        }
        Ok(Some(n))
    }

    /// The host's second encoding: the string holds the array's JSON text. Anything else in it
    /// (not JSON, not an array, trailing text) makes the value "not an array".
    fn encoded(self, text: &str) -> Option<usize> {
        struct Inner<'a, S>(HostArray<'a, S>);
        impl<'de, S: ElementSink> Visitor<'de> for Inner<'_, S> {
            type Value = Option<usize>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an array")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Option<usize>, A::Error> {
                self.0.stream(seq)
            }
        }
        let mut de = serde_json::Deserializer::from_str(text);
        let n = de::Deserializer::deserialize_seq(&mut de, Inner(self)).ok()?;
        de.end().ok()?;
        n
    }
}

impl<'de, S: ElementSink> Visitor<'de> for HostArray<'_, S> {
    type Value = Option<usize>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array, or a string holding one")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Option<usize>, A::Error> {
        self.stream(seq)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Option<usize>, E> {
        Ok(self.encoded(v))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Option<usize>, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(None)
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Option<usize>, E> {
        Ok(self.reject(()))
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Option<usize>, E> {
        Ok(self.reject(()))
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Option<usize>, E> {
        Ok(self.reject(()))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Option<usize>, E> {
        Ok(self.reject(()))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Option<usize>, E> {
        Ok(self.reject(()))
    }
}

struct ElementSeed<'a, S> {
    sink: &'a mut S,
    index: usize,
}

impl<'de, S: ElementSink> DeserializeSeed<'de> for ElementSeed<'_, S> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        self.sink.element(self.index, d)
    }
}

/// One JSON value as a host array element: a string is lent (valid only during the callback),
/// anything else but null is built as a [`Value`] (numbers, and the rare object).
#[derive(Debug, PartialEq)]
pub enum HostScalar<'a> {
    /// `null`.
    Null,
    /// A string, unescaped.
    Str(&'a str),
    /// Any other value.
    Other(Value),
}

impl HostScalar<'_> {
    /// The JSON text of the value (`Value::to_string` of it).
    pub fn json_text(&self) -> String {
        match self {
            HostScalar::Null => "null".to_string(),
            HostScalar::Str(s) => serde_json::to_string(s).unwrap_or_default(),
            HostScalar::Other(v) => v.to_string(),
        }
    }

    /// The value as text: a string as it is, anything else but null as its JSON text.
    pub fn text(&self) -> Option<Cow<'_, str>> {
        match self {
            HostScalar::Null => None,
            HostScalar::Str(s) => Some(Cow::Borrowed(s)),
            HostScalar::Other(v) => Some(Cow::Owned(v.to_string())),
        }
    }
}

/// Reads one value and hands it to `f` as a [`HostScalar`].
pub fn with_host_scalar<'de, D: Deserializer<'de>, R>(
    d: D,
    f: impl FnOnce(HostScalar<'_>) -> R,
) -> Result<R, D::Error> {
    struct V<F>(F);
    impl<'de, R, F: FnOnce(HostScalar<'_>) -> R> Visitor<'de> for V<F> {
        type Value = R;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("any JSON value")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<R, E> {
            Ok((self.0)(HostScalar::Str(v)))
        }
        fn visit_unit<E: de::Error>(self) -> Result<R, E> {
            Ok((self.0)(HostScalar::Null))
        }
        fn visit_none<E: de::Error>(self) -> Result<R, E> {
            Ok((self.0)(HostScalar::Null))
        }
        fn visit_bool<E: de::Error>(self, v: bool) -> Result<R, E> {
            Ok((self.0)(HostScalar::Other(Value::from(v))))
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<R, E> {
            Ok((self.0)(HostScalar::Other(Value::from(v))))
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<R, E> {
            Ok((self.0)(HostScalar::Other(Value::from(v))))
        }
        fn visit_f64<E: de::Error>(self, v: f64) -> Result<R, E> {
            Ok((self.0)(HostScalar::Other(Value::from(v))))
        }
        fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<R, A::Error> {
            let v = Value::deserialize(SeqAccessDeserializer::new(seq))?;
            Ok((self.0)(HostScalar::Other(v)))
        }
        fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<R, A::Error> {
            let v = Value::deserialize(MapAccessDeserializer::new(map))?;
            Ok((self.0)(HostScalar::Other(v)))
        }
    }
    d.deserialize_any(V(f))
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use proptest::prelude::*;
    use serde_json::json;

    /// The `base64` crate's strict standard engine (padding required, canonical last symbol): the
    /// oracle the SIMD codec is checked against.
    const ORACLE: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

    /// Text near base64: its alphabet, padding in any place, and a few bytes that are not base64.
    fn near_base64() -> impl Strategy<Value = String> {
        proptest::collection::vec(
            prop_oneof![
                8 => proptest::sample::select(
                    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".to_vec()
                ),
                2 => Just(b'='),
                1 => proptest::sample::select(b"-_ \n\"%".to_vec()),
            ],
            0..80,
        )
        .prop_map(|b| String::from_utf8(b).expect("ASCII"))
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        #[test]
        fn base64_encodes_as_the_oracle_and_round_trips(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let text = to_base64(&bytes);
            prop_assert_eq!(&text, &ORACLE.encode(&bytes));
            let mut out = b"kept".to_vec();
            prop_assert!(append_base64(&text, &mut out).is_ok());
            prop_assert_eq!(&out[..4], b"kept");
            prop_assert_eq!(&out[4..], &bytes[..]);
        }

        #[test]
        fn base64_accepts_and_rejects_what_the_oracle_does(text in near_base64()) {
            let oracle = ORACLE.decode(&text);
            let mut out = b"kept".to_vec();
            match (append_base64(&text, &mut out), &oracle) {
                (Ok(()), Ok(expected)) => prop_assert_eq!(&out[4..], &expected[..]),
                (Err(_), Err(_)) => prop_assert_eq!(&out[..], b"kept", "a failed decode leaves the buffer as it was"),
                (ours, oracle) => prop_assert!(false, "{:?}: ours {:?}, the oracle {:?}", text, ours, oracle),
            }
            prop_assert_eq!(base64_bytes("x", &text).ok(), oracle.ok());
        }
    }

    #[test]
    fn a_buffer_of_many_bodies_grows_amortised() {
        // base64-simd reserves exactly one value's room; append_base64 must not turn that into a
        // reallocation per body.
        let body = to_base64(&[7u8; 225]);
        let mut out = Vec::new();
        let mut reallocations = 0;
        for _ in 0..2000 {
            let before = out.capacity();
            append_base64(&body, &mut out).unwrap();
            reallocations += usize::from(out.capacity() != before);
        }
        assert_eq!(out.len(), 2000 * 225);
        assert!(reallocations < 20, "{reallocations} reallocations for 2,000 bodies");
    }

    #[test]
    fn undoes_exactly_one_level_of_encoding() {
        assert_eq!(*unwrap_json(&json!("[1041,1042]")), json!([1041, 1042]));
        assert_eq!(*unwrap_json(&json!("\"hello\"")), json!("hello"));
        assert_eq!(*unwrap_json(&json!({"a": 1})), json!({"a": 1}));
        assert_eq!(*unwrap_json(&json!("plain text")), json!("plain text"));
        assert_eq!(host_string(&json!("\"https://acct/x\"")).as_deref(), Some("https://acct/x"));
        assert_eq!(host_string(&json!("1041")).as_deref(), Some("1041"));
        // Found by the envelope property test: a name that reads as a JSON number keeps its text.
        assert_eq!(host_string(&json!("0E0")).as_deref(), Some("0E0"));
        assert_eq!(host_string(&json!("1.50")).as_deref(), Some("1.50"));
        assert_eq!(host_string(&json!(1041)).as_deref(), Some("1041"));
        assert_eq!(host_string(&json!(null)), None);
    }

    #[test]
    fn a_real_array_is_borrowed_and_only_an_encoded_one_is_parsed() {
        // The batch's events (a real array of base64 strings) are the bulk of a request: no copy.
        let events = json!(["eyJhIjoxfQ==", "eyJhIjoyfQ=="]);
        let a = host_array("events", &events).unwrap();
        assert!(matches!(a, Cow::Borrowed(_)), "a real array must be borrowed");
        assert!(std::ptr::eq(a.as_ptr(), events.as_array().unwrap().as_ptr()));
        let encoded = json!("[1041,1042]");
        let a = host_array("SequenceNumberArray", &encoded).unwrap();
        assert!(matches!(a, Cow::Owned(_)));
        assert_eq!(&*a, &[json!(1041), json!(1042)]);
        assert!(host_array("x", &json!({"a": 1})).is_err());
    }

    #[test]
    fn names_what_is_wrong_with_an_envelope() {
        let e = InvokeRequest::from_slice(b"not json").unwrap_err().to_string();
        assert!(e.contains("not JSON"), "{e}");
        let e = InvokeRequest::from_slice(b"[1]").unwrap_err().to_string();
        assert!(e.contains("not a JSON object"), "{e}");
        let e = InvokeRequest::from_slice(br#"{"Data": 3}"#).unwrap_err().to_string();
        assert!(e.contains("must be JSON objects"), "{e}");
        let e = InvokeRequest::from_slice(br#"{"Data": "patient p-123 age 71"}"#).unwrap_err().to_string();
        assert!(!e.contains("p-123"), "never echo content: {e}");
        let req = InvokeRequest::from_slice(br#"{"Data": {"x": 1}}"#).unwrap();
        let e = req.binding("events").unwrap_err().to_string();
        assert!(e.contains("`events`") && e.contains("\"x\""), "{e}");
    }

    #[test]
    fn response_uses_the_host_casing() {
        let r = serde_json::to_value(InvokeResponse::logs(vec!["ok".into()])).unwrap();
        assert_eq!(r, json!({"Outputs": {}, "Logs": ["ok"], "ReturnValue": null}));
    }

    #[test]
    fn reads_sys_utc_now_and_retry_count() {
        let req = InvokeRequest::from_slice(
            br#"{"Data":{},"Metadata":{"sys":{"UtcNow":"2024-06-01T10:15:03.1234567Z"},"RetryContext":{"RetryCount":2}}}"#,
        )
        .unwrap();
        assert_eq!(req.utc_now(), parse_utc("2024-06-01T10:15:03.123456"));
        assert_eq!(req.retry_count(), Some(2));
    }
}
