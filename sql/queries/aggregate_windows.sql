-- Materialise the final windows of many symbols of one timeframe in one statement (SPEC
-- contracts 2-10, 14, 16). Each request (one element of %(requests)s) is one symbol and range:
--   lo            first window considered: active bars in [lo, final_to) are diffed
--   hi            windows before it are final by the confirmation delay (contract 6)
--   final_to      windows in [hi, final_to) have ended: final when complete, i.e. all
--                 %(expected)s source bars landed and final (or when a final bar is stored)
--   read_from     first source row read (agg_start_utc; the cursor for incremental reads)
--   record_from   first UTC day whose fingerprint is recorded; record_limit: none from it
--   consume_from  captured changes of recorded days are consumed when they start at or after
--                 this (NULL: all of them; incremental reads consume only what they re-read)
-- Every symbol's windows are rolled up and diffed inside a LATERAL subquery reading its own
-- index ranges, so the plan and the memory per symbol do not depend on other symbols' data.
-- New bars are inserted, changed ones restated, bars that no longer qualify soft-deleted,
-- unchanged ones left unwritten; a restated or withdrawn bar's version goes to
-- derived_bar_revisions with why. The bars of a day whose source retention removed are kept
-- (contract 16, agg_source_day_gone in migration 019).
-- Returns per request (`ord`) a 'bound' row (at: final_hi, the first window not final, the
-- cursor's bound) and a 'day' row per UTC day it saw or did something in (at: the day,
-- counts: DayCounts' integer fields in order, newest_source_ts).
--
-- {source_table} is data_bars for the roots and derived_data_bars otherwise ({active_only}
-- then keeps soft-deleted rows out); the two are never combined. {window_traded} is `false`,
-- or a window function telling whether the row's window holds a traded bar.
-- Windows (contract 15): on the UTC grid, the `window` fragment is date_bin from 2000-01-01 and
-- every window expects %(expected)s source bars. For requests on a calendar the engine binds
-- the windows themselves (calendars.py, zoneinfo): `starts`, `ends` and `exps` (expected
-- source bars) of every window starting in [lo, final_to), in order (one set per distinct
-- calendar and range in the window_sets parameter, named by `wkey`); a row's window is found
-- by binary search (width_bucket), rows between sessions belong to none and are not read
-- (`in_window`), a window's score is its count's share of its own expected count (`score`,
-- agg_ladder_score of migration 021), and `pending` lists the windows in [hi, final_to).
WITH req AS (
    SELECT *
    FROM json_to_recordset(%(requests)s::json)
        AS r(ord integer, symbol text, lo timestamptz, hi timestamptz, final_to timestamptz,
             read_from timestamptz, record_from timestamptz, record_limit timestamptz,
             consume_from timestamptz, version integer{request_columns})
    {window_sets}
),
-- Per request, inside its LATERAL subquery: `w`, one row per window with source rows, an
-- active stored bar, or both, with its roll-up (contract 2), its place on the quality ladder
-- (contract 4), whether it is final (contract 6) and what the statement does with it; then
-- three kinds of rows come out: 'write' (windows to insert, restate or withdraw, with the
-- version they replace), 'day' (a UTC day's counts and source fingerprint: counts[] in
-- DayCounts' order, see aggregate.py) and 'bound' (final_hi: the first window that is not
-- final; the cursor never passes it and fingerprints end there). Only what is written leaves
-- the subquery wide, so an unchanged re-read carries a few rows per day, not per window.
diff AS (
    SELECT r.ord, r.symbol, r.version, r.read_from, r.record_from, r.record_limit,
           r.consume_from, x.*
    FROM req r
    CROSS JOIN LATERAL (
        WITH w AS MATERIALIZED (
            SELECT
                COALESCE(q.ts_utc, e.ts_utc) AS window_ts,
                q.open, q.high, q.low, q.close, q.vol, q.vwap, q.trade_count, q.raw,
                q.source_candles, q.quality_score, q.invalid_rows, q.partial_rows,
                COALESCE(q.rows_read, 0) AS rows_read, q.newest_ts, q.ingested_max,
                q.ingested_sum,
                e.existing_ctid, e.is_partial AS was_partial,
                -- the stored version, for derived_bar_revisions when it is replaced
                e.id AS old_id, e.open AS old_open, e.high AS old_high, e.low AS old_low,
                e.close AS old_close, e.vol AS old_vol, e.vwap AS old_vwap,
                e.trade_count AS old_trade_count, e.source_timeframe AS old_source_timeframe,
                e.source_candles AS old_source_candles,
                e.expected_candles AS old_expected_candles,
                e.quality_score AS old_quality_score, e.derivation_version AS old_version,
                e.updated_at AS old_since,
                q.expected, fin.final,
                CASE
                    WHEN e.ts_utc IS NULL THEN
                        CASE WHEN fin.final AND q.quality_score IS NOT NULL THEN 'insert' END
                    WHEN NOT fin.final THEN NULL  -- a forming bar: forming_bars.sql's
                    WHEN NOT e.is_partial AND q.quality_score IS NOT NULL
                         AND (e.open, e.high, e.low, e.close, e.trade_count, e.source_timeframe,
                              e.source_candles, e.expected_candles, e.quality_score)
                             IS NOT DISTINCT FROM
                             (q.open, q.high, q.low, q.close, q.trade_count,
                              %(source_timeframe)s::text, q.source_candles,
                              q.expected, q.quality_score)
                         -- sums of floats may differ in the last bits with summation order
                         AND agg_same_float(e.vol, q.vol) AND agg_same_float(e.vwap, q.vwap)
                         AND e.raw IS NOT DISTINCT FROM q.raw THEN 'unchanged'
                    -- contract 16: the day's source was removed by retention
                    -- (the days are looked up once per request, when a bar first needs
                    -- it: an InitPlan, not a probe per bar)
                    WHEN %(retention_applies)s AND NOT e.is_partial
                         AND e.ts_utc >= r.read_from  -- (bars before agg_start_utc go)
                         AND (e.ts_utc AT TIME ZONE 'UTC')::date = ANY (ARRAY(
                             SELECT g.day FROM data_agg_source_days g
                             WHERE g.canonical_symbol = r.symbol
                               AND g.timeframe = %(timeframe)s
                               AND g.day >= (r.lo AT TIME ZONE 'UTC')::date
                               AND g.day <= (r.final_to AT TIME ZONE 'UTC')::date
                               AND agg_source_day_gone(r.symbol, %(timeframe)s, g.day)))
                         THEN 'kept'
                    WHEN q.quality_score IS NOT NULL THEN 'update'
                    ELSE 'delete'
                END AS action
            FROM (
                SELECT
                    w.ts_utc,
                    w.first_bar[2]                                      AS open,
                    w.high,
                    w.low,
                    w.last_bar[2]                                       AS close,
                    -- Volume that only some usable source bars carry is not the window's
                    -- volume: vol, vwap (and trade_count, on its own) are then NULL, unknown,
                    -- and raw keeps what was known (README, "The rules").
                    CASE WHEN w.n_vol = w.n THEN w.vol END              AS vol,
                    CASE WHEN w.n_vol = w.n THEN w.pv / NULLIF(w.pv_vol, 0) END AS vwap,
                    CASE WHEN w.n_trades = w.n THEN w.trade_count::integer END AS trade_count,
                    CASE WHEN w.n_vol NOT IN (0, w.n) OR w.n_trades NOT IN (0, w.n) THEN
                        jsonb_build_object('partial_volume', jsonb_build_object(
                            'source_candles', w.n, 'with_vol', w.n_vol, 'vol_of_those', w.vol,
                            'with_trade_count', w.n_trades, 'trade_count_of_those',
                            w.trade_count))
                    ELSE '{{}}'::jsonb END                              AS raw,
                    w.n::integer                                        AS source_candles,
                    {expected}                                          AS expected,
                    {score}                                             AS quality_score,
                    w.n, w.invalid_rows, w.partial_rows, w.rows_read, w.newest_ts,
                    w.ingested_max, w.ingested_sum
                FROM (
                    SELECT
                        {window} AS ts_utc,
                        count(*) FILTER (WHERE usable)                  AS n,
                        count(*) FILTER (WHERE NOT valid)               AS invalid_rows,
                        count(*) FILTER (WHERE valid AND NOT final)     AS partial_rows,
                        -- [epoch, price] arrays compare element-wise, so min/max pick the
                        -- earliest/latest bar in one pass without sorting
                        min(ARRAY[t, open])  FILTER (WHERE ohlc)        AS first_bar,
                        max(ARRAY[t, close]) FILTER (WHERE ohlc)        AS last_bar,
                        max(high) FILTER (WHERE ohlc)                   AS high,
                        min(low)  FILTER (WHERE ohlc)                   AS low,
                        sum(vol) FILTER (WHERE usable)                  AS vol,
                        sum(vwap * vol) FILTER (WHERE usable AND vwap IS NOT NULL AND vol > 0) AS pv,
                        sum(vol) FILTER (WHERE usable AND vwap IS NOT NULL AND vol > 0) AS pv_vol,
                        sum(trade_count) FILTER (WHERE usable)          AS trade_count,
                        count(vol) FILTER (WHERE usable)                AS n_vol,
                        count(trade_count) FILTER (WHERE usable)        AS n_trades,
                        max(ts_utc) FILTER (WHERE usable)               AS newest_ts,
                        count(*)                                        AS rows_read,
                        max(ingested_at)                                AS ingested_max,
                        -- integer microseconds: an exact, order-independent fingerprint
                        sum((date_part('epoch', ingested_at) * 1000000)::bigint) AS ingested_sum
                    FROM (
                        SELECT src.*,
                               valid AND final AS usable,
                               -- zero-volume filler bars stay out of open/high/low/close when the
                               -- symbol asks for it and the window has traded bars; bars without
                               -- volume (NULL) are not fillers
                               valid AND final AND (vol IS DISTINCT FROM 0 OR NOT {window_traded})
                                   AS ohlc
                        FROM (
                            SELECT b.ts_utc, b.open, b.high, b.low, b.close, b.vol, b.vwap,
                                   b.trade_count, b.ingested_at,
                                   agg_bar_is_valid(b.open, b.high, b.low, b.close, b.vol, b.vwap,
                                                    b.trade_count, b.ts_utc, {source_grid})
                                       AS valid,
                                   NOT b.is_partial AS final,
                                   date_part('epoch', b.ts_utc) AS t
                            FROM {source_table} b
                            WHERE b.canonical_symbol = r.symbol
                              AND b.timeframe = %(source_timeframe)s
                              AND b.ts_utc >= r.read_from
                              AND b.ts_utc < r.final_to
                              {active_only}
                              {in_window}
                            -- in time order whatever the plan (index or bitmap scan, heap order
                            -- after updates): float sums then add in one order, so a bar's vol
                            -- and vwap do not change in their last bits from plan to plan. An
                            -- index scan is already in this order; numeric sums would cost more.
                            ORDER BY b.ts_utc
                            -- a planner fence: without it agg_bar_is_valid() is inlined into
                            -- every FILTER and evaluated once per aggregate, not once per row
                            OFFSET 0
                        ) src
                        OFFSET 0  -- fence, as above
                    ) flagged
                    GROUP BY 1
                ) w
            ) q
            -- (a FULL JOIN runs as a hash or merge join whatever the estimates; fresh
            -- loads have none)
            FULL JOIN (
                SELECT d.ctid AS existing_ctid, d.id, d.ts_utc, d.open, d.high, d.low, d.close,
                       d.vol, d.vwap, d.trade_count, d.source_timeframe, d.source_candles,
                       d.expected_candles, d.quality_score, d.derivation_version,
                       d.updated_at, d.raw, d.is_partial
                FROM derived_data_bars d
                WHERE d.canonical_symbol = r.symbol
                  AND d.timeframe = %(timeframe)s
                  AND d.deleted_at IS NULL
                  AND d.ts_utc >= r.lo
                  AND d.ts_utc < r.final_to
            ) e ON e.ts_utc = q.ts_utc
            -- contract 6: final by the delay, or complete, or already stored as final
            CROSS JOIN LATERAL (
                SELECT COALESCE(q.ts_utc, e.ts_utc) < r.hi
                       OR COALESCE(q.n = q.expected, false)
                       OR (e.ts_utc IS NOT NULL AND NOT e.is_partial) AS final
            ) fin
        ),
        bound AS (
            SELECT COALESCE(min(g.ts) FILTER (WHERE f.window_ts IS NULL), r.final_to)
                       AS final_hi
            FROM {pending} AS g(ts)
            LEFT JOIN w f ON f.window_ts = g.ts AND f.final
        )
        SELECT 'write' AS kind, w.window_ts AS at, w.action, w.open, w.high, w.low, w.close,
               w.vol, w.vwap, w.trade_count, w.raw, w.source_candles, w.quality_score,
               w.existing_ctid, w.was_partial, w.old_id, w.old_open, w.old_high, w.old_low,
               w.old_close, w.old_vol, w.old_vwap, w.old_trade_count, w.old_source_timeframe,
               w.old_source_candles, w.old_expected_candles, w.old_quality_score,
               w.old_version, w.old_since, w.expected,
               NULL::bigint[] AS counts, NULL::timestamptz AS newest_source_ts,
               NULL::timestamptz AS fp_max, NULL::numeric AS fp_sum
        FROM w
        WHERE w.action IN ('insert', 'update', 'delete')
        UNION ALL
        SELECT 'day', date_bin(interval '24 hours', w.window_ts,
                               TIMESTAMPTZ '2000-01-01 00:00:00+00'),
               NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
               NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
               NULL, NULL,
               ARRAY[
                   count(*) FILTER (WHERE w.final AND w.rows_read > 0),
                   count(*) FILTER (WHERE w.final AND w.rows_read > 0
                                    AND w.quality_score IS NULL),
                   -- a forming bar made final is a new final bar, not a restatement
                   count(*) FILTER (WHERE w.action = 'insert'
                                    OR (w.action = 'update' AND w.was_partial)),
                   count(*) FILTER (WHERE w.action = 'update' AND NOT w.was_partial),
                   count(*) FILTER (WHERE w.action = 'delete'),
                   count(*) FILTER (WHERE w.action = 'unchanged'),
                   count(*) FILTER (WHERE w.action = 'kept'),
                   count(*) FILTER (WHERE w.action IN ('insert', 'update')
                                    AND w.quality_score <= 0),
                   COALESCE(sum(w.rows_read) FILTER (WHERE w.final), 0),
                   COALESCE(sum(w.invalid_rows) FILTER (WHERE w.final), 0),
                   COALESCE(sum(w.partial_rows) FILTER (WHERE w.final), 0),
                   -- the day's fingerprint: source rows up to the first window not final
                   COALESCE(sum(w.rows_read) FILTER (WHERE w.window_ts < b.final_hi), 0)
               ]::bigint[],
               max(w.newest_ts) FILTER (WHERE w.final),
               max(w.ingested_max) FILTER (WHERE w.window_ts < b.final_hi),
               COALESCE(sum(w.ingested_sum) FILTER (WHERE w.window_ts < b.final_hi), 0)
        FROM w
        CROSS JOIN bound b
        GROUP BY 2
        UNION ALL
        SELECT 'bound', b.final_hi, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
               NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
               NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL
        FROM bound b
    ) x
),
inserted AS (
    INSERT INTO derived_data_bars (
        canonical_symbol, timeframe, ts_utc, open, high, low, close, vol, vwap, trade_count,
        is_partial, source, ingested_at, source_timeframe, source_candles, expected_candles,
        quality_score, derivation_version, created_at, updated_at, raw)
    SELECT x.symbol, %(timeframe)s, x.at, x.open, x.high, x.low, x.close, x.vol, x.vwap,
           x.trade_count, false, 'agg', now(), %(source_timeframe)s, x.source_candles,
           x.expected, x.quality_score, x.version, now(), now(), x.raw
    FROM diff x
    WHERE x.kind = 'write' AND x.action = 'insert'
),
-- rows are addressed by the ctid the diff read (under the task rows' locks nothing else
-- moves them): a TID scan per row, never a scan of derived_data_bars (a CTE scan filtered
-- on two columns is estimated at a row or so, so the planner joins by nested loop). Not
-- `ctid = ANY (ARRAY(...))` beside the join: that is a filter re-reading the whole array per
-- row, quadratic (30 s to restate a symbol-year's 75,000 bars, measured)
updated AS (
    UPDATE derived_data_bars d
    SET open = x.open, high = x.high, low = x.low, close = x.close, vol = x.vol,
        vwap = x.vwap, trade_count = x.trade_count, source_timeframe = %(source_timeframe)s,
        source_candles = x.source_candles, expected_candles = x.expected,
        quality_score = x.quality_score, derivation_version = x.version, raw = x.raw,
        is_partial = false, ingested_at = now(), updated_at = now()
    FROM diff x
    WHERE d.ctid = x.existing_ctid AND x.kind = 'write' AND x.action = 'update'
),
soft_deleted AS (
    UPDATE derived_data_bars d
    SET deleted_at = now(), updated_at = now()
    WHERE d.ctid = ANY (ARRAY(SELECT existing_ctid FROM diff
                              WHERE kind = 'write' AND action = 'delete'))
),
-- a bar written behind the cursor of a task that reads this timeframe's bars (1h from 5m):
-- that task's incremental read would start at its cursor and miss it (migration 022)
restated_downstream AS (
    UPDATE data_agg_state s
    SET source_restated_from = least(s.source_restated_from, w.first_at)
    FROM (SELECT symbol, min(at) AS first_at FROM diff WHERE kind = 'write' GROUP BY symbol) w
    WHERE s.canonical_symbol = w.symbol
      AND s.source_timeframe = %(timeframe)s
      AND w.first_at < s.last_agg_bar_ts_utc
),
-- per request, its first window not final and the fingerprinted days [record_from, record_to)
final_bound AS (
    SELECT x.ord, x.symbol, x.read_from, x.record_from, x.consume_from, x.at AS final_hi,
           greatest(x.record_from, least(x.record_limit,
               date_bin(interval '24 hours', x.at + interval '24 hours'
                        - interval '1 microsecond', TIMESTAMPTZ '2000-01-01 00:00:00+00')))
               AS record_to
    FROM diff x
    WHERE x.kind = 'bound'
),
-- Pending changes (migration 012: updates, deletes, truncates of data_bars) of the days this
-- statement fingerprints, read in its snapshot and marked consumed: a change recorded after
-- that snapshot has a new seq, fails the re-check and stays pending (contract 10). Empty for
-- timeframes that read derived bars (their record range is empty).
changes_seen AS (
    SELECT c.canonical_symbol, c.timeframe, c.day, c.seq, c.kinds
    FROM final_bound b
    CROSS JOIN LATERAL (
        SELECT c.canonical_symbol, c.timeframe, c.day, c.seq, c.kinds
        FROM data_agg_source_changes c
        WHERE c.canonical_symbol = b.symbol
          AND c.timeframe = %(source_timeframe)s
          AND c.day >= (b.record_from AT TIME ZONE 'UTC')::date
          AND c.day < (b.record_to AT TIME ZONE 'UTC')::date
          AND c.seq > c.consumed_seq
          AND c.earliest_ts_utc >= COALESCE(b.consume_from, '-infinity')
        OFFSET 0  -- per symbol through the primary key
    ) c
),
consumed AS (
    UPDATE data_agg_source_changes c
    SET consumed_seq = s.seq
    FROM changes_seen s
    WHERE c.canonical_symbol = s.canonical_symbol AND c.timeframe = s.timeframe
      AND c.day = s.day AND c.seq = s.seq
),
-- the version each restated or withdrawn bar had until now (contract 9). Why: a change of
-- the source captured for its day, or for a timeframe read from derived bars the reason
-- this run gave its source bars' revisions, else the run's reason.
revised AS (
    INSERT INTO derived_bar_revisions (
        bar_id, canonical_symbol, timeframe, ts_utc, open, high, low, close, vol, vwap,
        trade_count, source_timeframe, source_candles, expected_candles, quality_score,
        derivation_version, valid_from, valid_to, change, reason, run_id)
    SELECT x.old_id, x.symbol, %(timeframe)s, x.at, x.old_open, x.old_high,
           x.old_low, x.old_close, x.old_vol, x.old_vwap, x.old_trade_count,
           x.old_source_timeframe, x.old_source_candles, x.old_expected_candles,
           x.old_quality_score, x.old_version, x.old_since, now(),
           CASE WHEN x.action = 'delete' THEN 'withdrawn' ELSE 'restated' END,
           CASE WHEN %(reason)s = 'rebuild' THEN %(reason)s
                WHEN ch.kinds && ARRAY['delete', 'truncate'] THEN 'deletion'
                WHEN 'update' = ANY (ch.kinds) THEN 'correction'
                ELSE COALESCE((
                    SELECT v.reason FROM derived_bar_revisions v
                    WHERE %(run_id)s::text IS NOT NULL
                      AND v.canonical_symbol = x.symbol
                      AND v.timeframe = %(source_timeframe)s
                      AND v.ts_utc >= x.at AND v.ts_utc < x.at + %(step)s::interval
                      AND v.run_id = %(run_id)s
                    ORDER BY array_position(
                        ARRAY['deletion', 'correction', 'reconciliation', 'late_data'], v.reason)
                    LIMIT 1), %(reason)s)
           END,
           %(run_id)s
    FROM diff x
    LEFT JOIN changes_seen ch
      ON ch.canonical_symbol = x.symbol AND ch.day = (x.at AT TIME ZONE 'UTC')::date
    WHERE x.kind = 'write' AND x.action IN ('update', 'delete')
      AND NOT x.was_partial  -- forming bars are not versions
),
-- Every UTC day the request covers, rows or not. An incremental read's day continues the
-- fingerprint recorded up to where it began (chained), any other read replaces it.
recorded AS (
    INSERT INTO data_agg_source_days AS r (
        canonical_symbol, timeframe, day, covered_from, final_through, source_rows,
        source_ingested_max, source_ingested_sum, materialized_at, source_removed)
    SELECT b.symbol, %(timeframe)s, (g.day AT TIME ZONE 'UTC')::date,
           greatest(g.day, b.read_from), least(g.day + interval '24 hours', b.final_hi),
           COALESCE(d.counts[12], 0), d.fp_max, COALESCE(d.fp_sum, 0), now(),
           -- found gone now (its bars kept); once found, it stays so (below)
           COALESCE(d.counts[7], 0) > 0
    FROM final_bound b
    CROSS JOIN LATERAL generate_series(b.record_from, b.record_to - interval '24 hours',
                                       interval '24 hours') AS g(day)
    LEFT JOIN diff d ON d.kind = 'day' AND d.ord = b.ord AND d.at = g.day
    WHERE greatest(g.day, b.read_from) < least(g.day + interval '24 hours', b.final_hi)
    ON CONFLICT (canonical_symbol, timeframe, day) DO UPDATE
    SET covered_from = CASE WHEN r.final_through = excluded.covered_from THEN r.covered_from
                            ELSE excluded.covered_from END,
        source_rows = excluded.source_rows
            + CASE WHEN r.final_through = excluded.covered_from THEN r.source_rows ELSE 0 END,
        source_ingested_max = CASE WHEN r.final_through = excluded.covered_from
                                   THEN greatest(r.source_ingested_max,
                                                 excluded.source_ingested_max)
                                   ELSE excluded.source_ingested_max END,
        source_ingested_sum = excluded.source_ingested_sum
            + CASE WHEN r.final_through = excluded.covered_from THEN r.source_ingested_sum
                   ELSE 0 END,
        final_through = excluded.final_through,
        materialized_at = excluded.materialized_at,
        source_removed = r.source_removed OR excluded.source_removed
)
SELECT ord, kind, at, counts, newest_source_ts
FROM diff
WHERE kind = 'bound' OR (kind = 'day' AND counts[1:11] <> array_fill(0::bigint, ARRAY[11]))
ORDER BY ord, kind, at
