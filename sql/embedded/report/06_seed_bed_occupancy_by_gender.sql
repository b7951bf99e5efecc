-- The seed notebook's "bed occupancy %" by gender, exactly as the seed's query defines it, for
-- parity checks when migrating (bed_occupancy_by_gender is the well-defined figure):
--   COUNT(CASE WHEN is_currently_admitted THEN bed_id END) * 1.0 / COUNT(bed_id) * 100
-- i.e. the share of the gender's visits with a bed that are "currently admitted", where the seed's
-- is_currently_admitted is discharge_time > the build's clock (a visit with no discharge time is
-- never admitted; a discharge before admission still is). The seed reuses one patient_sk for every
-- version of a patient, so its join matches every version: a visit counts once per version of its
-- patient, under each version's gender. NULLIF only turns the seed's division by zero into NULL.
-- Versions are matched by the patient's durable key (patient_key, one per patient_id), an integer
-- join in place of the seed's string join on the id: the same pairs, in half the time.
WITH as_of AS (SELECT max(as_of) AS t FROM LoadLog),
seed_join AS (
    SELECT f.fact_id, f.bed_id, f.discharge_time, p.gender
    FROM FactPatientFlow f
    JOIN DimPatient v ON v.patient_sk = f.patient_sk
    JOIN DimPatient p ON p.patient_key = v.patient_key
)
SELECT s.gender,
       CAST(count(CASE WHEN s.discharge_time > as_of.t THEN s.bed_id END) AS DOUBLE)
           / nullif(count(s.bed_id), 0) * 100 AS bed_occupancy_percent
FROM seed_join s
CROSS JOIN as_of
GROUP BY s.gender
ORDER BY s.gender NULLS LAST;
