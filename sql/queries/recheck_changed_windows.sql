-- Inside a rolled-back recomputation of many tasks of one timeframe: the windows it wrote in
-- each [start, end), i.e. the bars that did not match their source.
SELECT q.symbol, d.ts_utc,
       CASE WHEN d.deleted_at = now() THEN 'would be soft-deleted'
            WHEN d.created_at = now() THEN 'missing'
            ELSE 'differs' END AS problem
FROM unnest(%(symbols)s::text[], %(starts)s::timestamptz[], %(ends)s::timestamptz[])
    AS q(symbol, start_at, end_at)
CROSS JOIN LATERAL (
    SELECT d.ts_utc, d.deleted_at, d.created_at
    FROM derived_data_bars d
    WHERE d.canonical_symbol = q.symbol
      AND d.timeframe = %(timeframe)s
      AND d.ts_utc >= q.start_at AND d.ts_utc < q.end_at
      AND (d.updated_at = now() OR d.deleted_at = now())
      AND (d.deleted_at IS NULL OR d.deleted_at = now())
    OFFSET 0  -- per symbol through its indexes
) d
ORDER BY 1, 2
