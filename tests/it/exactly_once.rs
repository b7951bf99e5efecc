//! Each event counts once downstream, whatever the batch boundaries of its deliveries; and one bad
//! value (a `9999-12-31` placeholder) never stops the pipeline.

use std::collections::BTreeMap;
use std::time::Duration;

use arrow_array::RecordBatch;
use axum::http::StatusCode;
use patientflow::app::{AppState, GoldSettings, WarehouseConfig};
use patientflow::local_host::envelopes;
use patientflow::pipeline::gold::{self, manifest};
use patientflow::pipeline::quarantine;
use patientflow::storage::keys::patient_flow_prefix;
use patientflow::storage::{Container, Lake, StorageConfig};
use patientflow::warehouse::report::Report;
use serde_json::{Value, json};

use crate::util::{self, call, event, land};

/// 100 events of every kind of dirt, returning patients and discharge updates.
fn bodies() -> Vec<Vec<u8>> {
    util::simulated(21, 100, 0.0, 0.3)
}

/// Handler state over `lake` with an embedded warehouse in `dir` and a timer that always builds.
fn state(lake: &Lake, dir: &std::path::Path) -> AppState {
    AppState::build(
        StorageConfig::memory(),
        Some(lake.clone()),
        util::settings(),
        WarehouseConfig::Embedded(dir.join("warehouse.duckdb").into()),
        GoldSettings { min_new_files: 0, retention: Duration::from_secs(3600), ..Default::default() },
    )
}

/// Fires the gold timer (build and warehouse load) and insists it succeeded.
async fn timer(state: &AppState) -> Value {
    let (status, response) = call(state, "build_gold", &envelopes::timer("build_gold", &util::now(), false, "g")).await;
    assert_eq!(status, StatusCode::OK, "every build succeeds: {response}");
    response["ReturnValue"].clone()
}

async fn silver_rows(lake: &Lake) -> usize {
    let mut rows = 0;
    for meta in lake.list(Container::Silver, &patient_flow_prefix()).await.unwrap() {
        let bytes = lake.get(Container::Silver, &meta.location).await.unwrap();
        let (_, batches) = patientflow::storage::parquet::decode(bytes).unwrap();
        rows += batches.iter().map(RecordBatch::num_rows).sum::<usize>();
    }
    rows
}

fn concat(batches: &[RecordBatch]) -> RecordBatch {
    arrow_select::concat::concat_batches(&batches[0].schema(), batches).unwrap()
}

/// Everything downstream of bronze that a user can count.
#[derive(Debug, PartialEq)]
struct Downstream {
    silver_rows: usize,
    quarantine: BTreeMap<String, u64>,
    tables: Vec<RecordBatch>,
    report: Report,
}

async fn downstream(state: &AppState, lake: &Lake) -> Downstream {
    let m = manifest::latest(lake).await.unwrap().unwrap();
    let t = gold::read_build(lake, &m).await.unwrap();
    let tables = [&t.dim_department, &t.dim_patient, &t.dim_time, &t.fact_patient_flow].map(|b| concat(b)).to_vec();
    let warehouse = state.warehouse().await.unwrap().unwrap();
    let mut report = warehouse.report().await.unwrap();
    // What `patientflow report` and `run` add from the lake.
    report.quarantine_by_reason = quarantine::list(lake, None, 0).await.unwrap().by_reason;
    Downstream { silver_rows: silver_rows(lake).await, quarantine: report.quarantine_by_reason.clone(), tables, report }
}

