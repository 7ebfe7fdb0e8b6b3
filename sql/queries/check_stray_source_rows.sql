-- Rows of data_bars the pipeline never reads (a timeframe other than the ladder's root,
-- 1m), per symbol and timeframe (migration 015), for the symbols in scope.
SELECT canonical_symbol, timeframe, rows, first_ts_utc, last_ts_utc, last_ingested_at
FROM v_stray_source_rows
WHERE (%(symbols)s::text[] IS NULL OR canonical_symbol = ANY (%(symbols)s::text[]))
ORDER BY canonical_symbol, timeframe
