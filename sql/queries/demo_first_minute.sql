-- The earliest 1m bar of the demo symbols (registry rows and bars with source 'demo'): where
-- `agg-pipeline dev` starts the day partitions. One index probe per symbol.
SELECT min(first_bar.ts_utc)
FROM core_asset_registry_all r
CROSS JOIN LATERAL (
    SELECT b.ts_utc FROM data_bars b
    WHERE b.canonical_symbol = r.canonical_symbol AND b.timeframe = '1m' AND b.source = 'demo'
    ORDER BY b.ts_utc
    LIMIT 1) first_bar
WHERE r.source = 'demo'
