-- The days of one task, overlapping [%(start)s, %(end)s), whose 1m rows changed after their
-- last materialisation (the fingerprint over the span it covered differs from the recorded
-- one): late data the late-data sensor will re-materialise. Run before the check's
-- recomputation, which records fingerprints of its own.
SELECT r.day
FROM data_agg_source_days r
CROSS JOIN LATERAL agg_source_fingerprint(r.canonical_symbol, r.covered_from,
                                          r.final_through) now_fp
WHERE r.canonical_symbol = %(symbol)s
  AND r.timeframe = %(timeframe)s
  AND r.covered_from < %(end)s
  AND r.final_through > %(start)s
  AND (now_fp.source_rows, now_fp.source_ingested_max, now_fp.source_ingested_sum)
      IS DISTINCT FROM (r.source_rows, r.source_ingested_max, r.source_ingested_sum)
