CREATE TEMP TABLE IF NOT EXISTS demo_bars_stage (
    ts_utc timestamptz, open double precision, high double precision,
    low double precision, close double precision, vol double precision,
    vwap double precision, trade_count integer, ingested_at timestamptz
) ON COMMIT DELETE ROWS
