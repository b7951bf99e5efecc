//! Gold is a function of the set of events: the same events in any order, split into any batches,
//! bronze files and builds, with any replays, give identical gold tables (but for `bronze_file` and
//! `ingested_at`). Property tests through the real handlers (bronze ingest, silver refine) and the
//! gold build, comparing whole tables; and the SCD2 invariants on every result.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use arrow_array::cast::AsArray;
use arrow_array::types::{Date32Type, Int64Type, TimestampMicrosecondType, TimestampMillisecondType};
use arrow_array::{Array, RecordBatch};
use arrow_schema::{DataType, TimeUnit};
use axum::http::StatusCode;
use chrono::NaiveDateTime;
use patientflow::app::AppState;
use patientflow::local_host::envelopes;
use patientflow::model::time::{parse_utc, to_micros};
use patientflow::pipeline::gold::{self, BuildOutcome, GoldOptions, manifest};
use patientflow::storage::keys::BatchStem;
use patientflow::storage::{Container, Lake};
use proptest::prelude::*;
use serde_json::{Value, json};

use crate::util::{self, call};

/// Every build's clock.
pub const NOW: &str = "2026-11-24T12:00:00";

pub fn t(s: &str) -> NaiveDateTime {
    parse_utc(s).unwrap()
}

/// One event as Event Hubs holds it: its position and enqueued time never change on redelivery.
#[derive(Debug, Clone)]
pub struct Sent {
    pub partition: String,
    pub seq: i64,
    pub enqueued: NaiveDateTime,
    pub body: Vec<u8>,
}

/// Delivers `events` (one partition) as one host batch, then refines the bronze file, as the host
/// would. A batch with the same first and last sequence numbers as an earlier one is a replay.
pub async fn deliver(state: &AppState, lake: &Lake, events: &[&Sent]) {
    let envelope = util::hub_batch(&events[0].partition, events.iter().map(|e| (e.seq, e.enqueued, e.body.clone())));
    let (status, response) = call(state, "ingest_bronze", &envelope).await;
    assert_eq!(status, StatusCode::OK, "{response}");
    let stem = BatchStem::parse_key(response["ReturnValue"]["key"].as_str().unwrap()).unwrap();
    let bronze = lake.get(Container::Bronze, &stem.key()).await.unwrap();
    let trigger = envelopes::blob_trigger(
        &lake.uri(Container::Bronze, &stem.key()),
        &stem.name(),
        Some(&bronze),
        &util::now(),
        "g",
    );
    let (status, response) = call(state, "refine_silver", &trigger).await;
    assert_eq!(status, StatusCode::OK, "{response}");
}

/// Builds until nothing is new, at most `per_build` silver files a build; every build must succeed.
pub async fn build_all(lake: &Lake, per_build: usize) {
    build_all_at(lake, per_build, t(NOW)).await;
}

/// [`build_all`] with another clock.
pub async fn build_all_at(lake: &Lake, per_build: usize, now: NaiveDateTime) {
    let options = GoldOptions { max_files_per_build: per_build, ..GoldOptions::new(now, Duration::from_secs(3600)) };
    gold::build_all(lake, &options).await.unwrap();
}

/// Every gold table as sorted rows of text, without the columns that depend on delivery.
pub async fn snapshot(lake: &Lake) -> BTreeMap<&'static str, Vec<String>> {
    let Some(m) = manifest::latest(lake).await.unwrap() else { return BTreeMap::new() };
    let g = gold::read_build(lake, &m).await.unwrap();
    let mut out = BTreeMap::new();
    for (name, batches) in [
        ("DimDepartment", &g.dim_department),
        ("DimPatient", &g.dim_patient),
        ("DimTime", &g.dim_time),
        ("FactPatientFlow", &g.fact_patient_flow),
    ] {
        let mut rows = Vec::new();
        for b in batches {
            for i in 0..b.num_rows() {
                let cells: Vec<String> = b
                    .schema()
                    .fields()
                    .iter()
                    .zip(b.columns())
                    .filter(|(f, _)| !matches!(f.name().as_str(), "bronze_file" | "ingested_at"))
                    .map(|(f, c)| {
                        // Timestamps as µs numbers: arrow's display cannot name the "UTC" zone
                        // without chrono-tz, and the number is the value itself.
                        let v = match f.data_type() {
                            DataType::Timestamp(..) => format!("{:?}", micros_of(c.as_ref())[i]),
                            _ => arrow_cast::display::array_value_to_string(c, i).unwrap(),
                        };
                        format!("{}={v}", f.name())
                    })
                    .collect();
                rows.push(cells.join(" "));
            }
        }
        rows.sort();
        out.insert(name, rows);
    }
    out
}

