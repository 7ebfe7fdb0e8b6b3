-- Every schedulable task with what the planner needs: its cursor, its source frontier as
-- of %(as_of)s, the fields of the contract-12 order, whether it has been failing, and
-- whether its symbol keeps a forming bar (and the frontier that bar reflects).
-- Disabled (operator or automatic) and retired tasks are not scheduled; hard_failed
-- mandatory tasks are.
-- frontier_window_rows (SPEC contract 6: a complete window is final at once): on the UTC
-- grid, when the frontier is the last source bar of its window (%(source_minutes)s: the
-- source bar's length per target timeframe), the usable source bars of that window, as the
-- engine counts them (valid, final, active); the planner compares them with the window's
-- expected count. NULL otherwise (a window still filling, or a calendar's windows).
SELECT
    s.canonical_symbol,
    s.timeframe,
    s.source_timeframe,
    s.run_interval_minutes,
    s.aggregation_delay_seconds,
    -- behind from a source bar written behind its cursor (migration 022), if any
    least(s.last_agg_bar_ts_utc, s.source_restated_from) AS last_agg_bar_ts_utc,
    s.is_mandatory,
    s.task_priority,
    s.last_successful_at_utc,
    s.status,
    s.hard_fail_streak,
    s.window_calendar,
    r.agg_forming_bars AS forming,
    s.forming_through,
    f.frontier_ts,
    CASE WHEN s.window_calendar IS NULL AND s.run_interval_minutes > 0
              AND f.frontier_ts + make_interval(mins => src.minutes) >= w.end_ts THEN
        CASE WHEN s.source_timeframe = '1m' THEN (
            SELECT count(*) FROM data_bars b
            WHERE b.canonical_symbol = s.canonical_symbol AND b.timeframe = '1m'
              AND b.ts_utc >= w.end_ts - make_interval(mins => s.run_interval_minutes)
              AND b.ts_utc < w.end_ts
              AND NOT b.is_partial
              AND agg_bar_is_valid(b.open, b.high, b.low, b.close, b.vol, b.vwap,
                                   b.trade_count, b.ts_utc, interval '1 minute'))
        ELSE (
            SELECT count(*) FROM derived_data_bars d
            WHERE d.canonical_symbol = s.canonical_symbol AND d.timeframe = s.source_timeframe
              AND d.ts_utc >= w.end_ts - make_interval(mins => s.run_interval_minutes)
              AND d.ts_utc < w.end_ts
              AND d.deleted_at IS NULL AND NOT d.is_partial
              AND agg_bar_is_valid(d.open, d.high, d.low, d.close, d.vol, d.vwap,
                                   d.trade_count, d.ts_utc,
                                   make_interval(mins => src.minutes)))
        END
    END AS frontier_window_rows
FROM data_agg_state s
JOIN core_asset_registry_all r USING (canonical_symbol)
CROSS JOIN LATERAL (
    SELECT agg_source_frontier(s.canonical_symbol, s.source_timeframe, %(as_of)s) AS frontier_ts
    -- a planner fence: without it the call is copied into each use below (the window's end,
    -- the count's two index bounds) and runs four times per task
    OFFSET 0
) f
CROSS JOIN LATERAL (
    SELECT (%(source_minutes)s::jsonb ->> s.timeframe)::integer AS minutes
) src
-- (CASE guards date_bin, which rejects a zero or negative stride: a misconfigured task)
CROSS JOIN LATERAL (
    SELECT CASE WHEN s.run_interval_minutes > 0 THEN
               date_bin(make_interval(mins => s.run_interval_minutes), f.frontier_ts,
                        TIMESTAMPTZ '2000-01-01 00:00:00+00')
               + make_interval(mins => s.run_interval_minutes)
           END AS end_ts
) w
WHERE s.enabled
  AND s.status NOT IN ('disabled', 'retired')
