-- The seed notebook's two KPI queries as views in the dedicated SQL pool, exactly as the seed defines
-- them, for teams checking parity while migrating from the notebooks. The same formulas as
-- sql/embedded/report/06_seed_kpis_by_gender.sql;
-- `patientflow report` shows both beside the well-defined KPIs. Guarded: applying twice changes nothing.
--
-- Seed semantics kept on purpose:
--   * is_currently_admitted is the seed's: discharge_time later than the loaded build's clock
--     (LoadLog.as_of); no discharge time means not admitted.
--   * the seed reuses one patient_sk for every patient version, so its join matches every version:
--     here the fact joins DimPatient on patient_id through its own version.
--   * turnover divides by distinct bed numbers (bed 7 of two hospitals is one bed).
-- NULLIF only turns a division by zero (an error in T-SQL, NULL in Spark) into NULL.

IF OBJECT_ID(N'dbo.SeedBedOccupancyByGender') IS NULL
EXEC(N'CREATE VIEW dbo.SeedBedOccupancyByGender AS
SELECT p.gender,
       CAST(COUNT(CASE WHEN f.discharge_time > l.as_of THEN f.bed_id END) AS FLOAT)
           / NULLIF(COUNT(f.bed_id), 0) * 100 AS bed_occupancy_percent
FROM dbo.FactPatientFlow f
JOIN dbo.DimPatient v ON v.patient_sk = f.patient_sk
JOIN dbo.DimPatient p ON p.patient_id = v.patient_id
CROSS JOIN (SELECT MAX(as_of) AS as_of FROM dbo.LoadLog) l
GROUP BY p.gender');

IF OBJECT_ID(N'dbo.SeedBedTurnoverByGender') IS NULL
EXEC(N'CREATE VIEW dbo.SeedBedTurnoverByGender AS
SELECT p.gender,
       CAST(COUNT(DISTINCT f.fact_id) AS FLOAT) / NULLIF(COUNT(DISTINCT f.bed_id), 0) AS bed_turnover_rate
FROM dbo.FactPatientFlow f
JOIN dbo.DimPatient v ON v.patient_sk = f.patient_sk
JOIN dbo.DimPatient p ON p.patient_id = v.patient_id
GROUP BY p.gender');