fn col<'a>(b: &'a RecordBatch, name: &str) -> &'a dyn Array {
    b.column_by_name(name).unwrap().as_ref()
}

/// A timestamp column as µs, whatever unit and zone the table stores.
pub fn micros(b: &RecordBatch, name: &str) -> Vec<Option<i64>> {
    micros_of(b.column_by_name(name).unwrap().as_ref())
}

/// A timestamp column's values in µs since the epoch, whatever its unit (gold: ms, silver: µs),
/// saturating at the ends of i64 instead of turning into nulls as a cast would.
fn micros_of(a: &dyn Array) -> Vec<Option<i64>> {
    let values: Vec<Option<i64>> = match a.data_type() {
        DataType::Timestamp(TimeUnit::Millisecond, _) => {
            let a = a.as_primitive::<TimestampMillisecondType>();
            (0..a.len()).map(|i| (!a.is_null(i)).then(|| a.value(i).saturating_mul(1000))).collect()
        }
        DataType::Timestamp(TimeUnit::Microsecond, _) => {
            let a = a.as_primitive::<TimestampMicrosecondType>();
            (0..a.len()).map(|i| (!a.is_null(i)).then(|| a.value(i))).collect()
        }
        other => panic!("not a ms or µs timestamp column: {other}"),
    };
    values
}

/// The SCD2 rules on a committed build: a patient's versions never overlap and leave no gap; every
/// fact points at the version valid at its admission; each fact is in the partition of its own
/// admission date; each visit is one row.
pub async fn check_invariants(lake: &Lake) {
    let Some(m) = manifest::latest(lake).await.unwrap() else { return };
    let g = gold::read_build(lake, &m).await.unwrap();
    // sk -> (patient, from, to)
    let mut versions: HashMap<i64, (String, i64, Option<i64>)> = HashMap::new();
    let mut by_patient: BTreeMap<String, Vec<(i64, Option<i64>)>> = BTreeMap::new();
    for b in &g.dim_patient {
        let sk = col(b, "patient_sk").as_primitive::<Int64Type>();
        let id = col(b, "patient_id").as_string::<i32>();
        let from = micros(b, "effective_from");
        let to = micros(b, "effective_to");
        for i in 0..b.num_rows() {
            let from_i = from[i].unwrap();
            assert!(versions.insert(sk.value(i), (id.value(i).to_string(), from_i, to[i])).is_none());
            by_patient.entry(id.value(i).to_string()).or_default().push((from_i, to[i]));
        }
    }
    for (p, mut vs) in by_patient {
        vs.sort();
        for w in vs.windows(2) {
            assert_eq!(w[0].1, Some(w[1].0), "{p}: versions must abut, never overlap: {vs:?}");
        }
        assert_eq!(vs.last().unwrap().1, None, "{p}: the last version is open");
    }
    // Each patient (all its versions) is in exactly one DimPatient file of the build.
    let mut file_of_patient: HashMap<String, &str> = HashMap::new();
    for f in &m.dim_patient {
        let mut here = std::collections::HashSet::new();
        for b in gold::read_table(lake, &f.file).await.unwrap() {
            let id = col(&b, "patient_id").as_string::<i32>();
            here.extend((0..b.num_rows()).map(|i| id.value(i).to_string()));
        }
        for p in here {
            let before = file_of_patient.insert(p.clone(), &f.file);
            assert!(before.is_none(), "{p} is in two DimPatient files: {before:?} and {}", f.file);
        }
    }
    let mut fact_ids = std::collections::HashSet::new();
    for (day, p) in &m.fact_patient_flow {
        let mut batches = Vec::new();
        for f in &p.files {
            batches.extend(gold::read_table(lake, &f.file).await.unwrap());
        }
        for b in batches {
            let id = col(&b, "fact_id").as_primitive::<Int64Type>();
            let sk = col(&b, "patient_sk").as_primitive::<Int64Type>();
            let adm = micros(&b, "admission_time");
            let adm_date = col(&b, "admission_date").as_primitive::<Date32Type>();
            let visit = col(&b, "visit_date").as_primitive::<Date32Type>();
            for i in 0..b.num_rows() {
                assert!(fact_ids.insert(id.value(i)), "fact {} appears twice", id.value(i));
                let (_, from, to) = &versions[&sk.value(i)];
                let a = adm[i].unwrap();
                assert!(*from <= a && to.is_none_or(|to| a < to), "a fact points at a version not valid at admission");
                assert_eq!(visit.value(i), adm_date.value(i), "visit_date is the admission's date");
                let name = chrono::DateTime::from_timestamp(i64::from(visit.value(i)) * 86_400, 0).unwrap();
                assert_eq!(&name.format("%Y-%m-%d").to_string(), day, "the row is in its own day's partition");
            }
        }
    }
}

