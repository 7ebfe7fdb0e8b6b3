-- One row per task: cursor against source frontier (seed 000, migration 006), with the
-- corrected AHEAD rule: the cursor is the start of the next window, so a healthy cursor
-- sits at the END of the window holding the newest source row. AHEAD means
-- cursor > floor(frontier to the interval) + interval, not cursor > frontier.
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
    s.last_error
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
