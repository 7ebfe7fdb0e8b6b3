-- A successful materialisation (contract 11: success resets the fail streak and brings a
-- hard_failed task back to idle; disabled and retired tasks keep their status).
UPDATE data_agg_state
SET last_agg_bar_ts_utc     = %(cursor)s,
    last_attempted_at_utc   = now(),
    last_successful_at_utc  = now(),
    hard_fail_streak        = 0,
    last_error              = NULL,
    status                  = CASE WHEN status IN ('hard_failed', 'running') THEN 'idle'
                                   ELSE status END,
    total_runs              = total_runs + 1,
    total_bars_created      = total_bars_created + %(bars_inserted)s,
    total_bars_quality_poor = total_bars_quality_poor + %(bars_poor_quality)s,
    next_run_at             = now() + make_interval(mins => run_interval_minutes),
    -- the frontier its forming bar reflects (NULL when the symbol has none)
    forming_through         = %(forming_through)s
WHERE canonical_symbol = %(symbol)s AND timeframe = %(timeframe)s
