-- Tasks of one timeframe in a failure state: hard_failed, or disabled automatically.
SELECT canonical_symbol, is_mandatory, status, enabled, hard_fail_streak, last_error,
       last_successful_at_utc
FROM data_agg_state
WHERE timeframe = %(timeframe)s
  AND (status = 'hard_failed' OR status = 'disabled')
ORDER BY canonical_symbol
