-- A late correction by the demo feed: a new close inside the bar's own [low, high] (the bar
-- stays valid), stamped with the time it lands. Returns the close before and after.
UPDATE data_bars b
SET close = b.low + (b.high - b.low) * %(fraction)s, ingested_at = %(now)s
FROM (SELECT id, close FROM data_bars
      WHERE canonical_symbol = %(symbol)s AND timeframe = '1m' AND ts_utc = %(ts)s
      FOR UPDATE) AS before
WHERE b.id = before.id
RETURNING before.close, b.close
