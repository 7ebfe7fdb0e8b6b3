-- Successful materialisations of many tasks of one timeframe (contract 11: success resets
-- the fail streak and brings a hard_failed task back to idle; disabled and retired tasks
-- keep their status). Each cursor only moves forward (contract 7; the engine computed it).
UPDATE data_agg_state s
SET last_agg_bar_ts_utc     = greatest(s.last_agg_bar_ts_utc, u.cursor),
    last_attempted_at_utc   = now(),
    last_successful_at_utc  = now(),
    hard_fail_streak        = 0,
    last_error              = NULL,
    status                  = CASE WHEN s.status IN ('hard_failed', 'running') THEN 'idle'
                                   ELSE s.status END,
    total_runs              = s.total_runs + 1,
    total_bars_created      = s.total_bars_created + u.bars_inserted,
    total_bars_quality_poor = s.total_bars_quality_poor + u.bars_poor_quality,
    next_run_at             = now() + make_interval(mins => s.run_interval_minutes),
    -- the frontier its forming bar reflects (NULL when the symbol has none)
    forming_through         = u.forming_through,
    -- read again from before the source bar written behind its cursor (migration 022)
    source_restated_from    = CASE WHEN u.restated_read THEN NULL
                                   ELSE s.source_restated_from END
FROM json_to_recordset(%(tasks)s::json)
    AS u(symbol text, cursor timestamptz, bars_inserted bigint, bars_poor_quality bigint,
         forming_through timestamptz, restated_read boolean)
WHERE s.canonical_symbol = u.symbol AND s.timeframe = %(timeframe)s