/// A small generated event: which patient and visit, with which attributes, and how it is dirty.
#[derive(Debug, Clone)]
struct Spec {
    partition: usize,
    patient: usize,
    visit: usize,
    age: i64,
    discharged: bool,
    kind: u8,
}

fn spec() -> impl Strategy<Value = Spec> {
    (0..2usize, 0..3usize, 0..3usize, 40..43i64, any::<bool>(), prop_oneof![6 => Just(0u8), 1 => 1..8u8]).prop_map(
        |(partition, patient, visit, age, discharged, kind)| Spec { partition, patient, visit, age, discharged, kind },
    )
}

/// Turns specs into events: positions and enqueued times follow generation order (the hub's order).
fn events(specs: &[Spec]) -> Vec<Sent> {
    let base = t("2026-11-24T06:00:00");
    let mut next_seq = [100i64, 100];
    specs
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let admission = format!("2026-11-{:02}T{:02}:00:00", 20 + s.visit, 2 + s.patient);
            let discharge = format!("2026-11-{:02}T{:02}:30:00", 20 + s.visit, 10 + s.patient);
            let mut v = json!({
                "patient_id": format!("P{}", s.patient),
                "gender": if s.patient == 1 { "Male" } else { "Female" },
                "age": s.age,
                "department": if s.visit % 2 == 0 { "ICU" } else { "Surgery" },
                "admission_time": admission,
                "bed_id": s.visit + 1,
                "hospital_id": 1,
            });
            if s.discharged {
                v["discharge_time"] = json!(discharge);
            }
            let body = match s.kind {
                // No admission time: its own visit (a unique hospital keeps silver's in-file
                // natural-key dedupe, which is silver's business, out of the way).
                1 => {
                    v.as_object_mut().unwrap().remove("admission_time");
                    v["hospital_id"] = json!(100 + i);
                    serde_json::to_vec(&v).unwrap()
                }
                // A "future" admission, corrected to the enqueued time.
                2 => {
                    v["admission_time"] = json!(format!("2026-11-27T{:02}:00:00", 2 + s.patient));
                    serde_json::to_vec(&v).unwrap()
                }
                3 => {
                    v["age"] = json!(130);
                    serde_json::to_vec(&v).unwrap()
                }
                4 => {
                    v["discharge_time"] = json!("2026-11-19T00:00:00");
                    serde_json::to_vec(&v).unwrap()
                }
                5 => b"{\"patient_id\": \"P0\", trunc".to_vec(),
                6 => {
                    v.as_object_mut().unwrap().remove("patient_id");
                    serde_json::to_vec(&v).unwrap()
                }
                7 => {
                    v["discharge_time"] = json!("9999-12-31T00:00:00");
                    serde_json::to_vec(&v).unwrap()
                }
                _ => serde_json::to_vec(&v).unwrap(),
            };
            let seq = next_seq[s.partition];
            next_seq[s.partition] += 1;
            Sent { partition: s.partition.to_string(), seq, enqueued: base + chrono::Duration::minutes(i as i64), body }
        })
        .collect()
}

/// How the events reach gold: contiguous batches per partition of the given sizes, replays of
/// arbitrary ranges, all batches in an arbitrary order, builds in between.
#[derive(Debug, Clone)]
struct Plan {
    sizes: Vec<usize>,
    replays: Vec<(usize, usize, usize)>,
    order: Vec<u32>,
    builds: Vec<bool>,
    /// Minutes each intermediate build's clock moves on (from 05:00; the last build is at NOW).
    clock_steps: Vec<i64>,
    per_build: usize,
}

fn plan() -> impl Strategy<Value = Plan> {
    (
        prop::collection::vec(1..5usize, 1..6),
        prop::collection::vec((0..2usize, 0..12usize, 1..5usize), 0..4),
        prop::collection::vec(any::<u32>(), 16),
        prop::collection::vec(any::<bool>(), 16),
        prop::collection::vec(0..120i64, 16),
        1..4usize,
    )
        .prop_map(|(sizes, replays, order, builds, clock_steps, per_build)| Plan {
            sizes,
            replays,
            order,
            builds,
            clock_steps,
            per_build,
        })
}

