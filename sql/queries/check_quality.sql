-- Share of poor-quality final bars (quality_score <= 0) per symbol over the last %(days)s
-- days (of 24 hours: interval '1 day' on a timestamptz follows the session's DST).
SELECT canonical_symbol,
       count(*) AS bars,
       count(*) FILTER (WHERE quality_score <= 0) AS poor
FROM derived_data_bars
WHERE timeframe = %(timeframe)s
  AND deleted_at IS NULL
  AND NOT is_partial  -- a forming bar has no quality verdict yet
  AND ts_utc >= now() - %(days)s * interval '24 hours'
  AND (%(symbols)s::text[] IS NULL OR canonical_symbol = ANY (%(symbols)s::text[]))
GROUP BY canonical_symbol
ORDER BY canonical_symbol
