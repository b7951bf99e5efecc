-- Average and 90th-percentile length of stay (hours) of completed stays, by department.
WITH as_of AS (SELECT max(as_of) AS t FROM LoadLog)
SELECT d.department,
       count(*) AS completed_stays,
       round(avg(f.length_of_stay_hours), 2) AS avg_los_hours,
       round(quantile_cont(f.length_of_stay_hours, 0.9), 2) AS p90_los_hours
FROM FactPatientFlow f
JOIN DimDepartment d ON d.department_sk = f.department_sk
CROSS JOIN as_of
WHERE f.length_of_stay_hours IS NOT NULL AND f.discharge_time <= as_of.t
GROUP BY d.department
ORDER BY d.department;
