-- Source retention is not a correction (SPEC contract 16), and derived bars stored once.
--
-- 1. A day whose source is gone. Dropping, detaching or truncating a partition of data_bars
--    removes rows without the change capture of migration 012 seeing it (no trigger fires on
--    data_bars). A materialised day none of whose rows that were there when it was
--    fingerprinted remains, with no deletion of it captured, has lost its source to
--    retention: the engine keeps its bars as they are (a row landing later may add a bar
--    where none was, never restate or withdraw one), and so does a rebuild. Once found, the
--    day stays so (source_removed) until an operator who restored its rows clears the flag.
--    Deleting rows through data_bars is captured: a correction (contract 9), unless before
--    the declared horizon below. A bypassed delete of some rows of a day is a correction
--    the reconciliation backstop finds; of every row of a day, it is taken for retention.
ALTER TABLE data_agg_source_days
    ADD COLUMN IF NOT EXISTS source_removed boolean NOT NULL DEFAULT false;

COMMENT ON COLUMN data_agg_source_days.source_removed IS
    'The rows this day was materialised from were removed by retention (a dropped, detached '
    'or truncated partition): its derived bars are kept and never restated or withdrawn. '
    'Clear it only after restoring the day''s rows (SPEC contract 16).';

CREATE OR REPLACE FUNCTION agg_source_day_gone(p_symbol text, p_timeframe text, p_day date)
RETURNS boolean
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT EXISTS (
        SELECT 1
        FROM data_agg_source_days r
        WHERE r.canonical_symbol = p_symbol
          AND r.timeframe = p_timeframe
          AND r.day = p_day
          AND (r.source_removed OR (
              r.source_rows > 0
              -- none of the rows it was fingerprinted from is left: none that landed by
              -- the newest it read (a row landing later carries a later ingested_at)
              AND NOT EXISTS (
                  SELECT 1 FROM data_bars b
                  WHERE b.canonical_symbol = p_symbol AND b.timeframe = '1m'
                    AND b.ts_utc >= r.covered_from AND b.ts_utc < r.final_through
                    AND b.ingested_at <= r.source_ingested_max)
              AND NOT EXISTS (
                  SELECT 1 FROM data_agg_source_changes c
                  WHERE c.canonical_symbol = p_symbol AND c.timeframe = '1m'
                    AND c.day = p_day AND c.seq > c.consumed_seq
                    AND c.kinds && ARRAY['delete', 'truncate']))))
$$;

-- 2. A declared retention horizon per source timeframe, a UTC day. A job that deletes old
--    rows of data_bars through the table (which the change capture records as deletions)
--    declares how far it deletes, before or after: windows of days before the horizon are
--    never re-read, so their bars are kept as they are; changes of those days are not
--    captured from then on, and those captured before are consumed here. Grant EXECUTE on
--    agg_declare_source_retention to the retention job's role.
CREATE TABLE IF NOT EXISTS data_agg_source_retention (
    source_timeframe text PRIMARY KEY,
    retained_from    timestamptz NOT NULL,
    declared_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT data_agg_source_retention_finite CHECK (isfinite(retained_from))
);

COMMENT ON TABLE data_agg_source_retention IS
    'Source rows before retained_from may be deleted by retention: derived bars of windows '
    'before it are kept and never re-read (SPEC contract 16). Set with '
    'agg_declare_source_retention(); it only moves forward.';

CREATE OR REPLACE FUNCTION agg_declare_source_retention(
    p_retained_from timestamptz, p_source_timeframe text DEFAULT '1m'
) RETURNS timestamptz
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
    v_horizon timestamptz;
BEGIN
    IF p_retained_from IS NULL OR NOT isfinite(p_retained_from) THEN
        RAISE EXCEPTION 'retention horizon must be a finite timestamp, got %',
            COALESCE(p_retained_from::text, 'NULL') USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_source_timeframe IS DISTINCT FROM '1m' THEN
        RAISE EXCEPTION 'only data_bars'' 1m rows are a source of the pipeline, not %',
            quote_literal(COALESCE(p_source_timeframe, 'NULL'))
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    INSERT INTO public.data_agg_source_retention AS r (source_timeframe, retained_from)
    VALUES (p_source_timeframe,  -- its UTC day: the engine fingerprints and re-reads days
            date_bin(interval '24 hours', p_retained_from, TIMESTAMPTZ '2000-01-01 00:00:00+00'))
    ON CONFLICT (source_timeframe) DO UPDATE
    SET retained_from = greatest(r.retained_from, excluded.retained_from), declared_at = now()
    RETURNING retained_from INTO v_horizon;
    -- deletions captured in days wholly before the horizon are retention: nothing to redo
    UPDATE public.data_agg_source_changes c
    SET consumed_seq = c.seq
    WHERE c.timeframe = p_source_timeframe
      AND c.seq > c.consumed_seq
      AND c.day < (v_horizon AT TIME ZONE 'UTC')::date;
    RETURN v_horizon;
END;
$$;

-- A change of a day before the horizon is retention, not a correction: it is not recorded
-- (migration 012's capture writes each changed day through this; one lookup per day row).
CREATE OR REPLACE FUNCTION agg_skip_retained_changes() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, public AS $$
BEGIN
    IF NEW.day < (SELECT (r.retained_from AT TIME ZONE 'UTC')::date
                  FROM public.data_agg_source_retention r
                  WHERE r.source_timeframe = NEW.timeframe) THEN
        RETURN NULL;
    END IF;
    RETURN NEW;
END;
$$;

DROP TRIGGER IF EXISTS data_agg_source_changes_retained ON data_agg_source_changes;
CREATE TRIGGER data_agg_source_changes_retained
    BEFORE INSERT ON data_agg_source_changes
    FOR EACH ROW EXECUTE FUNCTION agg_skip_retained_changes();

REVOKE ALL ON FUNCTION agg_declare_source_retention(timestamptz, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION agg_declare_source_retention(timestamptz, text)
    TO agg_pipeline_runtime;
GRANT SELECT ON data_agg_source_retention TO agg_pipeline_runtime;

-- 3. derived_data_bars indexed once per key. Seed 004 adds (canonical_symbol, timeframe,
--    ts_utc DESC) beside the unique (canonical_symbol, timeframe, ts_utc) WHERE deleted_at
--    IS NULL: every active bar was in both (~45 B per bar, and a second index write per
--    insert). A B-tree is read in either direction, so the unique index serves every read
--    of active bars, newest first included; the soft-deleted history gets an index of its
--    own, which writes of active bars never touch. On a large table build the new index
--    first without blocking writers:
--      CREATE INDEX CONCURRENTLY derived_data_bars_history_idx ON derived_data_bars
--          (canonical_symbol, timeframe, ts_utc) WHERE deleted_at IS NOT NULL;
--    and this migration finds it in place.
CREATE INDEX IF NOT EXISTS derived_data_bars_history_idx
    ON derived_data_bars (canonical_symbol, timeframe, ts_utc) WHERE deleted_at IS NOT NULL;
DROP INDEX IF EXISTS derived_data_bars_symbol_tf_ts_desc_idx;
