-- The seed notebook's "bed occupancy %" by gender, exactly as the seed's query defines it, for
-- parity checks when migrating (bed_occupancy_by_gender is the well-defined figure):
--   COUNT(CASE WHEN is_currently_admitted THEN bed_id END) * 1.0 / COUNT(bed_id) * 100
-- i.e. the share of the gender's visits with a bed that are "currently admitted", where the seed's
-- is_currently_admitted is discharge_time > the build's clock (a visit with no discharge time is
-- never admitted; a discharge before admission still is). The seed reuses one patient_sk for every
-- version of a patient, so its join matches every version: a visit counts once per version of its
-- patient, under each version's gender. NULLIF only turns the seed's division by zero into NULL.
-- Versions are matched by the patient's durable key (patient_key, one per patient_id), an integer
-- join in place of the seed's string join on the id. A patient's versions are taken once per gender
-- with how many they are (a visit pairs with each, so counts weigh by that number): a window, as in
-- 07, which spills; joining every version failed under the report's 128 MB at 21M facts and 17M
-- patient versions.
WITH as_of AS (SELECT max(as_of) AS t FROM LoadLog),
genders AS (
    SELECT patient_key, gender, count(*) OVER (PARTITION BY patient_key, gender) AS versions
    FROM DimPatient
    QUALIFY row_number() OVER (PARTITION BY patient_key, gender) = 1
),
seed_join AS (
    SELECT f.bed_id, f.discharge_time, g.gender, g.versions
    FROM FactPatientFlow f
    JOIN DimPatient v ON v.patient_sk = f.patient_sk
    JOIN genders g ON g.patient_key = v.patient_key
)
SELECT s.gender,
       CAST(sum(CASE WHEN s.discharge_time > as_of.t AND s.bed_id IS NOT NULL THEN s.versions ELSE 0 END) AS DOUBLE)
           / nullif(sum(CASE WHEN s.bed_id IS NOT NULL THEN s.versions ELSE 0 END), 0) * 100 AS bed_occupancy_percent
FROM seed_join s
CROSS JOIN as_of
GROUP BY s.gender
ORDER BY s.gender NULLS LAST;
