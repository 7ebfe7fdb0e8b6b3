-- UTC days whose data_bars rows no longer match what their last materialisation read
-- (SPEC contract 10). Candidates are the days of rows that landed after %(since)s; a day
-- is late when its fingerprint over the span that was final then [covered_from,
-- final_through) differs from the recorded one, or when it lies behind the task's cursor
-- and was never recorded. Rows at or after final_through are new data, not late data:
-- the frontier sensor handles them.
WITH touched AS (
    SELECT DISTINCT b.canonical_symbol,
           date_bin(interval '24 hours', b.ts_utc, TIMESTAMPTZ '2000-01-01 00:00:00+00') AS day
    FROM data_bars b
    WHERE b.ingested_at > %(since)s
      AND b.timeframe = '1m'
      AND b.ts_utc <= %(as_of)s
)
SELECT t.canonical_symbol,
       (t.day AT TIME ZONE 'UTC')::date AS day,
       now_fp.source_rows,
       now_fp.source_ingested_max,
       now_fp.source_ingested_sum
FROM touched t
JOIN data_agg_state s
  ON s.canonical_symbol = t.canonical_symbol
 AND s.timeframe = %(timeframe)s
 AND s.enabled
 AND s.status NOT IN ('disabled', 'retired')
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
ORDER BY t.canonical_symbol, day
