-- Heartbeats of run workers (agg_pipeline/defs/liveness.py, issue 18 item 2). Dagster's
-- DefaultRunLauncher (`agg-pipeline dev`, compose) learns that a run worker died only from the
-- code server that started it, in that server's memory: when the code server dies with its
-- workers (kill -9 of the process group, the host lost) the new one knows nothing of them and
-- the run stays STARTED until run_monitoring.max_runtime_seconds (6 hours), its planner claims
-- with it. So every run worker records here, every AGG_HEARTBEAT_SECONDS on the database's
-- clock, that it is alive; run_liveness_sensor fails a STARTED run whose worker has been silent
-- for AGG_HEARTBEAT_TIMEOUT_SECONDS (run_retries then re-runs it), on every launcher.
--
-- Bounded: one row per run in flight; a worker deletes its row when its run ends, the sensor
-- the rows of runs that ended without it.
CREATE TABLE IF NOT EXISTS data_agg_run_heartbeats (
    run_id     text PRIMARY KEY,  -- Dagster's run id
    job_name   text NOT NULL,
    worker     text NOT NULL,     -- host:pid of the run worker, for operators
    started_at timestamptz NOT NULL,  -- the first beat
    beat_at    timestamptz NOT NULL   -- the latest beat
);

COMMENT ON TABLE data_agg_run_heartbeats IS
    'Run workers in flight and when each last said it is alive (migration 020): a STARTED run '
    'silent longer than AGG_HEARTBEAT_TIMEOUT_SECONDS is failed by run_liveness_sensor.';

-- UPDATE for the beats, DELETE to keep only runs in flight (nothing of value: the run's history
-- is Dagster's).
GRANT SELECT, INSERT, UPDATE, DELETE ON data_agg_run_heartbeats TO agg_pipeline_runtime;