#[tokio::test]
async fn a_batch_redelivered_with_other_boundaries_counts_once_everywhere() {
    let bodies = bodies();
    let dir = tempfile::tempdir().unwrap();

    // Delivered once: sequence numbers 100–199 in one batch.
    let once = Lake::open(&StorageConfig::memory()).await.unwrap();
    let once_state = state(&once, &dir.path().join("once"));
    land(&once_state, &once, "0", 100, &bodies).await;
    timer(&once_state).await;
    let expected = downstream(&once_state, &once).await;
    assert!(expected.quarantine.values().sum::<u64>() > 0, "the data has quarantined events");
    assert!(expected.silver_rows > 50);

    // Delivered again after a restart, split 100–149 and 150–199: two more bronze files (bronze is the
    // archive of what was delivered), but nothing more in silver, quarantine, gold, warehouse, report.
    let twice = Lake::open(&StorageConfig::memory()).await.unwrap();
    let twice_state = state(&twice, &dir.path().join("twice"));
    land(&twice_state, &twice, "0", 100, &bodies).await;
    timer(&twice_state).await;
    land(&twice_state, &twice, "0", 100, &bodies[..50]).await;
    land(&twice_state, &twice, "0", 150, &bodies[50..]).await;
    timer(&twice_state).await;
    assert_eq!(twice.list(Container::Bronze, &patient_flow_prefix()).await.unwrap().len(), 3);
    let got = downstream(&twice_state, &twice).await;
    assert_eq!(got.silver_rows, expected.silver_rows, "silver rows");
    assert_eq!(got.quarantine, expected.quarantine, "quarantine counts");
    assert_eq!(got.tables, expected.tables, "gold tables");
    assert_eq!(got.report.sections, expected.report.sections, "warehouse KPIs");
    assert_eq!(got.report.quarantine_by_reason, expected.report.quarantine_by_reason, "report quarantine");

    // The other way round: the split batches first, then the whole one. Silver, quarantine and every
    // KPI are the same (gold's lineage columns name the files that happened to come first).
    let reverse = Lake::open(&StorageConfig::memory()).await.unwrap();
    let reverse_state = state(&reverse, &dir.path().join("reverse"));
    land(&reverse_state, &reverse, "0", 100, &bodies[..50]).await;
    land(&reverse_state, &reverse, "0", 150, &bodies[50..]).await;
    timer(&reverse_state).await;
    land(&reverse_state, &reverse, "0", 100, &bodies).await;
    timer(&reverse_state).await;
    let got = downstream(&reverse_state, &reverse).await;
    assert_eq!(got.silver_rows, expected.silver_rows, "silver rows");
    assert_eq!(got.quarantine, expected.quarantine, "quarantine counts");
    assert_eq!(got.report.sections, expected.report.sections, "warehouse KPIs");
}

#[tokio::test]
async fn the_redelivered_events_are_counted_so_silver_still_balances() {
    let bodies = bodies();
    let (state, lake) = util::memory().await;
    land(&state, &lake, "0", 100, &bodies[..50]).await;
    // The host's retry overlaps the first batch by 50 events and brings 50 new ones.
    let (status, response) = call(&state, "ingest_bronze", &util::batch("0", 100, &bodies)).await;
    assert_eq!(status, StatusCode::OK, "{response}");
    let stem =
        patientflow::storage::keys::BatchStem::parse_key(response["ReturnValue"]["key"].as_str().unwrap()).unwrap();
    let bronze = lake.get(Container::Bronze, &stem.key()).await.unwrap();
    let uri = lake.uri(Container::Bronze, &stem.key());
    let (status, response) =
        call(&state, "refine_silver", &envelopes::blob_trigger(&uri, &stem.name(), Some(&bronze), &util::now(), "g"))
            .await;
    assert_eq!(status, StatusCode::OK, "{response}");
    let m: patientflow::pipeline::silver::SilverMetrics =
        serde_json::from_value(response["ReturnValue"].clone()).unwrap();
    assert_eq!((m.rows_in, m.redelivered), (100, 50), "{m:?}");
    assert!(m.balances(), "in = out + quarantined + duplicates + redelivered: {m:?}");
    assert!(m.summary().contains("redelivered=50"), "{}", m.summary());
}

