-- The health-view rows of the tasks on a calendar (migration 021): the runbook recomputes
-- the end of each one's frontier window with the engine's calendar arithmetic.
SELECT canonical_symbol, timeframe, window_calendar, cursor_ts, source_frontier_ts,
       frontier_window_end, cursor_status
FROM v_aggregation_frontier_health
WHERE window_calendar IS NOT NULL
ORDER BY canonical_symbol, timeframe
