-- Bring data_agg_state back to a backup table ({backup}): rows that differ are upserted with
-- every column (updated_at included), rows absent from the backup are deleted.
WITH restored AS (
    INSERT INTO data_agg_state AS s ({columns})
    SELECT {columns} FROM {backup}
    ON CONFLICT (canonical_symbol, timeframe) DO UPDATE SET ({columns}) = ROW({excluded})
    -- rows equal to their backup are left alone (an update would bump updated_at)
    WHERE ROW({current}) IS DISTINCT FROM ROW({excluded})
    RETURNING 1
),
removed AS (
    DELETE FROM data_agg_state s
    WHERE NOT EXISTS (SELECT 1 FROM {backup} b
                      WHERE b.canonical_symbol = s.canonical_symbol
                        AND b.timeframe = s.timeframe)
    RETURNING 1
)
SELECT (SELECT count(*) FROM restored) AS restored, (SELECT count(*) FROM removed) AS removed
