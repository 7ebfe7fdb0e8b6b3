-- Symbols of an environment (seed 000/004: prod reads `active`, dev and test `test_active`)
-- with the optional timeframes each wants (agg_timeframes, and the seed schema's calc_15m,
-- calc_4h and calc_1d flags as 15m, 4h and 1d; NULL flags mean "off"), its calendar and asset
-- class (migration 021).
SELECT canonical_symbol,
       ARRAY(SELECT DISTINCT t FROM unnest(
                 COALESCE(agg_timeframes, '{{}}'::text[])
                 || CASE WHEN calc_15m THEN ARRAY['15m'] ELSE '{{}}'::text[] END
                 || CASE WHEN calc_4h  THEN ARRAY['4h']  ELSE '{{}}'::text[] END
                 || CASE WHEN calc_1d  THEN ARRAY['1d']  ELSE '{{}}'::text[] END) AS u(t)
             WHERE t IS NOT NULL ORDER BY t) AS optional_timeframes,
       agg_calendar,
       asset_class
FROM core_asset_registry_all
WHERE (CASE WHEN %(environment)s = 'prod' THEN active ELSE test_active END) IS TRUE
ORDER BY canonical_symbol
