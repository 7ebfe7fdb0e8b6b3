-- The runbook's legacy clean-up (seed 004, "Phase 9"): soft-delete every active row of
-- %(symbol)s / %(timeframe)s in derived_data_bars (a timeframe no rung of the ladder
-- produces, checked by the caller) and keep each withdrawn version in derived_bar_revisions
-- (change 'withdrawn', reason 'legacy_cleanup' passed by the caller, the run's id), so that
-- the restore can bring back exactly what this run withdrew. Returns one row per source
-- with its counts and span.
WITH legacy AS (
    SELECT d.id, d.updated_at AS version_from
    FROM derived_data_bars d
    WHERE d.canonical_symbol = %(symbol)s
      AND d.timeframe = %(timeframe)s
      AND d.deleted_at IS NULL
    FOR UPDATE
),
withdrawn AS (
    UPDATE derived_data_bars d
    SET deleted_at = now(), updated_at = now()
    FROM legacy l
    WHERE d.id = l.id
    RETURNING d.*, l.version_from
),
kept AS (
    INSERT INTO derived_bar_revisions (
        bar_id, canonical_symbol, timeframe, ts_utc, open, high, low, close, vol, vwap,
        trade_count, source_timeframe, source_candles, expected_candles, quality_score,
        derivation_version, valid_from, valid_to, change, reason, run_id)
    SELECT w.id, w.canonical_symbol, w.timeframe, w.ts_utc, w.open, w.high, w.low, w.close,
           w.vol, w.vwap, w.trade_count, w.source_timeframe, w.source_candles,
           w.expected_candles, w.quality_score, w.derivation_version,
           least(w.version_from, now()), now(), 'withdrawn', %(reason)s, %(run_id)s
    FROM withdrawn w
)
SELECT w.source, count(*) AS bars, min(w.ts_utc) AS first_ts_utc, max(w.ts_utc) AS last_ts_utc
FROM withdrawn w
GROUP BY w.source
ORDER BY w.source