fn batches<'a>(events: &'a [Sent], plan: &Plan) -> Vec<Vec<&'a Sent>> {
    let mut out: Vec<Vec<&Sent>> = Vec::new();
    for p in ["0", "1"] {
        let of_partition: Vec<&Sent> = events.iter().filter(|e| e.partition == p).collect();
        let mut i = 0;
        let mut k = 0;
        while i < of_partition.len() {
            let n = plan.sizes[k % plan.sizes.len()];
            out.push(of_partition[i..(i + n).min(of_partition.len())].to_vec());
            i += n;
            k += 1;
        }
    }
    for &(p, start, len) in &plan.replays {
        let of_partition: Vec<&Sent> = events.iter().filter(|e| e.partition == p.to_string()).collect();
        if start < of_partition.len() {
            out.push(of_partition[start..(start + len).min(of_partition.len())].to_vec());
        }
    }
    let mut keyed: Vec<(u32, usize, Vec<&Sent>)> =
        out.into_iter().enumerate().map(|(i, b)| (plan.order[i % plan.order.len()], i, b)).collect();
    keyed.sort_by_key(|(k, i, _)| (*k, *i));
    keyed.into_iter().map(|(_, _, b)| b).collect()
}

/// The reference: every partition's events in one batch, one build.
async fn at_once(events: &[Sent]) -> (Lake, BTreeMap<&'static str, Vec<String>>) {
    let (state, lake) = util::memory().await;
    for p in ["0", "1"] {
        let all: Vec<&Sent> = events.iter().filter(|e| e.partition == p).collect();
        if !all.is_empty() {
            deliver(&state, &lake, &all).await;
        }
    }
    build_all(&lake, 1024).await;
    let snap = snapshot(&lake).await;
    (lake, snap)
}

