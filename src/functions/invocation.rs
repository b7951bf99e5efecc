//! The Functions host's wire types for custom handlers, defined once: the request envelope
//! `{"Data": {...}, "Metadata": {...}}` and the response `{"Outputs", "Logs", "ReturnValue"}`,
//! plus the decoding rules of the host's value encoding (reference §2.2): strings, arrays, numbers
//! and URIs arrive JSON-encoded a second time (`"\"x\""`, `"[1,2]"`), objects do not, and a single
//! binary value is plain base64.

use std::borrow::Cow;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
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

/// A host string value (double-encoded: `"\"abc\""`), tolerating the single-encoded form.
pub fn host_string(v: &Value) -> Option<String> {
    match unwrap_json(v) {
        Cow::Owned(Value::String(s)) => Some(s),
        Cow::Borrowed(Value::String(s)) => Some(s.clone()),
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
    BASE64.decode(s).map_err(|_| {
        FunctionError::BadRequest(format!(
            "{what} is not base64; set \"dataType\": \"binary\" on the trigger binding in function.json"
        ))
    })
}

/// Encodes bytes as base64 (what a runner sends for binary triggers).
pub fn to_base64(bytes: &[u8]) -> String {
    BASE64.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn undoes_exactly_one_level_of_encoding() {
        assert_eq!(*unwrap_json(&json!("[1041,1042]")), json!([1041, 1042]));
        assert_eq!(*unwrap_json(&json!("\"hello\"")), json!("hello"));
        assert_eq!(*unwrap_json(&json!({"a": 1})), json!({"a": 1}));
        assert_eq!(*unwrap_json(&json!("plain text")), json!("plain text"));
        assert_eq!(host_string(&json!("\"https://acct/x\"")).as_deref(), Some("https://acct/x"));
        assert_eq!(host_string(&json!("1041")).as_deref(), Some("1041"));
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
