//! `refine_silver`: the blob-triggered function on `bronze/patient-flow/{name}.parquet`
//! (`dataType: binary`). Takes the blob from `Data` (base64) or, with deferred binding or when the
//! content is absent, reads it from the lake by name; then applies the silver rules.

use axum::Json;
use axum::extract::State;
use bytes::Bytes;
use serde_json::Value;

use super::FunctionError;
use super::invocation::{InvokeRequest, InvokeResponse, base64_bytes, host_string};
use crate::pipeline::silver;
use crate::state::AppState;
use crate::storage::keys::{BatchStem, PARQUET_EXT, PATIENT_FLOW_PREFIX};

/// Function name (folder, module and route).
pub const NAME: &str = "refine_silver";
/// The trigger binding's name in function.json.
pub const BINDING: &str = "blob";

/// POST /refine_silver
pub async fn handle(State(state): State<AppState>, body: Bytes) -> Result<Json<InvokeResponse>, FunctionError> {
    let req = InvokeRequest::from_slice(&body)?;
    let stem = blob_stem(&req)?;
    let lake = state.lake().await?;
    let m = match req.data.get(BINDING) {
        Some(Value::String(b64)) => {
            let bytes = base64_bytes(&format!("Data.{BINDING}"), b64)?;
            silver::process(lake, &stem, Bytes::from(bytes)).await?
        }
        // Deferred binding sends a descriptor object instead of the content; read it ourselves.
        Some(Value::Object(_)) | Some(Value::Null) | None => silver::process_from_lake(lake, &stem).await?,
        Some(_) => {
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

/// The bronze file's stem, from `Metadata.name` (the `{name}` of the trigger path) or `Metadata.Uri`.
pub fn blob_stem(req: &InvokeRequest) -> Result<BatchStem, FunctionError> {
    let from_name = req.metadata.get("name").and_then(host_string);
    let from_uri = || {
        let uri = req.metadata.get("Uri").and_then(host_string)?;
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
