//! The embedded warehouse under the conditions it meets in use: loads of different builds racing
//! (checked by referential integrity and against the gold files), `report` beside a running handler
//! and beside a load in progress, and a report whose text would not fit a formatting width.

#![cfg(feature = "embedded-warehouse")]

use std::io::{Read, Write};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use arrow_array::cast::AsArray;
use arrow_array::types::{Int32Type, Int64Type};
use patientflow::local_host::envelopes;
use patientflow::pipeline::gold::{self, GoldOptions, manifest::Manifest};
use patientflow::storage::Lake;
use patientflow::warehouse::embedded::Embedded;
use patientflow::warehouse::{Warehouse, loaded_files, report};
use serde_json::Value;

use crate::util::{self, event, land};

const NOW: &str = "2026-11-24T12:00:00";

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_patientflow"))
}

/// Six builds; each adds a day with two new patients in a new department, and from the second on
/// gives patient P1a a new age (a new DimPatient version): every build's dimensions differ.
async fn six_builds() -> (Lake, Vec<Manifest>) {
    let (state, lake) = util::memory().await;
    let opts = GoldOptions::new(util::now(), Duration::from_secs(30 * 86_400));
    let mut builds = Vec::new();
    for k in 1..=6i64 {
        let day = format!("2026-11-{:02}", 10 + k);
        let ward = format!("Ward{k}");
        let mut events = vec![
            event(&format!("P{k}a"), "Female", 30 + k, &ward, k, 1, &format!("{day}T0{k}:15:00"), None),
            event(
                &format!("P{k}b"),
                "Male",
                50 + k,
                &ward,
                k,
                2,
                &format!("{day}T1{k}:00:00.250"),
                Some(&format!("{day}T23:00:00")),
            ),
        ];
        if k > 1 {
            events.push(event("P1a", "Female", 60 + k, "Ward1", 1, 3, &format!("{day}T08:00:00"), None));
        }
        land(&state, &lake, "0", 10 * k, &events).await;
        match gold::build(&lake, &opts).await.unwrap() {
            gold::BuildOutcome::Built(m) => assert_eq!(m.build, k as u64),
            other => panic!("expected build {k}, got {other:?}"),
        }
        builds.push(gold::manifest::read(&lake, k as u64).await.unwrap());
    }
    (lake, builds)
}

/// What the warehouse holds, read back through its own connection.
#[derive(Debug)]
struct Held {
    build: Option<i64>,
    orphans: Vec<(&'static str, i64)>,
    patients: Vec<i64>,
    departments: Vec<i64>,
    hours: Vec<i64>,
    facts: i64,
    files: Vec<(String, String)>,
}

async fn held(w: &Embedded) -> Held {
    w.with_conn(|c| {
        let one = |sql: &str| c.query_row(sql, [], |r| r.get::<_, Option<i64>>(0)).unwrap();
        let ints = |sql: &str| -> Vec<i64> {
            let mut s = c.prepare(sql).unwrap();
            s.query_map([], |r| r.get::<_, i64>(0)).unwrap().map(Result::unwrap).collect()
        };
        let mut s = c.prepare("SELECT table_name, file FROM LoadedFile ORDER BY 1, 2").unwrap();
        let files = s.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).unwrap().map(Result::unwrap).collect();
        let orphan_sql = [
            ("patient_sk", "patient_sk NOT IN (SELECT patient_sk FROM DimPatient)"),
            ("department_sk", "department_sk NOT IN (SELECT department_sk FROM DimDepartment)"),
            ("admission_time_key", "admission_time_key NOT IN (SELECT time_key FROM DimTime)"),
            (
                "discharge_time_key",
                "discharge_time_key IS NOT NULL AND discharge_time_key NOT IN (SELECT time_key FROM DimTime)",
            ),
        ];
        Ok(Held {
            build: one("SELECT max(build) FROM LoadLog"),
            orphans: orphan_sql
                .iter()
                .map(|(k, w)| (*k, one(&format!("SELECT count(*) FROM FactPatientFlow WHERE {w}")).unwrap()))
                .collect(),
            patients: ints("SELECT patient_sk FROM DimPatient ORDER BY 1"),
            departments: ints("SELECT department_sk FROM DimDepartment ORDER BY 1"),
            hours: ints("SELECT time_key FROM DimTime ORDER BY 1"),
            facts: one("SELECT count(*) FROM FactPatientFlow").unwrap(),
            files,
        })
    })
    .await
    .unwrap()
}

