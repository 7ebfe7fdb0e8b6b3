-- Minutes the demo feed may correct: of every active 5m bar of the symbol starting in
-- [%(since)s, %(until)s), its last source minute (whose close is the bar's close, so a
-- correction changes the bar).
SELECT max(b.ts_utc) AS ts_utc
FROM derived_data_bars d
JOIN data_bars b
  ON b.canonical_symbol = d.canonical_symbol AND b.timeframe = '1m'
 AND b.ts_utc >= d.ts_utc AND b.ts_utc < d.ts_utc + interval '5 minutes'
WHERE d.canonical_symbol = %(symbol)s AND d.timeframe = '5m' AND d.deleted_at IS NULL
  AND d.ts_utc >= %(since)s AND d.ts_utc < %(until)s
GROUP BY d.ts_utc
ORDER BY 1
