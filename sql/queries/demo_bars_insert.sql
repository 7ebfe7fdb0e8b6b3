-- Move staged demo bars into data_bars; rows already present are kept as they are.
INSERT INTO data_bars (
    canonical_symbol, provider_ticker, timeframe, ts_utc, open, high, low, close, vol, vwap,
    trade_count, is_partial, source, ingested_at, raw)
SELECT %(symbol)s, NULL, '1m', ts_utc, open, high, low, close, vol, vwap, trade_count,
       false, 'demo', ingested_at, '{{}}'::jsonb
FROM demo_bars_stage
ON CONFLICT (canonical_symbol, timeframe, ts_utc) DO NOTHING