/// One i64/i32 column of gold files, sorted.
async fn gold_keys(lake: &Lake, files: &[&str], column: &str) -> Vec<i64> {
    let mut out = Vec::new();
    let mut batches = Vec::new();
    for file in files {
        batches.extend(gold::read_table(lake, file).await.unwrap());
    }
    for b in batches {
        let a = b.column_by_name(column).unwrap();
        match a.data_type() {
            arrow_schema::DataType::Int64 => out.extend(a.as_primitive::<Int64Type>().values().iter().copied()),
            _ => out.extend(a.as_primitive::<Int32Type>().values().iter().map(|v| i64::from(*v))),
        }
    }
    out.sort_unstable();
    out
}

/// Point 4, embedded: loads of six builds race (in changing orders, through two handles on one
/// file, as the timer and the Data Factory job would); afterwards the warehouse holds exactly the
/// newest build — its dimensions, its fact days, its LoadLog entry — and every fact's keys resolve.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_loads_of_different_builds_leave_one_consistent_build() {
    let (lake, builds) = six_builds().await;
    let newest = builds.last().unwrap();
    let patient_files: Vec<&str> = newest.dim_patient.iter().map(|f| f.file.as_str()).collect();
    let expected_patients = gold_keys(&lake, &patient_files, "patient_sk").await;
    let expected_departments = gold_keys(&lake, &[&newest.dim_department], "department_sk").await;
    let expected_hours = gold_keys(&lake, &[&newest.dim_time], "time_key").await;
    let expected_files: Vec<(String, String)> =
        loaded_files(newest).into_iter().map(|(t, f)| (t.name().to_string(), f)).collect();
    assert!(expected_patients.len() > 12, "SCD2 versions of P1a");

    for round in 0..6usize {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.duckdb");
        let handles = [Arc::new(Embedded::open(&path).unwrap()), Arc::new(Embedded::open(&path).unwrap())];
        let mut order: Vec<usize> = (0..builds.len()).collect();
        order.rotate_left(round % builds.len());
        if round % 2 == 1 {
            order.reverse();
        }
        let mut tasks = Vec::new();
        for (i, b) in order.into_iter().chain([0, 5, 2]).enumerate() {
            let w = Arc::clone(&handles[i % 2]);
            let (lake, m) = (lake.clone(), builds[b].clone());
            tasks.push(tokio::spawn(async move { (m.build, w.load(&lake, &m).await) }));
        }
        for t in tasks {
            match t.await.unwrap() {
                (_, Ok(_)) | (_, Err(patientflow::warehouse::Error::Newer { .. })) => {}
                (build, Err(e)) => panic!("round {round}: load of build {build} failed: {e}"),
            }
        }
        let h = held(&handles[0]).await;
        assert!(h.orphans.iter().all(|(_, n)| *n == 0), "round {round}: facts with unknown keys: {:?}", h.orphans);
        assert_eq!(h.build, Some(newest.build as i64), "round {round}: LoadLog");
        assert_eq!(h.patients, expected_patients, "round {round}: DimPatient is the newest build's");
        assert_eq!(h.departments, expected_departments, "round {round}: DimDepartment");
        assert_eq!(h.hours, expected_hours, "round {round}: DimTime");
        assert_eq!(h.files, expected_files, "round {round}: LoadedFile");
        assert_eq!(h.facts as u64, newest.rows["FactPatientFlow"], "round {round}: fact rows");

        // A stale load afterwards changes nothing.
        let stale = handles[1].load(&lake, &builds[2]).await;
        assert!(matches!(stale, Err(patientflow::warehouse::Error::Newer { loaded: 6, offered: 3 })), "{stale:?}");
        let again = held(&handles[1]).await;
        assert_eq!((again.patients, again.files), (h.patients, h.files));
    }
}

