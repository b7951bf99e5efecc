-- The star schema in the embedded warehouse (DuckDB). Same table and column names as the Synapse
-- DDL in sql/synapse/, plus DimPatient's `patient_key` and `gold_file_id` on every table.
-- `patient_key` is the patient's durable key: one BIGINT for every version of a patient (the xxh3
-- of patient_id that gold's visit ledger is keyed by, computed by the load), so queries that follow
-- a patient across versions join on an integer, not on the 36-character id: the seed KPIs
-- (report/06, 07) take half the time. Like patient_sk, it is a 63-bit hash taken as an identity.
-- `gold_file_id` is the gold file (LoadedFile.file_id) a row was loaded from. A load deletes the rows
-- of the gold files the build no longer has by that id and appends the rows of its new files, inside
-- a transaction. New ids follow the largest held, so the rows of one file are contiguous and a
-- delete touches only the row groups that hold them.
-- TIMESTAMP columns hold UTC (gold's UTC instants, stored naive so no session time zone shifts them).
-- The 63-bit hash keys (fact_id, patient_sk, department_sk, attr_hash, patient_key) are stored
-- uncompressed, which DuckDB chooses for them anyway (random 63-bit values: no bit width or run to
-- save). Named here, DuckDB no longer tries bit-packing and run-length encoding on each of their row
-- groups before choosing it: the load of 1M facts and 915k patient versions 1.48 -> 1.34 CPU-s
-- (medians of five); callgrind over a 300k load, choosing compressions 696M -> 556M instructions.
CREATE TABLE IF NOT EXISTS DimDepartment (
    department_sk BIGINT NOT NULL,
    department    VARCHAR NOT NULL,
    hospital_id   INTEGER NOT NULL,
    gold_file_id  BIGINT NOT NULL
);

CREATE TABLE IF NOT EXISTS DimPatient (
    patient_sk     BIGINT NOT NULL USING COMPRESSION uncompressed,
    -- Stored uncompressed: the producers' ids are random UUIDs, which FSST shrinks by a third at a
    -- third of DimPatient's load (1M events: 0.75 -> 0.54 s for DuckDB's own insert from parquet,
    -- 41 -> 59 MB). Queries no longer join on it (patient_key). Short sequential ids (MRNs) would
    -- compress well: drop the clause for those.
    patient_id     VARCHAR NOT NULL USING COMPRESSION uncompressed,
    gender         VARCHAR,
    age            INTEGER,
    attr_hash      BIGINT NOT NULL USING COMPRESSION uncompressed,
    effective_from TIMESTAMP NOT NULL,
    effective_to   TIMESTAMP,
    is_current     BOOLEAN NOT NULL,
    patient_key    BIGINT NOT NULL USING COMPRESSION uncompressed,
    gold_file_id   BIGINT NOT NULL
);

CREATE TABLE IF NOT EXISTS DimTime (
    time_key    INTEGER NOT NULL,
    date        DATE NOT NULL,
    year        INTEGER NOT NULL,
    quarter     INTEGER NOT NULL,
    month       INTEGER NOT NULL,
    day         INTEGER NOT NULL,
    hour        INTEGER NOT NULL,
    day_of_week INTEGER NOT NULL,
    is_weekend  BOOLEAN NOT NULL,
    gold_file_id BIGINT NOT NULL
);

CREATE TABLE IF NOT EXISTS FactPatientFlow (
    fact_id               BIGINT NOT NULL USING COMPRESSION uncompressed,
    patient_sk            BIGINT NOT NULL USING COMPRESSION uncompressed,
    department_sk         BIGINT NOT NULL USING COMPRESSION uncompressed,
    admission_time_key    INTEGER NOT NULL,
    discharge_time_key    INTEGER,
    admission_time        TIMESTAMP NOT NULL,
    discharge_time        TIMESTAMP,
    admission_date        DATE NOT NULL,
    length_of_stay_hours  DOUBLE,
    is_currently_admitted BOOLEAN NOT NULL,
    bed_id                INTEGER,
    hospital_id           INTEGER,
    partition_id          VARCHAR NOT NULL,
    sequence_number       BIGINT NOT NULL,
    enqueued_time         TIMESTAMP NOT NULL,
    bronze_file           VARCHAR NOT NULL,
    ingested_at           TIMESTAMP NOT NULL,
    visit_date            DATE NOT NULL,
    gold_file_id          BIGINT NOT NULL
);

-- Which gold build each load brought in: a load of a build already here changes nothing.
CREATE TABLE IF NOT EXISTS LoadLog (
    build     BIGINT NOT NULL,
    build_id  VARCHAR NOT NULL,
    as_of     TIMESTAMP NOT NULL,
    fact_rows BIGINT NOT NULL
);

-- The gold files the warehouse holds rows of (gold tables are sets of immutable files): a load adds
-- the build's files not listed here and forgets listed ones the build no longer has.
CREATE TABLE IF NOT EXISTS LoadedFile (
    table_name VARCHAR NOT NULL,
    file       VARCHAR NOT NULL,
    file_id    BIGINT NOT NULL
);
