-- The fingerprint of one symbol's 1m rows over [p_from, p_to): what a materialisation
-- records per UTC day in data_agg_source_days (rows, newest and summed ingested_at, in
-- integer microseconds), recomputed from the rows present now. The late-data sensor and
-- the matches_source check compare it with the recorded one. A single-SELECT SQL
-- function: the planner inlines it, so the (symbol, timeframe, ts_utc) index serves it.
CREATE OR REPLACE FUNCTION agg_source_fingerprint(
    p_symbol text, p_from timestamptz, p_to timestamptz,
    OUT source_rows bigint, OUT source_ingested_max timestamptz,
    OUT source_ingested_sum numeric
) RETURNS SETOF record
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT count(*),
           max(b.ingested_at),
           COALESCE(sum((date_part('epoch', b.ingested_at) * 1000000)::bigint), 0)::numeric
    FROM data_bars b
    WHERE b.canonical_symbol = p_symbol
      AND b.timeframe = '1m'
      AND b.ts_utc >= p_from
      AND b.ts_utc < p_to
$$;