#[tokio::test]
async fn quarantine_counts_each_event_once_when_overlapping_refines_race() {
    let bodies = bodies();
    let (state, lake) = util::memory().await;
    let a = land(&state, &lake, "0", 100, &bodies).await;
    let once = quarantine::list(&lake, None, 1000).await.unwrap();
    // A refine of the overlapping re-delivery that did not see the first silver file yet (the two
    // ran at once): the same events land in a second quarantine file.
    let silver_a = lake.get(Container::Silver, &a.key()).await.unwrap();
    lake.delete(Container::Silver, &a.key()).await.unwrap();
    land(&state, &lake, "0", 100, &bodies[..50]).await;
    lake.put(Container::Silver, &a.key(), silver_a).await.unwrap();
    let raced = quarantine::list(&lake, None, 1000).await.unwrap();
    assert_eq!(raced.files, 2, "both refines wrote a quarantine file");
    assert_eq!(raced.by_reason, once.by_reason, "each (event hub, partition, sequence number) counts once");
    assert_eq!(raced.entries.len(), once.entries.len());
}

#[tokio::test]
async fn a_9999_discharge_is_quarantined_and_every_later_build_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let lake = Lake::open(&StorageConfig::memory()).await.unwrap();
    let state = state(&lake, dir.path());
    let placeholder = event("P1", "Female", 40, "ICU", 1, 3, "2026-11-24T02:00:00", Some("9999-12-31T00:00:00"));
    let ancient = event("P2", "Male", 50, "ICU", 1, 4, "0001-01-01T00:00:00", None);
    let endless = event("P3", "Male", 60, "ICU", 1, 5, "2026-11-20T00:00:00", Some("2099-01-01T00:00:00"));
    let fine = event("P4", "Female", 30, "Surgery", 2, 1, "2026-11-24T01:00:00", Some("2026-11-24T09:00:00"));
    land(&state, &lake, "0", 0, &[placeholder, ancient, endless, fine]).await;
    let first = timer(&state).await;
    assert_eq!(first["build"]["outcome"], json!("built"), "{first}");

    for (i, seq) in [10, 20, 30].into_iter().enumerate() {
        let later = event(&format!("L{i}"), "Male", 45, "ICU", 1, 10 + seq, "2026-11-24T03:00:00", None);
        land(&state, &lake, "0", seq, &[later]).await;
        let job = timer(&state).await;
        assert_eq!(job["build"]["outcome"], json!("built"), "{job}");
    }
    let m = manifest::latest(&lake).await.unwrap().unwrap();
    assert_eq!(m.build, 4);
    let facts: usize = gold::read_build(&lake, &m).await.unwrap().fact_patient_flow.iter().map(|b| b.num_rows()).sum();
    assert_eq!(facts, 4, "the good visit and the three later ones");

    let q = quarantine::list(&lake, None, 10).await.unwrap();
    assert_eq!(q.by_reason.get("out_of_range"), Some(&3), "{q:?}");
    let details: Vec<&str> = q.entries.iter().map(|e| e.detail.as_str()).collect();
    assert!(details.iter().any(|d| d.starts_with("discharge_time must be between 1900")), "{details:?}");
    assert!(details.iter().any(|d| d.starts_with("admission_time must be between 1900")), "{details:?}");
    assert!(details.iter().any(|d| d.contains("discharge_time is more than 365 days")), "{details:?}");
}

#[tokio::test]
async fn redeliveries_are_recognised_on_azurite_too() {
    let Some(config) = util::azurite_config("redeliver") else { return };
    let bodies = bodies();
    let state = AppState::new(config, util::settings());
    let lake = state.lake().await.unwrap().clone();
    land(&state, &lake, "1", 100, &bodies).await;
    let one = silver_rows(&lake).await;
    // The same sequence numbers in another partition are other events.
    land(&state, &lake, "0", 100, &bodies).await;
    let before = silver_rows(&lake).await;
    assert_eq!(before, 2 * one);
    land(&state, &lake, "0", 100, &bodies[..50]).await;
    land(&state, &lake, "0", 150, &bodies[50..]).await;
    assert_eq!(silver_rows(&lake).await, before, "the re-delivered batches add no silver rows");
    assert_eq!(lake.list(Container::Bronze, &patient_flow_prefix()).await.unwrap().len(), 4);
    assert_eq!(quarantine::list(&lake, None, 0).await.unwrap().files, 2, "no quarantine file for the re-deliveries");
}
