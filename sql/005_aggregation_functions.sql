-- Rules shared by the engine, the sensors, the monitoring view and the asset checks.

-- A source bar that may take part in a roll-up. Anything else (NULL/NaN/infinite/non-positive
-- prices, high < low, open or close outside [low, high], negative or non-finite volume,
-- a timestamp off its timeframe's grid) is excluded and counted, never aggregated.
-- NaN sorts above every number in PostgreSQL, so "< 'Infinity'" rejects NaN as well.
-- Plain SQL and IMMUTABLE so the planner inlines it into the aggregation scan.
CREATE OR REPLACE FUNCTION agg_bar_is_valid(
    p_open double precision, p_high double precision, p_low double precision,
    p_close double precision, p_vol double precision, p_vwap double precision,
    p_trade_count integer, p_ts timestamptz, p_step interval
) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT COALESCE(
        p_low > 0 AND p_high < 'Infinity'::double precision
        AND p_low <= p_open AND p_open <= p_high
        AND p_low <= p_close AND p_close <= p_high
        AND (p_vol IS NULL OR (p_vol >= 0 AND p_vol < 'Infinity'::double precision))
        AND (p_vwap IS NULL OR (p_vwap > 0 AND p_vwap < 'Infinity'::double precision))
        AND (p_trade_count IS NULL OR p_trade_count >= 0)
        AND date_bin(p_step, p_ts, TIMESTAMPTZ '2000-01-01 00:00:00+00') = p_ts,
        false)
$$;

-- Equal, or both NULL, or within 1e-12 relative: sums of floats can differ in their last
-- bits with summation order, and such a difference is not a change of the bar.
CREATE OR REPLACE FUNCTION agg_same_float(a double precision, b double precision)
RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE
        WHEN a IS NULL OR b IS NULL THEN a IS NULL AND b IS NULL
        ELSE a = b OR abs(a - b) <= 1e-12 * greatest(abs(a), abs(b))
    END
$$;

-- Newest usable source timestamp at or before p_as_of: the frontier. 1m sources live in
-- data_bars, every other source timeframe in derived_data_bars (active rows). Rows stamped
-- after p_as_of (a bar "in 2099") never move the frontier.
CREATE OR REPLACE FUNCTION agg_source_frontier(
    p_symbol text, p_source_timeframe text, p_as_of timestamptz
) RETURNS timestamptz
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN p_source_timeframe = '1m' THEN (
        SELECT b.ts_utc FROM data_bars b
        WHERE b.canonical_symbol = p_symbol AND b.timeframe = '1m' AND b.ts_utc <= p_as_of
          AND NOT b.is_partial
          AND agg_bar_is_valid(b.open, b.high, b.low, b.close, b.vol, b.vwap, b.trade_count,
                               b.ts_utc, interval '1 minute')
        ORDER BY b.ts_utc DESC LIMIT 1)
    ELSE (
        SELECT d.ts_utc FROM derived_data_bars d
        WHERE d.canonical_symbol = p_symbol AND d.timeframe = p_source_timeframe
          AND d.deleted_at IS NULL AND d.ts_utc <= p_as_of
        ORDER BY d.ts_utc DESC LIMIT 1)
    END
$$;

-- What each materialisation read from data_bars, per UTC day it fully covered: the
-- late-data sensor compares these fingerprints with the rows present now (SPEC contract 10).
-- Rows that land late, are corrected (ingested_at bumped) or commit after a run began all
-- change the fingerprint of their day.
CREATE TABLE IF NOT EXISTS data_agg_source_days (
    canonical_symbol    text NOT NULL,
    timeframe           text NOT NULL,
    day                 date NOT NULL,
    covered_from        timestamptz NOT NULL,
    final_through       timestamptz NOT NULL,
    source_rows         bigint NOT NULL,
    source_ingested_max timestamptz,
    source_ingested_sum numeric NOT NULL,
    materialized_at     timestamptz NOT NULL,
    PRIMARY KEY (canonical_symbol, timeframe, day),
    FOREIGN KEY (canonical_symbol, timeframe)
        REFERENCES data_agg_state (canonical_symbol, timeframe) ON DELETE CASCADE
);
