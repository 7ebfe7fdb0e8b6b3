-- A run worker is alive (migration 020): its first beat inserts the row, the next ones move
-- beat_at, on the database's clock (the sensor judges silence on the same clock).
INSERT INTO data_agg_run_heartbeats (run_id, job_name, worker, started_at, beat_at)
VALUES (%(run_id)s, %(job_name)s, %(worker)s, now(), now())
ON CONFLICT (run_id) DO UPDATE SET beat_at = now(), worker = EXCLUDED.worker
