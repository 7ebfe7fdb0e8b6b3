SELECT canonical_symbol, timeframe, hard_fail_streak, last_error, last_successful_at_utc
FROM data_agg_state
WHERE status = 'hard_failed'
ORDER BY canonical_symbol, timeframe
