-- Seed 000's pre-flight questions, per task: where is the cursor against the source, how
-- productive are runs, and does the next window have source rows?
SELECT h.canonical_symbol, h.timeframe, h.status, h.enabled, h.cursor_ts,
       h.source_frontier_ts, h.gap, h.cursor_status, h.total_runs, h.total_bars_created,
       h.bars_per_run, h.minutes_since_success, h.hard_fail_streak,
       (SELECT count(*) FROM data_bars b
        WHERE h.source_timeframe = '1m' AND b.canonical_symbol = h.canonical_symbol
          AND b.timeframe = '1m' AND b.ts_utc >= h.cursor_ts
          AND b.ts_utc < h.cursor_ts + make_interval(mins => h.run_interval_minutes))
       + (SELECT count(*) FROM derived_data_bars d
          WHERE h.source_timeframe <> '1m' AND d.canonical_symbol = h.canonical_symbol
            AND d.timeframe = h.source_timeframe AND d.deleted_at IS NULL
            AND d.ts_utc >= h.cursor_ts
            AND d.ts_utc < h.cursor_ts + make_interval(mins => h.run_interval_minutes))
         AS source_bars_in_next_window
FROM v_aggregation_frontier_health h
ORDER BY h.canonical_symbol, h.timeframe
