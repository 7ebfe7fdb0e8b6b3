-- The days of many tasks of one timeframe, each overlapping its [start, end), whose 1m rows
-- changed after their last materialisation: `fingerprint`, the fingerprint over the span it
-- covered differs from the recorded one (what the reconciliation looks for: changes the
-- capture may have missed), or `captured`, a change recorded by migration 012's capture is
-- pending. Late data the late-data sensor re-materialises. Run before a recomputation, which
-- records fingerprints of its own.
SELECT q.symbol, r.day, 'fingerprint' AS kind
FROM unnest(%(symbols)s::text[], %(starts)s::timestamptz[], %(ends)s::timestamptz[])
    AS q(symbol, start_at, end_at)
CROSS JOIN LATERAL (
    SELECT r.*
    FROM data_agg_source_days r
    WHERE r.canonical_symbol = q.symbol
      AND r.timeframe = %(timeframe)s
      AND r.covered_from < q.end_at
      AND r.final_through > q.start_at
      -- (days before the declared retention horizon are never re-read: contract 16)
      AND r.covered_from >= COALESCE((SELECT h.retained_from FROM data_agg_source_retention h
                                      WHERE h.source_timeframe = '1m'), '-infinity')
    OFFSET 0  -- per symbol through the primary key
) r
CROSS JOIN LATERAL agg_source_fingerprint(r.canonical_symbol, r.covered_from,
                                          r.final_through) now_fp
WHERE (now_fp.source_rows, now_fp.source_ingested_max, now_fp.source_ingested_sum)
      IS DISTINCT FROM (r.source_rows, r.source_ingested_max, r.source_ingested_sum)
UNION ALL
-- (a captured day only where it overlaps a span: a row stamped 'infinity' is captured on
-- day 'infinity', which no span reaches and Python cannot hold)
SELECT DISTINCT c.canonical_symbol, c.day, 'captured'
FROM unnest(%(symbols)s::text[], %(starts)s::timestamptz[], %(ends)s::timestamptz[])
    AS q(symbol, start_at, end_at)
JOIN data_agg_source_changes c
  ON c.canonical_symbol = q.symbol
 AND c.timeframe = '1m'
 AND c.seq > c.consumed_seq
 AND c.day >= (q.start_at AT TIME ZONE 'UTC')::date
 AND c.day < q.end_at AT TIME ZONE 'UTC'
