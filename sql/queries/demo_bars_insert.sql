-- Move staged demo bars into data_bars; rows already present are kept as they are. The
-- stage is emptied as it is read, so several symbols can be written in one transaction.
WITH staged AS (DELETE FROM demo_bars_stage RETURNING *)
INSERT INTO data_bars (
    canonical_symbol, provider_ticker, timeframe, ts_utc, open, high, low, close, vol, vwap,
    trade_count, is_partial, source, ingested_at, raw)
SELECT %(symbol)s, NULL, '1m', ts_utc, open, high, low, close, vol, vwap, trade_count,
       false, 'demo', ingested_at, '{{}}'::jsonb
FROM staged
ON CONFLICT (canonical_symbol, timeframe, ts_utc) DO NOTHING
