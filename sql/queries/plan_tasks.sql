-- Every schedulable task with what the planner needs: its cursor, its source frontier as
-- of %(as_of)s, the fields of the contract-12 order, whether it has been failing, and
-- whether its symbol keeps a forming bar (and the frontier that bar reflects).
-- Disabled (operator or automatic) and retired tasks are not scheduled; hard_failed
-- mandatory tasks are.
SELECT
    s.canonical_symbol,
    s.timeframe,
    s.source_timeframe,
    s.run_interval_minutes,
    s.aggregation_delay_seconds,
    -- behind from a source bar written behind its cursor (migration 022), if any
    least(s.last_agg_bar_ts_utc, s.source_restated_from) AS last_agg_bar_ts_utc,
    s.is_mandatory,
    s.task_priority,
    s.last_successful_at_utc,
    s.status,
    s.hard_fail_streak,
    s.window_calendar,
    r.agg_forming_bars AS forming,
    s.forming_through,
    agg_source_frontier(s.canonical_symbol, s.source_timeframe, %(as_of)s) AS frontier_ts
FROM data_agg_state s
JOIN core_asset_registry_all r USING (canonical_symbol)
WHERE s.enabled
  AND s.status NOT IN ('disabled', 'retired')
