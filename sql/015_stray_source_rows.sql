-- Source rows the pipeline never reads, made visible (issue 12 item 3). 5m reads only the
-- 1m rows of data_bars (SPEC contract 3); a row of another timeframe there (an ingester
-- writing '5m' rows, say) used to be ignored silently. Now it is counted per symbol and
-- timeframe (v_stray_source_rows), shown on the 5m task's row of the health view and by
-- `agg-pipeline status`, and the WARN check no_stray_source_rows names it.
--
-- The partial index holds only such rows (normally none), so counting them never walks a
-- symbol's 1m rows. Building it reads data_bars once and holds a SHARE lock (inserts wait)
-- for that long: on a large data_bars create it beforehand without blocking ingestion, with
--   CREATE INDEX CONCURRENTLY data_bars_stray_rows_idx ON data_bars (canonical_symbol,
--       timeframe, ts_utc) WHERE timeframe <> '1m';
-- and this migration finds it in place.
CREATE INDEX IF NOT EXISTS data_bars_stray_rows_idx
    ON data_bars (canonical_symbol, timeframe, ts_utc) WHERE timeframe <> '1m';

CREATE OR REPLACE VIEW v_stray_source_rows AS
SELECT b.canonical_symbol, b.timeframe, count(*) AS rows,
       min(b.ts_utc) AS first_ts_utc, max(b.ts_utc) AS last_ts_utc,
       max(b.ingested_at) AS last_ingested_at
FROM data_bars b
WHERE b.timeframe <> '1m'
GROUP BY b.canonical_symbol, b.timeframe;

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
    stray.rows                                         AS stray_source_rows
FROM data_agg_state s
CROSS JOIN LATERAL (
    SELECT agg_source_frontier(s.canonical_symbol, s.source_timeframe, now()) AS frontier_ts
) f
CROSS JOIN LATERAL (
    -- CASE guards date_bin, which rejects a zero or negative stride (a misconfigured task).
    SELECT CASE WHEN s.run_interval_minutes > 0 THEN
        date_bin(make_interval(mins => s.run_interval_minutes), f.frontier_ts,
                 TIMESTAMPTZ '2000-01-01 00:00:00+00')
        + make_interval(mins => s.run_interval_minutes)
    END AS frontier_window_end
) w
-- rows of the symbol in data_bars the pipeline never reads, on the task that reads data_bars
LEFT JOIN LATERAL (
    SELECT count(*) AS rows FROM data_bars b
    WHERE b.canonical_symbol = s.canonical_symbol AND b.timeframe <> '1m'
) stray ON s.source_timeframe = '1m';

GRANT SELECT ON v_stray_source_rows TO agg_pipeline_runtime;
