-- Per task of one timeframe: work pending (gap) and time since the last success.
SELECT canonical_symbol, cursor_ts, source_frontier_ts, gap, minutes_since_success,
       run_interval_minutes, aggregation_delay_seconds, enabled, status
FROM v_aggregation_frontier_health
WHERE timeframe = %(timeframe)s
  AND enabled
  AND status NOT IN ('disabled', 'retired')
  AND (%(symbols)s::text[] IS NULL OR canonical_symbol = ANY (%(symbols)s::text[]))
ORDER BY canonical_symbol
