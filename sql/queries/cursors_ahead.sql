-- Every task whose cursor is NULL or ahead of its source (the post-reset validation).
SELECT canonical_symbol, timeframe, cursor_ts, frontier_window_end, cursor_status,
       window_calendar  -- (a task on a calendar: the runbook judges it exactly)
FROM v_aggregation_frontier_health
WHERE cursor_status IN ('AHEAD', 'NULL')
ORDER BY canonical_symbol, timeframe