/// POSTs a JSON envelope to the running handler; returns the status and the JSON body.
fn post(port: u16, function: &str, body: &Value) -> (u16, Value) {
    let body = serde_json::to_vec(body).unwrap();
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "POST /{function} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nx-azure-functions-invocationid: t\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .unwrap();
    s.write_all(&body).unwrap();
    let mut response = Vec::new();
    s.read_to_end(&mut response).unwrap();
    let text = String::from_utf8_lossy(&response);
    let status = text.split_whitespace().nth(1).unwrap().parse().unwrap();
    let json = text.split_once("\r\n\r\n").map(|(_, b)| serde_json::from_str(b).unwrap_or(Value::Null));
    (status, json.unwrap_or(Value::Null))
}

fn report_json(data: &std::path::Path, tz: &str) -> Value {
    let out = bin()
        .args(["report", "--format", "json", "--data-dir"])
        .arg(data)
        .env_remove("LAKE")
        .env_remove("PATIENTFLOW_WAREHOUSE")
        .env("TZ", tz)
        .output()
        .unwrap();
    assert!(out.status.success(), "report failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Point 9: `serve` holds the warehouse file only while it loads, so `report` (another process)
/// reads it while the handler runs; and the KPIs are the same in any session time zone (gold's UTC
/// timestamps land in `TIMESTAMP` columns, never shifted).
#[test]
fn report_reads_the_warehouse_while_the_handler_runs() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // A gold build in the lake, not yet in any warehouse.
    let run = bin()
        .args(["run", "--format", "json", "--count", "500", "--now", NOW, "--data-dir"])
        .arg(&data)
        .env_remove("LAKE")
        .env("PATIENTFLOW_WAREHOUSE", "none")
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));

    let (handler, port, _) = crate::cli::start_handler(std::path::Path::new(env!("CARGO_BIN_EXE_patientflow")), &data);
    let mut handler = KillOnDrop(handler);
    let now = patientflow::model::time::parse_utc(NOW).unwrap();
    let (status, body) = post(port, "build_gold", &envelopes::timer("build_gold", &now, false, "g"));
    assert_eq!(status, 200, "{body}");
    let load = &body["ReturnValue"]["load"];
    assert_eq!((load["build"].as_u64(), load["loaded"].as_bool()), (Some(1), Some(true)), "{body}");
    assert!(handler.0.try_wait().unwrap().is_none(), "the handler is still running");
    let utc = report_json(&data, "UTC");
    assert_eq!(utc["build"], 1);
    let names: Vec<&str> = utc["sections"].as_array().unwrap().iter().filter_map(|s| s["name"].as_str()).collect();
    for name in ["bed_occupancy_by_gender", "census_by_hospital_department", "seed_bed_occupancy_by_gender"] {
        assert!(names.contains(&name), "{name} in {names:?}");
    }
    let elsewhere = report_json(&data, "America/Los_Angeles");
    assert_eq!(utc, elsewhere, "the session time zone shifts nothing");
    assert!(handler.0.try_wait().unwrap().is_none(), "the handler is still running");
}

/// Stops the handler however the test ends.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Point 9: a reader that meets a load in progress (another process holding the file) waits a
/// little, then fails with a message that says so — no DuckDB lock text to decode.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_during_a_load_waits_then_says_a_load_is_in_progress() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let w = Embedded::open(&data.join("warehouse.duckdb")).unwrap();
    let data_for_report = data.clone();
    // Hold the file as a load does, and run `report` meanwhile.
    let out = w
        .with_conn(move |_held| {
            Ok(bin()
                .args(["report", "--data-dir"])
                .arg(&data_for_report)
                .env_remove("LAKE")
                .env_remove("PATIENTFLOW_WAREHOUSE")
                .output()
                .unwrap())
        })
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert_ne!(out.status.code(), Some(101), "no panic: {stderr}");
    assert!(stderr.contains("a load is in progress") && stderr.contains("try again"), "{stderr}");
    // Once the load is over, the same command reads.
    assert!(w.loaded_build().await.unwrap().is_none());
    let ok = bin().args(["report", "--data-dir"]).arg(&data).env_remove("LAKE").output().unwrap();
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
}