async fn in_pieces(events: &[Sent], plan: &Plan) -> (Lake, BTreeMap<&'static str, Vec<String>>) {
    let (state, lake) = util::memory().await;
    // Intermediate builds run at earlier clocks (census flags flip later, when their day is due).
    let mut clock = t("2026-11-24T05:00:00");
    for (i, batch) in batches(events, plan).iter().enumerate() {
        deliver(&state, &lake, batch).await;
        if plan.builds[i % plan.builds.len()] {
            clock = (clock + chrono::Duration::minutes(plan.clock_steps[i % plan.clock_steps.len()])).min(t(NOW));
            build_all_at(&lake, plan.per_build, clock).await;
            check_invariants(&lake).await;
        }
    }
    build_all(&lake, plan.per_build).await;
    let snap = snapshot(&lake).await;
    (lake, snap)
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(12)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

proptest! {
    // A dozen cases of up to 14 events keep each property to a few seconds; PROPTEST_CASES=500
    // explores further.
    #![proptest_config(ProptestConfig { cases: cases(), max_shrink_iters: 200, ..ProptestConfig::default() })]

    /// Any order, any batches, any replays, any build points: the same tables.
    #[test]
    fn gold_is_a_function_of_the_set_of_events(specs in prop::collection::vec(spec(), 3..14), plan in plan()) {
        let events = events(&specs);
        runtime().block_on(async {
            let (reference_lake, reference) = at_once(&events).await;
            check_invariants(&reference_lake).await;
            let (lake, pieces) = in_pieces(&events, &plan).await;
            check_invariants(&lake).await;
            prop_assert_eq!(&pieces, &reference);
            Ok(())
        })?;
    }

    /// The reverse delivery (newest batch first, one build each) gives the same tables too.
    #[test]
    fn newest_first_with_a_build_per_batch_gives_the_same_tables(specs in prop::collection::vec(spec(), 3..14)) {
        let events = events(&specs);
        runtime().block_on(async {
            let (_, reference) = at_once(&events).await;
            let (state, lake) = util::memory().await;
            for e in events.iter().rev() {
                deliver(&state, &lake, &[e]).await;
                build_all(&lake, 1024).await;
            }
            check_invariants(&lake).await;
            prop_assert_eq!(&snapshot(&lake).await, &reference);
            Ok(())
        })?;
    }
}

fn body(patient: &str, age: i64, dept: &str, admission: Option<&str>, discharge: Option<&str>) -> Vec<u8> {
    let mut v: Value = json!({
        "patient_id": patient, "gender": "Female", "age": age, "department": dept, "bed_id": 1, "hospital_id": 1,
    });
    if let Some(a) = admission {
        v["admission_time"] = json!(a);
    }
    if let Some(d) = discharge {
        v["discharge_time"] = json!(d);
    }
    serde_json::to_vec(&v).unwrap()
}

fn sent(partition: &str, seq: i64, enqueued: &str, body: Vec<u8>) -> Sent {
    Sent { partition: partition.into(), seq, enqueued: t(enqueued), body }
}

/// A redelivered batch (101–104) that arrives after the batches 103 and 104 holds only 101 and 102,
/// both already folded: when gold folds it (first, by key) one file per build, the discharge in
/// 104 must still reach gold. Recording the replay's range folded on its own once lost it.
#[tokio::test]
async fn a_redelivery_folded_before_the_batches_it_overlaps_loses_no_event() {
    let admitted = body("A", 40, "ICU", Some("2026-11-24T01:00:00"), None);
    let discharged = body("A", 40, "ICU", Some("2026-11-24T01:00:00"), Some("2026-11-24T09:00:00"));
    let events: Vec<Sent> = (100..=104)
        .map(|seq| {
            let enqueued = format!("2026-11-24T06:0{}:00", seq - 100);
            sent("0", seq, &enqueued, if seq == 104 { discharged.clone() } else { admitted.clone() })
        })
        .collect();
    let (_, reference) = at_once(&events).await;
    let (state, lake) = util::memory().await;
    for e in &events[..3] {
        deliver(&state, &lake, &[e]).await;
    }
    build_all(&lake, 1).await;
    deliver(&state, &lake, &[&events[3]]).await;
    deliver(&state, &lake, &[&events[4]]).await;
    deliver(&state, &lake, &events[1..].iter().collect::<Vec<_>>()).await;
    build_all(&lake, 1).await;
    assert_eq!(snapshot(&lake).await, reference);
    let facts = &snapshot(&lake).await["FactPatientFlow"];
    assert!(facts[0].contains("sequence_number=104"), "{facts:?}");
    check_invariants(&lake).await;
}

/// The case: an attribute change that arrives after a newer visit was built reshapes the
/// history, and the newer visit's fact is re-pointed at the version valid at its admission.
#[tokio::test]
async fn a_late_attribute_change_reshapes_history_and_repoints_facts() {
    let first = sent("0", 1, "2026-11-20T09:00:00", body("A", 40, "ICU", Some("2026-11-20T08:00:00"), None));
    let newer = sent("0", 3, "2026-11-23T09:00:00", body("A", 40, "ICU", Some("2026-11-23T08:00:00"), None));
    // Sent in between (another partition), delivered last: A was 41 on the 21st.
    let late = sent("1", 1, "2026-11-21T09:00:00", body("A", 41, "Surgery", Some("2026-11-21T08:00:00"), None));
    let (state, lake) = util::memory().await;
    for e in [&first, &newer, &late] {
        deliver(&state, &lake, &[e]).await;
        build_all(&lake, 1024).await;
    }
    check_invariants(&lake).await;
    let g = snapshot(&lake).await;
    assert_eq!(g["DimPatient"].len(), 3, "40 from the 20th, 41 from the 21st, 40 again from the 23rd: {:#?}", g);
    let (_, reference) = at_once(&[first, newer, late]).await;
    assert_eq!(g, reference);
}

/// Two visits without an admission time by one patient in one department, in separate files and
/// on separate days, stay two visits, each once, each in its own day; a redelivery of one of them in
/// another file changes nothing.
#[tokio::test]
async fn visits_without_an_admission_time_are_neither_merged_nor_duplicated() {
    let one = sent("0", 1, "2026-11-22T09:00:00", body("A", 40, "ICU", None, None));
    let two = sent("0", 2, "2026-11-23T10:00:00", body("A", 40, "ICU", None, Some("2026-11-23T18:00:00")));
    let (state, lake) = util::memory().await;
    deliver(&state, &lake, &[&one]).await;
    deliver(&state, &lake, &[&two]).await;
    build_all(&lake, 1024).await;
    let before = snapshot(&lake).await;
    let facts = &before["FactPatientFlow"];
    assert_eq!(facts.len(), 2, "{facts:#?}");
    check_invariants(&lake).await;
    let m = manifest::latest(&lake).await.unwrap().unwrap();
    assert_eq!(m.fact_patient_flow.keys().collect::<Vec<_>>(), ["2026-11-22", "2026-11-23"]);

    // Both again in one batch (a new file: other boundaries), then built.
    deliver(&state, &lake, &[&one, &two]).await;
    build_all(&lake, 1024).await;
    assert_eq!(snapshot(&lake).await, before);
}

/// A "future" admission is corrected to the enqueued time and filed under that date; when a later
/// event corrects it differently the row moves, leaving no copy behind.
#[tokio::test]
async fn partitions_follow_the_corrected_admission() {
    let admitted = sent("0", 1, "2026-11-24T06:00:00", body("A", 40, "ICU", Some("2026-11-27T08:00:00"), None));
    let (state, lake) = util::memory().await;
    deliver(&state, &lake, &[&admitted]).await;
    build_all(&lake, 1024).await;
    let m = manifest::latest(&lake).await.unwrap().unwrap();
    assert_eq!(m.fact_patient_flow.keys().collect::<Vec<_>>(), ["2026-11-24"], "not the bogus 27th as sent");
    check_invariants(&lake).await;

    // The same visit again, enqueued after the admission as sent: now it holds, and the row moves.
    let update = sent("0", 2, "2026-11-28T06:00:00", body("A", 40, "ICU", Some("2026-11-27T08:00:00"), None));
    deliver(&state, &lake, &[&update]).await;
    let options = GoldOptions::new(t("2026-11-28T12:00:00"), Duration::from_secs(3600));
    let (outcome, _) = gold::build_all(&lake, &options).await.unwrap();
    let BuildOutcome::Built(metrics) = outcome else { panic!("{outcome:?}") };
    assert_eq!((metrics.facts_inserted, metrics.facts_updated), (0, 1));
    let m = manifest::latest(&lake).await.unwrap().unwrap();
    assert_eq!(m.fact_patient_flow.keys().collect::<Vec<_>>(), ["2026-11-27"], "the emptied day is dropped");
    assert_eq!(snapshot(&lake).await["FactPatientFlow"].len(), 1);
    // The moved row keeps the time gold first knew the visit: the first build's clock.
    let facts = gold::read_build(&lake, &m).await.unwrap().fact_patient_flow;
    let ingested: Vec<Option<i64>> = facts.iter().flat_map(|b| micros(b, "ingested_at")).collect();
    assert_eq!(ingested, [Some(to_micros(&t(NOW)))]);
    check_invariants(&lake).await;
}

/// The redelivery: sequence numbers 100–199 in one batch, then again as 100–149 and
/// 150–199; gold equals a single delivery's.
#[tokio::test]
async fn a_redelivery_with_other_boundaries_changes_nothing_in_gold() {
    let base = t("2026-11-24T00:00:00");
    let events: Vec<Sent> = (0..100)
        .map(|i| {
            let patient = format!("P{}", i % 17);
            let admission = format!("2026-11-{:02}T{:02}:00:00", 18 + i % 6, i % 24);
            let discharge = (i % 3 == 0).then(|| format!("2026-11-{:02}T23:30:00", 18 + i % 6));
            let dept = ["ICU", "Surgery", "Oncology"][i % 3];
            Sent {
                partition: "0".into(),
                seq: 100 + i as i64,
                enqueued: base + chrono::Duration::seconds(i as i64),
                body: body(&patient, 30 + (i % 5) as i64, dept, Some(&admission), discharge.as_deref()),
            }
        })
        .collect();
    let all: Vec<&Sent> = events.iter().collect();
    let (state, lake) = util::memory().await;
    deliver(&state, &lake, &all).await;
    build_all(&lake, 1024).await;
    let once = snapshot(&lake).await;
    deliver(&state, &lake, &all[..50]).await;
    deliver(&state, &lake, &all[50..]).await;
    let options = GoldOptions::new(t(NOW), Duration::from_secs(3600));
    let (outcome, _) = gold::build_all(&lake, &options).await.unwrap();
    // Every sequence number of the redelivered batches is folded already: gold sees nothing new
    // (a build, had one run, would insert and update nothing).
    assert!(matches!(outcome, BuildOutcome::NothingNew { build: Some(1) }), "{outcome:?}");
    assert_eq!(snapshot(&lake).await, once);
}

/// Writes a silver file straight into the lake (bypassing silver's range rules), so gold meets
/// values silver would quarantine: (patient, admission µs, discharge µs).
async fn put_silver(lake: &Lake, first_seq: i64, rows: &[(&str, i64, Option<i64>)]) {
    use arrow_array::{ArrayRef, BooleanArray, Int32Array, Int64Array, StringArray};
    use patientflow::model::schema::SILVER;
    use std::sync::Arc;
    let n = rows.len();
    let text = |v: &str| Arc::new(StringArray::from(vec![v; n])) as ArrayRef;
    let columns: Vec<ArrayRef> = SILVER
        .fields()
        .iter()
        .map(|f| {
            let a: ArrayRef = match f.name().as_str() {
                "patient_id" => Arc::new(StringArray::from(rows.iter().map(|r| r.0).collect::<Vec<_>>())),
                "gender" => text("Female"),
                "department" => text("ICU"),
                "missing_fields" => Arc::new(StringArray::from(vec![None::<&str>; n])),
                "event_hub" => text("patient-flow"),
                "partition_id" => text("7"),
                "bronze_file" => text("handmade"),
                "age" | "bed_id" | "hospital_id" => Arc::new(Int32Array::from(vec![1; n])),
                "admission_time" | "admission_time_sent" => {
                    Arc::new(Int64Array::from(rows.iter().map(|r| r.1).collect::<Vec<_>>()))
                }
                "discharge_time" => Arc::new(Int64Array::from(rows.iter().map(|r| r.2).collect::<Vec<_>>())),
                "sequence_number" => {
                    Arc::new(Int64Array::from((0..n as i64).map(|i| first_seq + i).collect::<Vec<_>>()))
                }
                "enqueued_time" => Arc::new(Int64Array::from(vec![patientflow::model::time::to_micros(&t(NOW)); n])),
                _ => Arc::new(BooleanArray::from(vec![false; n])),
            };
            arrow_cast::cast(&a, f.data_type()).unwrap()
        })
        .collect();
    let batch = RecordBatch::try_new(SILVER.clone(), columns).unwrap();
    let bytes =
        patientflow::storage::parquet::encode(&SILVER, &[batch], patientflow::storage::parquet::Codec::Fast).unwrap();
    let stem = BatchStem { partition: "7".into(), first_seq, last_seq: first_seq + n as i64 - 1 };
    lake.put(Container::Silver, &stem.key(), bytes).await.unwrap();
}

/// One bad value never stops gold: the "still admitted" placeholder 9999-12-31 through the real
/// handlers, then timestamps at the ends of what the lake can hold written straight into silver;
/// every build, and every later one, succeeds, and the keys that cannot be computed are null (or
/// `UNKNOWN_TIME_KEY` for an admission).
#[tokio::test]
async fn extreme_timestamps_reaching_gold_never_fail_a_build() {
    use patientflow::model::time::to_micros;
    let (state, lake) = util::memory().await;
    let placeholder = sent(
        "0",
        1,
        "2026-11-24T06:00:00",
        body("A", 40, "ICU", Some("2026-11-24T01:00:00"), Some("9999-12-31T00:00:00")),
    );
    deliver(&state, &lake, &[&placeholder]).await;
    build_all(&lake, 1024).await;
    let us = |s: &str| to_micros(&t(s));
    put_silver(
        &lake,
        1,
        &[
            ("X", i64::MIN + 1, Some(i64::MAX)),
            ("Y", us("0001-01-01T00:00:00"), Some(us("9999-12-31T23:59:59"))),
            ("Z", us("2147-01-01T00:00:00"), None),
        ],
    )
    .await;
    build_all(&lake, 1024).await;
    let later = sent("0", 2, "2026-11-24T07:00:00", body("B", 40, "ICU", Some("2026-11-24T02:00:00"), None));
    deliver(&state, &lake, &[&later]).await;
    build_all(&lake, 1024).await;

    let m = manifest::latest(&lake).await.unwrap().unwrap();
    assert_eq!(m.build, 3, "every build committed");
    let g = gold::read_build(&lake, &m).await.unwrap();
    let mut seen = 0;
    for b in &g.fact_patient_flow {
        let adm = micros(b, "admission_time");
        let dis = micros(b, "discharge_time");
        let adm_key = col(b, "admission_time_key").as_primitive::<arrow_array::types::Int32Type>();
        let dis_key = col(b, "discharge_time_key").as_primitive::<arrow_array::types::Int32Type>();
        for i in 0..b.num_rows() {
            seen += 1;
            let keyable = |us: i64| (us >= us_of_year(0)) && us < us_of_year(gold::keys::MAX_TIME_KEY_YEAR + 1);
            if let Some(d) = dis[i] {
                assert_eq!(dis_key.is_null(i), !keyable(d), "discharge key of {d}");
            }
            assert_eq!(adm_key.value(i) == gold::keys::UNKNOWN_TIME_KEY, !keyable(adm[i].unwrap()));
        }
    }
    // A's 9999-12-31 discharge is out of range for silver (quarantined, `out_of_range`); X, Y and Z
    // reach gold only because they are written into silver directly, past silver's rules.
    assert_eq!(seen, 4, "X, Y, Z and B are in gold; A is quarantined");
}

/// The first µs of `year` (independent of the key code: chrono's calendar).
fn us_of_year(year: i32) -> i64 {
    chrono::NaiveDate::from_ymd_opt(year, 1, 1).unwrap().and_hms_opt(0, 0, 0).unwrap().and_utc().timestamp_micros()
}

/// A gold built before the ledger existed (its manifest names no ledger) is rebuilt from silver by
/// the next build, continuing the build numbers, with the same tables as a gold built afresh.
#[tokio::test]
async fn a_gold_without_a_ledger_is_rebuilt_from_silver() {
    let a = sent("0", 1, "2026-11-20T09:00:00", body("A", 40, "ICU", Some("2026-11-20T08:00:00"), None));
    let b = sent("0", 2, "2026-11-21T09:00:00", body("A", 41, "ICU", Some("2026-11-21T08:00:00"), None));
    let c = sent("0", 3, "2026-11-22T09:00:00", body("B", 30, "ICU", Some("2026-11-22T08:00:00"), None));
    let (state, lake) = util::memory().await;
    deliver(&state, &lake, &[&a, &b]).await;
    build_all(&lake, 1024).await;
    let mut legacy = manifest::latest(&lake).await.unwrap().unwrap();
    legacy.ledger = None;
    legacy.build += 1;
    manifest::commit(&lake, &legacy).await.unwrap();
    deliver(&state, &lake, &[&c]).await;
    // A build of one partition's silver leaves that rebuild (of every partition's) alone.
    let one_partition =
        GoldOptions { partition: Some("0".into()), ..GoldOptions::new(t(NOW), Duration::from_secs(3600)) };
    let outcome = gold::build(&lake, &one_partition).await.unwrap();
    assert!(matches!(outcome, BuildOutcome::NothingNew { build: Some(2) }), "{outcome:?}");
    build_all(&lake, 1024).await;
    assert_eq!(manifest::latest(&lake).await.unwrap().unwrap().build, 3);
    let (_, reference) = at_once(&[a, b, c]).await;
    assert_eq!(snapshot(&lake).await, reference);
}

/// Frequent small builds (one per event, as a busy timer makes them) leave many small ledger
/// segments and fact files; compaction bounds both, and the tables still equal a single build's.
#[tokio::test]
async fn many_small_builds_compact_and_give_the_same_tables() {
    let base = t("2026-11-24T00:00:00");
    let events: Vec<Sent> = (0..40)
        .map(|i| {
            // Seven patients return again and again, with birthdays and discharge updates; every
            // third event is a new patient.
            let patient = if i % 3 == 0 { format!("N{i}") } else { format!("P{}", i % 7) };
            let admission = format!("2026-11-{:02}T{:02}:00:00", 20 + i % 3, i % 24);
            let discharge = (i % 4 == 0).then(|| format!("2026-11-{:02}T23:30:00", 20 + i % 3));
            Sent {
                partition: "0".into(),
                seq: 100 + i as i64,
                enqueued: base + chrono::Duration::seconds(i as i64),
                body: body(
                    &patient,
                    30 + (i / 7) as i64,
                    ["ICU", "Surgery"][i % 2],
                    Some(&admission),
                    discharge.as_deref(),
                ),
            }
        })
        .collect();
    let all: Vec<&Sent> = events.iter().collect();
    let (once_lake, once) = at_once(&events).await;
    check_invariants(&once_lake).await;

    let (state, lake) = util::memory().await;
    let mut merged = 0;
    for e in &all {
        deliver(&state, &lake, std::slice::from_ref(e)).await;
        build_all(&lake, 1024).await;
        let m = manifest::latest(&lake).await.unwrap().unwrap();
        let segments = m.ledger.as_ref().unwrap().len();
        merged += m
            .ledger
            .iter()
            .flatten()
            .filter(|s| s.file.contains(&m.build_id) && s.file.ends_with("merged.parquet"))
            .count();
        assert!(segments <= gold::ledger::MAX_SMALL_SEGMENTS, "{segments} ledger segments");
        assert_eq!(segments, m.dim_patient.len(), "a DimPatient file per segment");
        for (day, p) in &m.fact_patient_flow {
            let small = p
                .files
                .iter()
                .filter(|f| f.next_change_us.is_none() && (f.rows as usize) < gold::fact::MIN_FILE_ROWS)
                .count();
            assert!(small <= gold::fact::MAX_SMALL_FILES, "{day}: {small} small files");
        }
    }
    assert!(merged >= 2, "compaction ran {merged} times");
    check_invariants(&lake).await;
    assert_eq!(snapshot(&lake).await, once);
}
