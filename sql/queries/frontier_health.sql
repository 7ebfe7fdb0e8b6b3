-- One row per task of v_aggregation_frontier_health, plus its lag: how far the cursor is
-- behind `due_through`, the end of the newest window that is final now (contract 6). The
-- view's `gap` (end of the window holding the frontier minus the cursor) is not a lag: the
-- window holding the newest source row is usually still open, so a caught-up 5m task shows
-- 5 minutes and a caught-up 1h task an hour there.
--   due_through = the end of the frontier's window when that window is complete (every
--   expected source bar landed, none partial) or its confirmation delay has passed;
--   otherwise the last window boundary at least `aggregation_delay_seconds` old, and never
--   past the frontier's window. A cursor at or past it has nothing to do: caught up.
-- %(ladder_names)s / %(ladder_minutes)s: every timeframe's length in minutes (1m included),
-- from the ladder, for the expected number of source bars of a window. %(now)s: the instant
-- finality is judged at (NULL: now(); the view's own columns always use now()). A task on a
-- calendar (window_calendar) gets its due_through, lag and cursor status from the engine's
-- calendar arithmetic instead (health.py).
SELECT h.canonical_symbol, h.timeframe, h.status, h.enabled, h.cursor_ts, h.source_frontier_ts,
       h.gap, h.cursor_status, h.minutes_since_success, h.hard_fail_streak, h.bars_per_run,
       h.last_error, h.stray_source_rows, d.due_through, h.window_calendar,
       h.aggregation_delay_seconds, h.frontier_window_end, n.now AS judged_at,
       CASE WHEN h.cursor_ts IS NOT NULL AND d.due_through IS NOT NULL
            THEN greatest(d.due_through - h.cursor_ts, interval '0') END AS lag
FROM v_aggregation_frontier_health h
CROSS JOIN (SELECT COALESCE(%(now)s::timestamptz, now()) AS now) n
CROSS JOIN LATERAL (
    SELECT CASE WHEN h.run_interval_minutes > 0 AND h.aggregation_delay_seconds >= 0 THEN
               make_interval(mins => h.run_interval_minutes) END AS step,
           make_interval(secs => h.aggregation_delay_seconds) AS delay,
           h.run_interval_minutes / (%(ladder_minutes)s::int[])[
               array_position(%(ladder_names)s::text[], h.source_timeframe)] AS expected
) t
CROSS JOIN LATERAL (
    SELECT h.frontier_window_end - t.step AS start, h.frontier_window_end AS "end"
) w
-- the final source bars of the frontier's window: at most `expected` rows, by index
LEFT JOIN LATERAL (
    SELECT CASE WHEN h.source_timeframe = '1m' THEN (
        SELECT count(*) FROM data_bars b
        WHERE b.canonical_symbol = h.canonical_symbol AND b.timeframe = '1m'
          AND b.ts_utc >= w.start AND b.ts_utc < w."end" AND NOT b.is_partial
          AND agg_bar_is_valid(b.open, b.high, b.low, b.close, b.vol, b.vwap, b.trade_count,
                               b.ts_utc, interval '1 minute'))
    ELSE (
        SELECT count(*) FROM derived_data_bars s
        WHERE s.canonical_symbol = h.canonical_symbol AND s.timeframe = h.source_timeframe
          AND s.ts_utc >= w.start AND s.ts_utc < w."end" AND s.deleted_at IS NULL
          AND NOT s.is_partial)
    END AS landed
) c ON t.step IS NOT NULL AND w.start IS NOT NULL
CROSS JOIN LATERAL (
    SELECT CASE
        WHEN t.step IS NULL OR w."end" IS NULL THEN NULL
        WHEN c.landed >= t.expected OR n.now >= w."end" + t.delay THEN w."end"
        ELSE least(w.start, date_bin(t.step, n.now - t.delay,
                                     TIMESTAMPTZ '2000-01-01 00:00:00+00'))
    END AS due_through
) d
ORDER BY h.canonical_symbol, h.timeframe
