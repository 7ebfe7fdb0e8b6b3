SELECT enabled, status
FROM data_agg_state
WHERE canonical_symbol = %(symbol)s AND timeframe = %(timeframe)s
