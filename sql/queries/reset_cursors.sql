-- Put the cursors of the selected tasks where they belong: a NULL cursor restarts after the
-- newest active bar (or at agg_start_utc when there is none); no cursor stays beyond the end
-- of the window holding the newest source row; none goes before agg_start_utc.
-- A task on a calendar (window_calendar, contract 15) has windows of varying length: the end
-- of its frontier's window comes from the engine (%(calendar_ends)s, JSON), and a cursor
-- placed just after its newest bar or at agg_start_utc points at the next window, as any
-- cursor between windows does.
WITH calendar_ends AS (
    SELECT *
    FROM json_to_recordset(%(calendar_ends)s::json)
         AS c(canonical_symbol text, timeframe text, frontier_window_end timestamptz)
),
target AS (
    SELECT s.canonical_symbol, s.timeframe, s.last_agg_bar_ts_utc AS old_cursor,
           COALESCE(c.frontier_window_end, h.frontier_window_end) AS frontier_window_end,
           CASE WHEN s.window_calendar IS NULL THEN iv.step
                ELSE interval '1 microsecond' END AS after_bar,
           CASE WHEN s.window_calendar IS NULL THEN
               date_bin(iv.step, s.agg_start_utc - interval '1 microsecond',
                        TIMESTAMPTZ '2000-01-01 00:00:00+00') + iv.step
           ELSE s.agg_start_utc END AS first_window,
           (SELECT max(d.ts_utc) FROM derived_data_bars d
            WHERE d.canonical_symbol = s.canonical_symbol AND d.timeframe = s.timeframe
              AND d.deleted_at IS NULL) AS newest_bar
    FROM data_agg_state s
    JOIN v_aggregation_frontier_health h USING (canonical_symbol, timeframe)
    LEFT JOIN calendar_ends c USING (canonical_symbol, timeframe)
    CROSS JOIN LATERAL (SELECT make_interval(mins => s.run_interval_minutes) AS step) iv
    WHERE s.run_interval_minutes > 0
      AND (%(symbols)s::text[] IS NULL OR s.canonical_symbol = ANY (%(symbols)s::text[]))
      AND (%(timeframes)s::text[] IS NULL OR s.timeframe = ANY (%(timeframes)s::text[]))
),
placed AS (
    SELECT t.*,
           least(greatest(COALESCE(t.old_cursor, t.newest_bar + t.after_bar, t.first_window),
                          t.first_window),
                 COALESCE(t.frontier_window_end, t.first_window)) AS new_cursor
    FROM target t
)
UPDATE data_agg_state s
SET last_agg_bar_ts_utc = p.new_cursor
FROM placed p
WHERE s.canonical_symbol = p.canonical_symbol
  AND s.timeframe = p.timeframe
  AND s.last_agg_bar_ts_utc IS DISTINCT FROM p.new_cursor
RETURNING s.canonical_symbol, s.timeframe, p.old_cursor, p.new_cursor
