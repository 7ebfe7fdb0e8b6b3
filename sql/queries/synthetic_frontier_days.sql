-- UTC days of synthetic series (migration 017) to build because their components moved past
-- what the index was built through (the frontier sensor's part of the planner):
--  * built_through: the newest built day's covered_through (data_agg_synthetic_inputs);
--  * due when some component has a usable 1m bar at or after it, and the index's 5m window
--    holding it (or a later one) is final at %(as_of)s, i.e. all its minutes can be built
--    (the symbol's 5m confirmation delay, as agg_build_synthetic_bars applies it): the index
--    is built a 5m window at a time, in step with the other symbols' new windows;
--  * never built: from the first minute every component has bars (not before the 5m task's
--    agg_start_utc), once all of them have some.
-- Only the series the pipeline builds (v_agg_synthetic_series: a live 5m task in this
-- environment). A few index probes per series.
WITH series AS (
    SELECT v.canonical_symbol, v.agg_start_utc, v.built_through,
           date_bin(interval '1 minute',
                    %(as_of)s::timestamptz
                    - make_interval(secs => greatest(v.aggregation_delay_seconds, 0)),
                    TIMESTAMPTZ '2000-01-01 00:00:00+00') AS hi
    FROM v_agg_synthetic_series v
),
progress AS (
    SELECT s.canonical_symbol, s.hi,
           COALESCE(s.built_through,
                    CASE WHEN legs.first_ts IS NOT NULL
                         THEN greatest(legs.first_ts, s.agg_start_utc) END) AS built_through,
           legs.newest_ts
    FROM series s
    CROSS JOIN LATERAL (
        SELECT max(agg_source_frontier(c.component, '1m', %(as_of)s)) AS newest_ts,
               CASE WHEN count(f.ts_utc) = count(*) THEN max(f.ts_utc) END AS first_ts
        FROM data_agg_synthetic_components c
        LEFT JOIN LATERAL (
            SELECT b.ts_utc FROM data_bars b
            WHERE b.canonical_symbol = c.component AND b.timeframe = '1m' AND isfinite(b.ts_utc)
            ORDER BY b.ts_utc
            LIMIT 1) f ON true
        WHERE c.canonical_symbol = s.canonical_symbol
    ) legs
)
SELECT p.canonical_symbol, (g.day AT TIME ZONE 'UTC')::date AS day
FROM progress p
CROSS JOIN LATERAL generate_series(
    date_bin(interval '24 hours', p.built_through, TIMESTAMPTZ '2000-01-01 00:00:00+00'),
    p.hi - interval '1 microsecond', interval '24 hours') AS g(day)
WHERE p.newest_ts >= p.built_through
  AND date_bin(interval '5 minutes', p.hi, TIMESTAMPTZ '2000-01-01 00:00:00+00')
      > p.built_through
ORDER BY 1, 2
