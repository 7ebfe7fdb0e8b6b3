-- Failed materialisations of many tasks of one timeframe, each with its error (SPEC contract
-- 11). Transient failures are recorded but do not count; the third hard failure in a row
-- takes a mandatory task to hard_failed (it stays scheduled, and alerts) and an optional one
-- to disabled (no longer scheduled).
UPDATE data_agg_state s
SET last_attempted_at_utc = now(),
    last_error            = f.error,
    hard_fail_streak      = hard_fail_streak + CASE WHEN %(hard)s THEN 1 ELSE 0 END,
    status = CASE
        WHEN %(hard)s AND hard_fail_streak + 1 >= %(threshold)s AND status NOT IN ('retired')
            THEN CASE WHEN is_mandatory THEN 'hard_failed' ELSE 'disabled' END
        ELSE status END,
    enabled = CASE
        WHEN %(hard)s AND hard_fail_streak + 1 >= %(threshold)s AND NOT is_mandatory THEN false
        ELSE enabled END,
    next_run_at = now() + make_interval(mins => COALESCE(run_interval_minutes, 5))
FROM json_to_recordset(%(errors)s::json) AS f(symbol text, error text)
WHERE s.canonical_symbol = f.symbol AND s.timeframe = %(timeframe)s
RETURNING s.canonical_symbol, s.status, s.hard_fail_streak, s.enabled
