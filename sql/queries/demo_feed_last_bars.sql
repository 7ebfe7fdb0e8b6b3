-- Where the demo feed continues each symbol: its newest 1m bar before %(before)s (time and
-- close). Symbols missing from the registry are left out (data_bars references it); a
-- symbol without bars has NULLs.
SELECT r.canonical_symbol, last_bar.ts_utc, last_bar.close
FROM unnest(%(symbols)s::text[]) AS wanted(symbol)
JOIN core_asset_registry_all r ON r.canonical_symbol = wanted.symbol
LEFT JOIN LATERAL (
    SELECT b.ts_utc, b.close FROM data_bars b
    WHERE b.canonical_symbol = wanted.symbol AND b.timeframe = '1m' AND b.ts_utc < %(before)s
    ORDER BY b.ts_utc DESC
    LIMIT 1) last_bar ON true
