//! Gold: the star schema checked row by row, SCD2 history, upserts, replays, crashes, races, the
//! timer threshold, the embedded warehouse and the KPIs against values computed here.

use std::collections::HashMap;
use std::time::Duration;

use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, Int32Type, Int64Type};
use arrow_array::{Array, RecordBatch};
use axum::http::StatusCode;
use chrono::NaiveDateTime;
use patientflow::app::{AppState, GoldSettings, WarehouseConfig};
use patientflow::local_host::envelopes;
use patientflow::model::time::{format_naive, parse_utc, to_micros};
use patientflow::pipeline::gold::{self, BuildOutcome, GoldOptions, keys, manifest};
use patientflow::storage::{Container, Lake, StorageConfig};
#[cfg_attr(not(feature = "embedded-warehouse"), allow(unused_imports))]
use serde_json::{Value, json};

use crate::util::{self, call, event, land};

fn t(s: &str) -> NaiveDateTime {
    parse_utc(s).unwrap()
}

const NOW: &str = "2026-11-24T12:00:00";

fn options(now: &str) -> GoldOptions {
    GoldOptions::new(t(now), Duration::from_secs(3600))
}

async fn built(lake: &Lake, now: &str) -> gold::GoldMetrics {
    match gold::build(lake, &options(now)).await.unwrap() {
        BuildOutcome::Built(m) => m,
        other => panic!("expected a build, got {other:?}"),
    }
}

async fn tables(lake: &Lake) -> gold::GoldTables {
    let m = manifest::latest(lake).await.unwrap().unwrap();
    gold::read_build(lake, &m).await.unwrap()
}

/// `batch` sorted by one column.
fn by_column(batch: RecordBatch, name: &str) -> RecordBatch {
    let values = batch.column_by_name(name).unwrap().as_string::<i32>();
    let mut order: Vec<u32> = (0..batch.num_rows() as u32).collect();
    order.sort_by_key(|&i| values.value(i as usize));
    let order = arrow_array::UInt32Array::from(order);
    let columns = batch.columns().iter().map(|c| arrow_select::take::take(c, &order, None).unwrap()).collect();
    RecordBatch::try_new(batch.schema(), columns).unwrap()
}

fn concat(batches: &[RecordBatch]) -> RecordBatch {
    arrow_select::concat::concat_batches(&batches[0].schema(), batches).unwrap()
}

fn i64s(b: &RecordBatch, c: &str) -> Vec<i64> {
    b.column_by_name(c).unwrap().as_primitive::<Int64Type>().values().to_vec()
}

fn strs(b: &RecordBatch, c: &str) -> Vec<String> {
    let a = b.column_by_name(c).unwrap().as_string::<i32>();
    (0..a.len()).map(|i| a.value(i).to_string()).collect()
}

fn opt_ts(b: &RecordBatch, c: &str) -> Vec<Option<String>> {
    crate::properties::micros(b, c)
        .into_iter()
        .map(|us| us.map(|us| format_naive(&patientflow::model::time::from_micros(us).unwrap())))
        .collect()
}

fn bools(b: &RecordBatch, c: &str) -> Vec<bool> {
    let a = b.column_by_name(c).unwrap().as_boolean();
    (0..a.len()).map(|i| a.value(i)).collect()
}

