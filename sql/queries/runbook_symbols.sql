-- The runbook's named symbols, checked before anything changes: is each in the registry,
-- which timeframes has it tasks for (none: unknown to the pipeline), and which of those
-- have a NULL cursor (no range can be rebuilt on them). One row per name, in the order named.
SELECT n.symbol,
       EXISTS (SELECT 1 FROM core_asset_registry_all r
               WHERE r.canonical_symbol = n.symbol) AS registered,
       ARRAY(SELECT t.timeframe FROM data_agg_state t
             WHERE t.canonical_symbol = n.symbol ORDER BY t.timeframe) AS timeframes,
       ARRAY(SELECT t.timeframe FROM data_agg_state t
             WHERE t.canonical_symbol = n.symbol AND t.last_agg_bar_ts_utc IS NULL
             ORDER BY t.timeframe) AS null_cursors
FROM unnest(%(symbols)s::text[]) WITH ORDINALITY AS n(symbol, position)
ORDER BY n.position
