-- Symbols of an environment (seed 000/004: prod reads `active`, dev and test `test_active`)
-- with their optional-timeframe flags. NULL flags mean "off".
SELECT canonical_symbol,
       COALESCE(calc_15m, false) AS calc_15m,
       COALESCE(calc_4h, false)  AS calc_4h,
       COALESCE(calc_1d, false)  AS calc_1d
FROM core_asset_registry_all
WHERE (CASE WHEN %(environment)s = 'prod' THEN active ELSE test_active END) IS TRUE
ORDER BY canonical_symbol
