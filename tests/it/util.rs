//! Shared fixtures: lakes (memory, temp folder, Azurite), handler calls without a socket, envelopes.

use std::sync::atomic::{AtomicU32, Ordering};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use chrono::NaiveDateTime;
use http_body_util::BodyExt;
use patientflow::app::{self, AppState, HandlerSettings};
use patientflow::local_host::envelopes::{self, HubEvent, HubPartition};
use patientflow::model::time::parse_utc;
use patientflow::storage::keys::BatchStem;
use patientflow::storage::{Container, Lake, StorageConfig};
use serde_json::{Value, json};
use tower::ServiceExt;

/// The fixed clock of every test.
pub fn now() -> NaiveDateTime {
    parse_utc("2026-11-24T12:00:00").unwrap()
}

/// Settings with the fixed clock.
pub fn settings() -> HandlerSettings {
    HandlerSettings { now: Some(now()), ..Default::default() }
}

/// An Azurite lake with containers unique to this test, or `None` (with the reason printed) when the
/// test command did not start Azurite. Under `scripts/test` a missing Azurite is a failure.
pub fn azurite_config(test: &str) -> Option<StorageConfig> {
    static N: AtomicU32 = AtomicU32::new(0);
    let Ok(conn) = std::env::var("PATIENTFLOW_TEST_AZURITE") else {
        assert!(
            std::env::var_os("PATIENTFLOW_REQUIRE_AZURITE").is_none(),
            "PATIENTFLOW_REQUIRE_AZURITE is set but PATIENTFLOW_TEST_AZURITE is not"
        );
        eprintln!(
            "skipping {test}: PATIENTFLOW_TEST_AZURITE is not set (run the suite with scripts/test, which starts Azurite)"
        );
        return None;
    };
    let backend = StorageConfig::from_connection_string("PATIENTFLOW_TEST_AZURITE", &conn).unwrap();
    let suffix = format!("{}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed), test.replace('_', "-"));
    let suffix: String = suffix.chars().take(40).collect::<String>().trim_end_matches('-').to_string();
    let containers = ["bronze", "silver", "gold", "quarantine"].map(|c| format!("{c}-{suffix}"));
    Some(StorageConfig { backend, containers })
}

/// An in-memory lake and handler state around it.
pub async fn memory() -> (AppState, Lake) {
    let lake = Lake::open(&StorageConfig::memory()).await.unwrap();
    (AppState::with_lake(lake.clone(), settings()), lake)
}

/// POSTs `body` to `/<function>` on the router, without a socket.
pub async fn call_raw(state: &AppState, function: &str, body: Vec<u8>) -> (StatusCode, Value) {
    let request = Request::post(format!("/{function}"))
        .header("content-type", "application/json")
        .header("x-azure-functions-invocationid", "test-invocation")
        .body(Body::from(body))
        .unwrap();
    let response = app::router(state.clone()).oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, value)
}

/// POSTs an envelope.
pub async fn call(state: &AppState, function: &str, envelope: &Value) -> (StatusCode, Value) {
    call_raw(state, function, serde_json::to_vec(envelope).unwrap()).await
}

/// An Event Hubs batch envelope for `bodies` on partition `p`, sequence numbers from `first_seq`,
/// enqueued one millisecond apart from [`now`].
pub fn batch(p: &str, first_seq: i64, bodies: &[Vec<u8>]) -> Value {
    let events = bodies
        .iter()
        .enumerate()
        .map(|(i, b)| (first_seq + i as i64, now() + chrono::Duration::milliseconds(i as i64), b.clone()));
    hub_batch(p, events)
}

/// An Event Hubs batch envelope on partition `p` of `(sequence number, enqueued time, body)`
/// events, offsets 1000 × the sequence number, as the host sends it.
pub fn hub_batch(p: &str, events: impl IntoIterator<Item = (i64, chrono::NaiveDateTime, Vec<u8>)>) -> Value {
    let events: Vec<HubEvent> = events
        .into_iter()
        .map(|(seq, enqueued_time, body)| HubEvent {
            body: body.into(),
            sequence_number: seq,
            offset: 1000 * seq,
            enqueued_time,
            partition_key: None,
        })
        .collect();
    let hub = HubPartition {
        namespace: "ns.servicebus.windows.net",
        event_hub: "patient-flow",
        consumer_group: "$Default",
        partition_id: p,
    };
    envelopes::event_hub_batch(&hub, &events, &now(), "guid")
}

#[allow(clippy::too_many_arguments)]
pub fn event(
    id: &str,
    gender: &str,
    age: i64,
    dept: &str,
    hospital: i64,
    bed: i64,
    admission: &str,
    discharge: Option<&str>,
) -> Vec<u8> {
    let mut v = json!({
        "patient_id": id, "gender": gender, "age": age, "department": dept,
        "admission_time": admission, "bed_id": bed, "hospital_id": hospital,
    });
    if let Some(d) = discharge {
        v["discharge_time"] = json!(d);
    }
    serde_json::to_vec(&v).unwrap()
}

/// Lands bodies as one bronze file and refines it, as the host would.
pub async fn land(state: &AppState, lake: &Lake, partition: &str, first_seq: i64, bodies: &[Vec<u8>]) -> BatchStem {
    let (status, response) = call(state, "ingest_bronze", &batch(partition, first_seq, bodies)).await;
    assert_eq!(status, StatusCode::OK, "{response}");
    let stem = BatchStem::parse_key(response["ReturnValue"]["key"].as_str().unwrap()).unwrap();
    let bronze = lake.get(Container::Bronze, &stem.key()).await.unwrap();
    let envelope =
        envelopes::blob_trigger(&lake.uri(Container::Bronze, &stem.key()), &stem.name(), Some(&bronze), &now(), "g");
    let (status, response) = call(state, "refine_silver", &envelope).await;
    assert_eq!(status, StatusCode::OK, "{response}");
    stem
}

/// `n` simulated events at three hospitals of 20 beds: every kind of dirt at 5 % each, exact
/// re-sends at `duplicate`, and returning patients (new DimPatient versions) at `returning`.
pub fn simulated(seed: u64, n: usize, duplicate: f64, returning: f64) -> Vec<Vec<u8>> {
    let config = patientflow::simulate::SimulationConfig {
        seed,
        now: now(),
        hospitals: 3,
        beds: 20,
        dirt: patientflow::simulate::DirtRates {
            old_age: 0.05,
            future_admission: 0.05,
            malformed: 0.05,
            missing_field: 0.05,
            wrong_type: 0.05,
            duplicate,
            returning,
        },
    };
    patientflow::simulate::Simulator::new(config).take(n).map(|e| e.body).collect()
}

/// The Python the tests run their independent checkers with (sqlglot, pyarrow): `PATIENTFLOW_PYTHON`
/// (the test command's venv), else `python3`.
pub fn python() -> String {
    std::env::var("PATIENTFLOW_PYTHON").unwrap_or_else(|_| "python3".into())
}