/// Point 11: a 70,000-character department (past `format!`'s 65,535 width limit) is rendered
/// truncated with an ellipsis in text, and whole in JSON.
#[test]
fn a_70000_character_department_is_truncated_in_text_and_whole_in_json() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let department = "Cardiology ".repeat(7_000);
    assert_eq!(department.chars().count(), 77_000);
    let department = department.chars().take(70_000).collect::<String>();
    let input = dir.path().join("in.ndjson");
    let line = serde_json::json!({
        "patient_id": "long", "gender": "Female", "age": 50, "department": department,
        "admission_time": "2026-11-24T08:00:00", "bed_id": 1, "hospital_id": 1,
    });
    std::fs::write(&input, format!("{line}\n")).unwrap();
    let run = bin()
        .args(["run", "--format", "json", "--now", NOW, "--input"])
        .arg(&input)
        .arg("--data-dir")
        .arg(&data)
        .env_remove("LAKE")
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));

    let text = bin().args(["report", "--data-dir"]).arg(&data).env_remove("LAKE").output().unwrap();
    let stdout = String::from_utf8_lossy(&text.stdout);
    assert!(text.status.success(), "exit {:?}: {}", text.status.code(), String::from_utf8_lossy(&text.stderr));
    assert!(stdout.contains("Cardiology Cardiology") && stdout.contains('…'), "{stdout}");
    let widest = stdout.lines().map(|l| l.chars().count()).max().unwrap();
    assert!(widest < 300, "a readable table, not a 70,000-character line ({widest})");

    let json = report_json(&data, "UTC");
    let census = json["sections"].as_array().unwrap().iter().find(|s| s["name"] == "census_by_hospital_department");
    let rows = census.unwrap()["rows"].as_array().unwrap();
    assert!(rows.iter().any(|r| r[1].as_str() == Some(department.as_str())), "the full value in JSON");
}

/// `PATIENTFLOW_WAREHOUSE_MEMORY_LIMIT` reaches DuckDB's loads (its own `memory_limit` setting reads
/// it back, in binary units), and a value that is no size fails `report` with the setting's name;
/// so does `PATIENTFLOW_REPORT_MEMORY_LIMIT` for the report's connection (see
/// `warehouse::embedded::tests`).
#[tokio::test]
async fn duckdb_runs_under_the_configured_memory_limit() {
    let dir = tempfile::tempdir().unwrap();
    let w = with_memory_limits(&dir.path().join("warehouse.duckdb"), "64MB", "32MB");
    let limit = w
        .with_conn(|c| {
            c.query_row("SELECT current_setting('memory_limit')", [], |r| r.get::<_, String>(0))
                .map_err(|e| patientflow::warehouse::Error::Database(e.to_string()))
        })
        .await
        .unwrap();
    assert_eq!(limit, "61.0 MiB", "64 MB = 61.0 MiB");

    for (setting, bad) in
        [("PATIENTFLOW_WAREHOUSE_MEMORY_LIMIT", "plenty"), ("PATIENTFLOW_REPORT_MEMORY_LIMIT", "12 parsecs")]
    {
        let out = bin()
            .args(["report", "--data-dir"])
            .arg(dir.path())
            .env_remove("LAKE")
            .env_remove("PATIENTFLOW_WAREHOUSE")
            .env(setting, bad)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && out.status.code() != Some(101), "{setting}: {stderr}");
        assert!(stderr.contains(setting) && stderr.contains("not a memory size"), "{setting}: {stderr}");
    }
}

