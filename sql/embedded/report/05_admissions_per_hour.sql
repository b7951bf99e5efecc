-- Admissions per hour over the 24 hours up to the build's clock.
WITH as_of AS (SELECT max(as_of) AS t FROM LoadLog)
SELECT t.date, t.hour, count(*) AS admissions
FROM FactPatientFlow f
JOIN DimTime t ON t.time_key = f.admission_time_key
CROSS JOIN as_of
WHERE f.admission_time > as_of.t - INTERVAL 24 HOUR AND f.admission_time <= as_of.t
GROUP BY t.date, t.hour
ORDER BY t.date, t.hour;
