-- Of the runbook's named timeframes, those some task has (a selection by timeframe alone
-- that no task has would change nothing: refused).
SELECT DISTINCT t.timeframe
FROM data_agg_state t
WHERE t.timeframe = ANY (%(timeframes)s::text[])
