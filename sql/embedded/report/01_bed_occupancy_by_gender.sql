-- Bed occupancy % by gender, well defined — beds occupied by patients currently admitted (admitted
-- by the build's clock and not yet discharged), as a share of the network's beds (distinct
-- hospital/bed pairs seen). The seed notebook's own formula is 06_seed_kpis_by_gender.sql.
WITH beds AS (
    SELECT count(DISTINCT (hospital_id, bed_id)) AS total
    FROM FactPatientFlow
    WHERE hospital_id IS NOT NULL AND bed_id IS NOT NULL
)
SELECT coalesce(p.gender, 'Unknown') AS gender,
       count(*) AS currently_admitted,
       count(DISTINCT (f.hospital_id, f.bed_id)) FILTER (WHERE f.bed_id IS NOT NULL) AS occupied_beds,
       beds.total AS total_beds,
       round(100.0 * count(DISTINCT (f.hospital_id, f.bed_id)) FILTER (WHERE f.bed_id IS NOT NULL)
             / nullif(beds.total, 0), 2) AS bed_occupancy_pct
FROM FactPatientFlow f
JOIN DimPatient p ON p.patient_sk = f.patient_sk
CROSS JOIN beds
WHERE f.is_currently_admitted
GROUP BY 1, beds.total
ORDER BY 1;
