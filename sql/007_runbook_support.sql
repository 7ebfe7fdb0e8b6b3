-- Support for the operator jobs (seed 000 runbook).

-- updated_at is bumped on every change unless the statement sets it itself: a restore from
-- a backup then brings rows back exactly, updated_at included.
CREATE OR REPLACE FUNCTION data_agg_state_before_update() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.updated_at IS NOT DISTINCT FROM OLD.updated_at THEN
        NEW.updated_at := now();
    END IF;
    -- An operator re-enabling an auto-disabled task gives it a fresh start from its cursor.
    IF NEW.enabled AND NOT OLD.enabled AND NEW.status = 'disabled' THEN
        NEW.status := 'idle';
        NEW.hard_fail_streak := 0;
    END IF;
    RETURN NEW;
END;
$$;

-- The health view gains the task settings the freshness rule needs (new columns go last).
CREATE OR REPLACE VIEW v_aggregation_frontier_health AS
SELECT
    s.canonical_symbol,
    s.timeframe,
    s.source_timeframe,
    s.is_mandatory,
    s.enabled,
    s.status,
    s.task_priority,
    s.last_agg_bar_ts_utc                              AS cursor_ts,
    f.frontier_ts                                      AS source_frontier_ts,
    w.frontier_window_end,
    w.frontier_window_end - s.last_agg_bar_ts_utc      AS gap,
    CASE
        WHEN s.run_interval_minutes IS NULL OR s.run_interval_minutes <= 0
             OR s.source_timeframe IS NULL              THEN 'BAD_CONFIG'
        WHEN s.last_agg_bar_ts_utc IS NULL              THEN 'NULL'
        WHEN f.frontier_ts IS NULL                      THEN 'NO_SOURCE'
        WHEN s.last_agg_bar_ts_utc > w.frontier_window_end THEN 'AHEAD'
        ELSE 'OK'
    END                                                AS cursor_status,
    s.total_runs,
    s.total_bars_created,
    round(s.total_bars_created::numeric / NULLIF(s.total_runs, 0), 2) AS bars_per_run,
    round((extract(epoch FROM now() - s.last_successful_at_utc) / 60)::numeric, 1)
                                                       AS minutes_since_success,
    s.last_successful_at_utc,
    s.hard_fail_streak,
    s.last_error,
    s.run_interval_minutes,
    s.aggregation_delay_seconds,
    s.agg_start_utc
FROM data_agg_state s
CROSS JOIN LATERAL (
    SELECT agg_source_frontier(s.canonical_symbol, s.source_timeframe, now()) AS frontier_ts
) f
CROSS JOIN LATERAL (
    -- CASE guards date_bin, which rejects a zero or negative stride (a misconfigured task).
    SELECT CASE WHEN s.run_interval_minutes > 0 THEN
        date_bin(make_interval(mins => s.run_interval_minutes), f.frontier_ts,
                 TIMESTAMPTZ '2000-01-01 00:00:00+00')
        + make_interval(mins => s.run_interval_minutes)
    END AS frontier_window_end
) w;

-- Backups made by the backup_agg_state job, newest first.
CREATE OR REPLACE VIEW v_agg_state_backups AS
SELECT c.relname AS backup_table,
       c.reltuples::bigint AS approximate_rows,
       obj_description(c.oid, 'pg_class') AS note
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r'
  AND n.nspname = current_schema()
  AND c.relname LIKE 'data\_agg\_state\_backup\_%'
ORDER BY c.relname DESC;
