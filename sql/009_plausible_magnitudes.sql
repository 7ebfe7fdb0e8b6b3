-- Valid source bars also have plausible magnitudes, so that no roll-up arithmetic can
-- overflow or underflow float8 or the integer trade_count column (found by the fuzz test:
-- one row with vol = 1e300 failed a whole range). Per source bar of `p_step`:
--   prices and vwap in [1e-12, 1e12]; volume 0 or in [1e-12, 1e15 per minute];
--   trade_count in [0, 1e6 per minute].
-- Rows outside are counted as invalid, like any other unusable row.
CREATE OR REPLACE FUNCTION agg_bar_is_valid(
    p_open double precision, p_high double precision, p_low double precision,
    p_close double precision, p_vol double precision, p_vwap double precision,
    p_trade_count integer, p_ts timestamptz, p_step interval
) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT COALESCE(
        p_low >= 1e-12 AND p_high <= 1e12
        AND p_low <= p_open AND p_open <= p_high
        AND p_low <= p_close AND p_close <= p_high
        AND (p_vol IS NULL OR p_vol = 0
             OR (p_vol >= 1e-12 AND p_vol <= 1e15 * extract(epoch FROM p_step) / 60))
        AND (p_vwap IS NULL OR (p_vwap >= 1e-12 AND p_vwap <= 1e12))
        AND (p_trade_count IS NULL
             OR (p_trade_count >= 0 AND p_trade_count <= 1e6 * extract(epoch FROM p_step) / 60))
        AND date_bin(p_step, p_ts, TIMESTAMPTZ '2000-01-01 00:00:00+00') = p_ts,
        false)
$$;
