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

/// Every file of the raw layers, by container and key.
async fn raw_files(data: &std::path::Path) -> std::collections::BTreeMap<String, bytes::Bytes> {
    let lake = Lake::open(&StorageConfig::local(data)).await.unwrap();
    let mut files = std::collections::BTreeMap::new();
    for c in [Container::Bronze, Container::Silver, Container::Quarantine] {
        for meta in lake.list(c, &patient_flow_prefix()).await.unwrap() {
            files.insert(format!("{c:?}/{}", meta.location), lake.get(c, &meta.location).await.unwrap());
        }
    }
    files
}

/// `run` calls the functions in its own process unless told to play the host; the host's way is
/// checked against the Functions host's envelopes elsewhere, so the in-process way must write the
/// same lake: every bronze, silver and quarantine file byte for byte, the same gold rows, the same
/// counts and KPIs. Two runs onto each lake, so the second continues the first's partitions.
#[tokio::test]
async fn in_process_and_via_the_host_write_the_same_lake() {
    let (in_process, via_host) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let dirt = ["--malformed-rate", "0.03", "--duplicate-rate", "0.03", "--wrong-type-rate", "0.02"];
    let mut reports = Vec::new();
    for seed in ["5", "6"] {
        let args: Vec<&str> = ["--count", "2000", "--seed", seed, "--partitions", "3", "--batch-size", "40"]
            .into_iter()
            .chain(dirt)
            .collect();
        let a = run(in_process.path(), &args);
        let b = run(via_host.path(), &[args.as_slice(), &["--via-host"]].concat());
        reports.push((a, b));
    }
    for (a, b) in &reports {
        for k in ["events", "batches", "bronze_files_created", "silver_files", "silver_rows", "quarantined"] {
            assert_eq!(a[k], b[k], "{k}");
        }
        assert!(
            a["quarantined"].as_object().unwrap().values().any(|v| v.as_u64() > Some(0)),
            "the dirt reached silver"
        );
        assert_eq!(a["report"], b["report"], "the same KPIs");
        assert_eq!(a["gold"]["build"]["rows_in"], b["gold"]["build"]["rows_in"]);
    }
    let (a, b) = (raw_files(in_process.path()).await, raw_files(via_host.path()).await);
    assert!(a.len() > 100, "{} files", a.len());
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    for (key, bytes) in &a {
        assert!(bytes == &b[key], "{key} differs");
    }
    let gold = |d: &std::path::Path| {
        let d = d.to_path_buf();
        async move { crate::properties::snapshot(&Lake::open(&StorageConfig::local(d)).await.unwrap()).await }
    };
    let (ga, gb) = (gold(in_process.path()).await, gold(via_host.path()).await);
    assert_eq!(ga.len(), 4);
    assert!(ga == gb, "the same gold rows");
}

/// In its own process, `run` folds each Event Hubs partition into gold as soon as the partition's
/// silver is complete, while the other partitions are still being refined (a partition of at least
/// half a build's rows); the host's timer folds them all at the end. Build boundaries must not
/// change gold: the same gold rows and KPIs as the host's way, over two runs onto each lake.
#[tokio::test]
async fn gold_folded_partition_by_partition_is_the_gold_the_timer_builds() {
    let (in_process, via_host) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    for seed in ["5", "6"] {
        let args = [
            "--count",
            "2000",
            "--seed",
            seed,
            "--partitions",
            "3",
            "--batch-size",
            "40",
            "--duplicate-rate",
            "0.05",
            "--returning-rate",
            "0.5",
            "--gold-max-rows-per-build",
            "1000",
        ];
        let a = run(in_process.path(), &args);
        let b = run(via_host.path(), &[args.as_slice(), &["--via-host"]].concat());
        assert_eq!(a["gold_early_partitions"], serde_json::json!(["0", "1", "2"]), "{}", a["gold"]);
        assert_eq!(b["gold_early_partitions"], serde_json::json!([]));
        assert_eq!(a["gold"]["build"]["rows_in"], b["gold"]["build"]["rows_in"]);
        let kpis = |r: &Value| {
            let mut report = r["report"].clone();
            report.as_object_mut().unwrap().remove("build");
            report
        };
        assert_eq!(kpis(&a), kpis(&b), "the same KPIs");
    }
    let gold = |d: &std::path::Path| {
        let d = d.to_path_buf();
        async move { crate::properties::snapshot(&Lake::open(&StorageConfig::local(d)).await.unwrap()).await }
    };
    let (ga, gb) = (gold(in_process.path()).await, gold(via_host.path()).await);
    assert!(ga == gb, "the same gold rows");
}