#[tokio::test]
async fn every_table_row_by_row() {
    let (state, lake) = util::memory().await;
    land(
        &state,
        &lake,
        "0",
        0,
        &[
            event("A", "Female", 40, "ICU", 1, 5, "2026-11-24T02:00:00", Some("2026-11-24T14:00:00")),
            event("B", "Male", 70, "Surgery", 2, 7, "2026-11-23T06:00:00", Some("2026-11-24T07:00:00")),
            event("C", "Male", 131, "ICU", 1, 9, "2026-11-24T01:30:00", Some("2026-11-23T00:00:00")),
        ],
    )
    .await;
    let m = built(&lake, NOW).await;
    assert_eq!((m.build, m.silver_files, m.rows_in, m.facts_inserted, m.facts_updated), (1, 1, 3, 3, 0));
    let g = tables(&lake).await;

    let dept = concat(&g.dim_department);
    assert_eq!(strs(&dept, "department"), ["ICU", "Surgery"]);
    assert_eq!(i64s(&dept, "department_sk"), [keys::department_sk("ICU", 1), keys::department_sk("Surgery", 2)]);

    // A DimPatient file's row order is not a contract: read the rows in patient order.
    let patients = by_column(concat(&g.dim_patient), "patient_id");
    assert_eq!(strs(&patients, "patient_id"), ["A", "B", "C"]);
    let ages = patients.column_by_name("age").unwrap().as_primitive::<Int32Type>().values().to_vec();
    assert_eq!(ages, [40, 70, 90], "age over 100 capped to 90 in silver");
    assert_eq!(bools(&patients, "is_current"), [true, true, true]);
    assert_eq!(opt_ts(&patients, "effective_to"), [None, None, None]);

    let time = concat(&g.dim_time);
    let hours = time.column_by_name("time_key").unwrap().as_primitive::<Int32Type>().values().to_vec();
    // Every hour of each day a fact references (admissions on the 23rd and 24th, discharges too).
    let expected: Vec<i32> = [2026112300, 2026112400].iter().flat_map(|d| (0..24).map(move |h| d + h)).collect();
    assert_eq!(hours, expected);

    let fact = concat(&g.fact_patient_flow);
    let mut by_patient: HashMap<i64, usize> = HashMap::new();
    for (i, sk) in i64s(&fact, "patient_sk").into_iter().enumerate() {
        by_patient.insert(sk, i);
    }
    let psk = i64s(&patients, "patient_sk");
    let row = |p: usize| by_patient[&psk[p]];
    let los = fact.column_by_name("length_of_stay_hours").unwrap().as_primitive::<Float64Type>();
    let current = bools(&fact, "is_currently_admitted");
    let (a, b, c) = (row(0), row(1), row(2));
    assert_eq!((los.value(a), current[a]), (12.0, true), "A: admitted 02:00, discharge at 14:00 is after the clock");
    assert_eq!((los.value(b), current[b]), (25.0, false), "B: discharged at 07:00");
    assert!(los.is_null(c) && !current[c], "C: discharge before admission never gives a negative stay");
    let fact_ids = i64s(&fact, "fact_id");
    assert_eq!(fact_ids[a], keys::fact_id("A", "ICU", 1, Some(to_micros(&t("2026-11-24T02:00:00")))));
    let adm_keys = fact.column_by_name("admission_time_key").unwrap().as_primitive::<Int32Type>();
    assert_eq!(adm_keys.value(b), 2026112306);
    assert_eq!(i64s(&fact, "department_sk")[b], keys::department_sk("Surgery", 2));
}

#[tokio::test]
async fn scd2_history_across_builds_with_one_key_per_version() {
    let (state, lake) = util::memory().await;
    land(
        &state,
        &lake,
        "0",
        0,
        &[event("A", "Female", 40, "ICU", 1, 5, "2026-11-20T08:00:00", Some("2026-11-21T08:00:00"))],
    )
    .await;
    built(&lake, NOW).await;
    land(
        &state,
        &lake,
        "0",
        1,
        &[event("A", "Female", 41, "Oncology", 1, 6, "2026-11-22T08:00:00", Some("2026-11-23T08:00:00"))],
    )
    .await;
    let m = built(&lake, NOW).await;
    assert_eq!(m.patients.versions_closed, 1);
    land(&state, &lake, "0", 2, &[event("A", "Female", 41, "ICU", 1, 7, "2026-11-23T10:00:00", None)]).await;
    let m = built(&lake, NOW).await;
    assert_eq!(m.patients.versions_closed, 0, "same attributes: no new version");

    let g = tables(&lake).await;
    let p = concat(&g.dim_patient);
    assert_eq!(p.num_rows(), 2);
    assert_eq!(
        opt_ts(&p, "effective_from"),
        [Some("2026-11-20T08:00:00.000000".into()), Some("2026-11-22T08:00:00.000000".into())]
    );
    assert_eq!(opt_ts(&p, "effective_to"), [Some("2026-11-22T08:00:00.000000".into()), None]);
    assert_eq!(bools(&p, "is_current"), [false, true]);
    let sks = i64s(&p, "patient_sk");
    assert_ne!(sks[0], sks[1]);

    let f = concat(&g.fact_patient_flow);
    let adm = opt_ts(&f, "admission_time");
    let fsk = i64s(&f, "patient_sk");
    let sk_at = |when: &str| fsk[adm.iter().position(|a| a.as_deref() == Some(when)).unwrap()];
    assert_eq!(sk_at("2026-11-20T08:00:00.000000"), sks[0], "each visit points at the version valid then");
    assert_eq!(sk_at("2026-11-22T08:00:00.000000"), sks[1]);
    assert_eq!(sk_at("2026-11-23T10:00:00.000000"), sks[1]);
}

