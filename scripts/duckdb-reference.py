"""A DuckDB reference for the performance issue, reproducible: the same NDJSON through bronze -> silver -> gold -> warehouse -> KPIs
as one embedded DuckDB doing it in SQL, timed stage by stage (see scripts/duckdb-reference).

It does the seed notebooks' work, with patientflow's layers and formats, in one process and one pass:
- bronze: every line byte for byte with where it came from (partition by patient id, sequence numbers,
  enqueued times), parquet zstd level 1, one folder per partition;
- silver: bodies parsed and typed (the seed's schema), the seed's corrections (age over 100 -> 90,
  a missing or future admission -> the clock) with flags, what cannot be a row to quarantine with a
  reason; parquet Snappy;
- gold: DimDepartment; DimPatient as SCD2 (a version per change of gender or age, in admission order);
  DimTime (every hour of each day a visit touches); FactPatientFlow (a visit's latest event, its version
  at admission, time keys, length of stay, the census flag at the clock); parquet Snappy, facts by day;
- warehouse: the gold files inserted into a DuckDB file's tables;
- KPIs: the seed's two queries by gender, census by hospital and department, length of stay (mean, p90)
  by department, admissions per hour of the last 24.

It does less than patientflow: everything is one batch (no per-invocation files, no duplicates to drop:
nothing is redelivered, no exactly-once across builds, no visit ledger, nothing incremental: a second run
would redo it all), and the KPIs are the seed's two and three plain ones.

Usage: python duckdb-reference.py INPUT.ndjson NOW OUT_DIR   (NOW like 2026-11-20T00:00:00)
Prints JSON: seconds per stage, total, peak memory (RSS) and row counts; DETAIL=1 adds each statement's
seconds on standard error.
"""

import json
import os
import resource
import sys
import time

import duckdb

# DETAIL=1 prints each statement's seconds to standard error.
DETAIL = bool(os.environ.get("DETAIL"))


