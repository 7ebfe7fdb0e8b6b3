-- Active bars of one timeframe violating high >= max(open, close), low <= min(open, close),
-- prices finite and > 0 ('Infinity' bounds NaN too), within the check's scope. The sample's
-- ts_utc is written in UTC (json would write it in the session's TimeZone); bars start on
-- whole minutes.
WITH scoped AS (
    SELECT canonical_symbol, ts_utc, open, high, low, close
    FROM derived_data_bars
    WHERE timeframe = %(timeframe)s
      AND deleted_at IS NULL
      AND (%(symbols)s::text[] IS NULL OR canonical_symbol = ANY (%(symbols)s::text[]))
      AND (%(start)s::timestamptz IS NULL OR ts_utc >= %(start)s)
      AND (%(end)s::timestamptz IS NULL OR ts_utc < %(end)s)
),
bad AS (
    SELECT * FROM scoped
    WHERE NOT COALESCE(
        low > 0 AND high < 'Infinity'::double precision
        AND open > 0 AND open < 'Infinity'::double precision
        AND close > 0 AND close < 'Infinity'::double precision
        AND high >= greatest(open, close) AND low <= least(open, close),
        false)
)
SELECT (SELECT count(*) FROM scoped) AS checked,
       (SELECT count(*) FROM bad) AS violations,
       (SELECT COALESCE(json_agg(b ORDER BY b.canonical_symbol, b.ts_utc), '[]'::json)
        FROM (SELECT bad.canonical_symbol,
                     to_char(bad.ts_utc AT TIME ZONE 'UTC',
                             'YYYY-MM-DD"T"HH24:MI:SS"+00:00"') AS ts_utc,
                     bad.open, bad.high, bad.low, bad.close
              FROM bad ORDER BY bad.canonical_symbol, bad.ts_utc LIMIT %(limit)s) b) AS sample
