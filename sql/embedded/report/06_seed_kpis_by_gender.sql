-- The seed notebook's two KPIs by gender, exactly as the seed's queries define them, for parity
-- checks when migrating (bed_occupancy_by_gender and bed_turnover_by_gender are the well-defined
-- figures). One query computes both (the report shows them as two tables): they aggregate the same
-- join, which is most of the report's time, and computed apart each paid for it.
--
-- "Bed occupancy %":
--   COUNT(CASE WHEN is_currently_admitted THEN bed_id END) * 1.0 / COUNT(bed_id) * 100
-- i.e. the share of the gender's visits with a bed that are "currently admitted", where the seed's
-- is_currently_admitted is discharge_time > the build's clock (a visit with no discharge time is
-- never admitted; a discharge before admission still is).
-- "Bed turnover rate":
--   COUNT(DISTINCT fact_id) * 1.0 / COUNT(DISTINCT bed_id)
-- i.e. the gender's visits (admitted or not, discharged or not) per distinct bed number — bed
-- numbers of different hospitals count as one bed.
--
-- The seed reuses one patient_sk for every version of a patient, so its join matches every version:
-- a visit counts once per version of its patient, under each version's gender. NULLIF only turns
-- the seed's division by zero into NULL.
-- Versions are matched by the patient's durable key (patient_key, one per patient_id), an integer
-- join in place of the seed's string join on the id: the same pairs, in half the time. A patient's
-- versions are taken once per gender with how many they are: the occupancy's counts weigh by that
-- number (a visit pairs with each version); the turnover counts a visit once per gender, as the
-- seed's COUNT(DISTINCT fact_id) does — a fact has one version (patient_sk is unique) and is paired
-- once with each distinct gender its patient ever had, so count(*) is that DISTINCT, without holding
-- every fact id in memory at once. Those genders come from a window, which spills: joining every
-- version failed under the report's 128 MB at 21M facts and 17M patient versions, and a DISTINCT (or
-- GROUP BY) over (patient, gender) beside the joins' hash tables at 16M facts and 13M versions.
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
           / nullif(sum(CASE WHEN s.bed_id IS NOT NULL THEN s.versions ELSE 0 END), 0) * 100 AS bed_occupancy_percent,
       CAST(count(*) AS DOUBLE) / nullif(count(DISTINCT s.bed_id), 0) AS bed_turnover_rate
FROM seed_join s
CROSS JOIN as_of
GROUP BY s.gender
ORDER BY s.gender NULLS LAST;
