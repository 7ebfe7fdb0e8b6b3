-- The synthetic series the pipeline builds (v_agg_synthetic_series, migration 017), of the
-- given symbols (NULL: all of them).
SELECT v.canonical_symbol
FROM v_agg_synthetic_series v
WHERE %(symbols)s::text[] IS NULL OR v.canonical_symbol = ANY (%(symbols)s::text[])
