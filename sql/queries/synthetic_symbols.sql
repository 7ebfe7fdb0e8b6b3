-- The synthetic series (migration 017) with a registry row of ingest_class 'B', of the given
-- symbols (NULL: all of them).
SELECT s.canonical_symbol
FROM data_agg_synthetic_series s
JOIN core_asset_registry_all r
  ON r.canonical_symbol = s.canonical_symbol AND r.ingest_class = 'B'
WHERE %(symbols)s::text[] IS NULL OR s.canonical_symbol = ANY (%(symbols)s::text[])
