-- Soft-delete the active bars of many symbols of one timeframe, each in its [lo, hi): the
-- first half of a range rebuild. The rows stay, and each bar's version until now goes to
-- derived_bar_revisions (change 'rebuilt'). Days whose source retention removed keep their
-- bars (contract 16, agg_source_day_gone): a rebuild cannot recompute them. Returns, per
-- symbol, how many bars were soft-deleted.
WITH req AS (
    SELECT * FROM unnest(%(symbols)s::text[], %(lo)s::timestamptz[], %(hi)s::timestamptz[])
        AS r(symbol, lo, hi)
),
old AS MATERIALIZED (
    SELECT r.symbol, d.ctid AS bar_ctid, d.*
    FROM req r
    CROSS JOIN LATERAL (
        SELECT d.*, d.ctid
        FROM derived_data_bars d
        WHERE d.canonical_symbol = r.symbol
          AND d.timeframe = %(timeframe)s
          AND d.deleted_at IS NULL
          AND d.ts_utc >= r.lo
          AND d.ts_utc < r.hi
        OFFSET 0  -- per symbol through the (symbol, timeframe, ts_utc) index
    ) d
    WHERE NOT (%(retention_applies)s AND NOT d.is_partial
               AND agg_source_day_gone(r.symbol, %(timeframe)s,
                                       (d.ts_utc AT TIME ZONE 'UTC')::date))
),
revised AS (
    INSERT INTO derived_bar_revisions (
        bar_id, canonical_symbol, timeframe, ts_utc, open, high, low, close, vol, vwap,
        trade_count, source_timeframe, source_candles, expected_candles, quality_score,
        derivation_version, valid_from, valid_to, change, reason, run_id)
    SELECT o.id, o.canonical_symbol, o.timeframe, o.ts_utc, o.open, o.high, o.low, o.close,
           o.vol, o.vwap, o.trade_count, o.source_timeframe, o.source_candles,
           o.expected_candles, o.quality_score, o.derivation_version, o.updated_at, now(),
           'rebuilt', %(reason)s, %(run_id)s
    FROM old o
    WHERE NOT o.is_partial
),
withdrawn AS (
    UPDATE derived_data_bars d
    SET deleted_at = now(), updated_at = now()
    WHERE d.ctid = ANY (ARRAY(SELECT bar_ctid FROM old))
)
SELECT symbol, count(*) FROM old GROUP BY symbol
