-- Registry rows for demo symbols (seed 004, part D), with the calendar and optional
-- timeframes of migration 021 (%(timeframes)s: comma-separated names, or NULL). Existing rows
-- are left alone.
INSERT INTO core_asset_registry_all (
    canonical_symbol, provider_ticker, asset_class, source, active, test_active, ingest_class,
    base_timeframe, is_sparse, is_contract, expected_update_seconds, calc_15m, calc_4h, calc_1d,
    agg_calendar, agg_timeframes, notes)
SELECT s, t, c, 'demo', true, true, i, '1m', false, false, 60, false, false, false,
       cal, string_to_array(tfs, ','), 'agg_pipeline demo data'
FROM unnest(%(symbols)s::text[], %(tickers)s::text[], %(classes)s::text[],
            %(ingest_classes)s::text[], %(calendars)s::text[], %(timeframes)s::text[])
     AS r(s, t, c, i, cal, tfs)
ON CONFLICT (canonical_symbol) DO NOTHING