/// The length-of-stay KPI holds DuckDB's own `quantile_cont` (the oracle, computed here with memory
/// to spare) under a report memory limit far below what `quantile_cont` itself keeps: it held every
/// stay of a department in memory and failed under the default 128 MB once the warehouse held 11M
/// facts. Stays tie, fall exactly on whole hours, are excluded (no stay, or discharged after the
/// clock), and departments hold one and two stays (ranks floor(p) = ceil(p)).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_length_of_stay_percentile_is_quantile_conts_under_a_small_memory_limit() {
    let dir = tempfile::tempdir().unwrap();
    let w = with_memory_limits(&dir.path().join("w.duckdb"), "1GB", "16MB");
    let expected = w
        .with_conn(|c| {
            c.execute_batch(
                "INSERT INTO DimDepartment VALUES (1, 'A', 1, 0), (2, 'B', 1, 0), (3, 'C', 2, 0), (4, 'D', 2, 0);
                 INSERT INTO LoadLog VALUES (1, 'b', TIMESTAMP '2026-11-24 12:00:00', 0);
                 INSERT INTO FactPatientFlow
                 SELECT i, 0, dept, 0, NULL, admitted, admitted + to_microseconds(CAST(los * 3.6e9 AS BIGINT)),
                        DATE '2026-11-01', los, false, NULL, NULL, '0', i, admitted, 'b', admitted, DATE '2026-11-01', 0
                 FROM (SELECT i,
                              CASE WHEN i < 3 THEN i + 2 ELSE 1 + i % 2 END AS dept,
                              TIMESTAMP '2026-11-01 00:00:00' + to_hours(i % 300) AS admitted,
                              CASE WHEN i % 19 = 0 THEN NULL
                                   WHEN i % 13 = 0 THEN CAST(i % 97 AS DOUBLE)
                                   WHEN i % 17 = 0 THEN 10000.0
                                   ELSE ((i * 7919) % 100003) / 1000.0 END AS los
                       FROM range(1200000) t(i));",
            )
            .unwrap();
            let mut s = c
                .prepare(
                    "SELECT d.department, count(*), round(avg(f.length_of_stay_hours), 2),
                            round(quantile_cont(f.length_of_stay_hours, 0.9), 2)
                     FROM FactPatientFlow f JOIN DimDepartment d ON d.department_sk = f.department_sk
                     WHERE f.length_of_stay_hours IS NOT NULL AND f.discharge_time <= TIMESTAMP '2026-11-24 12:00:00'
                     GROUP BY 1 ORDER BY 1",
                )
                .unwrap();
            let rows = s.query_map([], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?, r.get::<_, f64>(2)?, r.get::<_, f64>(3)?))
            });
            Ok(rows.unwrap().map(Result::unwrap).collect::<Vec<_>>())
        })
        .await
        .unwrap();
    assert_eq!(expected.iter().map(|r| r.0.as_str()).collect::<Vec<_>>(), ["A", "B", "C", "D"]);
    assert!(expected[0].1 > 500_000 && expected[3].1 == 1, "{expected:?}");

    let report = w.report().await.expect("the report runs under 16 MB");
    let section = report.sections.iter().find(|s| s.name == "length_of_stay_by_department").unwrap();
    let got: Vec<(String, i64, f64, f64)> = section
        .rows
        .iter()
        .map(|r| {
            let n = |v: &Value| v.as_f64().unwrap();
            (r[0].as_str().unwrap().to_string(), r[1].as_i64().unwrap(), n(&r[2]), n(&r[3]))
        })
        .collect();
    assert_eq!(got, expected);
}

