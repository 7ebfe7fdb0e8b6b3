-- Synthetic series (issue 13 item 2): an index computed from other symbols' 1m bars, such as
-- DXY = 50.14348112 x EURUSD^-0.576 x USDJPY^0.136 x GBPUSD^-0.119 x USDCAD^0.091
--       x USDSEK^0.042 x USDCHF^0.036 (ICE's published formula).
-- A series is data: a constant, components with exponents, and the forward-fill bound. Its
-- 1m bars are written into data_bars (source 'synthetic:<symbol>', the registry row has
-- ingest_class = 'B') by agg_build_synthetic_bars, from the components' aligned 1m bars;
-- from there 5m, 1h, ... derive as for any symbol, and the index's own writes go through
-- the change capture of migration 012 like any ingester's.
--
-- The rules (README, "Synthetic indices"):
--   * Minute m of the index exists when every component has a usable (valid, final) 1m bar
--     at m, or its last usable bar at most max_fill_minutes (<= 2) before m; that leg then
--     counts as flat at its last close (open = high = low = close). Beyond the bound, or
--     when no leg has a bar of its own (the market closed, the feeds out), the index minute
--     is not written: the index's 5m quality ladder sees the gap. Why 2: it is
--     the largest bound for which a component that did not trade for a whole 5m window can
--     never make a 5m bar of the index (at most 2 filled minutes < the ladder's 3), while the
--     isolated missing minutes of a quiet leg (the common case: at 2% missing per leg, 11% of
--     the index's minutes would miss one of six legs) are bridged.
--   * open and close apply the formula to the legs' opens and closes (the index's values at
--     the minute's start and end). A product of component highs is not the index's high:
--     legs with negative exponents push the index up when they fall, and the legs' extremes
--     fall at different instants of the minute. high and low are max(open, close) and
--     min(open, close): the extremes of the values the index is known to have taken. The
--     envelope it cannot have left (each leg at its high or low, whichever raises / lowers
--     the index) is kept in raw as high_bound / low_bound, with the filled legs' ages.
--   * vol, vwap and trade_count are NULL (an index has no volume).
--
-- Change detection of its own: a component's recorded changes (migration 012) are consumed
-- by that component's own 5m run, so the index keeps, per (index day, component), the
-- fingerprint of the component rows it was built from and the change seq it saw
-- (data_agg_synthetic_inputs), and compares them with the changes table read-only.

CREATE TABLE IF NOT EXISTS data_agg_synthetic_series (
    canonical_symbol text PRIMARY KEY,
    constant         double precision NOT NULL,
    max_fill_minutes integer NOT NULL DEFAULT 2,
    description      text,
    defined_at       timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT data_agg_synthetic_series_constant CHECK (constant BETWEEN 1e-12 AND 1e12),
    -- never beyond 2 minutes (why: see above); 0 disables the fill
    CONSTRAINT data_agg_synthetic_series_fill CHECK (max_fill_minutes BETWEEN 0 AND 2)
);

CREATE TABLE IF NOT EXISTS data_agg_synthetic_components (
    canonical_symbol text NOT NULL REFERENCES data_agg_synthetic_series ON DELETE CASCADE,
    component        text NOT NULL,
    exponent         double precision NOT NULL,
    PRIMARY KEY (canonical_symbol, component),
    CONSTRAINT data_agg_synthetic_components_self CHECK (component <> canonical_symbol),
    -- |exponent| <= 10 and (agg_define_synthetic) their sum <= 20: with prices in
    -- [1e-12, 1e12] the formula's logarithm stays within +-553, so exp() never overflows
    CONSTRAINT data_agg_synthetic_components_exponent
        CHECK (exponent <> 0 AND abs(exponent) <= 10)
);

COMMENT ON TABLE data_agg_synthetic_series IS
    'Synthetic series (migration 017): index = constant x product(component ^ exponent) over '
    'the components'' aligned 1m bars, written to data_bars by agg_build_synthetic_bars. '
    'Define or redefine with agg_define_synthetic().';

-- What each built index day read: per component, the fingerprint of its rows over
-- [covered_from, covered_through) (agg_source_fingerprint: rows, newest and summed
-- ingested_at) and the change seq of migration 012 recorded for the component's day and
-- the day before (whose last minutes feed this day's forward-fill) when it was built.
CREATE TABLE IF NOT EXISTS data_agg_synthetic_inputs (
    canonical_symbol    text NOT NULL,  -- the index
    day                 date NOT NULL,  -- UTC day of the index minutes
    component           text NOT NULL,
    covered_from        timestamptz NOT NULL,  -- day start - max_fill_minutes
    covered_through     timestamptz NOT NULL,  -- index minutes before this were built
    source_rows         bigint NOT NULL,
    source_ingested_max timestamptz,
    source_ingested_sum numeric NOT NULL,
    seen_seq            bigint NOT NULL,  -- data_agg_source_changes.seq of (component, day)
    seen_seq_before     bigint NOT NULL,  -- ... of (component, day - 1)
    built_at            timestamptz NOT NULL,
    PRIMARY KEY (canonical_symbol, day, component)
);

COMMENT ON TABLE data_agg_synthetic_inputs IS
    'Per built index day and component: the component rows'' fingerprint and the change seqs '
    'seen (migration 017). The planner compares them with data_bars and '
    'data_agg_source_changes to find index days whose components changed.';

-- The series the pipeline builds: defined, with a registry row of ingest_class 'B', every
-- component in the registry, and a live 5m task (its confirmation delay and agg_start_utc
-- apply to the index); and how far each was built (the newest built day's covered_through;
-- NULL: never built). A series missing a component is an ordinary symbol until it has all.
CREATE OR REPLACE VIEW v_agg_synthetic_series AS
SELECT s.canonical_symbol, s.max_fill_minutes, t.aggregation_delay_seconds, t.agg_start_utc,
       (SELECT i.covered_through FROM data_agg_synthetic_inputs i
        WHERE i.canonical_symbol = s.canonical_symbol
        ORDER BY i.day DESC LIMIT 1) AS built_through
FROM data_agg_synthetic_series s
JOIN core_asset_registry_all r
  ON r.canonical_symbol = s.canonical_symbol AND r.ingest_class = 'B'
JOIN data_agg_state t
  ON t.canonical_symbol = s.canonical_symbol AND t.timeframe = '5m'
WHERE t.enabled
  AND t.status NOT IN ('disabled', 'retired')
  AND NOT EXISTS (SELECT 1 FROM data_agg_synthetic_components c
                  LEFT JOIN core_asset_registry_all x ON x.canonical_symbol = c.component
                  WHERE c.canonical_symbol = s.canonical_symbol AND x.canonical_symbol IS NULL);

-- Define (or redefine) a series: the owner's tool, the runtime role may not. A redefinition
-- forgets what the index was built from, so the next frontier tick rebuilds it all.
CREATE OR REPLACE FUNCTION agg_define_synthetic(
    p_symbol text, p_constant double precision, p_components text[],
    p_exponents double precision[], p_max_fill_minutes integer DEFAULT 2,
    p_description text DEFAULT NULL
) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF p_symbol IS NULL OR p_symbol !~ '^[A-Za-z0-9^][A-Za-z0-9._:^=+-]{0,31}$' THEN
        RAISE EXCEPTION 'synthetic symbol % must be 1-32 characters: letters, digits and . _ : ^ = + -',
            quote_literal(COALESCE(p_symbol, 'NULL')) USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF cardinality(p_components) IS DISTINCT FROM cardinality(p_exponents)
       OR COALESCE(cardinality(p_components), 0) = 0 THEN
        RAISE EXCEPTION 'synthetic %: one exponent per component, at least one component', p_symbol
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF (SELECT sum(abs(e)) FROM unnest(p_exponents) e) > 20 THEN
        RAISE EXCEPTION 'synthetic %: the exponents'' absolute values must sum to at most 20', p_symbol
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF EXISTS (SELECT 1 FROM data_agg_synthetic_series s WHERE s.canonical_symbol = ANY (p_components))
       OR EXISTS (SELECT 1 FROM data_agg_synthetic_components c WHERE c.component = p_symbol) THEN
        RAISE EXCEPTION 'synthetic %: a component may not be a synthetic series itself', p_symbol
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    INSERT INTO data_agg_synthetic_series AS s (canonical_symbol, constant, max_fill_minutes,
                                                description)
    VALUES (p_symbol, p_constant, p_max_fill_minutes, p_description)
    ON CONFLICT (canonical_symbol) DO UPDATE
    SET constant = excluded.constant, max_fill_minutes = excluded.max_fill_minutes,
        description = excluded.description, defined_at = now();
    DELETE FROM data_agg_synthetic_components WHERE canonical_symbol = p_symbol;
    INSERT INTO data_agg_synthetic_components (canonical_symbol, component, exponent)
    SELECT p_symbol, c, e FROM unnest(p_components, p_exponents) AS u(c, e);
    DELETE FROM data_agg_synthetic_inputs WHERE canonical_symbol = p_symbol;
END;
$$;

SELECT agg_define_synthetic(
    'DXY', 50.14348112,
    ARRAY['EURUSD', 'USDJPY', 'GBPUSD', 'USDCAD', 'USDSEK', 'USDCHF'],
    ARRAY[-0.576, 0.136, -0.119, 0.091, 0.042, 0.036]::double precision[],
    2, 'US Dollar Index (ICE): 50.14348112 x EURUSD^-0.576 x USDJPY^0.136 x GBPUSD^-0.119 '
       'x USDCAD^0.091 x USDSEK^0.042 x USDCHF^0.036')
WHERE NOT EXISTS (SELECT 1 FROM data_agg_synthetic_series WHERE canonical_symbol = 'DXY');

-- Build the index's 1m bars of [p_from, p_to) (UTC midnights) from its components, as of
-- p_as_of: minutes final at least the symbol's confirmation delay (its 5m task's
-- aggregation_delay_seconds, default 60 s) before p_as_of (and now) are written. One
-- statement: compute, insert new minutes, update changed ones, delete its own minutes that
-- no longer qualify, leave unchanged ones unwritten (the change capture would record them),
-- and record what each day read. Rows of another source at a slot are never touched
-- (counted as slots_taken). Returns one row of counts per UTC day of the range built.
--
-- Why a SECURITY DEFINER function and not a row-level security policy on data_bars: the
-- pipeline's role cannot supply a single value here, it can only ask for a defined index to
-- be recomputed from its components, so it has no write path to any row of data_bars, not
-- even the index's. A policy would need INSERT/UPDATE/DELETE grants on data_bars plus
-- ENABLE ROW LEVEL SECURITY on the platform's own table, which changes what every other
-- role (ingesters, Supabase's API roles) sees and may do unless each gets a policy too.
CREATE OR REPLACE FUNCTION agg_build_synthetic_bars(
    p_symbol text, p_from timestamptz, p_to timestamptz, p_as_of timestamptz
) RETURNS TABLE (
    day date, index_minutes bigint, minutes_filled bigint, minutes_incomplete bigint,
    rows_inserted bigint, rows_updated bigint, rows_deleted bigint, rows_unchanged bigint,
    slots_taken bigint, component_rows_read bigint, component_rows_unusable bigint
)
LANGUAGE plpgsql SECURITY DEFINER
-- UTC days whatever the caller's session; floats to jsonb in shortest exact form; no JIT:
-- generate_series' default row estimates make the plan look costly enough to compile, which
-- took 1.3 s of a 50 ms statement (a day of six components, measured on PostgreSQL 15)
SET TimeZone = 'UTC'
SET extra_float_digits = 1
SET jit = off
-- a year of minutes sorts in memory; plans are made for the range at hand, never generic
SET work_mem = '64MB'
SET plan_cache_mode = force_custom_plan
AS $$
#variable_conflict use_column
DECLARE
    v_epoch CONSTANT timestamptz := TIMESTAMPTZ '2000-01-01 00:00:00+00';
    v_source CONSTANT text := 'synthetic:' || p_symbol;
    v_constant double precision;
    v_fill interval;
    v_legs integer;
    v_nested text;
    v_delay integer;
    v_lo timestamptz;
    v_hi timestamptz;
BEGIN
    IF p_symbol IS NULL OR p_from IS NULL OR p_to IS NULL OR p_as_of IS NULL THEN
        RAISE EXCEPTION 'agg_build_synthetic_bars: no argument may be NULL'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF NOT (isfinite(p_from) AND isfinite(p_to) AND isfinite(p_as_of)) OR p_from >= p_to
       OR date_bin(interval '24 hours', p_from, v_epoch) <> p_from
       OR date_bin(interval '24 hours', p_to, v_epoch) <> p_to THEN
        RAISE EXCEPTION 'agg_build_synthetic_bars(%): [%, %) must be a range of whole UTC days',
            p_symbol, p_from, p_to USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT s.constant, make_interval(mins => s.max_fill_minutes) INTO v_constant, v_fill
      FROM data_agg_synthetic_series s WHERE s.canonical_symbol = p_symbol;
    IF NOT FOUND THEN
        RAISE EXCEPTION '% is not a synthetic series (no row in data_agg_synthetic_series)',
            p_symbol USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM core_asset_registry_all r
                    WHERE r.canonical_symbol = p_symbol AND r.ingest_class = 'B') THEN
        RAISE EXCEPTION 'synthetic series % needs a registry row with ingest_class = ''B''',
            p_symbol USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT count(*), min(c.component) FILTER (WHERE n.canonical_symbol IS NOT NULL)
      INTO v_legs, v_nested
      FROM data_agg_synthetic_components c
      LEFT JOIN data_agg_synthetic_series n ON n.canonical_symbol = c.component
     WHERE c.canonical_symbol = p_symbol;
    IF v_legs = 0 OR v_nested IS NOT NULL THEN
        RAISE EXCEPTION 'synthetic series % has no components, or a synthetic one (%)',
            p_symbol, v_nested USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- one writer per index (contract 13), as the engine's per-task lock
    PERFORM pg_advisory_xact_lock(hashtextextended('agg_pipeline/' || p_symbol || '/synthetic', 0));
    SELECT t.aggregation_delay_seconds INTO v_delay
      FROM data_agg_state t WHERE t.canonical_symbol = p_symbol AND t.timeframe = '5m';
    v_lo := p_from;
    v_hi := least(p_to, date_bin(interval '1 minute',
                                 least(p_as_of, now())
                                 - make_interval(secs => greatest(COALESCE(v_delay, 60), 0)),
                                 v_epoch));
    IF v_hi <= v_lo THEN
        RETURN;
    END IF;

    RETURN QUERY
    WITH legs AS (
        SELECT c.component, c.exponent
        FROM data_agg_synthetic_components c
        WHERE c.canonical_symbol = p_symbol
    ),
    -- every component row of the range and the fill's look-back before it
    src AS (
        SELECT l.component, l.exponent, b.ts_utc, b.open, b.high, b.low, b.close,
               NOT b.is_partial
               AND agg_bar_is_valid(b.open, b.high, b.low, b.close, b.vol, b.vwap,
                                    b.trade_count, b.ts_utc, interval '1 minute') AS usable
        FROM legs l
        JOIN data_bars b
          ON b.canonical_symbol = l.component AND b.timeframe = '1m'
         AND b.ts_utc >= v_lo - v_fill AND b.ts_utc < v_hi
        OFFSET 0  -- a planner fence: agg_bar_is_valid() once per row
    ),
    usable AS (
        SELECT s.*, lead(s.ts_utc) OVER (PARTITION BY s.component ORDER BY s.ts_utc) AS next_ts
        FROM src s
        WHERE s.usable
    ),
    -- each usable bar serves its own minute and, as the leg's last close, the minutes after
    -- it until the leg's next bar, at most v_fill of them
    served AS (
        SELECT u.component, u.exponent, m.minute,
               (extract(epoch FROM m.minute - u.ts_utc) / 60)::integer AS age,
               CASE WHEN m.minute = u.ts_utc THEN u.open ELSE u.close END AS leg_open,
               u.close AS leg_close,
               -- the leg's value within the minute that raises (up) / lowers (down) the index
               CASE WHEN m.minute > u.ts_utc THEN u.close
                    WHEN u.exponent > 0 THEN u.high ELSE u.low END AS leg_up,
               CASE WHEN m.minute > u.ts_utc THEN u.close
                    WHEN u.exponent > 0 THEN u.low ELSE u.high END AS leg_down
        FROM usable u
        CROSS JOIN LATERAL generate_series(
            u.ts_utc,
            least(u.ts_utc + v_fill, u.next_ts - interval '1 minute', v_hi - interval '1 minute'),
            interval '1 minute') AS m(minute)
        WHERE m.minute >= v_lo
    ),
    -- the formula as constant x exp(sum(exponent x ln(price))). The logarithms are summed
    -- as integers of 1e-15 (exact, so in any order: the same rows always give the same bits
    -- and an unchanged minute is never rewritten, whatever plan sums them), which moves the
    -- index by at most 1e-15 x legs relative.
    per_minute AS (
        SELECT s.minute,
               count(*) AS legs_served,
               count(*) FILTER (WHERE s.age > 0) AS legs_filled,
               sum(round(s.exponent * ln(s.leg_open) * 1e15)::bigint) AS log_open,
               sum(round(s.exponent * ln(s.leg_close) * 1e15)::bigint) AS log_close,
               sum(round(s.exponent * ln(s.leg_up) * 1e15)::bigint) AS log_up,
               sum(round(s.exponent * ln(s.leg_down) * 1e15)::bigint) AS log_down,
               jsonb_object_agg(s.component, s.age) FILTER (WHERE s.age > 0) AS filled
        FROM served s
        GROUP BY s.minute
    ),
    computed AS (
        SELECT p.minute AS ts_utc, p.legs_filled,
               v_constant * exp(p.log_open::double precision / 1e15) AS open,
               v_constant * exp(p.log_close::double precision / 1e15) AS close,
               jsonb_build_object('high_bound', v_constant * exp(p.log_up::double precision / 1e15),
                                  'low_bound', v_constant * exp(p.log_down::double precision / 1e15))
               || CASE WHEN p.filled IS NULL THEN '{}'::jsonb
                       ELSE jsonb_build_object('filled', p.filled) END AS raw
        FROM per_minute p
        WHERE p.legs_served = v_legs AND p.legs_filled < v_legs
    ),
    existing AS (
        SELECT b.id, b.ts_utc, b.source, b.open, b.high, b.low, b.close, b.vol, b.vwap,
               b.trade_count, b.is_partial, b.raw
        FROM data_bars b
        WHERE b.canonical_symbol = p_symbol AND b.timeframe = '1m'
          AND b.ts_utc >= v_lo AND b.ts_utc < v_hi
    ),
    diff AS (
        SELECT COALESCE(n.ts_utc, e.ts_utc) AS ts_utc, n.ts_utc IS NOT NULL AS wanted,
               n.open, greatest(n.open, n.close) AS high, least(n.open, n.close) AS low,
               n.close, n.raw, e.id, e.source = v_source AS ours,
               (e.open, e.high, e.low, e.close, e.vol, e.vwap, e.trade_count, e.is_partial,
                e.raw)
               IS NOT DISTINCT FROM
               (n.open, greatest(n.open, n.close), least(n.open, n.close), n.close,
                NULL::double precision, NULL::double precision, NULL::integer, false, n.raw)
               AS same
        FROM computed n
        FULL JOIN existing e ON e.ts_utc = n.ts_utc
    ),
    inserted AS (
        INSERT INTO data_bars (canonical_symbol, provider_ticker, timeframe, ts_utc, open, high,
                               low, close, vol, vwap, trade_count, is_partial, source,
                               ingested_at, raw)
        SELECT p_symbol, NULL, '1m', d.ts_utc, d.open, d.high, d.low, d.close, NULL, NULL, NULL,
               false, v_source, now(), d.raw
        FROM diff d
        WHERE d.wanted AND d.id IS NULL
        ON CONFLICT (canonical_symbol, timeframe, ts_utc) DO NOTHING
        RETURNING ts_utc
    ),
    updated AS (
        UPDATE data_bars b
        SET open = d.open, high = d.high, low = d.low, close = d.close, vol = NULL, vwap = NULL,
            trade_count = NULL, is_partial = false, raw = d.raw, ingested_at = now()
        FROM diff d
        WHERE b.canonical_symbol = p_symbol AND b.timeframe = '1m' AND b.ts_utc = d.ts_utc
          AND b.id = d.id AND d.ours AND d.wanted AND NOT d.same
        RETURNING b.ts_utc
    ),
    deleted AS (
        DELETE FROM data_bars b
        USING diff d
        WHERE b.canonical_symbol = p_symbol AND b.timeframe = '1m' AND b.ts_utc = d.ts_utc
          AND b.id = d.id AND d.ours AND NOT d.wanted
        RETURNING b.ts_utc
    ),
    days AS (
        SELECT g.day_start, (g.day_start AT TIME ZONE 'UTC')::date AS day,
               least(g.day_start + interval '24 hours', v_hi) AS covered_through
        FROM generate_series(v_lo, v_hi - interval '1 microsecond', interval '24 hours')
             AS g(day_start)
    ),
    -- what each day read, in this statement's snapshot: the rows it computed from and the
    -- change seqs recorded up to them (a change committed later has a larger seq)
    recorded AS (
        INSERT INTO data_agg_synthetic_inputs AS i (
            canonical_symbol, day, component, covered_from, covered_through, source_rows,
            source_ingested_max, source_ingested_sum, seen_seq, seen_seq_before, built_at)
        SELECT p_symbol, d.day, l.component, d.day_start - v_fill, d.covered_through,
               fp.source_rows, fp.source_ingested_max, fp.source_ingested_sum,
               COALESCE((SELECT c.seq FROM data_agg_source_changes c
                         WHERE c.canonical_symbol = l.component AND c.timeframe = '1m'
                           AND c.day = d.day), 0),
               COALESCE((SELECT c.seq FROM data_agg_source_changes c
                         WHERE c.canonical_symbol = l.component AND c.timeframe = '1m'
                           AND c.day = d.day - 1), 0),
               now()
        FROM days d
        CROSS JOIN legs l
        CROSS JOIN LATERAL agg_source_fingerprint(l.component, d.day_start - v_fill,
                                                  d.covered_through) fp
        ON CONFLICT (canonical_symbol, day, component) DO UPDATE
        SET covered_from = excluded.covered_from, covered_through = excluded.covered_through,
            source_rows = excluded.source_rows,
            source_ingested_max = excluded.source_ingested_max,
            source_ingested_sum = excluded.source_ingested_sum, seen_seq = excluded.seen_seq,
            seen_seq_before = excluded.seen_seq_before, built_at = excluded.built_at
    ),
    tallies (ts_utc, index_minute, filled, incomplete, ins, upd, del, unchanged, taken, read,
             unusable) AS (
        SELECT ts_utc, 1, (legs_filled > 0)::int, 0, 0, 0, 0, 0, 0, 0, 0 FROM computed
        UNION ALL
        SELECT minute, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0 FROM per_minute WHERE legs_served < v_legs
        UNION ALL
        SELECT ts_utc, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0 FROM inserted
        UNION ALL
        SELECT ts_utc, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0 FROM updated
        UNION ALL
        SELECT ts_utc, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0 FROM deleted
        UNION ALL
        SELECT ts_utc, 0, 0, 0, 0, 0, 0, (ours AND wanted AND same)::int,
               (wanted AND id IS NOT NULL AND NOT ours)::int, 0, 0
        FROM diff WHERE id IS NOT NULL
        UNION ALL
        SELECT ts_utc, 0, 0, 0, 0, 0, 0, 0, 0, 1, (NOT usable)::int FROM src
        WHERE ts_utc >= v_lo
    ),
    per_day AS (
        SELECT (date_bin(interval '24 hours', t.ts_utc, v_epoch) AT TIME ZONE 'UTC')::date AS day,
               sum(index_minute) AS index_minutes, sum(filled) AS minutes_filled,
               sum(incomplete) AS minutes_incomplete, sum(ins) AS rows_inserted,
               sum(upd) AS rows_updated, sum(del) AS rows_deleted,
               sum(unchanged) AS rows_unchanged, sum(taken) AS slots_taken,
               sum(read) AS component_rows_read, sum(unusable) AS component_rows_unusable
        FROM tallies t
        GROUP BY 1
    )
    SELECT d.day, COALESCE(p.index_minutes, 0)::bigint, COALESCE(p.minutes_filled, 0)::bigint,
           COALESCE(p.minutes_incomplete, 0)::bigint, COALESCE(p.rows_inserted, 0)::bigint,
           COALESCE(p.rows_updated, 0)::bigint, COALESCE(p.rows_deleted, 0)::bigint,
           COALESCE(p.rows_unchanged, 0)::bigint, COALESCE(p.slots_taken, 0)::bigint,
           COALESCE(p.component_rows_read, 0)::bigint,
           COALESCE(p.component_rows_unusable, 0)::bigint
    FROM days d
    LEFT JOIN per_day p ON p.day = d.day
    ORDER BY d.day;
END;
$$;

-- Fixed search_path (this schema, then pg_temp last) so no caller can shadow the tables; the
-- build function is the pipeline role's only way to touch data_bars, the definition function
-- is the owner's alone.
DO $$
DECLARE
    v_fn text;
BEGIN
    FOREACH v_fn IN ARRAY ARRAY[
        'agg_build_synthetic_bars(text, timestamptz, timestamptz, timestamptz)',
        'agg_define_synthetic(text, double precision, text[], double precision[], integer, text)'
    ] LOOP
        EXECUTE format('ALTER FUNCTION %s SET search_path = %I, pg_temp', v_fn, current_schema());
        EXECUTE format('REVOKE ALL ON FUNCTION %s FROM PUBLIC', v_fn);
    END LOOP;
END;
$$;
GRANT EXECUTE ON FUNCTION agg_build_synthetic_bars(text, timestamptz, timestamptz, timestamptz)
    TO agg_pipeline_runtime;
GRANT SELECT ON data_agg_synthetic_series, data_agg_synthetic_components,
                data_agg_synthetic_inputs, v_agg_synthetic_series
    TO agg_pipeline_runtime;