def main() -> None:
    src, now, out = sys.argv[1], sys.argv[2].replace("T", " "), sys.argv[3]
    con = duckdb.connect(f"{out}/work.duckdb")
    stages = {}

    def stage(name, sql):
        started = time.perf_counter()
        for statement in [s for s in sql.split(";") if s.strip()]:
            t = time.perf_counter()
            con.execute(statement)
            if DETAIL:
                print(f"{name}: {time.perf_counter() - t:.3f} s  {' '.join(statement.split())[:90]}", file=sys.stderr)
        stages[name] = stages.get(name, 0.0) + time.perf_counter() - started

    # Bronze: the lines as sent, numbered per partition (the patient id's hash, as Event Hubs routes by
    # partition key), enqueued one millisecond apart and ending at the clock.
    stage(
        "bronze",
        f"""
        CREATE TEMP TABLE lines AS
        SELECT row_number() OVER () - 1 AS n, body
        FROM read_csv('{src}', columns = {{'body': 'VARCHAR'}}, header = false, delim = '\\x01', quote = '',
                      escape = '', auto_detect = false);
        CREATE TEMP TABLE events AS
        SELECT 'patient-flow' AS event_hub,
               (hash(json_extract_string(body, '$.patient_id')) % 4)::VARCHAR AS partition_id,
               n, json_extract_string(body, '$.patient_id') AS partition_key, body
        FROM lines;
        COPY (
            SELECT event_hub, partition_id,
                   row_number() OVER (PARTITION BY partition_id ORDER BY n) - 1 AS sequence_number,
                   TIMESTAMP '{now}' - to_milliseconds((SELECT count(*) FROM events) - 1 - n) AS enqueued_time,
                   partition_key, TIMESTAMP '{now}' AS ingested_at, body::BLOB AS body
            FROM events
        ) TO '{out}/bronze' (FORMAT parquet, COMPRESSION zstd, COMPRESSION_LEVEL 1, PARTITION_BY (partition_id));
        DROP TABLE lines; DROP TABLE events;
        """,
    )

    # Silver and quarantine, from the bronze files.
    stage(
        "silver",
        f"""
        CREATE TEMP TABLE parsed AS
        SELECT event_hub, partition_id, sequence_number, enqueued_time, decode(body) AS body,
               json_valid(decode(body)) AS ok
        FROM read_parquet('{out}/bronze/*/*.parquet', hive_partitioning = true);
        CREATE TEMP TABLE typed AS
        SELECT p.*, j.patient_id, j.gender, j.age, j.department,
               try_cast(j.admission_time AS TIMESTAMP) AS admission_time,
               try_cast(j.discharge_time AS TIMESTAMP) AS discharge_time,
               j.admission_time IS NOT NULL AND try_cast(j.admission_time AS TIMESTAMP) IS NULL
                 OR j.discharge_time IS NOT NULL AND try_cast(j.discharge_time AS TIMESTAMP) IS NULL AS bad_time,
               j.bed_id, j.hospital_id
        FROM (SELECT * FROM parsed WHERE ok) p,
             LATERAL (SELECT unnest(from_json(p.body, '{{"patient_id": "VARCHAR", "gender": "VARCHAR",
                 "age": "INTEGER", "department": "VARCHAR", "admission_time": "VARCHAR",
                 "discharge_time": "VARCHAR", "bed_id": "INTEGER", "hospital_id": "INTEGER"}}'))) j;
        COPY (
            SELECT CASE WHEN NOT ok THEN 'invalid_json' END AS reason, event_hub, partition_id, sequence_number,
                   enqueued_time, encode(body) AS body FROM parsed WHERE NOT ok
            UNION ALL
            SELECT CASE WHEN patient_id IS NULL THEN 'missing_patient_id' ELSE 'invalid_timestamp' END, event_hub,
                   partition_id, sequence_number, enqueued_time, encode(body)
            FROM typed WHERE patient_id IS NULL OR bad_time
        ) TO '{out}/quarantine.parquet' (FORMAT parquet, COMPRESSION snappy);
        COPY (
            SELECT patient_id, gender, CASE WHEN age > 100 THEN 90 ELSE age END AS age, department,
                   CASE WHEN admission_time IS NULL OR admission_time > TIMESTAMP '{now}' THEN TIMESTAMP '{now}'
                        ELSE admission_time END AS admission_time,
                   admission_time AS admission_time_sent, discharge_time, bed_id, hospital_id,
                   coalesce(age > 100, false) AS age_capped,
                   admission_time IS NULL OR admission_time > TIMESTAMP '{now}' AS admission_imputed,
                   coalesce(discharge_time < admission_time, false) AS discharge_before_admission,
                   event_hub, partition_id, sequence_number, enqueued_time
            FROM typed WHERE patient_id IS NOT NULL AND NOT bad_time
        ) TO '{out}/silver' (FORMAT parquet, COMPRESSION snappy, PARTITION_BY (partition_id));
        DROP TABLE parsed; DROP TABLE typed;
        """,
    )

    # Gold, from the silver files.
    stage(
        "gold",
        f"""
        CREATE TEMP TABLE visits AS
        SELECT * FROM read_parquet('{out}/silver/*/*.parquet', hive_partitioning = true)
        QUALIFY row_number() OVER (PARTITION BY patient_id, admission_time
                                   ORDER BY enqueued_time DESC, sequence_number DESC) = 1;
        CREATE TEMP TABLE versions AS
        WITH marked AS (
            SELECT patient_id, gender, age, admission_time, hash(gender, age) AS attrs,
                   lag(hash(gender, age)) OVER (PARTITION BY patient_id ORDER BY admission_time) AS before
            FROM visits
        ),
        starts AS (SELECT * FROM marked WHERE before IS NULL OR before <> attrs)
        SELECT hash(patient_id, admission_time, attrs) >> 1 AS patient_sk, patient_id, gender, age,
               attrs AS attr_hash, admission_time AS effective_from,
               lead(admission_time) OVER (PARTITION BY patient_id ORDER BY admission_time) AS effective_to
        FROM starts;
        COPY (SELECT *, effective_to IS NULL AS is_current FROM versions)
            TO '{out}/dim_patient.parquet' (FORMAT parquet, COMPRESSION snappy);
        COPY (SELECT DISTINCT hash(department, hospital_id) >> 1 AS department_sk, department, hospital_id
              FROM visits WHERE department IS NOT NULL AND hospital_id IS NOT NULL)
            TO '{out}/dim_department.parquet' (FORMAT parquet, COMPRESSION snappy);
        COPY (
            SELECT hash(v.patient_id, v.admission_time) >> 1 AS fact_id, p.patient_sk,
                   hash(v.department, v.hospital_id) >> 1 AS department_sk,
                   strftime(v.admission_time, '%Y%m%d%H')::INTEGER AS admission_time_key,
                   strftime(v.discharge_time, '%Y%m%d%H')::INTEGER AS discharge_time_key,
                   v.admission_time, v.discharge_time, v.admission_time::DATE AS admission_date,
                   CASE WHEN v.discharge_time >= v.admission_time
                        THEN epoch(v.discharge_time - v.admission_time) / 3600 END AS length_of_stay_hours,
                   v.admission_time <= TIMESTAMP '{now}'
                     AND (v.discharge_time IS NULL OR v.discharge_time > TIMESTAMP '{now}') AS is_currently_admitted,
                   v.bed_id, v.hospital_id, v.partition_id, v.sequence_number, v.enqueued_time,
                   v.admission_time::DATE AS visit_date
            FROM visits v
            ASOF JOIN versions p ON p.patient_id = v.patient_id AND v.admission_time >= p.effective_from
        ) TO '{out}/fact_patient_flow' (FORMAT parquet, COMPRESSION snappy, PARTITION_BY (visit_date));
        COPY (
            SELECT strftime(h, '%Y%m%d%H')::INTEGER AS time_key, h::DATE AS date, year(h) AS year,
                   quarter(h) AS quarter, month(h) AS month, day(h) AS day, hour(h) AS hour,
                   dayofweek(h) AS day_of_week, dayofweek(h) IN (0, 6) AS is_weekend
            FROM (SELECT DISTINCT d FROM (SELECT admission_time::DATE AS d FROM visits
                                          UNION SELECT discharge_time::DATE FROM visits)
                  WHERE d IS NOT NULL) days,
                 LATERAL (SELECT unnest(generate_series(d::TIMESTAMP, d::TIMESTAMP + INTERVAL 23 HOUR,
                                                        INTERVAL 1 HOUR)) AS h)
        ) TO '{out}/dim_time.parquet' (FORMAT parquet, COMPRESSION snappy);
        DROP TABLE visits; DROP TABLE versions;
        """,
    )

    # Warehouse: the gold files into a DuckDB file's tables.
    stage(
        "load",
        f"""
        ATTACH '{out}/warehouse.duckdb' AS wh;
        CREATE TABLE wh.DimDepartment AS SELECT * FROM read_parquet('{out}/dim_department.parquet');
        CREATE TABLE wh.DimPatient AS SELECT * FROM read_parquet('{out}/dim_patient.parquet');
        CREATE TABLE wh.DimTime AS SELECT * FROM read_parquet('{out}/dim_time.parquet');
        CREATE TABLE wh.FactPatientFlow AS
            SELECT * FROM read_parquet('{out}/fact_patient_flow/*/*.parquet', hive_partitioning = true);
        CHECKPOINT wh;
        """,
    )

    kpis = {
        "seed_bed_occupancy_by_gender": """
            SELECT p.gender, COUNT(CASE WHEN f.is_currently_admitted THEN f.bed_id END) * 1.0 / COUNT(f.bed_id) * 100
            FROM wh.FactPatientFlow f JOIN wh.DimPatient v ON v.patient_sk = f.patient_sk
            JOIN wh.DimPatient p ON p.patient_id = v.patient_id GROUP BY p.gender""",
        "seed_bed_turnover_by_gender": """
            SELECT p.gender, COUNT(DISTINCT f.fact_id) * 1.0 / COUNT(DISTINCT f.bed_id)
            FROM wh.FactPatientFlow f JOIN wh.DimPatient v ON v.patient_sk = f.patient_sk
            JOIN wh.DimPatient p ON p.patient_id = v.patient_id GROUP BY p.gender""",
        "census_by_hospital_department": """
            SELECT d.hospital_id, d.department, count(*), count(DISTINCT f.bed_id)
            FROM wh.FactPatientFlow f JOIN wh.DimDepartment d ON d.department_sk = f.department_sk
            WHERE f.is_currently_admitted GROUP BY ALL""",
        "length_of_stay_by_department": """
            SELECT d.department, count(*), avg(f.length_of_stay_hours), quantile_cont(f.length_of_stay_hours, 0.9)
            FROM wh.FactPatientFlow f JOIN wh.DimDepartment d ON d.department_sk = f.department_sk
            WHERE f.length_of_stay_hours IS NOT NULL GROUP BY ALL""",
        "admissions_per_hour": f"""
            SELECT t.date, t.hour, count(*)
            FROM wh.FactPatientFlow f JOIN wh.DimTime t ON t.time_key = f.admission_time_key
            WHERE f.admission_time > TIMESTAMP '{now}' - INTERVAL 24 HOUR GROUP BY ALL""",
    }
    started = time.perf_counter()
    rows = {name: len(con.execute(sql).fetchall()) for name, sql in kpis.items()}
    stages["report"] = time.perf_counter() - started

    counts = {
        table: con.execute(f"SELECT count(*) FROM wh.{table}").fetchone()[0]
        for table in ("FactPatientFlow", "DimPatient", "DimDepartment", "DimTime")
    }
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        json.dumps(
            {
                "duckdb": duckdb.__version__,
                "stages": {k: round(v, 3) for k, v in stages.items()},
                "total_seconds": round(sum(stages.values()), 3),
                "peak_memory_mb": round(peak_mb),
                "rows": counts,
                "kpi_rows": rows,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
