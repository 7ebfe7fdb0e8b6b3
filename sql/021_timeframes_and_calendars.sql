-- Timeframes as data, bars on the market's own clock (issue 22; SPEC contracts 4 and 15).
--
-- The ladder and the calendars live in agg_pipeline/timeframes.toml (or AGG_TIMEFRAMES_FILE).
-- The registry says per symbol which optional timeframes it wants and which calendar its
-- windows follow; the registry sync writes each task's calendar; the engine computes a
-- calendar's windows in Python (zoneinfo) and binds them to its statements, so no statement
-- converts time zones.

-- Per symbol: the optional timeframes it wants, by name (beside the seed schema's
-- calc_15m / calc_4h / calc_1d, still honoured), and the calendar of timeframes.toml its
-- windows follow (NULL: its asset class's, if the config gives one, else UTC).
ALTER TABLE core_asset_registry_all
    ADD COLUMN IF NOT EXISTS agg_timeframes text[],
    ADD COLUMN IF NOT EXISTS agg_calendar text;

COMMENT ON COLUMN core_asset_registry_all.agg_timeframes IS
    'Optional timeframes of timeframes.toml this symbol gets (e.g. {30m,4h,1d}); calc_15m, '
    'calc_4h and calc_1d add 15m, 4h and 1d (migration 021)';
COMMENT ON COLUMN core_asset_registry_all.agg_calendar IS
    'Calendar of timeframes.toml its daily, weekly and off-grid intraday windows follow '
    '(e.g. fx: 17:00 America/New_York); NULL: its asset class''s, else UTC (migration 021)';

-- Per task: the calendar its windows follow, NULL for the UTC grid (written by the registry
-- sync: a timeframe that a calendar leaves on the grid, 5m say, has NULL).
ALTER TABLE data_agg_state ADD COLUMN IF NOT EXISTS window_calendar text;

-- Each (timeframe, version)'s definition (interval, source, ladder), recorded by the registry
-- sync the first time it sees it: a definition changed under the same version is refused,
-- so a bar's derivation_version always names the rules that built it.
CREATE TABLE IF NOT EXISTS agg_timeframe_versions (
    timeframe   text        NOT NULL,
    version     integer     NOT NULL,
    definition  jsonb       NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (timeframe, version)
);
GRANT SELECT, INSERT ON agg_timeframe_versions TO agg_pipeline_runtime;

-- The quality score of a window with p_n usable source bars of p_expected: the first rung
-- whose share of the expected count it reaches (n >= ceil(expected x num / den), in integers).
-- The calendar statements use it; UTC-grid windows index a precomputed array instead.
CREATE OR REPLACE FUNCTION agg_ladder_score(p_n bigint, p_expected integer,
                                            p_num integer[], p_den integer[],
                                            p_score integer[])
RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT l.score
    FROM unnest(p_num, p_den, p_score) WITH ORDINALITY AS l(num, den, score, i)
    WHERE p_expected > 0 AND p_n * l.den >= p_expected::bigint * l.num
    ORDER BY l.i
    LIMIT 1
$$;

-- The health view with each task's calendar. For a task on a calendar, the end of the window
-- holding the newest source row is the engine's arithmetic (zoneinfo, in Python), which
-- `agg-pipeline status` and the cursor_not_ahead check use; this view, plain SQL, bounds it by
-- frontier + interval (a window is never longer), so it never calls a calendar cursor AHEAD
-- that is not, and still catches one that is.
CREATE OR REPLACE VIEW v_aggregation_frontier_health AS
SELECT
    s.canonical_symbol,
    s.timeframe,
    s.source_timeframe,
    s.is_mandatory,
    s.enabled,
    s.status,
    s.task_priority,
    s.last_agg_bar_ts_utc                              AS cursor_ts,
    f.frontier_ts                                      AS source_frontier_ts,
    w.frontier_window_end,
    w.frontier_window_end - s.last_agg_bar_ts_utc      AS gap,
    CASE
        WHEN s.run_interval_minutes IS NULL OR s.run_interval_minutes <= 0
             OR s.source_timeframe IS NULL              THEN 'BAD_CONFIG'
        WHEN s.last_agg_bar_ts_utc IS NULL              THEN 'NULL'
        WHEN f.frontier_ts IS NULL                      THEN 'NO_SOURCE'
        WHEN s.last_agg_bar_ts_utc > w.frontier_window_end THEN 'AHEAD'
        ELSE 'OK'
    END                                                AS cursor_status,
    s.total_runs,
    s.total_bars_created,
    round(s.total_bars_created::numeric / NULLIF(s.total_runs, 0), 2) AS bars_per_run,
    round((extract(epoch FROM now() - s.last_successful_at_utc) / 60)::numeric, 1)
                                                       AS minutes_since_success,
    s.last_successful_at_utc,
    s.hard_fail_streak,
    s.last_error,
    s.run_interval_minutes,
    s.aggregation_delay_seconds,
    s.agg_start_utc,
    stray.rows                                         AS stray_source_rows,
    s.window_calendar
FROM data_agg_state s
CROSS JOIN LATERAL (
    SELECT agg_source_frontier(s.canonical_symbol, s.source_timeframe, now()) AS frontier_ts
) f
CROSS JOIN LATERAL (
    -- CASE guards date_bin, which rejects a zero or negative stride (a misconfigured task).
    SELECT CASE WHEN s.run_interval_minutes <= 0 THEN NULL
                WHEN s.window_calendar IS NOT NULL THEN
                    f.frontier_ts + make_interval(mins => s.run_interval_minutes)
                ELSE date_bin(make_interval(mins => s.run_interval_minutes), f.frontier_ts,
                              TIMESTAMPTZ '2000-01-01 00:00:00+00')
                     + make_interval(mins => s.run_interval_minutes)
    END AS frontier_window_end
) w
-- rows of the symbol in data_bars the pipeline never reads, on the task that reads data_bars
LEFT JOIN LATERAL (
    SELECT count(*) AS rows FROM data_bars b
    WHERE b.canonical_symbol = s.canonical_symbol AND b.timeframe <> '1m'
) stray ON s.source_timeframe = '1m';
