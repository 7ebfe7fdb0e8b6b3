-- Active bars earlier than their task's agg_start_utc (SPEC contract 5: never).
SELECT s.canonical_symbol, s.agg_start_utc, b.bars, b.first_ts
FROM data_agg_state s
CROSS JOIN LATERAL (
    SELECT count(*) AS bars, min(d.ts_utc) AS first_ts
    FROM derived_data_bars d
    WHERE d.canonical_symbol = s.canonical_symbol
      AND d.timeframe = s.timeframe
      AND d.deleted_at IS NULL
      AND d.ts_utc < s.agg_start_utc
) b
WHERE s.timeframe = %(timeframe)s
  AND (%(symbols)s::text[] IS NULL OR s.canonical_symbol = ANY (%(symbols)s::text[]))
  AND b.bars > 0
ORDER BY s.canonical_symbol
