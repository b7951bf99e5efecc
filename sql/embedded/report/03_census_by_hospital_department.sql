-- Current census (patients admitted now) and bed occupancy by hospital and department: beds the
-- department occupies as a share of the hospital's beds (distinct beds seen at that hospital).
WITH hospital_beds AS (
    SELECT hospital_id, count(DISTINCT bed_id) AS beds
    FROM FactPatientFlow
    WHERE bed_id IS NOT NULL
    GROUP BY hospital_id
)
SELECT d.hospital_id,
       d.department,
       count(*) AS census,
       count(DISTINCT f.bed_id) AS occupied_beds,
       round(100.0 * count(DISTINCT f.bed_id) / nullif(max(hb.beds), 0), 2) AS occupancy_pct
FROM FactPatientFlow f
JOIN DimDepartment d ON d.department_sk = f.department_sk
LEFT JOIN hospital_beds hb ON hb.hospital_id = d.hospital_id
WHERE f.is_currently_admitted
GROUP BY d.hospital_id, d.department
ORDER BY d.hospital_id, d.department;
