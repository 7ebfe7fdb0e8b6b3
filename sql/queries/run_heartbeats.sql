-- Every recorded run worker, how long it has been silent, and the database's clock (silence and
-- suspicion are judged on it, whatever the clocks of the hosts).
SELECT run_id, job_name, worker, beat_at, extract(epoch FROM now() - beat_at)::float8 AS silent_s,
       now() AS checked_at
FROM data_agg_run_heartbeats
ORDER BY beat_at
