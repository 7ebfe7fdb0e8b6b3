-- The task row of one (symbol, timeframe), locked for the rest of the transaction, with the
-- symbol's registry settings.
SELECT
    s.source_timeframe,
    s.run_interval_minutes,
    s.aggregation_delay_seconds,
    s.agg_start_utc,
    s.last_agg_bar_ts_utc,
    s.derivation_version,
    s.enabled,
    s.status,
    r.agg_skip_zero_volume_ohlc,
    r.agg_forming_bars
FROM data_agg_state s
JOIN core_asset_registry_all r USING (canonical_symbol)
WHERE s.canonical_symbol = %(symbol)s AND s.timeframe = %(timeframe)s
FOR UPDATE OF s
