-- Restatement history (SPEC contract 9): a restated or withdrawn derived bar's previous
-- version is never lost. derived_data_bars keeps each bar's current version (updated_at is
-- when that version began); every version a change replaced lands here, with the span it
-- was current, what happened to it, why, and the Dagster run that did it. The engine writes
-- these rows in the statement that restates or withdraws the bars; unchanged bars are still
-- never written, so a re-run that changes nothing adds nothing here.
--
-- Why a table beside derived_data_bars rather than soft-deleted copies inside it: an
-- in-place UPDATE leaves the bar's id, its indexes' entries and the partial unique index of
-- active bars alone (a soft-delete + insert pair would rewrite all three and, within one
-- statement, race the unique index), and readers of derived_data_bars see no extra rows.
-- The cost falls only on restatements: one narrow INSERT per changed bar.
CREATE TABLE IF NOT EXISTS derived_bar_revisions (
    revision_id        bigserial PRIMARY KEY,
    bar_id             bigint NOT NULL,  -- derived_data_bars.id of the bar this version was
    canonical_symbol   text NOT NULL,
    timeframe          text NOT NULL,
    ts_utc             timestamptz NOT NULL,
    open               double precision NOT NULL,
    high               double precision NOT NULL,
    low                double precision NOT NULL,
    close              double precision NOT NULL,
    vol                double precision,
    vwap               double precision,
    trade_count        integer,
    source_timeframe   text,
    source_candles     integer,
    expected_candles   integer,
    quality_score      integer,
    derivation_version integer,
    valid_from         timestamptz NOT NULL,  -- when this version became the bar
    valid_to           timestamptz NOT NULL,  -- when it was replaced or withdrawn
    change             text NOT NULL,
    reason             text NOT NULL,
    run_id             text,  -- the Dagster run that made the change (NULL outside Dagster)
    CONSTRAINT derived_bar_revisions_change
        CHECK (change IN ('restated', 'withdrawn', 'rebuilt')),
    CONSTRAINT derived_bar_revisions_span CHECK (valid_from <= valid_to)
);

COMMENT ON TABLE derived_bar_revisions IS
    'Every superseded version of a derived bar (migration 014): restated (values changed), '
    'withdrawn (no longer qualifies, its source deleted) or rebuilt (rebuild_range). reason: '
    'late_data, correction, deletion, reconciliation, catch_up, backfill, rebuild, manual.';

CREATE INDEX IF NOT EXISTS derived_bar_revisions_bar_idx
    ON derived_bar_revisions (canonical_symbol, timeframe, ts_utc, valid_to);

-- Bars soft-deleted before this migration: their last version, as far as it is known (the
-- row kept its values; it was current from its creation to its deletion).
INSERT INTO derived_bar_revisions (
    bar_id, canonical_symbol, timeframe, ts_utc, open, high, low, close, vol, vwap,
    trade_count, source_timeframe, source_candles, expected_candles, quality_score,
    derivation_version, valid_from, valid_to, change, reason)
SELECT d.id, d.canonical_symbol, d.timeframe, d.ts_utc, d.open, d.high, d.low, d.close,
       d.vol, d.vwap, d.trade_count, d.source_timeframe, d.source_candles, d.expected_candles,
       d.quality_score, d.derivation_version, least(d.created_at, d.deleted_at), d.deleted_at,
       'withdrawn', 'before_history'
FROM derived_data_bars d
WHERE d.deleted_at IS NOT NULL
  AND NOT EXISTS (SELECT 1 FROM derived_bar_revisions r WHERE r.bar_id = d.id);

-- Every version of every bar: the superseded ones, and the current ones (valid_to NULL).
-- Partial (still forming) bars are not versions: readers filter is_partial as ever.
CREATE OR REPLACE VIEW v_derived_bar_versions AS
SELECT r.canonical_symbol, r.timeframe, r.ts_utc, r.open, r.high, r.low, r.close, r.vol,
       r.vwap, r.trade_count, r.source_candles, r.expected_candles, r.quality_score,
       r.derivation_version, r.valid_from, r.valid_to, r.change, r.reason, r.run_id, r.bar_id
FROM derived_bar_revisions r
UNION ALL
SELECT d.canonical_symbol, d.timeframe, d.ts_utc, d.open, d.high, d.low, d.close, d.vol,
       d.vwap, d.trade_count, d.source_candles, d.expected_candles, d.quality_score,
       d.derivation_version, d.updated_at, NULL, 'current', NULL, NULL, d.id
FROM derived_data_bars d
WHERE d.deleted_at IS NULL AND NOT d.is_partial;

-- "Bar S/TF/T as of instant X": the version that was current at p_at (none: no bar then).
CREATE OR REPLACE FUNCTION agg_bar_as_of(
    p_symbol text, p_timeframe text, p_ts timestamptz, p_at timestamptz
) RETURNS SETOF v_derived_bar_versions
LANGUAGE sql STABLE AS $$
    SELECT v.* FROM v_derived_bar_versions v
    WHERE v.canonical_symbol = p_symbol AND v.timeframe = p_timeframe AND v.ts_utc = p_ts
      AND v.valid_from <= p_at AND (v.valid_to IS NULL OR v.valid_to > p_at)
$$;

-- "Every revision of S/TF over [p_from, p_to)", oldest version of each bar first.
CREATE OR REPLACE FUNCTION agg_bar_revisions(
    p_symbol text, p_timeframe text, p_from timestamptz, p_to timestamptz
) RETURNS SETOF v_derived_bar_versions
LANGUAGE sql STABLE AS $$
    SELECT v.* FROM v_derived_bar_versions v
    WHERE v.canonical_symbol = p_symbol AND v.timeframe = p_timeframe
      AND v.ts_utc >= p_from AND v.ts_utc < p_to
    ORDER BY v.ts_utc, v.valid_from, v.valid_to NULLS LAST
$$;

GRANT SELECT, INSERT ON derived_bar_revisions TO agg_pipeline_runtime;
GRANT USAGE ON SEQUENCE derived_bar_revisions_revision_id_seq TO agg_pipeline_runtime;
GRANT SELECT ON v_derived_bar_versions TO agg_pipeline_runtime;
