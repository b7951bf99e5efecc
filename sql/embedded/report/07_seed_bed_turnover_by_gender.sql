-- The seed notebook's "bed turnover rate" by gender, exactly as the seed's query defines it, for
-- parity checks when migrating (bed_turnover_by_gender is the well-defined figure):
--   COUNT(DISTINCT fact_id) * 1.0 / COUNT(DISTINCT bed_id)
-- i.e. the gender's visits (admitted or not, discharged or not) per distinct bed number — bed
-- numbers of different hospitals count as one bed. Joined on every version of the patient, as the
-- seed's shared patient_sk does. NULLIF only turns the seed's division by zero into NULL.
WITH seed_join AS (
    SELECT f.fact_id, f.bed_id, p.gender
    FROM FactPatientFlow f
    JOIN DimPatient v ON v.patient_sk = f.patient_sk
    JOIN DimPatient p ON p.patient_id = v.patient_id
)
SELECT s.gender,
       CAST(count(DISTINCT s.fact_id) AS DOUBLE) / nullif(count(DISTINCT s.bed_id), 0) AS bed_turnover_rate
FROM seed_join s
GROUP BY s.gender
ORDER BY s.gender NULLS LAST;
