-- The star schema in an Azure Synapse dedicated SQL pool. Applied by `patientflow warehouse init`;
-- every statement is guarded, so applying it twice changes nothing.
-- Facts: HASH-distributed on fact_id (unique, never a date, spreads evenly over the 60 distributions)
-- with a clustered columnstore. Dimensions: REPLICATE (small, joined on every query). Staging: each
-- load creates its own ROUND_ROBIN heaps in schema stg, the fastest COPY INTO target (reference
-- §8.1–8.2), and drops them after. Gold's timestamps arrive as parquet INT64 TIMESTAMP(MILLIS,
-- UTC), the form COPY INTO maps to datetime2 (it rejects MICROS); DATETIME2 columns hold UTC.
IF SCHEMA_ID(N'stg') IS NULL EXEC(N'CREATE SCHEMA stg');

IF OBJECT_ID(N'dbo.DimDepartment') IS NULL
CREATE TABLE dbo.DimDepartment (
    department_sk BIGINT        NOT NULL,
    department    NVARCHAR(100) NOT NULL,
    hospital_id   INT           NOT NULL
) WITH (DISTRIBUTION = REPLICATE, CLUSTERED INDEX (department_sk));

IF OBJECT_ID(N'dbo.DimPatient') IS NULL
CREATE TABLE dbo.DimPatient (
    patient_sk     BIGINT        NOT NULL,
    patient_id     NVARCHAR(100) NOT NULL,
    gender         NVARCHAR(20)  NULL,
    age            INT           NULL,
    attr_hash      BIGINT        NOT NULL,
    effective_from DATETIME2(6)  NOT NULL,
    effective_to   DATETIME2(6)  NULL,
    is_current     BIT           NOT NULL
) WITH (DISTRIBUTION = REPLICATE, CLUSTERED COLUMNSTORE INDEX);

IF OBJECT_ID(N'dbo.DimTime') IS NULL
CREATE TABLE dbo.DimTime (
    time_key    INT  NOT NULL,
    [date]      DATE NOT NULL,
    [year]      INT  NOT NULL,
    [quarter]   INT  NOT NULL,
    [month]     INT  NOT NULL,
    [day]       INT  NOT NULL,
    [hour]      INT  NOT NULL,
    day_of_week INT  NOT NULL,
    is_weekend  BIT  NOT NULL
) WITH (DISTRIBUTION = REPLICATE, CLUSTERED INDEX (time_key));

IF OBJECT_ID(N'dbo.FactPatientFlow') IS NULL
CREATE TABLE dbo.FactPatientFlow (
    fact_id               BIGINT        NOT NULL,
    patient_sk            BIGINT        NOT NULL,
    department_sk         BIGINT        NOT NULL,
    admission_time_key    INT           NOT NULL,
    discharge_time_key    INT           NULL,
    admission_time        DATETIME2(6)  NOT NULL,
    discharge_time        DATETIME2(6)  NULL,
    admission_date        DATE          NOT NULL,
    length_of_stay_hours  FLOAT         NULL,
    is_currently_admitted BIT           NOT NULL,
    bed_id                INT           NULL,
    hospital_id           INT           NULL,
    partition_id          NVARCHAR(64)  NOT NULL,
    sequence_number       BIGINT        NOT NULL,
    enqueued_time         DATETIME2(6)  NOT NULL,
    bronze_file           NVARCHAR(400) NOT NULL,
    ingested_at           DATETIME2(6)  NOT NULL,
    visit_date            DATE          NOT NULL
) WITH (DISTRIBUTION = HASH(fact_id), CLUSTERED COLUMNSTORE INDEX);

-- Which gold build the pool holds: loading a build already here changes nothing.
IF OBJECT_ID(N'dbo.LoadLog') IS NULL
CREATE TABLE dbo.LoadLog (
    build     BIGINT       NOT NULL,
    build_id  NVARCHAR(64) NOT NULL,
    as_of     DATETIME2(6) NOT NULL,
    loaded_at DATETIME2(6) NOT NULL,
    fact_rows BIGINT       NOT NULL
) WITH (DISTRIBUTION = ROUND_ROBIN, HEAP);

-- The gold files the pool holds rows of (gold tables are sets of immutable files): a load copies the
-- build's files not listed here and forgets listed ones the build no longer has.
IF OBJECT_ID(N'dbo.LoadedFile') IS NULL
CREATE TABLE dbo.LoadedFile (
    table_name NVARCHAR(64)  NOT NULL,
    source     NVARCHAR(400) NOT NULL
) WITH (DISTRIBUTION = ROUND_ROBIN, HEAP);

-- One row whose update opens every load's transaction: the row's exclusive lock, held to commit,
-- makes loads swap one at a time (dedicated pools have no sp_getapplock).
IF OBJECT_ID(N'dbo.LoadLock') IS NULL
CREATE TABLE dbo.LoadLock (
    id       INT          NOT NULL,
    holder   NVARCHAR(64) NULL,
    taken_at DATETIME2(6) NULL
) WITH (DISTRIBUTION = ROUND_ROBIN, HEAP);

IF NOT EXISTS (SELECT 1 FROM dbo.LoadLock)
INSERT INTO dbo.LoadLock (id, holder, taken_at) SELECT 1, NULL, NULL;
