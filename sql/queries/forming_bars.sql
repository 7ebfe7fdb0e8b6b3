-- The forming bars of many symbols of one timeframe (after aggregate_windows.sql, in the same
-- transaction). Per request: the window holding the newest usable source row in
-- [hi, range_end) (hi: the first window not final), when that window is not complete, rolled
-- up from the source rows so far as a final bar is (contract 2, the partial-volume rule),
-- with source_candles so far and no quality score; only for symbols that opted in (`forming`).
-- Every other partial bar of the request at or after hi is withdrawn (at most one forming
-- bar; for a symbol that opted out, none). Partial bars are not versions: no revisions.
-- {source_table}/{source_filter} as in aggregate_windows.sql, except that 1h and above read
-- forming 5m bars too. Returns each forming bar's window and source count. A request on a
-- calendar carries its windows in [hi, range_end) as aggregate_windows.sql's do (`starts`,
-- `ends`, `exps`), the fragments find a row's window, its end and expected count in them.
WITH req AS (
    SELECT *
    FROM json_to_recordset(%(requests)s::json)
        AS r(symbol text, hi timestamptz, range_end timestamptz, forming boolean,
             version integer{request_columns})
    {window_sets}
),
rolled AS (
    SELECT r.symbol, r.version, f.*
    FROM req r
    CROSS JOIN LATERAL (
        SELECT w.ts_utc,
               (min(ARRAY[s.t, s.open]))[2] AS open, max(s.high) AS high, min(s.low) AS low,
               (max(ARRAY[s.t, s.close]))[2] AS close,
               CASE WHEN count(s.vol) = count(*) THEN sum(s.vol) END AS vol,
               CASE WHEN count(s.vol) = count(*) THEN
                   sum(s.vwap * s.vol) FILTER (WHERE s.vwap IS NOT NULL AND s.vol > 0)
                   / NULLIF(sum(s.vol) FILTER (WHERE s.vwap IS NOT NULL AND s.vol > 0), 0)
               END AS vwap,
               CASE WHEN count(s.trade_count) = count(*) THEN sum(s.trade_count)::integer END
                   AS trade_count,
               count(*)::integer AS source_candles,
               {expected} AS expected
        FROM (
            SELECT b.ts_utc, b.open, b.high, b.low, b.close, b.vol, b.vwap, b.trade_count,
                   NOT b.is_partial AS final, date_part('epoch', b.ts_utc) AS t
            FROM {source_table} b
            WHERE r.forming
              AND b.canonical_symbol = r.symbol
              AND b.timeframe = %(source_timeframe)s
              AND b.ts_utc >= r.hi
              AND b.ts_utc < r.range_end
              AND b.ts_utc <= %(as_of)s
              {source_filter}
              AND agg_bar_is_valid(b.open, b.high, b.low, b.close, b.vol, b.vwap,
                                   b.trade_count, b.ts_utc, {source_grid})
        ) s
        JOIN (
            SELECT {newest_window} AS ts_utc
            FROM {source_table} b
            WHERE r.forming
              AND b.canonical_symbol = r.symbol
              AND b.timeframe = %(source_timeframe)s
              AND b.ts_utc >= r.hi
              AND b.ts_utc < r.range_end
              AND b.ts_utc <= %(as_of)s
              {source_filter}
              AND agg_bar_is_valid(b.open, b.high, b.low, b.close, b.vol, b.vwap,
                                   b.trade_count, b.ts_utc, {source_grid})
            HAVING count(*) > 0
        ) w ON s.ts_utc >= w.ts_utc AND s.ts_utc < {window_end}
        GROUP BY w.ts_utc
        -- a complete window is final: aggregate_windows.sql wrote it
        HAVING count(*) FILTER (WHERE s.final) < {expected}
            OR {window_end} > %(as_of)s
    ) f
),
partial_bars AS (
    SELECT r.symbol, d.*
    FROM req r
    CROSS JOIN LATERAL (
        SELECT d.ctid AS bar_ctid, d.ts_utc,
               (d.open, d.high, d.low, d.close, d.vol, d.vwap, d.trade_count,
                d.source_candles) AS bar_values
        FROM derived_data_bars d
        WHERE d.canonical_symbol = r.symbol
          AND d.timeframe = %(timeframe)s
          AND d.deleted_at IS NULL
          AND d.is_partial
          AND d.ts_utc >= r.hi
        OFFSET 0  -- per symbol through the (symbol, timeframe, ts_utc) index
    ) d
),
stale AS (
    UPDATE derived_data_bars d
    SET deleted_at = now(), updated_at = now()
    WHERE d.ctid = ANY (ARRAY(
        SELECT p.bar_ctid FROM partial_bars p
        LEFT JOIN rolled f ON f.symbol = p.symbol AND f.ts_utc = p.ts_utc
        WHERE f.ts_utc IS NULL))
),
refreshed AS (
    UPDATE derived_data_bars d
    SET open = f.open, high = f.high, low = f.low, close = f.close, vol = f.vol,
        vwap = f.vwap, trade_count = f.trade_count, source_candles = f.source_candles,
        ingested_at = now(), updated_at = now()
    FROM rolled f
    JOIN partial_bars p ON p.symbol = f.symbol AND p.ts_utc = f.ts_utc
    WHERE d.ctid = p.bar_ctid
      AND p.bar_values IS DISTINCT FROM
          (f.open, f.high, f.low, f.close, f.vol, f.vwap, f.trade_count, f.source_candles)
),
inserted AS (
    INSERT INTO derived_data_bars (
        canonical_symbol, timeframe, ts_utc, open, high, low, close, vol, vwap, trade_count,
        is_partial, source, ingested_at, source_timeframe, source_candles, expected_candles,
        quality_score, derivation_version, created_at, updated_at, raw)
    SELECT f.symbol, %(timeframe)s, f.ts_utc, f.open, f.high, f.low, f.close, f.vol, f.vwap,
           f.trade_count, true, 'agg', now(), %(source_timeframe)s, f.source_candles,
           f.expected, NULL, f.version, now(), now(), '{{}}'::jsonb
    FROM rolled f
    WHERE NOT EXISTS (
        SELECT 1 FROM derived_data_bars d
        WHERE d.canonical_symbol = f.symbol AND d.timeframe = %(timeframe)s
          AND d.ts_utc = f.ts_utc AND d.deleted_at IS NULL)
)
SELECT symbol, ts_utc AS forming_ts, source_candles AS forming_candles FROM rolled
