-- Record each configured (timeframe, version)'s definition the first time it is seen, and
-- return what is recorded for them: the registry sync refuses a definition changed under a
-- version already recorded (migration 021).
WITH configured AS (
    SELECT *
    FROM unnest(%(timeframes)s::text[], %(versions)s::integer[], %(definitions)s::jsonb[])
         AS c(timeframe, version, definition)
),
inserted AS (
    INSERT INTO agg_timeframe_versions (timeframe, version, definition)
    SELECT timeframe, version, definition FROM configured
    ON CONFLICT (timeframe, version) DO NOTHING
)
SELECT c.timeframe, c.version, COALESCE(v.definition, c.definition) AS recorded
FROM configured c
LEFT JOIN agg_timeframe_versions v USING (timeframe, version)
ORDER BY 1
