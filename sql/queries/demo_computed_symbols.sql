-- Of the demo's synthetic symbols %(symbols)s, those defined as synthetic series (migration
-- 017) whose every component is among the seeded symbols %(seeded)s: the pipeline computes
-- their bars, the demo writes none.
SELECT s.canonical_symbol
FROM data_agg_synthetic_series s
WHERE s.canonical_symbol = ANY (%(symbols)s::text[])
  AND NOT EXISTS (SELECT 1 FROM data_agg_synthetic_components c
                  WHERE c.canonical_symbol = s.canonical_symbol
                    AND c.component <> ALL (%(seeded)s::text[]))
