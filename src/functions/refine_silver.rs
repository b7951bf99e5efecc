//! `refine_silver`: the blob-triggered function on `bronze/patient-flow/{name}.parquet`
//! (`dataType: binary`). Takes the blob from `Data` (base64) or, with deferred binding or when the
//! content is absent, reads it from the lake by name; then applies the silver rules.

use axum::Json;
use axum::extract::State;
use bytes::Bytes;
use serde::Deserialize;
use serde::de::{Deserializer, IgnoredAny};
use serde_json::Value;

use super::FunctionError;
use super::invocation::{
    EnvelopeSink, HostScalar, InvokeResponse, Part, append_base64, decode_envelope, host_string, with_host_scalar,
};
use crate::pipeline::silver;
use crate::state::AppState;
use crate::storage::keys::{BatchStem, PARQUET_EXT, PATIENT_FLOW_PREFIX};

/// Function name (folder, module and route).
pub const NAME: &str = "refine_silver";
/// The trigger binding's name in function.json.
pub const BINDING: &str = "blob";

/// POST /refine_silver
pub async fn handle(State(state): State<AppState>, body: Bytes) -> Result<Json<InvokeResponse>, FunctionError> {
    let mut req = BlobRequest::default();
    decode_envelope(&body, &mut req)?;
    drop(body);
    let stem = blob_stem(req.name.as_ref(), req.uri.as_ref())?;
    let lake = state.lake().await?;
    let m = match req.blob {
        Blob::Content(Ok(bytes)) => silver::process(lake, &stem, Bytes::from(bytes)).await?,
        Blob::Content(Err(())) => {
            return Err(FunctionError::BadRequest(format!(
                "Data.{BINDING} is not base64; set \"dataType\": \"binary\" on the trigger binding in function.json"
            )));
        }
        // Deferred binding sends a descriptor object instead of the content; read it ourselves.
        Blob::Absent | Blob::Descriptor => silver::process_from_lake(lake, &stem).await?,
        Blob::Other => {
            return Err(FunctionError::BadRequest(format!(
                "Data.{BINDING} is neither base64 content nor a deferred-binding descriptor; set \"dataType\": \"binary\""
            )));
        }
    };
    tracing::info!(
        bronze = %m.bronze_file,
        rows_in = m.rows_in,
        rows_out = m.rows_out,
        quarantined = m.quarantined_total(),
        duplicates = m.duplicates_dropped,
        age_capped = m.corrected.get("age_capped").copied().unwrap_or(0),
        admission_imputed = m.corrected.get("admission_imputed").copied().unwrap_or(0),
        discharge_before_admission = m.corrected.get("discharge_before_admission").copied().unwrap_or(0),
        quarantine_reasons = ?m.quarantined,
        created = m.created,
        "Silver file refined."
    );
    Ok(Json(InvokeResponse {
        logs: vec![m.summary()],
        return_value: serde_json::to_value(&m).unwrap_or_default(),
        ..Default::default()
    }))
}

/// `Data.blob` as sent.
#[derive(Debug, Default)]
enum Blob {
    /// No entry, or null.
    #[default]
    Absent,
    /// Base64 content (`dataType: binary`), decoded as it was parsed; `Err` when not base64.
    Content(Result<Vec<u8>, ()>),
    /// A deferred-binding descriptor (an object).
    Descriptor,
    /// Anything else.
    Other,
}

/// What the handler reads from a blob-trigger envelope, in one pass: the content is decoded from
/// base64 as it is parsed (never copied as text), `name` and `Uri` kept, the rest skipped.
#[derive(Debug, Default)]
struct BlobRequest {
    blob: Blob,
    name: Option<Value>,
    uri: Option<Value>,
}

impl EnvelopeSink for BlobRequest {
    fn entry<'de, D: Deserializer<'de>>(&mut self, part: Part, key: &str, value: D) -> Result<(), D::Error> {
        match (part, key) {
            (Part::Data, BINDING) => {
                self.blob = with_host_scalar(value, |v| match v {
                    HostScalar::Null => Blob::Absent,
                    HostScalar::Str(b64) => {
                        let mut bytes = Vec::new();
                        Blob::Content(append_base64(b64, &mut bytes).map(|()| bytes).map_err(drop))
                    }
                    HostScalar::Other(Value::Object(_)) => Blob::Descriptor,
                    HostScalar::Other(_) => Blob::Other,
                })?;
                Ok(())
            }
            (Part::Metadata, "name") => {
                self.name = Some(Value::deserialize(value)?);
                Ok(())
            }
            (Part::Metadata, "Uri") => {
                self.uri = Some(Value::deserialize(value)?);
                Ok(())
            }
            _ => IgnoredAny::deserialize(value).map(drop),
        }
    }
}

/// The bronze file's stem, from `Metadata.name` (the `{name}` of the trigger path) or `Metadata.Uri`.
pub fn blob_stem(name: Option<&Value>, uri: Option<&Value>) -> Result<BatchStem, FunctionError> {
    let from_name = name.and_then(host_string);
    let from_uri = || {
        let uri = uri.and_then(host_string)?;
        let path = url::Url::parse(&uri).ok()?.path().to_string();
        let marker = format!("/{PATIENT_FLOW_PREFIX}/");
        let at = path.find(&marker)?;
        Some(path[at + marker.len()..].trim_end_matches(PARQUET_EXT).to_string())
    };
    let name = from_name.or_else(from_uri).ok_or_else(|| {
        FunctionError::BadRequest(
            "Metadata has neither `name` nor `Uri`; the trigger path must be bronze/patient-flow/{name}.parquet".into(),
        )
    })?;
    BatchStem::parse_name(&name).ok_or_else(|| {
        FunctionError::BadRequest(format!(
            "blob name {name:?} is not a bronze batch (partition=<id>/<first seq>-<last seq>); the trigger path must be bronze/patient-flow/{{name}}.parquet"
        ))
    })
}
