-- Per task of one timeframe: work pending (gap) and time since the last success. A task on a
-- calendar (window_calendar) gets its gap from the engine's windows (monitoring.freshness).
SELECT canonical_symbol, timeframe, cursor_ts, source_frontier_ts, gap, minutes_since_success,
       run_interval_minutes, aggregation_delay_seconds, enabled, status, cursor_status,
       window_calendar
FROM v_aggregation_frontier_health
WHERE timeframe = %(timeframe)s
  AND enabled
  AND status NOT IN ('disabled', 'retired')
  AND (%(symbols)s::text[] IS NULL OR canonical_symbol = ANY (%(symbols)s::text[]))
ORDER BY canonical_symbol