#[tokio::test]
async fn a_discharge_update_replaces_the_earlier_fact_and_replays_change_nothing() {
    let (state, lake) = util::memory().await;
    let admitted = event("A", "Male", 50, "ICU", 3, 1, "2026-11-24T01:00:00", None);
    land(&state, &lake, "1", 0, std::slice::from_ref(&admitted)).await;
    built(&lake, NOW).await;
    let f = concat(&tables(&lake).await.fact_patient_flow);
    assert_eq!((f.num_rows(), bools(&f, "is_currently_admitted")[0]), (1, true));

    let discharged = event("A", "Male", 50, "ICU", 3, 1, "2026-11-24T01:00:00", Some("2026-11-24T09:30:00"));
    land(&state, &lake, "1", 1, std::slice::from_ref(&discharged)).await;
    let m = built(&lake, NOW).await;
    assert_eq!((m.facts_inserted, m.facts_updated), (0, 1));
    let f = concat(&tables(&lake).await.fact_patient_flow);
    assert_eq!(f.num_rows(), 1, "upsert on fact_id: still one visit");
    assert_eq!(opt_ts(&f, "discharge_time"), [Some("2026-11-24T09:30:00.000000".into())]);
    assert!(!bools(&f, "is_currently_admitted")[0]);
    let los = f.column_by_name("length_of_stay_hours").unwrap().as_primitive::<Float64Type>().value(0);
    assert_eq!(los, 8.5);

    // Replays: the same bronze batch again, the same silver file again — nothing new for gold.
    let before = manifest::latest(&lake).await.unwrap().unwrap();
    land(&state, &lake, "1", 1, std::slice::from_ref(&discharged)).await;
    let outcome = gold::build(&lake, &options(NOW)).await.unwrap();
    assert!(matches!(outcome, BuildOutcome::NothingNew { build: Some(2) }), "{outcome:?}");
    assert_eq!(manifest::latest(&lake).await.unwrap().unwrap(), before);
}

#[tokio::test]
async fn census_changes_rebuild_only_the_days_they_touch() {
    let (state, lake) = util::memory().await;
    land(
        &state,
        &lake,
        "0",
        0,
        &[
            event("A", "Male", 50, "ICU", 3, 1, "2026-11-24T01:00:00", Some("2026-11-24T13:00:00")),
            event("B", "Male", 50, "ICU", 3, 2, "2026-11-20T01:00:00", Some("2026-11-20T13:00:00")),
        ],
    )
    .await;
    built(&lake, NOW).await;
    // Nothing new and no discharge due yet: no build.
    assert!(matches!(
        gold::build(&lake, &options("2026-11-24T12:30:00")).await.unwrap(),
        BuildOutcome::NothingNew { .. }
    ));
    // A's discharge time passes: its day is rewritten, B's day is not.
    let m = built(&lake, "2026-11-24T13:00:01").await;
    assert_eq!((m.silver_files, m.partitions_written), (0, 1));
    let f = concat(&tables(&lake).await.fact_patient_flow);
    assert_eq!(bools(&f, "is_currently_admitted"), [false, false]);
}

#[tokio::test]
async fn an_interrupted_build_leaves_the_previous_build_intact() {
    let (state, lake) = util::memory().await;
    land(&state, &lake, "0", 0, &[event("A", "Male", 50, "ICU", 3, 1, "2026-11-24T01:00:00", None)]).await;
    built(&lake, NOW).await;
    let first = manifest::latest(&lake).await.unwrap().unwrap();
    land(&state, &lake, "0", 1, &[event("B", "Female", 30, "ICU", 3, 2, "2026-11-24T02:00:00", None)]).await;
    built(&lake, NOW).await;
    // Crash between writing the files and committing: the commit never happened.
    lake.delete(Container::Gold, &manifest::manifest_key(2)).await.unwrap();
    assert_eq!(manifest::latest(&lake).await.unwrap().unwrap(), first, "readers see the previous build");
    assert_eq!(concat(&tables(&lake).await.fact_patient_flow).num_rows(), 1);
    // The next build completes the work.
    let m = built(&lake, NOW).await;
    assert_eq!((m.build, m.silver_files), (2, 1));
    assert_eq!(concat(&tables(&lake).await.fact_patient_flow).num_rows(), 2);
}

