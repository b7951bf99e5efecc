-- The seed notebook's "bed turnover rate" by gender, exactly as the seed's query defines it, for
-- parity checks when migrating (bed_turnover_by_gender is the well-defined figure):
--   COUNT(DISTINCT fact_id) * 1.0 / COUNT(DISTINCT bed_id)
-- i.e. the gender's visits (admitted or not, discharged or not) per distinct bed number — bed
-- numbers of different hospitals count as one bed. Joined on every version of the patient, as the
-- seed's shared patient_sk does. NULLIF only turns the seed's division by zero into NULL.
-- Counted without a DISTINCT over every fact (which holds all fact ids in memory at once): a fact
-- has one version (patient_sk is unique) and is paired once with each distinct gender its patient
-- ever had, so its rows per gender are one, and count(*) is the seed's COUNT(DISTINCT fact_id).
-- Versions are matched by the patient's durable key (patient_key, one per patient_id), an integer
-- join in place of the string join on the id: the same pairs, in half the time.
-- Each gender of a patient once: a window picks one version per (patient, gender). A DISTINCT (or
-- GROUP BY) there left a hash table of every patient beside the joins' and failed under the report's
-- 128 MB once the warehouse held 16M facts and 13M patient versions; the window spills.
WITH genders AS (
    SELECT patient_key, gender FROM DimPatient
    QUALIFY row_number() OVER (PARTITION BY patient_key, gender) = 1
),
seed_join AS (
    SELECT f.bed_id, g.gender
    FROM FactPatientFlow f
    JOIN DimPatient v ON v.patient_sk = f.patient_sk
    JOIN genders g ON g.patient_key = v.patient_key
)
SELECT s.gender,
       CAST(count(*) AS DOUBLE) / nullif(count(DISTINCT s.bed_id), 0) AS bed_turnover_rate
FROM seed_join s
GROUP BY s.gender
ORDER BY s.gender NULLS LAST;
