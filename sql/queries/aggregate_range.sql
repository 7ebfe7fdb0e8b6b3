-- Materialise every final window of one (symbol, timeframe) in [%(lo)s, %(hi)s) in one
-- statement (SPEC contracts 2-5, 8, 9): roll up the source rows, score them on the quality
-- ladder, then insert new bars, update changed ones, soft-delete active bars that no longer
-- qualify, and leave unchanged bars unwritten; the version a restated or withdrawn bar had
-- goes to derived_bar_revisions, with %(reason)s and %(run_id)s. Returns one row of counts per UTC day that had
-- source rows or bars (SPEC contract 14: each day partition shows its own counts).
--
-- {source_table} is data_bars for 5m and derived_data_bars otherwise ({active_only} then
-- keeps soft-deleted rows out); the two tables are never combined. {window_traded} is
-- `false`, or a window function telling whether the row's window holds a traded bar.
WITH src AS (
    SELECT
        b.ts_utc,
        b.open, b.high, b.low, b.close, b.vol, b.vwap, b.trade_count,
        b.ingested_at,
        agg_bar_is_valid(b.open, b.high, b.low, b.close, b.vol, b.vwap, b.trade_count,
                         b.ts_utc, %(source_step)s) AS valid,
        NOT b.is_partial AS final,
        date_part('epoch', b.ts_utc) AS t
    FROM {source_table} b
    WHERE b.canonical_symbol = %(symbol)s
      AND b.timeframe = %(source_timeframe)s
      AND b.ts_utc >= %(read_from)s
      AND b.ts_utc < %(hi)s
      {active_only}
    -- a planner fence: without it agg_bar_is_valid() is inlined into every FILTER below and
    -- evaluated once per aggregate instead of once per row
    OFFSET 0
),
windows AS (
    SELECT
        date_bin(%(step)s, ts_utc, TIMESTAMPTZ '2000-01-01 00:00:00+00') AS ts_utc,
        count(*) FILTER (WHERE usable)                      AS n,
        count(*) FILTER (WHERE NOT valid)                   AS invalid_rows,
        count(*) FILTER (WHERE valid AND NOT final)         AS partial_rows,
        -- [epoch, price] arrays compare element-wise, so min/max pick the earliest/latest
        -- bar in one pass without sorting
        min(ARRAY[t, open])  FILTER (WHERE ohlc)            AS first_bar,
        max(ARRAY[t, close]) FILTER (WHERE ohlc)            AS last_bar,
        max(high) FILTER (WHERE ohlc)                       AS high,
        min(low)  FILTER (WHERE ohlc)                       AS low,
        sum(vol) FILTER (WHERE usable)                      AS vol,
        sum(vwap * vol) FILTER (WHERE usable AND vwap IS NOT NULL AND vol > 0) AS pv,
        sum(vol) FILTER (WHERE usable AND vwap IS NOT NULL AND vol > 0)        AS pv_vol,
        sum(trade_count) FILTER (WHERE usable)              AS trade_count,
        count(vol) FILTER (WHERE usable)                    AS n_vol,
        count(trade_count) FILTER (WHERE usable)            AS n_trades,
        max(ts_utc) FILTER (WHERE usable)                   AS newest_ts,
        count(*)                                            AS rows_read,
        max(ingested_at)                                    AS ingested_max,
        -- integer microseconds: an exact, order-independent fingerprint
        sum((date_part('epoch', ingested_at) * 1000000)::bigint) AS ingested_sum
    FROM (
        SELECT src.*,
               valid AND final AS usable,
               -- zero-volume filler bars stay out of open/high/low/close when the symbol asks
               -- for it and the window has traded bars; {window_traded} is `false` otherwise.
               -- Bars without volume (NULL) are not fillers.
               valid AND final AND (vol IS DISTINCT FROM 0 OR NOT {window_traded}) AS ohlc
        FROM src
        OFFSET 0  -- fence, as above
    ) flagged
    GROUP BY 1
),
computed AS (
    SELECT
        w.ts_utc,
        w.first_bar[2]                                      AS open,
        w.high,
        w.low,
        w.last_bar[2]                                       AS close,
        -- Volume that only some usable source bars carry is not the window's volume: vol,
        -- vwap (and trade_count, on its own) are then NULL, unknown, and raw keeps what was
        -- known, so nothing is silently under-counted (README, "The rules").
        CASE WHEN w.n_vol = w.n THEN w.vol END              AS vol,
        CASE WHEN w.n_vol = w.n THEN w.pv / NULLIF(w.pv_vol, 0) END AS vwap,
        CASE WHEN w.n_trades = w.n THEN w.trade_count::integer END AS trade_count,
        CASE WHEN w.n_vol NOT IN (0, w.n) OR w.n_trades NOT IN (0, w.n) THEN
            jsonb_build_object('partial_volume', jsonb_build_object(
                'source_candles', w.n, 'with_vol', w.n_vol, 'vol_of_those', w.vol,
                'with_trade_count', w.n_trades, 'trade_count_of_those', w.trade_count))
        ELSE '{{}}'::jsonb END                              AS raw,
        w.n::integer                                        AS source_candles,
        (%(score_by_count)s::integer[])[least(w.n, %(expected)s) + 1] AS quality_score,
        w.invalid_rows, w.partial_rows, w.rows_read, w.newest_ts, w.ingested_max, w.ingested_sum
    FROM windows w
),
existing AS (
    SELECT d.id, d.ts_utc, d.open, d.high, d.low, d.close, d.vol, d.vwap, d.trade_count,
           d.source_timeframe, d.source_candles, d.expected_candles, d.quality_score,
           d.derivation_version, d.updated_at, d.raw, d.is_partial
    FROM derived_data_bars d
    WHERE d.canonical_symbol = %(symbol)s
      AND d.timeframe = %(timeframe)s
      AND d.deleted_at IS NULL
      AND d.ts_utc >= %(lo)s
      AND d.ts_utc < %(hi)s
),
-- one row per window that has a qualifying bar, an active stored bar, or both. A FULL JOIN
-- runs as a hash or merge join whatever the row estimates (fresh bulk loads have none).
diff AS (
    SELECT q.*, e.id AS existing_id, COALESCE(e.is_partial, false) AS was_partial,
           -- the stored version, for derived_bar_revisions when it is replaced
           e.ts_utc AS old_ts, e.open AS old_open, e.high AS old_high, e.low AS old_low,
           e.close AS old_close, e.vol AS old_vol, e.vwap AS old_vwap,
           e.trade_count AS old_trade_count, e.source_timeframe AS old_source_timeframe,
           e.source_candles AS old_source_candles, e.expected_candles AS old_expected_candles,
           e.quality_score AS old_quality_score, e.derivation_version AS old_version,
           e.updated_at AS old_since,
           e.id IS NOT NULL AND NOT e.is_partial  -- a forming bar of a now final window
           AND (e.open, e.high, e.low, e.close, e.trade_count, e.source_timeframe,
                e.source_candles, e.expected_candles, e.quality_score)
               IS NOT DISTINCT FROM
               (q.open, q.high, q.low, q.close, q.trade_count, %(source_timeframe)s::text,
                q.source_candles, %(expected)s::integer, q.quality_score)
           -- sums of floats may differ in the last bits with summation order
           AND agg_same_float(e.vol, q.vol) AND agg_same_float(e.vwap, q.vwap)
           AND e.raw IS NOT DISTINCT FROM q.raw
           AS unchanged
    FROM (SELECT * FROM computed WHERE quality_score IS NOT NULL) q
    FULL JOIN existing e ON e.ts_utc = q.ts_utc
),
inserted AS (
    INSERT INTO derived_data_bars (
        canonical_symbol, timeframe, ts_utc, open, high, low, close, vol, vwap, trade_count,
        is_partial, source, ingested_at, source_timeframe, source_candles, expected_candles,
        quality_score, derivation_version, created_at, updated_at, raw)
    SELECT %(symbol)s, %(timeframe)s, x.ts_utc, x.open, x.high, x.low, x.close, x.vol, x.vwap,
           x.trade_count, false, 'agg', now(), %(source_timeframe)s, x.source_candles,
           %(expected)s, x.quality_score, %(derivation_version)s, now(), now(), x.raw
    FROM diff x
    WHERE x.existing_id IS NULL
    RETURNING ts_utc, quality_score
),
updated AS (
    UPDATE derived_data_bars d
    SET open = x.open, high = x.high, low = x.low, close = x.close, vol = x.vol,
        vwap = x.vwap, trade_count = x.trade_count, source_timeframe = %(source_timeframe)s,
        source_candles = x.source_candles, expected_candles = %(expected)s,
        quality_score = x.quality_score, derivation_version = %(derivation_version)s,
        raw = x.raw, is_partial = false, ingested_at = now(), updated_at = now()
    FROM diff x
    WHERE d.id = x.existing_id AND x.ts_utc IS NOT NULL AND NOT x.unchanged
    RETURNING d.ts_utc, d.quality_score, x.was_partial
),
soft_deleted AS (
    UPDATE derived_data_bars d
    SET deleted_at = now(), updated_at = now()
    FROM diff x
    WHERE d.id = x.existing_id AND x.ts_utc IS NULL
    RETURNING d.ts_utc
),
-- Pending changes (migration 012: updates, deletes, truncates of data_bars) of the days this
-- statement fingerprints, read in the statement's snapshot of the source, and marked
-- consumed: a change recorded after that snapshot has a new seq, fails the re-check and
-- stays pending for the next run (SPEC contract 10). Empty for timeframes that read
-- derived bars (their record range is empty).
changes_seen AS (
    SELECT c.canonical_symbol, c.timeframe, c.day, c.seq, c.kinds
    FROM data_agg_source_changes c
    WHERE c.canonical_symbol = %(symbol)s
      AND c.timeframe = %(source_timeframe)s
      AND c.day >= (%(record_from)s::timestamptz AT TIME ZONE 'UTC')::date
      AND c.day < (%(record_to)s::timestamptz AT TIME ZONE 'UTC')::date
      AND c.seq > c.consumed_seq
),
consumed AS (
    UPDATE data_agg_source_changes c
    SET consumed_seq = s.seq
    FROM changes_seen s
    WHERE c.canonical_symbol = s.canonical_symbol AND c.timeframe = s.timeframe
      AND c.day = s.day AND c.seq = s.seq
),
-- the version each restated or withdrawn bar had until now (SPEC contract 9); a change of
-- the source recorded for its day says why better than the run's reason does
revised AS (
    INSERT INTO derived_bar_revisions (
        bar_id, canonical_symbol, timeframe, ts_utc, open, high, low, close, vol, vwap,
        trade_count, source_timeframe, source_candles, expected_candles, quality_score,
        derivation_version, valid_from, valid_to, change, reason, run_id)
    SELECT x.existing_id, %(symbol)s, %(timeframe)s, x.old_ts, x.old_open, x.old_high,
           x.old_low, x.old_close, x.old_vol, x.old_vwap, x.old_trade_count,
           x.old_source_timeframe, x.old_source_candles, x.old_expected_candles,
           x.old_quality_score, x.old_version, x.old_since, now(),
           CASE WHEN x.ts_utc IS NULL THEN 'withdrawn' ELSE 'restated' END,
           CASE WHEN %(reason)s = 'rebuild' THEN %(reason)s
                WHEN ch.kinds && ARRAY['delete', 'truncate'] THEN 'deletion'
                WHEN 'update' = ANY (ch.kinds) THEN 'correction'
                ELSE %(reason)s END,
           %(run_id)s
    FROM diff x
    LEFT JOIN changes_seen ch
      ON ch.day = (date_bin(interval '24 hours', x.old_ts, TIMESTAMPTZ '2000-01-01 00:00:00+00')
                   AT TIME ZONE 'UTC')::date
    WHERE x.existing_id IS NOT NULL AND NOT x.was_partial  -- forming bars: no versions
      AND NOT x.unchanged
),
source_days AS (
    SELECT date_bin(interval '24 hours', ts_utc, TIMESTAMPTZ '2000-01-01 00:00:00+00') AS day,
           sum(rows_read) AS source_rows,
           max(ingested_max) AS source_ingested_max,
           sum(ingested_sum) AS source_ingested_sum
    FROM computed
    GROUP BY 1
),
-- every UTC day the requested range covers completely, rows or not
day_fingerprints AS (
    SELECT (g.day AT TIME ZONE 'UTC')::date AS day,
           greatest(g.day, %(read_from)s) AS covered_from,
           least(g.day + interval '24 hours', %(hi)s) AS final_through,
           COALESCE(s.source_rows, 0) AS source_rows,
           s.source_ingested_max,
           COALESCE(s.source_ingested_sum, 0) AS source_ingested_sum
    FROM generate_series(%(record_from)s::timestamptz,
                         %(record_to)s::timestamptz - interval '24 hours',
                         interval '24 hours') AS g(day)
    LEFT JOIN source_days s ON s.day = g.day
),
recorded AS (
    INSERT INTO data_agg_source_days AS r (
        canonical_symbol, timeframe, day, covered_from, final_through, source_rows,
        source_ingested_max, source_ingested_sum, materialized_at)
    SELECT %(symbol)s, %(timeframe)s, f.day, f.covered_from, f.final_through, f.source_rows,
           f.source_ingested_max, f.source_ingested_sum, now()
    FROM day_fingerprints f
    WHERE f.covered_from < f.final_through
    ON CONFLICT (canonical_symbol, timeframe, day) DO UPDATE
    SET covered_from = excluded.covered_from, final_through = excluded.final_through,
        source_rows = excluded.source_rows, source_ingested_max = excluded.source_ingested_max,
        source_ingested_sum = excluded.source_ingested_sum,
        materialized_at = excluded.materialized_at
),
-- every window's part in its UTC day's counts: what was read, and what was written
day_rows (ts_utc, with_source, skipped, invalid_rows, partial_rows, rows_read, newest_ts,
          inserted, updated, soft_deleted, unchanged, poor_quality) AS (
    SELECT ts_utc, (rows_read > 0)::int, (rows_read > 0 AND quality_score IS NULL)::int,
           invalid_rows, partial_rows, rows_read, newest_ts, 0, 0, 0, 0, 0
    FROM computed
    UNION ALL
    SELECT ts_utc, 0, 0, 0, 0, 0, NULL, 1, 0, 0, 0, (quality_score <= 0)::int FROM inserted
    UNION ALL
    -- a forming bar made final is a new final bar, not a restatement
    SELECT ts_utc, 0, 0, 0, 0, 0, NULL, was_partial::int, (NOT was_partial)::int, 0, 0,
           (quality_score <= 0)::int
    FROM updated
    UNION ALL
    SELECT ts_utc, 0, 0, 0, 0, 0, NULL, 0, 0, 1, 0, 0 FROM soft_deleted
    UNION ALL
    SELECT ts_utc, 0, 0, 0, 0, 0, NULL, 0, 0, 0, 1, 0 FROM diff WHERE unchanged
)
SELECT
    (date_bin(interval '24 hours', ts_utc, TIMESTAMPTZ '2000-01-01 00:00:00+00')
        AT TIME ZONE 'UTC')::date                AS day,
    sum(with_source)::bigint                     AS windows_with_source,
    sum(skipped)::bigint                         AS windows_skipped,
    sum(inserted)::bigint                        AS bars_inserted,
    sum(updated)::bigint                         AS bars_updated,
    sum(soft_deleted)::bigint                    AS bars_soft_deleted,
    sum(unchanged)::bigint                       AS bars_unchanged,
    sum(poor_quality)::bigint                    AS bars_poor_quality,
    sum(rows_read)::bigint                       AS source_rows_read,
    sum(invalid_rows)::bigint                    AS source_rows_invalid,
    sum(partial_rows)::bigint                    AS source_rows_partial,
    max(newest_ts)                               AS newest_source_ts
FROM day_rows
GROUP BY 1
ORDER BY 1