#[tokio::test]
async fn a_second_commit_of_the_same_build_number_is_a_conflict() {
    let (state, lake) = util::memory().await;
    land(&state, &lake, "0", 0, &[event("A", "Male", 50, "ICU", 3, 1, "2026-11-24T01:00:00", None)]).await;
    built(&lake, NOW).await;
    let m = manifest::latest(&lake).await.unwrap().unwrap();
    let err = manifest::commit(&lake, &m).await.unwrap_err();
    assert!(matches!(err, patientflow::pipeline::Error::Conflict(_)), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_builds_never_both_commit() {
    let dir = tempfile::tempdir().unwrap();
    let lake = Lake::open(&StorageConfig::local(dir.path())).await.unwrap();
    let state = AppState::with_lake(lake.clone(), util::settings());
    let mut visits = 0;
    for round in 0..6 {
        let bodies: Vec<Vec<u8>> = (0..50)
            .map(|i| event(&format!("P{round}-{i}"), "Male", 30, "ICU", 1, i + 1, "2026-11-24T01:00:00", None))
            .collect();
        visits += bodies.len();
        land(&state, &lake, "0", round * 100, &bodies).await;
        let before = manifest::build_numbers(&lake).await.unwrap().len();
        let (a, b) = (lake.clone(), lake.clone());
        let ta = tokio::spawn(async move { gold::build(&a, &options("2026-11-24T12:00:00")).await });
        let tb = tokio::spawn(async move { gold::build(&b, &options("2026-11-24T12:00:01")).await });
        let results = [ta.await.unwrap(), tb.await.unwrap()];
        let built = results.iter().filter(|r| matches!(r, Ok(BuildOutcome::Built(_)))).count();
        let conflicts = results.iter().filter(|r| matches!(r, Err(patientflow::pipeline::Error::Conflict(_)))).count();
        let nothing = results.iter().filter(|r| matches!(r, Ok(BuildOutcome::NothingNew { .. }))).count();
        assert_eq!(built, 1, "round {round}: {results:?}");
        assert_eq!(conflicts + nothing, 1, "round {round}: the loser stops cleanly: {results:?}");
        assert_eq!(manifest::build_numbers(&lake).await.unwrap().len(), before + 1);
        assert_eq!(concat(&tables(&lake).await.fact_patient_flow).num_rows(), visits);
    }
}

#[tokio::test]
async fn superseded_files_are_cleaned_after_the_retention() {
    let (state, lake) = util::memory().await;
    land(&state, &lake, "0", 0, &[event("A", "Male", 50, "ICU", 3, 1, "2026-11-24T01:00:00", None)]).await;
    built(&lake, NOW).await;
    land(&state, &lake, "0", 1, &[event("B", "Male", 50, "ICU", 3, 1, "2026-11-24T02:00:00", None)]).await;
    let keep = GoldOptions::new(t(NOW), Duration::from_secs(3600));
    let gold::BuildOutcome::Built(m) = gold::build(&lake, &keep).await.unwrap() else { panic!() };
    assert_eq!(m.files_cleaned, 0, "within the retention both builds stay readable");
    let first: std::collections::BTreeSet<String> =
        manifest::read(&lake, 1).await.unwrap().files().into_iter().collect();
    let second: std::collections::BTreeSet<String> =
        manifest::read(&lake, 2).await.unwrap().files().into_iter().collect();
    let superseded = first.difference(&second).count();
    // The in-memory store stamps files with the wall clock: a clock far past it makes them old.
    let later = GoldOptions::new(t("2999-01-01T00:00:00"), Duration::from_secs(3600));
    let cleaned = gold::cleanup(&lake, &later).await.unwrap();
    assert!(superseded >= 2, "build 2 rewrote DimDepartment and DimTime at least: {superseded}");
    assert_eq!(cleaned as usize, superseded + 1, "build 1's manifest and exactly its superseded files");
    let latest = manifest::latest(&lake).await.unwrap().unwrap();
    assert_eq!(latest.build, 2);
    gold::read_build(&lake, &latest).await.expect("the latest build stays intact");
    assert_eq!(manifest::build_numbers(&lake).await.unwrap(), [2]);
}

fn timer_state(lake: &Lake, warehouse: WarehouseConfig, min_new_files: usize) -> AppState {
    AppState::build(
        StorageConfig::memory(),
        Some(lake.clone()),
        util::settings(),
        warehouse,
        GoldSettings { min_new_files, retention: Duration::from_secs(3600), ..Default::default() },
    )
}

#[tokio::test]
async fn the_timer_builds_only_past_the_threshold() {
    let (state, lake) = util::memory().await;
    for i in 0..5 {
        land(
            &state,
            &lake,
            "0",
            i * 10,
            &[event(&format!("P{i}"), "Male", 30, "ICU", 1, 1, "2026-11-24T01:00:00", None)],
        )
        .await;
    }
    let timer = timer_state(&lake, WarehouseConfig::None, 5);
    let envelope = envelopes::timer("build_gold", &t(NOW), false, "g");
    let (status, response) = call(&timer, "build_gold", &envelope).await;
    assert_eq!(status, StatusCode::OK, "{response}");
    assert!(response["Logs"][0].as_str().unwrap().contains("not more than the threshold of 5"), "{response}");
    assert!(manifest::latest(&lake).await.unwrap().is_none());

    land(&state, &lake, "0", 100, &[event("P9", "Male", 30, "ICU", 1, 1, "2026-11-24T01:00:00", None)]).await;
    let past_due = envelopes::timer("build_gold", &t(NOW), true, "g");
    let (status, response) = call(&timer, "build_gold", &past_due).await;
    assert_eq!(status, StatusCode::OK, "{response}");
    assert_eq!(response["ReturnValue"]["build"]["outcome"], json!("built"), "{response}");
    assert_eq!(response["ReturnValue"]["build"]["silver_files"], json!(6));

    let (status, response) = call(&timer, "build_gold", &json!({"Data": {"timer": "x"}, "Metadata": {}})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{response}");
}

/// `bodies` landed in bronze and silver, then one timer build into an embedded warehouse in a
/// temporary folder (kept alive by the returned guard): the lake, the timer's state and its response.
#[cfg(feature = "embedded-warehouse")]
async fn built_into_an_embedded_warehouse(bodies: &[Vec<u8>]) -> (tempfile::TempDir, Lake, AppState, Value) {
    let dir = tempfile::tempdir().unwrap();
    let (state, lake) = util::memory().await;
    land(&state, &lake, "0", 0, bodies).await;
    let timer = timer_state(&lake, WarehouseConfig::Embedded(dir.path().join("w.duckdb").into()), 0);
    let (status, response) = call(&timer, "build_gold", &envelopes::timer("build_gold", &t(NOW), false, "g")).await;
    assert_eq!(status, StatusCode::OK, "{response}");
    (dir, lake, timer, response)
}

/// A fixed dataset whose KPIs are computed here, independently of the SQL.
#[cfg(feature = "embedded-warehouse")]
#[tokio::test]
async fn the_seed_kpis_match_values_computed_independently() {
    let data = [
        ("F1", "Female", "ICU", 1, 1, "2026-11-24T01:00:00", None),
        // Same bed as F1 (the seed's generator assigns beds at random): census 2, one occupied bed.
        ("F4", "Female", "ICU", 1, 1, "2026-11-24T04:00:00", None),
        ("F2", "Female", "ICU", 1, 2, "2026-11-23T20:00:00", Some("2026-11-24T18:00:00")),
        ("F3", "Female", "Surgery", 2, 1, "2026-11-22T10:00:00", Some("2026-11-23T10:00:00")),
        ("M1", "Male", "Surgery", 2, 2, "2026-11-24T03:00:00", Some("2026-11-24T05:30:00")),
        ("M2", "Male", "ICU", 1, 3, "2026-11-24T11:00:00", None),
        ("M3", "Male", "Cardiology", 3, 1, "2026-11-21T00:00:00", Some("2026-11-22T00:00:00")),
        ("M4", "Male", "ICU", 1, 4, "2026-11-24T09:15:00", Some("2026-11-24T10:45:00")),
    ];
    let bodies: Vec<Vec<u8>> =
        data.iter().map(|(id, g, d, h, b, a, dis)| event(id, g, 50, d, *h, *b, a, *dis)).collect();
    let (_dir, lake, timer, _) = built_into_an_embedded_warehouse(&bodies).await;
    let warehouse = timer.warehouse().await.unwrap().unwrap();
    let report = warehouse.report().await.unwrap();

    // Independent computation.
    let now = t(NOW);
    let beds: std::collections::HashSet<(i64, i64)> = data.iter().map(|r| (r.3, r.4)).collect();
    let admitted =
        |r: &(&str, &str, &str, i64, i64, &str, Option<&str>)| t(r.5) <= now && r.6.is_none_or(|d| t(d) > now);
    let discharged = |r: &(&str, &str, &str, i64, i64, &str, Option<&str>)| r.6.is_some_and(|d| t(d) <= now);
    let section = |name: &str| report.sections.iter().find(|s| s.name == name).unwrap().clone();
    let occupancy = section("bed_occupancy_by_gender");
    let turnover = section("bed_turnover_by_gender");
    for gender in ["Female", "Male"] {
        let census = data.iter().filter(|r| r.1 == gender && admitted(r)).count() as f64;
        let occupied: std::collections::HashSet<(i64, i64)> =
            data.iter().filter(|r| r.1 == gender && admitted(r)).map(|r| (r.3, r.4)).collect();
        let pct = (100.0 * occupied.len() as f64 / beds.len() as f64 * 100.0).round() / 100.0;
        let row = occupancy.rows.iter().find(|r| r[0] == json!(gender)).unwrap();
        assert_eq!(row[1].as_f64().unwrap(), census, "{gender} census");
        assert_eq!(row[2].as_f64().unwrap(), occupied.len() as f64, "{gender} occupied beds");
        assert_eq!(row[4].as_f64().unwrap(), pct, "{gender} occupancy %");
        let out = data.iter().filter(|r| r.1 == gender && discharged(r)).count() as f64;
        let rate = (out / beds.len() as f64 * 10_000.0).round() / 10_000.0;
        let row = turnover.rows.iter().find(|r| r[0] == json!(gender)).unwrap();
        assert_eq!(row[1].as_f64().unwrap(), out, "{gender} discharges");
        assert_eq!(row[3].as_f64().unwrap(), rate, "{gender} turnover");
    }
    // Average length of stay of Surgery: F3 24 h and M1 2.5 h.
    let los = section("length_of_stay_by_department");
    let surgery = los.rows.iter().find(|r| r[0] == json!("Surgery")).unwrap();
    assert_eq!(surgery[2].as_f64().unwrap(), 13.25);
    // Admissions in the 24 h up to the clock: F2 (20:00 the day before), F1, M1, F4, M4 and M2.
    let per_hour = section("admissions_per_hour");
    let total: f64 = per_hour.rows.iter().map(|r| r[2].as_f64().unwrap()).sum();
    assert_eq!(total, 6.0);
    assert_eq!(report.build, Some(1));

    // Loading the same build again changes nothing; the warehouse refuses to go backwards.
    let m = manifest::latest(&lake).await.unwrap().unwrap();
    let again = warehouse.load(&lake, &m).await.unwrap();
    assert!(!again.loaded);
    assert_eq!(again.fact_rows_total, 8);
    assert_eq!(warehouse.report().await.unwrap(), report);
    let mut older = m.clone();
    older.build = 0;
    assert!(warehouse.load(&lake, &older).await.is_err());
    let _: Value = serde_json::to_value(&report).unwrap();
}

/// The seed's two KPIs when patients have several DimPatient versions: the seed reuses one
/// patient_sk for every version of a patient, so its join pairs each visit with every version of
/// its patient, under each version's gender. Computed here from the events, independently of the
/// SQL (which matches versions by the warehouse's durable `patient_key`).
#[cfg(feature = "embedded-warehouse")]
#[tokio::test]
async fn the_seed_kpis_pair_each_visit_with_every_version_of_its_patient() {
    // P1 changes gender and P3 age between visits (two versions each); P2 has one version.
    let data = [
        ("P1", "Female", 50, "ICU", 1, 1, "2026-11-22T10:00:00", Some("2026-11-23T10:00:00")),
        ("P1", "Male", 50, "ICU", 1, 2, "2026-11-24T01:00:00", Some("2026-11-24T20:00:00")),
        ("P2", "Female", 40, "Surgery", 2, 1, "2026-11-24T02:00:00", Some("2026-11-24T20:00:00")),
        ("P3", "Male", 60, "Cardiology", 3, 3, "2026-11-21T00:00:00", None),
        ("P3", "Male", 61, "Cardiology", 3, 4, "2026-11-23T00:00:00", Some("2026-11-24T18:00:00")),
    ];
    let bodies: Vec<Vec<u8>> =
        data.iter().map(|(id, g, age, d, h, b, a, dis)| event(id, g, *age, d, *h, *b, a, *dis)).collect();
    let (_dir, _lake, timer, response) = built_into_an_embedded_warehouse(&bodies).await;
    let report = timer.warehouse().await.unwrap().unwrap().report().await.unwrap();
    assert_eq!(response["ReturnValue"]["build"]["rows"]["DimPatient"], json!(5), "{response}");

    // Every (visit, version of its patient) pair: a patient's versions are its visits' genders
    // (each visit here changes gender or age, so each is a version).
    let now = t(NOW);
    let pairs: Vec<(&str, Option<&str>, i64, usize)> = data
        .iter()
        .enumerate()
        .flat_map(|(i, visit)| {
            data.iter().filter(move |v| v.0 == visit.0).map(move |version| (version.1, visit.7, visit.5, i))
        })
        .collect();
    let section = |name: &str| report.sections.iter().find(|s| s.name == name).unwrap().clone();
    let occupancy = section("seed_bed_occupancy_by_gender");
    let turnover = section("seed_bed_turnover_by_gender");
    for gender in ["Female", "Male"] {
        let mine: Vec<_> = pairs.iter().filter(|p| p.0 == gender).collect();
        let admitted = mine.iter().filter(|p| p.1.is_some_and(|d| t(d) > now)).count() as f64;
        let expected = admitted / mine.len() as f64 * 100.0;
        let row = occupancy.rows.iter().find(|r| r[0] == json!(gender)).unwrap();
        assert!((row[1].as_f64().unwrap() - expected).abs() < 1e-9, "{gender} occupancy: {row:?}, expected {expected}");
        // COUNT(DISTINCT fact_id) / COUNT(DISTINCT bed_id) over the pairs.
        let visits: std::collections::BTreeSet<usize> = mine.iter().map(|p| p.3).collect();
        let beds: std::collections::BTreeSet<i64> = mine.iter().map(|p| p.2).collect();
        let expected = visits.len() as f64 / beds.len() as f64;
        let row = turnover.rows.iter().find(|r| r[0] == json!(gender)).unwrap();
        assert!((row[1].as_f64().unwrap() - expected).abs() < 1e-9, "{gender} turnover: {row:?}, expected {expected}");
    }
}

#[tokio::test]
async fn a_backlog_is_folded_in_bounded_builds_with_the_same_result() {
    let (state, lake) = util::memory().await;
    let (state_one, lake_one) = util::memory().await;
    for i in 0..5 {
        let bodies: Vec<Vec<u8>> = (0..20)
            // Files arrive in time order (the normal case; see the README on late arrivals).
            .map(|j| {
                event(
                    &format!("P{}", (i * 20 + j) % 37),
                    "Male",
                    30 + j,
                    "ICU",
                    1,
                    j + 1,
                    &format!("2026-11-{}T0{}:00:00", 18 + i, j % 10),
                    None,
                )
            })
            .collect();
        land(&state, &lake, "0", i * 100, &bodies).await;
        land(&state_one, &lake_one, "0", i * 100, &bodies).await;
    }
    let bounded = GoldOptions { max_files_per_build: 2, ..options(NOW) };
    let (outcome, _) = gold::build_all(&lake, &bounded).await.unwrap();
    let BuildOutcome::Built(m) = outcome else { panic!("{outcome:?}") };
    assert_eq!((m.builds, m.build, m.silver_files, m.rows_in), (3, 3, 5, 100));
    let (outcome, _) = gold::build_all(&lake_one, &options(NOW)).await.unwrap();
    let BuildOutcome::Built(one) = outcome else { panic!() };
    assert_eq!((one.builds, one.build), (1, 1));
    // Same visits, same patients, same keys: only the history of builds differs.
    let (a, b) = (tables(&lake).await, tables(&lake_one).await);
    let sorted = |batches: &[RecordBatch], col: &str| {
        let mut v = i64s(&concat(batches), col);
        v.sort_unstable();
        v
    };
    assert_eq!(sorted(&a.fact_patient_flow, "fact_id"), sorted(&b.fact_patient_flow, "fact_id"));
    assert_eq!(sorted(&a.dim_patient, "patient_sk"), sorted(&b.dim_patient, "patient_sk"));
    assert_eq!(m.facts_inserted, one.facts_inserted);

    // Bounded by rows: a build stops taking files once it holds 30 rows (two files of 20).
    let (state_rows, lake_rows) = util::memory().await;
    for i in 0..5 {
        let bodies: Vec<Vec<u8>> = (0..20)
            .map(|j| {
                event(
                    &format!("P{}", (i * 20 + j) % 37),
                    "Male",
                    30 + j,
                    "ICU",
                    1,
                    j + 1,
                    &format!("2026-11-{}T0{}:00:00", 18 + i, j % 10),
                    None,
                )
            })
            .collect();
        land(&state_rows, &lake_rows, "0", i * 100, &bodies).await;
    }
    let by_rows = GoldOptions { max_rows_per_build: 30, ..options(NOW) };
    let (outcome, _) = gold::build_all(&lake_rows, &by_rows).await.unwrap();
    let BuildOutcome::Built(r) = outcome else { panic!("{outcome:?}") };
    assert_eq!((r.builds, r.silver_files, r.rows_in), (3, 5, 100));
    let c = tables(&lake_rows).await;
    assert_eq!(sorted(&c.fact_patient_flow, "fact_id"), sorted(&b.fact_patient_flow, "fact_id"));
    assert_eq!(sorted(&c.dim_patient, "patient_sk"), sorted(&b.dim_patient, "patient_sk"));
}

/// A build of a backlog ends where an Event Hubs partition ends once it holds half its rows, so a
/// patient (events are partitioned by patient) is not split across two builds of one backlog; it
/// still stops at the row cap inside a partition, and goes on into the next partition when the
/// first holds less than half.
#[tokio::test]
async fn a_build_ends_where_a_partition_ends_once_half_full() {
    let lake = two_partitions().await;
    let build = |max_rows| {
        let lake = lake.clone();
        async move {
            match gold::build(&lake, &GoldOptions { max_rows_per_build: max_rows, ..options(NOW) }).await.unwrap() {
                BuildOutcome::Built(m) => (m.silver_files, m.rows_in),
                nothing => panic!("{nothing:?}"),
            }
        }
    };
    // Cap 40: partition "0" (30 rows, at least 20) is one build, though a fourth file would fit.
    assert_eq!(build(40).await, (3, 30));
    // Cap 20 inside partition "1": stops at the cap (two files), then the last file.
    assert_eq!(build(20).await, (2, 20));
    assert_eq!(build(20).await, (1, 10));

    // Cap 80 on a fresh lake: partition "0" holds less than half, so the build goes on into "1".
    let lake = two_partitions().await;
    let options = GoldOptions { max_rows_per_build: 80, ..options(NOW) };
    let BuildOutcome::Built(m) = gold::build(&lake, &options).await.unwrap() else { panic!() };
    assert_eq!((m.silver_files, m.rows_in), (6, 60), "30 rows at partition 0's end are less than half of 80");
}

/// A lake whose silver holds two Event Hubs partitions, "0" and "1", of three files of 10 events
/// each (a patient per event).
async fn two_partitions() -> Lake {
    let (state, lake) = util::memory().await;
    for p in ["0", "1"] {
        for i in 0..3 {
            let bodies: Vec<Vec<u8>> = (0..10)
                .map(|j| {
                    let at = format!("2026-11-2{}T0{}:00:00", i, j % 10);
                    event(&format!("P{p}-{}", i * 10 + j), "Male", 30, "ICU", 1, j + 1, &at, None)
                })
                .collect();
            land(&state, &lake, p, i * 100, &bodies).await;
        }
    }
    lake
}
