-- Timestamps the pipeline computes with must be finite and within Python's datetime range
-- (the hostile-input tests found '-infinity' source rows and 'infinity' / year-9999 cursors
-- breaking every sensor, because drivers cannot load them).

-- A source row stamped -infinity is never a frontier.
CREATE OR REPLACE FUNCTION agg_source_frontier(
    p_symbol text, p_source_timeframe text, p_as_of timestamptz
) RETURNS timestamptz
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN p_source_timeframe = '1m' THEN (
        SELECT b.ts_utc FROM data_bars b
        WHERE b.canonical_symbol = p_symbol AND b.timeframe = '1m' AND b.ts_utc <= p_as_of
          AND isfinite(b.ts_utc)
          AND NOT b.is_partial
          AND agg_bar_is_valid(b.open, b.high, b.low, b.close, b.vol, b.vwap, b.trade_count,
                               b.ts_utc, interval '1 minute')
        ORDER BY b.ts_utc DESC LIMIT 1)
    ELSE (
        SELECT d.ts_utc FROM derived_data_bars d
        WHERE d.canonical_symbol = p_symbol AND d.timeframe = p_source_timeframe
          AND d.deleted_at IS NULL AND d.ts_utc <= p_as_of AND isfinite(d.ts_utc)
        ORDER BY d.ts_utc DESC LIMIT 1)
    END
$$;

-- Cursors and start dates stay in a sane range: no 'infinity' sentinels to park a task
-- (set enabled = false for that). NOT VALID: existing rows are reported by the
-- cursor_not_ahead check rather than failing this migration.
ALTER TABLE data_agg_state
    ADD CONSTRAINT data_agg_state_cursor_range CHECK (
        last_agg_bar_ts_utc IS NULL
        OR (last_agg_bar_ts_utc >= '1900-01-01 00:00:00+00'
            AND last_agg_bar_ts_utc < '9000-01-01 00:00:00+00')) NOT VALID,
    ADD CONSTRAINT data_agg_state_start_range CHECK (
        agg_start_utc >= '1900-01-01 00:00:00+00'
        AND agg_start_utc < '9000-01-01 00:00:00+00') NOT VALID;
