-- patientflow: load gold build 2 (0000000002-60411a6f08587fde) into the dedicated SQL pool.
-- 1. Stage: COPY INTO round-robin heaps private to this load, from the build's files the pool does not hold.
CREATE TABLE stg.DimDepartment_b2_0123456789abcdef WITH (DISTRIBUTION = ROUND_ROBIN, HEAP) AS SELECT * FROM dbo.DimDepartment WHERE 1 = 0;
COPY INTO stg.DimDepartment_b2_0123456789abcdef FROM 'https://mylake.dfs.core.windows.net/gold/builds/0000000002-60411a6f08587fde/dim_department.parquet' WITH (FILE_TYPE = 'PARQUET', CREDENTIAL = (IDENTITY = 'Managed Identity'));
CREATE TABLE stg.DimPatientFresh_b2_0123456789abcdef WITH (DISTRIBUTION = ROUND_ROBIN, HEAP) AS SELECT * FROM dbo.DimPatient WHERE 1 = 0;
COPY INTO stg.DimPatientFresh_b2_0123456789abcdef FROM 'https://mylake.dfs.core.windows.net/gold/builds/0000000002-60411a6f08587fde/dim_patient/segment.parquet' WITH (FILE_TYPE = 'PARQUET', CREDENTIAL = (IDENTITY = 'Managed Identity'));
CREATE TABLE stg.DimTime_b2_0123456789abcdef WITH (DISTRIBUTION = ROUND_ROBIN, HEAP) AS SELECT * FROM dbo.DimTime WHERE 1 = 0;
COPY INTO stg.DimTime_b2_0123456789abcdef FROM 'https://mylake.dfs.core.windows.net/gold/builds/0000000002-60411a6f08587fde/dim_time.parquet' WITH (FILE_TYPE = 'PARQUET', CREDENTIAL = (IDENTITY = 'Managed Identity'));
CREATE TABLE stg.FactPatientFlowFresh_b2_0123456789abcdef WITH (DISTRIBUTION = ROUND_ROBIN, HEAP) AS SELECT * FROM dbo.FactPatientFlow WHERE 1 = 0;
COPY INTO stg.FactPatientFlowFresh_b2_0123456789abcdef FROM 'https://mylake.dfs.core.windows.net/gold/builds/0000000002-60411a6f08587fde/fact_patient_flow/visit_date=2026-11-24/part-0000.parquet' WITH (FILE_TYPE = 'PARQUET', CREDENTIAL = (IDENTITY = 'Managed Identity'));
-- 2. Swap in one transaction, one load at a time (the LoadLock row). Every change is guarded
--    by @planned: the pool must still hold the build this load was planned against.
BEGIN TRANSACTION;
UPDATE dbo.LoadLock SET holder = N'0000000002-60411a6f08587fde', taken_at = SYSUTCDATETIME();
DECLARE @planned BIT = (SELECT CASE WHEN ISNULL(MAX(build), 0) = 1 THEN 1 ELSE 0 END FROM dbo.LoadLog);
DELETE FROM dbo.DimDepartment WHERE @planned = 1;
INSERT INTO dbo.DimDepartment SELECT * FROM stg.DimDepartment_b2_0123456789abcdef WHERE @planned = 1;
INSERT INTO dbo.DimPatient SELECT * FROM stg.DimPatientFresh_b2_0123456789abcdef WHERE @planned = 1;
DELETE FROM dbo.DimTime WHERE @planned = 1;
INSERT INTO dbo.DimTime SELECT * FROM stg.DimTime_b2_0123456789abcdef WHERE @planned = 1;
INSERT INTO dbo.FactPatientFlow SELECT * FROM stg.FactPatientFlowFresh_b2_0123456789abcdef WHERE @planned = 1;
DELETE FROM dbo.LoadedFile WHERE @planned = 1 AND source IN (
    N'builds/0000000001-318eededc336bf49/dim_department.parquet',
    N'builds/0000000001-318eededc336bf49/dim_time.parquet'
);
INSERT INTO dbo.LoadedFile (table_name, source)
    SELECT table_name, source FROM (
        SELECT N'DimDepartment' AS table_name, N'builds/0000000002-60411a6f08587fde/dim_department.parquet' AS source
        UNION ALL SELECT N'DimPatient', N'builds/0000000002-60411a6f08587fde/dim_patient/segment.parquet'
        UNION ALL SELECT N'DimTime', N'builds/0000000002-60411a6f08587fde/dim_time.parquet'
        UNION ALL SELECT N'FactPatientFlow', N'builds/0000000002-60411a6f08587fde/fact_patient_flow/visit_date=2026-11-24/part-0000.parquet'
    ) AS f WHERE @planned = 1;
DECLARE @fact_rows BIGINT = (SELECT COUNT_BIG(*) FROM dbo.FactPatientFlow);
INSERT INTO dbo.LoadLog (build, build_id, as_of, loaded_at, fact_rows)
    SELECT 2, N'0000000002-60411a6f08587fde', '2026-11-24T12:00:00.000000', SYSUTCDATETIME(), @fact_rows WHERE @planned = 1;
COMMIT TRANSACTION;
-- 3. Drop this load's staging; statistics and the replicated caches of the tables that changed.
DROP TABLE stg.DimDepartment_b2_0123456789abcdef;
DROP TABLE stg.DimPatientFresh_b2_0123456789abcdef;
DROP TABLE stg.DimTime_b2_0123456789abcdef;
DROP TABLE stg.FactPatientFlowFresh_b2_0123456789abcdef;
UPDATE STATISTICS dbo.DimDepartment;
UPDATE STATISTICS dbo.DimPatient;
UPDATE STATISTICS dbo.DimTime;
UPDATE STATISTICS dbo.FactPatientFlow;
SELECT TOP 1 department_sk FROM dbo.DimDepartment;
SELECT TOP 1 patient_sk FROM dbo.DimPatient;
SELECT TOP 1 time_key FROM dbo.DimTime;
SELECT MAX(build) AS loaded_build FROM dbo.LoadLog;
