-- UTC days of the %(timeframe)s tasks (read from data_bars) already materialised whose source
-- rows changed since (SPEC contract 10), with what changed (`kinds`):
--  * 'late rows': rows that landed (by ingested_at) after %(since)s in a day whose
--    fingerprint over the span that was final then [covered_from, final_through) differs
--    from the recorded one, or that lies behind the task's cursor and was never recorded.
--  * 'update' / 'delete' / 'truncate': a change the capture triggers of migration 012
--    recorded for the day and the engine has not re-read yet (seq > consumed_seq), in a day
--    with a recorded fingerprint or behind the cursor.
-- Rows of days before the declared retention horizon are not looked at (contract 16). Rows or
-- changes at or after what was materialised (final_through, or the cursor) are new
-- data, not late data: the frontier sensor handles them. Both parts read only what changed,
-- from the ingested_at index and the pending-changes index, never the whole source.
WITH tasks AS (
    SELECT s.canonical_symbol, s.timeframe, s.source_timeframe, s.last_agg_bar_ts_utc
    FROM data_agg_state s
    WHERE s.timeframe = %(timeframe)s
      AND s.enabled
      AND s.status NOT IN ('disabled', 'retired')
),
touched AS (
    SELECT DISTINCT b.canonical_symbol,
           date_bin(interval '24 hours', b.ts_utc, TIMESTAMPTZ '2000-01-01 00:00:00+00') AS day
    FROM data_bars b
    WHERE b.ingested_at > %(since)s
      AND b.timeframe = '1m'
      AND b.ts_utc <= %(as_of)s
      AND isfinite(b.ts_utc)  -- a '-infinity' sentinel row is no day
      -- days before the declared retention horizon are never re-read (contract 16)
      AND b.ts_utc >= COALESCE((SELECT h.retained_from FROM data_agg_source_retention h
                                WHERE h.source_timeframe = '1m'), '-infinity')
),
landed AS (
    SELECT t.canonical_symbol, (t.day AT TIME ZONE 'UTC')::date AS day,
           ARRAY['late rows'] AS kinds
    FROM touched t
    JOIN tasks s ON s.canonical_symbol = t.canonical_symbol
    LEFT JOIN data_agg_source_days r
      ON r.canonical_symbol = t.canonical_symbol
     AND r.timeframe = s.timeframe
     AND r.day = (t.day AT TIME ZONE 'UTC')::date
    CROSS JOIN LATERAL agg_source_fingerprint(
        t.canonical_symbol,
        COALESCE(r.covered_from, t.day),
        COALESCE(r.final_through, least(t.day + interval '24 hours', s.last_agg_bar_ts_utc))
    ) now_fp
    WHERE CASE
        WHEN r.day IS NULL THEN t.day < s.last_agg_bar_ts_utc AND now_fp.source_rows > 0
        ELSE (now_fp.source_rows, now_fp.source_ingested_max, now_fp.source_ingested_sum)
             IS DISTINCT FROM (r.source_rows, r.source_ingested_max, r.source_ingested_sum)
    END
),
changed AS (
    SELECT c.canonical_symbol, c.day, c.kinds
    FROM data_agg_source_changes c
    JOIN tasks s
      ON s.canonical_symbol = c.canonical_symbol
     AND s.source_timeframe = c.timeframe
    LEFT JOIN data_agg_source_days r
      ON r.canonical_symbol = c.canonical_symbol
     AND r.timeframe = s.timeframe
     AND r.day = c.day
    WHERE c.seq > c.consumed_seq
      AND isfinite(c.day)
      AND c.earliest_ts_utc < greatest(r.final_through, s.last_agg_bar_ts_utc)
)
SELECT canonical_symbol, day, kinds FROM landed
UNION ALL
SELECT canonical_symbol, day, kinds FROM changed
ORDER BY 1, 2
