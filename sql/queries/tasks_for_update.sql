-- The task rows of many symbols of one timeframe; with {lock}, locked for the rest of the
-- transaction in symbol order (two runs over overlapping symbols never deadlock; a second
-- writer of the same (symbol, timeframe) waits: SPEC contract 13, with row locks, which unlike
-- advisory locks take no slot of the shared lock table however many symbols a run covers;
-- without, a read to find which tasks have anything to do). With each: the
-- symbol's registry settings, its source frontier now (newest usable source row), the end of
-- the fingerprint recorded for the cursor's UTC day (an incremental read continues it), and
-- the declared retention horizon of its source (contract 16). window_calendar: the calendar
-- its windows follow (NULL: the UTC grid; migration 021); source_restated_from: a source bar
-- written behind its cursor (migration 022).
SELECT
    s.canonical_symbol,
    s.source_timeframe,
    s.run_interval_minutes,
    s.aggregation_delay_seconds,
    s.agg_start_utc,
    s.last_agg_bar_ts_utc,
    s.derivation_version,
    s.forming_through,
    s.window_calendar,
    s.source_restated_from,
    r.agg_skip_zero_volume_ohlc,
    r.agg_forming_bars,
    agg_source_frontier(s.canonical_symbol, s.source_timeframe, %(as_of)s) AS frontier,
    fp.final_through AS fingerprint_through,
    h.retained_from
FROM data_agg_state s
JOIN core_asset_registry_all r USING (canonical_symbol)
LEFT JOIN data_agg_source_days fp
  ON fp.canonical_symbol = s.canonical_symbol
 AND fp.timeframe = s.timeframe
 AND fp.day = (s.last_agg_bar_ts_utc AT TIME ZONE 'UTC')::date
LEFT JOIN data_agg_source_retention h ON h.source_timeframe = s.source_timeframe
WHERE s.timeframe = %(timeframe)s
  AND s.canonical_symbol = ANY (%(symbols)s::text[])
ORDER BY s.canonical_symbol
{lock}
