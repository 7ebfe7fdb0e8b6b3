-- Soft-delete every active bar of one (symbol, timeframe) in [%(lo)s, %(hi)s): the first half
-- of a range rebuild. History rows stay.
UPDATE derived_data_bars
SET deleted_at = now(), updated_at = now()
WHERE canonical_symbol = %(symbol)s
  AND timeframe = %(timeframe)s
  AND deleted_at IS NULL
  AND ts_utc >= %(lo)s
  AND ts_utc < %(hi)s
