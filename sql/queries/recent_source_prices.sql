-- A symbol's newest final 1m source prices before %(before)s (at most %(limit)s rows, read
-- backwards along the unique index): `agg-pipeline history` prints derived prices to as many
-- decimals as these need. Every derived timeframe's prices are 1m prices (open, high, low,
-- close only pick among them), so the 1m rows say the precision whatever the timeframe.
SELECT b.open, b.high, b.low, b.close
FROM data_bars b
WHERE b.canonical_symbol = %(symbol)s AND b.timeframe = '1m' AND b.ts_utc < %(before)s
  AND NOT b.is_partial
ORDER BY b.ts_utc DESC
LIMIT %(limit)s
