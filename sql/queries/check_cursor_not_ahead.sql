-- Tasks of one timeframe whose cursor is NULL or past the end of the window holding the
-- newest source row (SPEC, corrected AHEAD rule), within the check's scope. For a task on a
-- calendar the caller recomputes the window's end (health.on_calendar).
SELECT canonical_symbol, timeframe, cursor_ts, source_frontier_ts, frontier_window_end,
       cursor_status, window_calendar
FROM v_aggregation_frontier_health
WHERE timeframe = %(timeframe)s
  AND status <> 'retired'
  AND (%(symbols)s::text[] IS NULL OR canonical_symbol = ANY (%(symbols)s::text[]))
ORDER BY canonical_symbol
