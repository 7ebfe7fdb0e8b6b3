-- The forming bar of one (symbol, timeframe): the window holding the newest usable source
-- row in [%(hi)s, %(range_end)s), when that window is not final yet (it starts at or after
-- %(hi)s, the first window not final). Rolled up from the source rows so far as a final bar
-- is (contract 2, the partial-volume rule), with source_candles so far and no quality score.
-- Any other partial bar of the task that is not final yet is withdrawn (at most one forming
-- bar); partial bars of final windows are the main statement's (finalised or withdrawn).
-- With %(forming)s false only that clean-up runs (a symbol that opted out). Partial bars are
-- not versions: no revisions are written. {source_table}/{source_filter} as in
-- aggregate_range.sql, except that 1h and above read forming 5m bars too.
WITH src AS (
    SELECT b.ts_utc, b.open, b.high, b.low, b.close, b.vol, b.vwap, b.trade_count,
           date_part('epoch', b.ts_utc) AS t
    FROM {source_table} b
    WHERE %(forming)s
      AND b.canonical_symbol = %(symbol)s
      AND b.timeframe = %(source_timeframe)s
      AND b.ts_utc >= %(hi)s
      AND b.ts_utc < %(range_end)s
      AND b.ts_utc <= %(as_of)s
      {source_filter}
      AND agg_bar_is_valid(b.open, b.high, b.low, b.close, b.vol, b.vwap, b.trade_count,
                           b.ts_utc, %(source_step)s)
),
forming_window AS (
    SELECT date_bin(%(step)s, max(ts_utc), TIMESTAMPTZ '2000-01-01 00:00:00+00') AS ts_utc
    FROM src
    HAVING count(*) > 0
),
rolled AS (
    SELECT w.ts_utc,
           (min(ARRAY[s.t, s.open]))[2] AS open, max(s.high) AS high, min(s.low) AS low,
           (max(ARRAY[s.t, s.close]))[2] AS close,
           CASE WHEN count(s.vol) = count(*) THEN sum(s.vol) END AS vol,
           CASE WHEN count(s.vol) = count(*) THEN
               sum(s.vwap * s.vol) FILTER (WHERE s.vwap IS NOT NULL AND s.vol > 0)
               / NULLIF(sum(s.vol) FILTER (WHERE s.vwap IS NOT NULL AND s.vol > 0), 0) END AS vwap,
           CASE WHEN count(s.trade_count) = count(*) THEN sum(s.trade_count)::integer END
               AS trade_count,
           count(*)::integer AS source_candles
    FROM forming_window w
    JOIN src s ON s.ts_utc >= w.ts_utc AND s.ts_utc < w.ts_utc + %(step)s
    GROUP BY w.ts_utc
),
stale AS (
    UPDATE derived_data_bars d
    SET deleted_at = now(), updated_at = now()
    WHERE d.canonical_symbol = %(symbol)s
      AND d.timeframe = %(timeframe)s
      AND d.deleted_at IS NULL
      AND d.is_partial
      AND d.ts_utc >= %(hi)s
      AND d.ts_utc IS DISTINCT FROM (SELECT ts_utc FROM rolled)
    RETURNING d.id
),
refreshed AS (
    UPDATE derived_data_bars d
    SET open = r.open, high = r.high, low = r.low, close = r.close, vol = r.vol,
        vwap = r.vwap, trade_count = r.trade_count, source_candles = r.source_candles,
        ingested_at = now(), updated_at = now()
    FROM rolled r
    WHERE d.canonical_symbol = %(symbol)s
      AND d.timeframe = %(timeframe)s
      AND d.ts_utc = r.ts_utc
      AND d.deleted_at IS NULL
      AND d.is_partial
      AND (d.open, d.high, d.low, d.close, d.vol, d.vwap, d.trade_count, d.source_candles)
          IS DISTINCT FROM
          (r.open, r.high, r.low, r.close, r.vol, r.vwap, r.trade_count, r.source_candles)
    RETURNING d.id
),
inserted AS (
    INSERT INTO derived_data_bars (
        canonical_symbol, timeframe, ts_utc, open, high, low, close, vol, vwap, trade_count,
        is_partial, source, ingested_at, source_timeframe, source_candles, expected_candles,
        quality_score, derivation_version, created_at, updated_at, raw)
    SELECT %(symbol)s, %(timeframe)s, r.ts_utc, r.open, r.high, r.low, r.close, r.vol, r.vwap,
           r.trade_count, true, 'agg', now(), %(source_timeframe)s, r.source_candles,
           %(expected)s, NULL, %(derivation_version)s, now(), now(), '{{}}'::jsonb
    FROM rolled r
    WHERE NOT EXISTS (
        SELECT 1 FROM derived_data_bars d
        WHERE d.canonical_symbol = %(symbol)s AND d.timeframe = %(timeframe)s
          AND d.ts_utc = r.ts_utc AND d.deleted_at IS NULL)
    RETURNING id
)
SELECT (SELECT ts_utc FROM rolled) AS forming_ts,
       (SELECT source_candles FROM rolled) AS forming_candles,
       (SELECT count(*) FROM inserted) + (SELECT count(*) FROM refreshed) AS forming_written,
       (SELECT count(*) FROM stale) AS forming_withdrawn
