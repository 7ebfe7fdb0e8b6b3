-- Built UTC days of synthetic series (migration 017) whose components changed since they
-- were built (the late-data sensor's part of the planner), with what changed (`kinds`).
-- An index day D reads each component over [D - max_fill_minutes, covered_through) and
-- recorded, per component, that span's fingerprint and the change seqs of the component's
-- days D and D - 1 (data_agg_synthetic_inputs):
--  * 'late rows': component rows that landed after %(since)s whose span's fingerprint
--    (agg_source_fingerprint) differs from the recorded one; a row near a day's end also
--    feeds the next day's forward-fill, so both days are compared. A built range's day
--    without a record (before the index's first built day) counts when it has rows.
--  * 'update' / 'delete' / 'truncate': a change recorded by migration 012's capture for the
--    component's day D (or D - 1) with a seq larger than the one the day saw. The changes
--    table is only read: its consumed_seq belongs to the component's own 5m task.
-- Rows and changes at or after what was built (covered_through) are new data, for the
-- frontier. Reads only recently landed rows (the ingested_at index) and the changes table.
WITH series AS (
    SELECT v.canonical_symbol, v.built_through,
           make_interval(mins => v.max_fill_minutes) AS fill,
           date_bin(interval '24 hours', v.agg_start_utc,
                    TIMESTAMPTZ '2000-01-01 00:00:00+00') AS first_day
    FROM v_agg_synthetic_series v
),
legs AS (
    SELECT s.*, c.component
    FROM series s
    JOIN data_agg_synthetic_components c ON c.canonical_symbol = s.canonical_symbol
    WHERE s.built_through IS NOT NULL
),
touched AS (
    SELECT DISTINCT l.canonical_symbol, l.component, l.fill, l.first_day, l.built_through,
           candidate.day
    FROM data_bars b
    JOIN legs l ON l.component = b.canonical_symbol
    CROSS JOIN LATERAL (VALUES
        (date_bin(interval '24 hours', b.ts_utc, TIMESTAMPTZ '2000-01-01 00:00:00+00')),
        (date_bin(interval '24 hours', b.ts_utc + l.fill, TIMESTAMPTZ '2000-01-01 00:00:00+00'))
    ) AS candidate(day)
    WHERE b.ingested_at > %(since)s
      AND b.timeframe = '1m'
      AND b.ts_utc <= %(as_of)s
      AND isfinite(b.ts_utc)  -- a '-infinity' sentinel row is no day
),
landed AS (
    SELECT t.canonical_symbol, (t.day AT TIME ZONE 'UTC')::date AS day,
           ARRAY['late rows'] AS kinds
    FROM touched t
    LEFT JOIN data_agg_synthetic_inputs i
      ON i.canonical_symbol = t.canonical_symbol
     AND i.day = (t.day AT TIME ZONE 'UTC')::date
     AND i.component = t.component
    CROSS JOIN LATERAL agg_source_fingerprint(
        t.component,
        COALESCE(i.covered_from, t.day - t.fill),
        COALESCE(i.covered_through, least(t.day + interval '24 hours', t.built_through))
    ) now_fp
    WHERE CASE
        WHEN i.day IS NULL THEN t.day >= t.first_day AND t.day < t.built_through
                                AND now_fp.source_rows > 0
        ELSE (now_fp.source_rows, now_fp.source_ingested_max, now_fp.source_ingested_sum)
             IS DISTINCT FROM (i.source_rows, i.source_ingested_max, i.source_ingested_sum)
    END
),
changed AS (
    SELECT l.canonical_symbol, candidate.day, c.kinds
    FROM data_agg_source_changes c
    JOIN legs l ON l.component = c.canonical_symbol AND c.timeframe = '1m'
    CROSS JOIN LATERAL (VALUES (c.day, false), (c.day + 1, true)) AS candidate(day, next_day)
    LEFT JOIN data_agg_synthetic_inputs i
      ON i.canonical_symbol = l.canonical_symbol
     AND i.day = candidate.day
     AND i.component = l.component
    WHERE isfinite(c.day)
      AND CASE
          WHEN i.day IS NULL THEN NOT candidate.next_day
                                  AND candidate.day >= (l.first_day AT TIME ZONE 'UTC')::date
                                  AND c.earliest_ts_utc < l.built_through
          WHEN candidate.next_day THEN c.seq > i.seen_seq_before
          ELSE c.seq > i.seen_seq AND c.earliest_ts_utc < i.covered_through
      END
)
SELECT canonical_symbol, day, kinds FROM landed
UNION ALL
SELECT canonical_symbol, day, kinds FROM changed
ORDER BY 1, 2
