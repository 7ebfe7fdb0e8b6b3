-- Active bars of one timeframe violating high >= max(open, close), low <= min(open, close),
-- prices finite and > 0 ('Infinity' bounds NaN too), within the check's scope.
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
        FROM (SELECT * FROM bad ORDER BY canonical_symbol, ts_utc LIMIT %(limit)s) b) AS sample
