-- Every version of one (symbol, timeframe)'s bars in [%(start)s, %(end)s), oldest first
-- (migration 014: agg_bar_revisions), or, with %(at)s, the versions current at that instant
-- (what a reader saw then).
SELECT v.ts_utc, v.open, v.high, v.low, v.close, v.vol, v.vwap, v.trade_count,
       v.source_candles, v.expected_candles, v.quality_score, v.derivation_version,
       v.valid_from, v.valid_to, v.change, v.reason, v.run_id
FROM agg_bar_revisions(%(symbol)s, %(timeframe)s, %(start)s, %(end)s) v
WHERE %(at)s::timestamptz IS NULL
   OR (v.valid_from <= %(at)s AND (v.valid_to IS NULL OR v.valid_to > %(at)s))
ORDER BY v.ts_utc, v.valid_from, v.valid_to NULLS LAST
