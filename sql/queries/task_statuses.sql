-- Whether each of many symbols' tasks of one timeframe runs: enabled, and its status (a
-- symbol without a row has no task for that timeframe).
SELECT canonical_symbol, enabled, status
FROM data_agg_state
WHERE timeframe = %(timeframe)s AND canonical_symbol = ANY (%(symbols)s::text[])
