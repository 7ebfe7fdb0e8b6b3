SELECT canonical_symbol, timeframe, status, enabled, cursor_ts, source_frontier_ts, gap,
       cursor_status, minutes_since_success, hard_fail_streak, bars_per_run, last_error,
       stray_source_rows
FROM v_aggregation_frontier_health
ORDER BY canonical_symbol, timeframe
