//! The seed notebook's two KPIs, reproducible: `patientflow run --input <file> --now T` reports the
//! values the seed's own SQL gives on the same events corrected the seed's way at T. The expected
//! values are computed here, independently of our pipeline: the NDJSON is parsed with serde_json
//! into DuckDB as the seed's schema, and the seed's notebooks (silver corrections, dim_patient,
//! fact_patient_flow) and its two queries run verbatim as SQL.

use std::collections::BTreeMap;
use std::process::Command;

use serde_json::Value;

const NOW: &str = "2026-11-24T12:00:00";

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_patientflow"))
}

/// The seed pipeline over `lines`, at clock `now`, in SQL: returns (occupancy %, turnover) by gender.
#[allow(clippy::type_complexity)]
fn seed_sql(lines: &[&[u8]], now: &str) -> (BTreeMap<Option<String>, f64>, BTreeMap<Option<String>, f64>) {
    let conn = duckdb::Connection::open_in_memory().unwrap();
    // 01eventhub_to_bronze + 02_silver_cleandata: from_json with the seed's schema (a field of
    // another type becomes null), timestamps as strings then to_timestamp.
    conn.execute_batch(
        "CREATE TABLE raw (patient_id VARCHAR, gender VARCHAR, age INTEGER, department VARCHAR,
                           admission_time VARCHAR, discharge_time VARCHAR, bed_id INTEGER, hospital_id INTEGER)",
    )
    .unwrap();
    {
        let mut app = conn.appender("raw").unwrap();
        for line in lines {
            let v: Value = serde_json::from_slice(line).unwrap_or(Value::Null);
            let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
            let i = |k: &str| v.get(k).and_then(Value::as_i64).and_then(|n| i32::try_from(n).ok());
            app.append_row(duckdb::params![
                s("patient_id"),
                s("gender"),
                i("age"),
                s("department"),
                s("admission_time"),
                s("discharge_time"),
                i("bed_id"),
                i("hospital_id")
            ])
            .unwrap();
        }
    }
    let seed = format!(
        "
        -- silver: admission null or after current_timestamp -> current_timestamp; age > 100 -> 90.
        CREATE TABLE silver AS
        WITH typed AS (
            SELECT patient_id, gender, age, department,
                   try_cast(admission_time AS TIMESTAMP) AS admission_time,
                   try_cast(discharge_time AS TIMESTAMP) AS discharge_time, bed_id, hospital_id
            FROM raw)
        SELECT patient_id, gender,
               CASE WHEN age > 100 THEN 90 ELSE age END AS age,
               department,
               CASE WHEN admission_time IS NULL OR admission_time > TIMESTAMP '{now}' THEN TIMESTAMP '{now}'
                    ELSE admission_time END AS admission_time,
               discharge_time, bed_id, hospital_id
        FROM typed;
        -- 03_gold_dim_patients: the latest record per patient (by admission_time), patient_sk = sha2(patient_id).
        CREATE TABLE dim_patient AS
        SELECT sha256(patient_id) AS patient_sk, patient_id, gender, age, TRUE AS is_current
        FROM (SELECT *, row_number() OVER (PARTITION BY patient_id ORDER BY admission_time DESC) AS rn FROM silver)
        WHERE rn = 1;
        -- 03_gold_fact: joined to the current dim row by patient_id; is_currently_admitted at the clock.
        CREATE TABLE fact_patient_flow AS
        SELECT hash(s.patient_id, s.department, s.hospital_id, s.admission_time) AS fact_id,
               d.patient_sk, s.bed_id,
               CASE WHEN s.discharge_time > TIMESTAMP '{now}' THEN TRUE ELSE FALSE END AS is_currently_admitted
        FROM silver s LEFT JOIN (SELECT * FROM dim_patient WHERE is_current) d ON d.patient_id = s.patient_id;
        "
    );
    conn.execute_batch(&seed).unwrap();
    let query = |sql: &str| -> BTreeMap<Option<String>, f64> {
        let mut stmt = conn.prepare(sql).unwrap();
        stmt.query_map([], |r| Ok((r.get::<_, Option<String>>(0)?, r.get::<_, f64>(1)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    // The notebook's two queries, verbatim (a cast to DOUBLE added only to read the value).
    let occupancy = query(
        "SELECT
             p.gender,
             CAST(COUNT(CASE WHEN f.is_currently_admitted THEN f.bed_id END) * 1.0 / COUNT(f.bed_id) * 100 AS DOUBLE) AS bed_occupancy_percent
         FROM fact_patient_flow f
         JOIN dim_patient p ON f.patient_sk = p.patient_sk
         GROUP BY p.gender",
    );
    let turnover = query(
        "SELECT
             p.gender,
             CAST(COUNT(DISTINCT f.fact_id) * 1.0 / COUNT(DISTINCT f.bed_id) AS DOUBLE) AS bed_turnover_rate
         FROM fact_patient_flow f
         JOIN dim_patient p ON f.patient_sk = p.patient_sk
         GROUP BY p.gender",
    );
    (occupancy, turnover)
}

fn section(report: &Value, name: &str) -> BTreeMap<Option<String>, f64> {
    let s = report["sections"].as_array().unwrap().iter().find(|s| s["name"] == name).unwrap();
    s["rows"].as_array().unwrap().iter().map(|r| (r[0].as_str().map(str::to_string), r[1].as_f64().unwrap())).collect()
}

fn assert_close(ours: &BTreeMap<Option<String>, f64>, seed: &BTreeMap<Option<String>, f64>, what: &str) {
    assert_eq!(ours.keys().collect::<Vec<_>>(), seed.keys().collect::<Vec<_>>(), "{what}: genders");
    for (gender, s) in seed {
        let o = ours[gender];
        assert!((o - s).abs() <= 1e-9 * s.abs().max(1.0), "{what} {gender:?}: ours {o}, the seed's SQL {s}");
    }
}

#[test]
fn run_reports_the_seed_kpis_the_seeds_own_sql_gives() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("seed.ndjson");
    // The seed generator's distribution: a new patient per event, 5% ages over 100, 5% admissions
    // in the future.
    let sim = bin()
        .args(["simulate", "--seed", "17", "--count", "4000", "--now", NOW, "--returning-rate", "0"])
        .arg("--output")
        .arg(&input)
        .output()
        .unwrap();
    assert!(sim.status.success(), "{}", String::from_utf8_lossy(&sim.stderr));
    let out = bin()
        .args(["run", "--format", "json", "--now", NOW, "--input"])
        .arg(&input)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let ran: Value = serde_json::from_slice(&out.stdout).unwrap();
    let report = &ran["report"];

    let data = std::fs::read(&input).unwrap();
    let lines: Vec<&[u8]> = data.split(|&b| b == b'\n').filter(|l| !l.is_empty()).collect();
    assert_eq!(lines.len(), 4000);
    let (occupancy, turnover) = seed_sql(&lines, NOW);
    assert_eq!(occupancy.len(), 2, "both genders: {occupancy:?}");
    // The file exercises both of the seed's corrections.
    assert!(ran["corrected"]["age_capped"].as_u64().unwrap() > 100, "{}", ran["corrected"]);
    assert!(ran["corrected"]["admission_imputed"].as_u64().unwrap() > 100, "{}", ran["corrected"]);

    assert_close(&section(report, "seed_bed_occupancy_by_gender"), &occupancy, "seed bed occupancy %");
    assert_close(&section(report, "seed_bed_turnover_by_gender"), &turnover, "seed bed turnover");

    // The Synapse views compute the same numbers from the same star schema (run on the warehouse
    // `run` left, which holds the tables the pool would).
    let views = synapse_views();
    assert_eq!(views.len(), 2);
    let warehouse = duckdb::Connection::open(dir.path().join("data/warehouse.duckdb")).unwrap();
    for (name, sql) in &views {
        let mut stmt = warehouse.prepare(sql).unwrap();
        let got: BTreeMap<Option<String>, f64> = stmt
            .query_map([], |r| Ok((r.get::<_, Option<String>>(0)?, r.get::<_, f64>(1)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        match name.as_str() {
            "SeedBedOccupancyByGender" => assert_close(&got, &occupancy, name),
            "SeedBedTurnoverByGender" => assert_close(&got, &turnover, name),
            other => panic!("unexpected view {other}"),
        }
    }
    drop(warehouse);

    // Labelled as the seed's in the text report too, beside ours.
    let text = bin().args(["report"]).arg("--data-dir").arg(dir.path().join("data")).output().unwrap();
    assert!(text.status.success(), "{}", String::from_utf8_lossy(&text.stderr));
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("Seed notebook's bed occupancy % by gender"), "{text}");
    assert!(text.contains("Seed notebook's bed turnover rate by gender"), "{text}");
    assert!(text.contains("Bed occupancy % by gender"), "{text}");
}

/// The SELECT of each `EXEC(N'CREATE VIEW dbo.<name> AS ...')` in the Synapse views file, made
/// runnable on DuckDB: no `dbo.` schema, T-SQL's FLOAT (8 bytes) spelled DOUBLE.
fn synapse_views() -> Vec<(String, String)> {
    let file = include_str!("../../sql/synapse/002_seed_kpi_views.sql");
    file.split("EXEC(N'CREATE VIEW dbo.")
        .skip(1)
        .map(|rest| {
            let (name, body) = rest.split_once(" AS\n").unwrap();
            let body = body.split("');").next().unwrap();
            (name.to_string(), body.replace("dbo.", "").replace("AS FLOAT", "AS DOUBLE"))
        })
        .collect()
}