/// The seed's two KPIs (report/06, 07) hold the seed's own formulas (the oracle, computed here with
/// memory to spare: over every version of each visit's patient, matched by patient_id as the seed's
/// shared key does; COUNT(DISTINCT fact_id) for the turnover) under a memory limit their earlier
/// forms could not run in: joining every version (occupancy, about 44 MB here) and a DISTINCT over
/// (patient, gender) beside the joins' hash tables (turnover, about 40 MB), which failed the report
/// under the default 128 MB at 21M and 16M facts. Patients have one or two versions, some change
/// gender, some have none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_kpis_hold_the_seeds_formulas_under_a_small_memory_limit() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.duckdb");
    let w = Embedded::open(&path).unwrap();
    type Kpi = Vec<(Option<String>, f64)>;
    let expected: (Kpi, Kpi) = w
        .with_conn(|c| {
            c.execute_batch(
                "INSERT INTO LoadLog VALUES (1, 'b', TIMESTAMP '2026-11-24 12:00:00', 0);
                 -- Patient p: version 2p, and 2p + 1 when p % 4 = 0, whose gender differs when p % 8 = 0.
                 INSERT INTO DimPatient
                 SELECT 2 * p + v, 'P' || p,
                        CASE WHEN p % 50 = 0 THEN NULL WHEN (p + v * (p % 8 = 0)::INT) % 2 = 0 THEN 'Female' ELSE 'Male' END,
                        40, 0, TIMESTAMP '2026-11-01 00:00:00' + to_hours(v), NULL, v = 1 OR p % 4 <> 0,
                        hash('P' || p) >> 1, 0
                 FROM range(600000) a(p), range(2) b(v)
                 WHERE v = 0 OR p % 4 = 0;
                 -- Visit i: patient i % 600000, on either of its versions, bed (7 i) % 3001.
                 INSERT INTO FactPatientFlow
                 SELECT i, 2 * (i % 600000) + (CASE WHEN i % 4 = 0 THEN i % 2 ELSE 0 END), 1, 0, NULL,
                        admitted, admitted + to_hours(i % 100), DATE '2026-11-01', NULL, false, (i * 7) % 3001, 1,
                        '0', i, admitted, 'b', admitted, DATE '2026-11-01', 0
                 FROM (SELECT i, TIMESTAMP '2026-11-20 00:00:00' + to_hours(i % 200) AS admitted FROM range(900000) t(i));",
            )
            .unwrap();
            let seed = |kpi: &str| {
                let sql = format!(
                    "SELECT p.gender, {kpi}
                     FROM FactPatientFlow f
                     JOIN DimPatient v ON v.patient_sk = f.patient_sk
                     JOIN DimPatient p ON p.patient_id = v.patient_id
                     GROUP BY p.gender ORDER BY p.gender NULLS LAST"
                );
                let mut s = c.prepare(&sql).unwrap();
                let rows = s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)));
                rows.unwrap().map(Result::unwrap).collect::<Kpi>()
            };
            Ok((
                seed("COUNT(CASE WHEN f.discharge_time > TIMESTAMP '2026-11-24 12:00:00' THEN f.bed_id END) * 1.0 \
                      / COUNT(f.bed_id) * 100"),
                seed("COUNT(DISTINCT f.fact_id) * 1.0 / COUNT(DISTINCT f.bed_id)"),
            ))
        })
        .await
        .unwrap();
    drop(w);

    let config =
        duckdb::Config::default().access_mode(duckdb::AccessMode::ReadOnly).unwrap().max_memory("32MB").unwrap();
    let conn = duckdb::Connection::open_with_flags(&path, config).unwrap();
    for (name, expected) in [("seed_bed_occupancy_by_gender", expected.0), ("seed_bed_turnover_by_gender", expected.1)]
    {
        assert_eq!(expected.len(), 3, "Female, Male, no gender: {expected:?}");
        let kpi = report::KPIS.iter().find(|k| k.name == name).unwrap();
        let mut s = conn.prepare(kpi.sql).unwrap();
        let got: Kpi = s
            .query_map([], |r| Ok((r.get(kpi.columns[0])?, r.get(kpi.columns[1])?)))
            .unwrap_or_else(|e| panic!("{name} under 32 MB: {e}"))
            .map(Result::unwrap)
            .collect();
        assert_eq!(got.len(), expected.len(), "{name}");
        for ((gender, value), (g, v)) in expected.iter().zip(&got) {
            assert_eq!(g, gender, "{name}");
            assert!((v - value).abs() < 1e-9, "{name}, {gender:?}: {v} against the seed's {value}");
        }
    }
    drop(conn);

    // Under far too little memory the report says which KPI failed and which setting gives more.
    let error = with_memory_limits(&path, "256MB", "4MB").report().await.unwrap_err().to_string();
    assert!(error.starts_with("warehouse: KPI "), "{error}");
    assert!(error.contains("Out of Memory"), "{error}");
    assert!(error.contains("set PATIENTFLOW_REPORT_MEMORY_LIMIT higher"), "{error}");
    assert!(error.contains("PATIENTFLOW_REPORT_MEMORY_LIMIT (4MB)"), "{error}");
    assert!(!error.contains("SET memory_limit"), "DuckDB's own advice names no setting of ours: {error}");
}

/// The embedded warehouse at `path`, its loads under `load` and its reports under `report` of memory.
fn with_memory_limits(path: &std::path::Path, load: &str, report: &str) -> Embedded {
    let config = patientflow::config::EmbeddedConfig {
        path: path.to_path_buf(),
        memory_limit: load.into(),
        report_memory_limit: report.into(),
    };
    Embedded::open_with(&config).unwrap()
}
