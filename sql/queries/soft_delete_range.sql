-- Soft-delete every active bar of one (symbol, timeframe) in [%(lo)s, %(hi)s): the first half
-- of a range rebuild. The rows stay, and each bar's version until now goes to
-- derived_bar_revisions (change 'rebuilt'). Returns how many bars were soft-deleted.
WITH old AS (
    SELECT d.*
    FROM derived_data_bars d
    WHERE d.canonical_symbol = %(symbol)s
      AND d.timeframe = %(timeframe)s
      AND d.deleted_at IS NULL
      AND d.ts_utc >= %(lo)s
      AND d.ts_utc < %(hi)s
),
revised AS (
    INSERT INTO derived_bar_revisions (
        bar_id, canonical_symbol, timeframe, ts_utc, open, high, low, close, vol, vwap,
        trade_count, source_timeframe, source_candles, expected_candles, quality_score,
        derivation_version, valid_from, valid_to, change, reason, run_id)
    SELECT o.id, o.canonical_symbol, o.timeframe, o.ts_utc, o.open, o.high, o.low, o.close,
           o.vol, o.vwap, o.trade_count, o.source_timeframe, o.source_candles,
           o.expected_candles, o.quality_score, o.derivation_version, o.updated_at, now(),
           'rebuilt', 'rebuild', %(run_id)s
    FROM old o
    WHERE NOT o.is_partial
),
withdrawn AS (
    UPDATE derived_data_bars d
    SET deleted_at = now(), updated_at = now()
    FROM old o
    WHERE d.id = o.id
    RETURNING 1
)
SELECT count(*) FROM withdrawn
