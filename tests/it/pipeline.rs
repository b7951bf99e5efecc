//! Silver end to end: simulated dirt of every kind through the handler, counted exactly.

use axum::http::StatusCode;
use patientflow::app::AppState;
use patientflow::local_host::envelopes;
use patientflow::pipeline::quarantine;
use patientflow::pipeline::silver::SilverMetrics;
use patientflow::simulate::{DirtRates, SimulationConfig, Simulator, Tally};
use patientflow::storage::keys::BatchStem;
use patientflow::storage::{Container, Lake, StorageConfig};

use crate::util::{self, batch, call};

fn dirty(count: usize, seed: u64) -> (Vec<Vec<u8>>, Tally) {
    let config = SimulationConfig {
        seed,
        now: util::now(),
        hospitals: 7,
        beds: 500,
        dirt: DirtRates {
            old_age: 0.05,
            future_admission: 0.05,
            malformed: 0.03,
            missing_field: 0.04,
            wrong_type: 0.02,
            duplicate: 0.03,
            returning: 0.3,
        },
    };
    let mut sim = Simulator::new(config);
    let bodies = sim.by_ref().take(count).map(|e| e.body).collect();
    (bodies, sim.tally().clone())
}

/// Lands `bodies` as one bronze file and refines it through the handler.
async fn refine_one_file(state: &AppState, lake: &Lake, bodies: &[Vec<u8>]) -> (BatchStem, SilverMetrics) {
    let (status, response) = call(state, "ingest_bronze", &batch("0", 0, bodies)).await;
    assert_eq!(status, StatusCode::OK, "{response}");
    let stem = BatchStem::parse_key(response["ReturnValue"]["key"].as_str().unwrap()).unwrap();
    let bronze = lake.get(Container::Bronze, &stem.key()).await.unwrap();
    let uri = lake.uri(Container::Bronze, &stem.key());
    let envelope = envelopes::blob_trigger(&uri, &stem.name(), Some(&bronze), &util::now(), "g");
    let (status, response) = call(state, "refine_silver", &envelope).await;
    assert_eq!(status, StatusCode::OK, "{response}");
    let metrics: SilverMetrics = serde_json::from_value(response["ReturnValue"].clone()).unwrap();
    (stem, metrics)
}

fn assert_counts_match(m: &SilverMetrics, t: &Tally) {
    let q = |reason: &str| m.quarantined.get(reason).copied().unwrap_or(0);
    assert_eq!(m.rows_in, t.events);
    assert_eq!(q("invalid_json"), t.truncated_json + t.garbage);
    assert_eq!(q("not_an_object"), t.not_an_object);
    assert_eq!(q("missing_patient_id"), t.missing[0]);
    assert_eq!(q("wrong_type"), t.wrong_type.iter().sum::<u64>());
    assert_eq!(q("invalid_timestamp"), 0);
    assert_eq!(q("out_of_range"), 0);
    assert_eq!(m.duplicates_dropped, t.duplicates);
    assert_eq!(m.corrected["age_capped"], t.old_age);
    assert_eq!(m.corrected["admission_imputed"], t.future_admission + t.missing[4]);
    assert!(m.corrected["discharge_before_admission"] <= t.missing[4]);
    assert_eq!(m.rows_with_missing_fields, t.missing[1..].iter().sum::<u64>());
    assert_eq!(m.rows_out, t.events - m.quarantined_total() - t.duplicates);
    assert!(m.balances(), "in = out + quarantined + duplicates: {m:?}");
    // Every kind of dirt was really injected, so each assertion above was exercised.
    assert!(t.truncated_json > 0 && t.garbage > 0 && t.not_an_object > 0 && t.duplicates > 0);
    assert!(t.missing.iter().all(|&n| n > 0) && t.wrong_type.iter().all(|&n| n > 0));
}

#[tokio::test]
async fn silver_and_quarantine_counts_match_the_injected_dirt_exactly() {
    let (bodies, tally) = dirty(20_000, 11);
    let (state, lake) = util::memory().await;
    let (stem, m) = refine_one_file(&state, &lake, &bodies).await;
    assert_counts_match(&m, &tally);

    let listing = quarantine::list(&lake, None, 5).await.unwrap();
    assert_eq!(listing.by_reason.values().sum::<u64>(), m.quarantined_total());
    assert_eq!(listing.entries.len(), 5);
    let rendered = listing.render();
    assert!(rendered.contains("invalid_json"), "{rendered}");
    let shown = serde_json::to_string(&listing).unwrap();
    assert!(!shown.contains("patient_id\\\":\\\""), "no event content in the listing");
    assert!(lake.exists(Container::Quarantine, &stem.key()).await.unwrap());
}

#[tokio::test]
async fn the_same_on_a_local_folder_and_on_azurite() {
    let (bodies, tally) = dirty(5_000, 12);
    let dir = tempfile::tempdir().unwrap();
    let local = Lake::open(&StorageConfig::local(dir.path())).await.unwrap();
    let (_, m) = refine_one_file(&AppState::with_lake(local.clone(), util::settings()), &local, &bodies).await;
    assert_counts_match(&m, &tally);

    let Some(config) = util::azurite_config("silver") else { return };
    let state = AppState::new(config, util::settings());
    let azure = state.lake().await.unwrap().clone();
    let (stem, m2) = refine_one_file(&state, &azure, &bodies).await;
    assert_counts_match(&m2, &tally);
    // Same input, same bytes, whatever the backend.
    assert_eq!(
        azure.get(Container::Silver, &stem.key()).await.unwrap(),
        local.get(Container::Silver, &stem.key()).await.unwrap()
    );
}

#[tokio::test]
async fn reprocessing_a_bronze_file_gives_a_byte_identical_silver_file() {
    let (bodies, _) = dirty(3_000, 13);
    let (state, lake) = util::memory().await;
    let (stem, first) = refine_one_file(&state, &lake, &bodies).await;
    assert!(first.created);
    let silver = lake.get(Container::Silver, &stem.key()).await.unwrap();

    // The blob trigger fires again (receipt lost): nothing changes.
    let bronze = lake.get(Container::Bronze, &stem.key()).await.unwrap();
    let uri = lake.uri(Container::Bronze, &stem.key());
    let again = envelopes::blob_trigger(&uri, &stem.name(), Some(&bronze), &util::now(), "other");
    let (status, response) = call(&state, "refine_silver", &again).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(response["ReturnValue"]["created"], serde_json::json!(false));
    assert_eq!(lake.get(Container::Silver, &stem.key()).await.unwrap(), silver);

    // A fresh lake refining the same bronze bytes writes the very same silver bytes.
    let (state2, lake2) = util::memory().await;
    let (_, _) = refine_one_file(&state2, &lake2, &bodies).await;
    assert_eq!(lake2.get(Container::Silver, &stem.key()).await.unwrap(), silver);
}
