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

-- The engine's locks are transaction-scoped (advisory lock, FOR UPDATE of the task row): they go
-- when the worker's backend ends. A worker killed on a host that stays up closes its sockets and
-- its backend ends at once (or when its statement ends). A worker whose host is lost (a node
-- gone, a network cut) says nothing: its backend, idle in its transaction, keeps the task's locks
-- until the server's TCP keepalive gives up (the kernel's default: 2 h 11 min), and the run's
-- retry waits on them all that time, alive and beating. So this database's sessions probe an idle
-- client after 60 s (6 probes 10 s apart) and drop one that leaves sent data unacknowledged for
-- 60 s: an orphaned backend ends, and its locks go, within ~2 minutes. These only detect dead
-- TCP peers (no effect on a Unix socket or on any live client), so they are set for the whole
-- database; they apply to sessions opened after this migration. Only the database's owner may set
-- them: another migrating user gets a notice, and an administrator can run the same ALTER.
DO $$
BEGIN
    EXECUTE format('ALTER DATABASE %I SET tcp_keepalives_idle = 60', current_database());
    EXECUTE format('ALTER DATABASE %I SET tcp_keepalives_interval = 10', current_database());
    EXECUTE format('ALTER DATABASE %I SET tcp_keepalives_count = 6', current_database());
    EXECUTE format('ALTER DATABASE %I SET tcp_user_timeout = 60000', current_database());
EXCEPTION WHEN insufficient_privilege THEN
    RAISE NOTICE 'not the owner of database %: dead clients are detected by the server''s '
                 'defaults (tcp_keepalives_idle etc.); see migration 020', current_database();
END;
$$;
