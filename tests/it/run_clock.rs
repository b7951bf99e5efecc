//! `patientflow run` keeps the host's clock order: every event is enqueued at or before `--now`
//! (the last one exactly at it), and the gold timer fires at `--now`, so every corrected admission
//! lies inside the build's clock.

use std::collections::HashMap;
use std::process::Command;

use arrow_array::cast::AsArray;
use arrow_array::types::TimestampMicrosecondType;
use patientflow::model::time::{parse_utc, to_micros};
use patientflow::storage::keys::patient_flow_prefix;
use patientflow::storage::{Container, Lake, StorageConfig};
use serde_json::Value;

const NOW: &str = "2026-11-24T12:00:00";

fn run(data: &std::path::Path, args: &[&str]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_patientflow"))
        .args(["run", "--format", "json", "--now", NOW])
        .args(args)
        .arg("--data-dir")
        .arg(data)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Every bronze event's (body, enqueued time in µs).
async fn bronze_events(data: &std::path::Path) -> Vec<(Vec<u8>, i64)> {
    let lake = Lake::open(&StorageConfig::local(data)).await.unwrap();
    let mut out = Vec::new();
    for meta in lake.list(Container::Bronze, &patient_flow_prefix()).await.unwrap() {
        let bytes = lake.get(Container::Bronze, &meta.location).await.unwrap();
        let (_, batches) = patientflow::storage::parquet::decode(bytes).unwrap();
        for b in &batches {
            let body = b.column_by_name("body").unwrap().as_binary::<i32>();
            let enq = b.column_by_name("enqueued_time").unwrap().as_primitive::<TimestampMicrosecondType>();
            for i in 0..b.num_rows() {
                out.push((body.value(i).to_vec(), enq.value(i)));
            }
        }
    }
    out
}

fn census(report: &Value) -> u64 {
    let section =
        report["sections"].as_array().unwrap().iter().find(|s| s["name"] == "census_by_hospital_department").unwrap();
    section["rows"].as_array().unwrap().iter().map(|r| r[2].as_u64().unwrap()).sum()
}

#[tokio::test]
async fn events_are_enqueued_up_to_now_and_future_admissions_are_in_the_census() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("future.ndjson");
    // Admissions sent in the future (the seed's dirty data), all still in hospital at --now.
    let n = 40;
    let lines: Vec<String> = (0..n)
        .map(|i| {
            format!(
                r#"{{"patient_id":"P{i}","gender":"Female","age":40,"department":"ICU","admission_time":"2026-11-24T17:00:00","discharge_time":"2026-11-25T18:00:00","bed_id":{},"hospital_id":1}}"#,
                i + 1
            )
        })
        .collect();
    std::fs::write(&input, lines.join("\n") + "\n\n").unwrap();
    let data = dir.path().join("data");
    let report = run(&data, &["--partitions", "3", "--batch-size", "7", "--input", input.to_str().unwrap()]);
    assert_eq!(report["events"], n);
    assert_eq!(report["corrected"]["admission_imputed"], n);

    // Line i is enqueued at now - (n - 1 - i) ms: the host's order, ending at --now.
    let now = to_micros(&parse_utc(NOW).unwrap());
    let line_of: HashMap<Vec<u8>, i64> =
        lines.iter().enumerate().map(|(i, l)| (l.clone().into_bytes(), i as i64)).collect();
    let events = bronze_events(&data).await;
    assert_eq!(events.len(), n as usize);
    for (body, enqueued) in &events {
        let i = line_of[body];
        assert_eq!(*enqueued, now - (n - 1 - i) * 1000, "line {i}");
    }
    assert_eq!(events.iter().map(|e| e.1).max(), Some(now));

    // The timer fired at --now, at or after the last enqueued time: every corrected admission is
    // at or before the build's clock, so every patient is in the census.
    assert_eq!(report["report"]["as_of"], "2026-11-24T12:00:00.000000Z");
    assert_eq!(census(&report["report"]), n as u64);
}

#[tokio::test]
async fn simulated_events_are_enqueued_after_they_were_generated_and_up_to_now() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let report = run(&data, &["--count", "3000", "--seed", "4"]);
    let now = to_micros(&parse_utc(NOW).unwrap());
    let events = bronze_events(&data).await;
    assert_eq!(events.len(), 3000);
    assert_eq!(events.iter().map(|e| e.1).max(), Some(now));
    assert_eq!(events.iter().map(|e| e.1).min(), Some(now - 2999 * 1000));
    // Only the injected future admissions are corrected: no clean admission lies after the time its
    // event was enqueued.
    assert_eq!(report["corrected"]["admission_imputed"], report["injected"]["future_admission"]);
}
