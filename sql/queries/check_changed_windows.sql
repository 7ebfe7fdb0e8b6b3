-- Inside a check's rolled-back recomputation: the windows it wrote, i.e. the bars that
-- did not match their source.
SELECT ts_utc,
       CASE WHEN deleted_at = now() THEN 'would be soft-deleted'
            WHEN created_at = now() THEN 'missing'
            ELSE 'differs' END AS problem
FROM derived_data_bars
WHERE canonical_symbol = %(symbol)s
  AND timeframe = %(timeframe)s
  AND ts_utc >= %(start)s AND ts_utc < %(end)s
  AND (updated_at = now() OR deleted_at = now())
  AND (deleted_at IS NULL OR deleted_at = now())
ORDER BY ts_utc
