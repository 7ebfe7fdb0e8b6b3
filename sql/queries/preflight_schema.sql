-- The database objects the pipeline relies on, present or not.
SELECT item, present
FROM (VALUES
    ('function agg_bar_is_valid', to_regprocedure(
        'agg_bar_is_valid(double precision, double precision, double precision, '
        'double precision, double precision, double precision, integer, '
        'timestamp with time zone, interval)') IS NOT NULL),
    ('function agg_source_frontier', to_regprocedure(
        'agg_source_frontier(text, text, timestamp with time zone)') IS NOT NULL),
    ('view v_aggregation_frontier_health',
        to_regclass('v_aggregation_frontier_health') IS NOT NULL),
    ('index data_bars_ingested_at_idx', to_regclass('data_bars_ingested_at_idx') IS NOT NULL),
    ('index derived_unique_symbol_tf_ts', to_regclass('derived_unique_symbol_tf_ts') IS NOT NULL)
) AS objects(item, present)
