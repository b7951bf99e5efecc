-- Bed turnover rate by gender, well defined — completed stays (discharged by the build's clock) per
-- bed in the network (distinct hospital/bed pairs). The seed notebook's own formula is
-- 06_seed_kpis_by_gender.sql.
WITH as_of AS (SELECT max(as_of) AS t FROM LoadLog),
beds AS (
    SELECT count(DISTINCT (hospital_id, bed_id)) AS total
    FROM FactPatientFlow
    WHERE hospital_id IS NOT NULL AND bed_id IS NOT NULL
)
SELECT coalesce(p.gender, 'Unknown') AS gender,
       count(*) AS discharges,
       beds.total AS total_beds,
       round(count(*) / nullif(beds.total, 0), 4) AS bed_turnover_rate
FROM FactPatientFlow f
JOIN DimPatient p ON p.patient_sk = f.patient_sk
CROSS JOIN beds
CROSS JOIN as_of
WHERE f.length_of_stay_hours IS NOT NULL AND f.discharge_time <= as_of.t
GROUP BY 1, beds.total
ORDER BY 1;
