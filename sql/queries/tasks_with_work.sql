-- Which of many tasks of one timeframe an incremental (live) request can change: a source
-- row at or after where it would read ({source_table}, from the cursor, the request's start
-- and agg_start_utc) in a window that has ended (only those can be final), or a newer row
-- with windows final by the delay before it (the cursor moves over empty ones), or a forming
-- bar to refresh (its source frontier moved past forming_through) or to remove (the symbol
-- opted out). Read without locks, one index probe per task: a tick in which most symbols
-- have nothing new touches none of their rows.
-- Tasks whose configuration cannot run are `busy` too, so the locked read reports them. A
-- requested symbol without a row here has no task.
SELECT s.canonical_symbol,
       s.last_agg_bar_ts_utc IS NULL
       OR s.source_timeframe IS DISTINCT FROM %(source_timeframe)s
       OR s.run_interval_minutes IS DISTINCT FROM %(interval_minutes)s
       OR s.aggregation_delay_seconds IS NULL OR s.aggregation_delay_seconds < 0
       OR (NOT g.agg_forming_bars AND s.forming_through IS NOT NULL)
       -- a source bar written behind its cursor (migration 022)
       OR s.source_restated_from < s.last_agg_bar_ts_utc
       OR (g.agg_forming_bars AND s.forming_through IS DISTINCT FROM
           agg_source_frontier(s.canonical_symbol, s.source_timeframe, %(as_of)s))
       OR (n.next_ts IS NOT NULL AND (
           -- rows in windows that have ended: bars to write
           n.next_ts < least(r.end_at, e.ended)
           -- or newer rows and windows final by the delay behind them: the cursor passes
           -- over empty windows (contract 8)
           OR (s.last_agg_bar_ts_utc >= r.start_at
               AND s.last_agg_bar_ts_utc < least(r.end_at, e.final_by_delay)))) AS busy,
       s.last_agg_bar_ts_utc,
       s.derivation_version
FROM json_to_recordset(%(requests)s::json) AS r(symbol text, start_at timestamptz,
                                                end_at timestamptz)
JOIN data_agg_state s ON s.canonical_symbol = r.symbol AND s.timeframe = %(timeframe)s
JOIN core_asset_registry_all g ON g.canonical_symbol = s.canonical_symbol
-- the first source row at or after where the request would read, up to now
LEFT JOIN LATERAL (
    SELECT b.ts_utc AS next_ts
    FROM {source_table} b
    WHERE b.canonical_symbol = s.canonical_symbol
      AND b.timeframe = %(source_timeframe)s
      AND b.ts_utc >= greatest(s.last_agg_bar_ts_utc, r.start_at, s.agg_start_utc)
      AND b.ts_utc <= %(as_of)s
      {active_only}
    ORDER BY b.ts_utc
    LIMIT 1
) n ON true
-- the first window not ended, and the first not final by the delay (a task on a calendar:
-- its calendar's first window not ended, from %(edges)s, calendar -> instant, computed by the
-- engine; the delay is not applied there, which only counts a few more tasks as busy)
CROSS JOIN LATERAL (
    SELECT CASE WHEN s.window_calendar IS NULL
                THEN date_bin(%(step)s::interval, %(as_of)s,
                              TIMESTAMPTZ '2000-01-01 00:00:00+00')
                ELSE (%(edges)s::jsonb ->> s.window_calendar)::timestamptz END AS ended,
           CASE WHEN s.window_calendar IS NULL
                THEN date_bin(%(step)s::interval,
                              %(as_of)s - make_interval(secs => s.aggregation_delay_seconds),
                              TIMESTAMPTZ '2000-01-01 00:00:00+00')
                ELSE (%(edges)s::jsonb ->> s.window_calendar)::timestamptz END
               AS final_by_delay
) e
