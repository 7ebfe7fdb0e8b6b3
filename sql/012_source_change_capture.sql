-- Change capture on data_bars (SPEC contract 10, issue 12 item 1): what ingested_at cannot
-- show. UPDATE, DELETE and TRUNCATE record the affected (symbol, source timeframe, UTC day)
-- in data_agg_source_changes, one row per day, merged. Inserts are not captured: a row that
-- lands late carries a new ingested_at, which the late-data path already sees, and inserts
-- stay exactly as fast as without capture (no INSERT trigger at all).
--
-- Protocol. Every recorded change sets seq = nextval(data_agg_source_change_seq); a day is
-- pending while seq > consumed_seq. The consumer (the engine) marks a day consumed in the
-- statement that re-reads its source rows, with
--     UPDATE data_agg_source_changes SET consumed_seq = seen.seq ... WHERE seq = seen.seq
-- A change committed after the consumer's snapshot has a new seq, so under READ COMMITTED
-- the UPDATE's re-check of the newest row version (EvalPlanQual) skips the row and the day
-- stays pending; a change still uncommitted holds the row lock, the UPDATE waits for it and
-- then skips the row the same way. Nothing is lost and nothing is consumed twice.
-- The sequence has CACHE 1 on purpose: with a per-session cache a later change could draw a
-- smaller number than one already consumed and look consumed. A writer draws its number
-- while holding the day's row lock (ON CONFLICT DO UPDATE locks the row, then evaluates SET),
-- so it is larger than every number that row carried before.
--
-- Bypasses, left to the periodic reconciliation of recorded day fingerprints (the backstop):
--   * ALTER TABLE data_bars DISABLE TRIGGER ... (by the table's owner): nothing is captured
--     while disabled. (A disabled trigger with transition tables still makes PostgreSQL
--     collect them, so disabling does not even make bulk updates cheaper: drop and re-create
--     the trigger if you must, or better, leave it.)
--   * Statements naming a partition of a partitioned data_bars directly (UPDATE/DELETE/
--     TRUNCATE data_bars_2025_07, DROP or DETACH PARTITION): statement-level triggers fire
--     only for the table a statement names, and PostgreSQL does not clone them to
--     partitions. Ingesters must write through data_bars itself. Dropping old partitions
--     for retention is deliberately not an invalidation: the derived history is kept.
--   * Changes made by the table's owner with the capture functions replaced or dropped.
-- Not a bypass: session_replication_role = replica (logical replication's apply workers,
-- pg_restore, tools that load in replica mode). The triggers are ENABLE ALWAYS because a
-- feed replicated into data_bars by logical replication is ingestion like any other: its
-- updates, deletes and truncates must reach the pipeline. (Do not publish
-- data_agg_source_changes itself to a subscriber that also runs these triggers: both would
-- write the same rows. Pipeline state is per database.)
--
-- Partitioned data_bars (declarative, by range on ts_utc): PostgreSQL 15/16 allow transition tables only on statement-level triggers
-- of a partitioned table (row-level ones are refused), and those see the rows of every
-- partition the statement touched. An UPDATE that moves a row to another partition appears
-- once in the UPDATE trigger's old and new tables (not as a DELETE plus an INSERT), so the
-- days of both images are recorded.
--
-- Adoption: no scan and no rewrite of data_bars. CREATE TRIGGER and ALTER TABLE ... ENABLE
-- ALWAYS TRIGGER take a SHARE ROW EXCLUSIVE lock on data_bars (writers wait, readers do not)
-- until this migration commits, which is right after; a migration that cannot get the lock
-- within 10 s gives up rather than queue every ingester behind it.

CREATE SEQUENCE IF NOT EXISTS data_agg_source_change_seq AS bigint CACHE 1;

CREATE TABLE IF NOT EXISTS data_agg_source_changes (
    canonical_symbol text NOT NULL,
    timeframe        text NOT NULL,  -- of the changed data_bars rows (a source timeframe)
    day              date NOT NULL,  -- UTC day of ts_utc
    first_changed_at timestamptz NOT NULL,
    last_changed_at  timestamptz NOT NULL,
    changes          bigint NOT NULL,
    kinds            text[] NOT NULL,
    earliest_ts_utc  timestamptz NOT NULL,
    seq              bigint NOT NULL,
    consumed_seq     bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (canonical_symbol, timeframe, day),
    CONSTRAINT data_agg_source_changes_kinds
        CHECK (cardinality(kinds) > 0 AND kinds <@ ARRAY['update', 'delete', 'truncate']),
    -- a consumer can only consume what was recorded, never a change still to come
    CONSTRAINT data_agg_source_changes_consumed CHECK (consumed_seq BETWEEN 0 AND seq)
)
-- Every change statement rewrites its days' rows. No index but the primary key, and room on
-- each page, keep those updates HOT (no index writes): an index on the pending rows (seq >
-- consumed_seq) made every update write two index entries and doubled the triggers' cost
-- (bench/ingest_bench.py). Readers of the pending days scan the table, which
-- agg_prune_source_changes keeps small.
WITH (fillfactor = 70);

COMMENT ON TABLE data_agg_source_changes IS
    'UTC days of data_bars changed by UPDATE, DELETE or TRUNCATE (migration 012). Pending '
    'while seq > consumed_seq; the engine sets consumed_seq = seq when it re-reads the day.';
COMMENT ON COLUMN data_agg_source_changes.first_changed_at IS
    'Start of the first changing statement since the day was last consumed (pending since).';
COMMENT ON COLUMN data_agg_source_changes.changes IS
    'Rows updated or deleted since the day was last consumed (an update counts once per day '
    'its row was in or moved to); a truncate counts 1.';
COMMENT ON COLUMN data_agg_source_changes.kinds IS
    'update / delete / truncate: what changed the day since it was last consumed, in the '
    'order they first did.';
COMMENT ON COLUMN data_agg_source_changes.earliest_ts_utc IS
    'Earliest ts_utc among the changed rows (old and new images) since the day was last '
    'consumed; the day''s start for a truncate. A change at or after what was materialised '
    '(final_through) is new data, not late data.';

-- Once per statement: AFTER UPDATE and AFTER DELETE record the days of the old (and new) row
-- images in the statement's transition tables; BEFORE TRUNCATE records every day the pipeline
-- has materialised from data_bars (its day fingerprints), without scanning data_bars
-- (data_agg_source_days is keyed by the target timeframe, 5m; the task row says which source
-- timeframe it read, '1m'). SECURITY DEFINER: runs as the migrating user, so ingesters need
-- no grant on data_agg_source_changes or its sequence.
CREATE OR REPLACE FUNCTION agg_capture_source_changes() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER AS $$
DECLARE
    v_symbols text[];
    v_timeframes text[];
    v_days date[];
    v_changes bigint[];
    v_earliest timestamptz[];
BEGIN
    -- (each branch is planned only when it first runs, so a branch may name transition
    -- tables that other triggers of this function do not have)
    IF TG_OP = 'UPDATE' THEN
        -- a row updated within its day is one change of that day; a row moved to another
        -- day is one change of each
        SELECT array_agg(canonical_symbol), array_agg(timeframe), array_agg(day),
               array_agg(changes), array_agg(earliest)
          INTO v_symbols, v_timeframes, v_days, v_changes, v_earliest
          FROM (SELECT canonical_symbol, timeframe, (ts_utc AT TIME ZONE 'UTC')::date AS day,
                       greatest(count(*) FILTER (WHERE is_old), count(*) FILTER (WHERE NOT is_old))
                           AS changes,
                       min(ts_utc) AS earliest
                  FROM (SELECT canonical_symbol, timeframe, ts_utc, true AS is_old FROM old_rows
                        UNION ALL
                        SELECT canonical_symbol, timeframe, ts_utc, false FROM new_rows) images
                 GROUP BY 1, 2, 3) per_day;
    ELSIF TG_OP = 'DELETE' THEN
        SELECT array_agg(canonical_symbol), array_agg(timeframe), array_agg(day),
               array_agg(changes), array_agg(earliest)
          INTO v_symbols, v_timeframes, v_days, v_changes, v_earliest
          FROM (SELECT canonical_symbol, timeframe, (ts_utc AT TIME ZONE 'UTC')::date AS day,
                       count(*) AS changes, min(ts_utc) AS earliest
                  FROM old_rows
                 GROUP BY 1, 2, 3) per_day;
    ELSE  -- TRUNCATE
        SELECT array_agg(canonical_symbol), array_agg(source_timeframe), array_agg(day),
               array_agg(1::bigint), array_agg(day::timestamp AT TIME ZONE 'UTC')
          INTO v_symbols, v_timeframes, v_days, v_changes, v_earliest
          FROM (SELECT DISTINCT d.canonical_symbol, s.source_timeframe, d.day
                  FROM data_agg_source_days d
                  JOIN data_agg_state s
                    ON s.canonical_symbol = d.canonical_symbol AND s.timeframe = d.timeframe
                 WHERE s.source_timeframe IS NOT NULL) materialised;
    END IF;
    -- an upsert that only inserted fires the UPDATE trigger with empty transition tables
    IF v_days IS NULL THEN
        RETURN NULL;
    END IF;
    -- A day still pending merges this change into its pending batch; a day already consumed
    -- starts a new batch. Rows are locked in key order, so concurrent statements writing
    -- several days never deadlock on them.
    INSERT INTO data_agg_source_changes AS c (
        canonical_symbol, timeframe, day, first_changed_at, last_changed_at, changes, kinds,
        earliest_ts_utc, seq)
    SELECT u.symbol, u.timeframe, u.day, statement_timestamp(), statement_timestamp(),
           u.changes, ARRAY[lower(TG_OP)], u.earliest, nextval('data_agg_source_change_seq')
      FROM unnest(v_symbols, v_timeframes, v_days, v_changes, v_earliest)
           AS u(symbol, timeframe, day, changes, earliest)
     ORDER BY u.symbol, u.timeframe, u.day
    ON CONFLICT (canonical_symbol, timeframe, day) DO UPDATE SET
        first_changed_at = CASE WHEN c.seq > c.consumed_seq THEN c.first_changed_at
                                ELSE excluded.first_changed_at END,
        last_changed_at = excluded.last_changed_at,
        changes = CASE WHEN c.seq > c.consumed_seq THEN c.changes + excluded.changes
                       ELSE excluded.changes END,
        kinds = CASE WHEN c.seq <= c.consumed_seq THEN excluded.kinds
                     WHEN excluded.kinds <@ c.kinds THEN c.kinds
                     ELSE c.kinds || excluded.kinds END,
        earliest_ts_utc = CASE WHEN c.seq > c.consumed_seq
                               THEN least(c.earliest_ts_utc, excluded.earliest_ts_utc)
                               ELSE excluded.earliest_ts_utc END,
        -- drawn after the row lock is taken: larger than any seq this row had before
        seq = nextval('data_agg_source_change_seq');
    RETURN NULL;
END;
$$;

-- Consumed days older than p_older_than (by their last change) are history nobody reads:
-- without pruning the table keeps one row per symbol-day ever changed. Pending days are never
-- removed; a day changed again while being pruned is either kept (its new seq fails the
-- re-check) or recorded afresh.
CREATE OR REPLACE FUNCTION agg_prune_source_changes(p_older_than interval)
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER AS $$
DECLARE
    v_removed bigint;
BEGIN
    IF p_older_than IS NULL OR p_older_than < interval '0' THEN
        RAISE EXCEPTION 'agg_prune_source_changes: p_older_than must be an interval >= 0, got %',
            COALESCE(p_older_than::text, 'NULL') USING ERRCODE = 'invalid_parameter_value';
    END IF;
    DELETE FROM data_agg_source_changes
     WHERE seq = consumed_seq AND last_changed_at < now() - p_older_than;
    GET DIAGNOSTICS v_removed = ROW_COUNT;
    RETURN v_removed;
END;
$$;

-- Fixed search_path (this schema, then pg_temp last) so no caller can shadow the tables.
-- Only the pipeline role may prune; nobody calls the others except the triggers (a trigger
-- function's EXECUTE right is checked when the trigger is created, by its owner).
DO $$
DECLARE
    v_fn text;
BEGIN
    FOREACH v_fn IN ARRAY ARRAY[
        'agg_capture_source_changes()',
        'agg_prune_source_changes(interval)'] LOOP
        EXECUTE format('ALTER FUNCTION %s SET search_path = %I, pg_temp', v_fn, current_schema());
        EXECUTE format('REVOKE ALL ON FUNCTION %s FROM PUBLIC', v_fn);
    END LOOP;
END;
$$;
GRANT EXECUTE ON FUNCTION agg_prune_source_changes(interval) TO agg_pipeline_runtime;

-- The engine reads the days and marks them consumed; it can neither forge nor delete them
-- (consumed_seq is the only column it may write, and only up to seq).
GRANT SELECT ON data_agg_source_changes TO agg_pipeline_runtime;
GRANT UPDATE (consumed_seq) ON data_agg_source_changes TO agg_pipeline_runtime;

-- Last, so the lock on data_bars is held only for the trigger DDL and the commit.
DO $$
BEGIN
    PERFORM set_config('lock_timeout', '10s', true);
    LOCK TABLE ONLY data_bars IN SHARE ROW EXCLUSIVE MODE;
EXCEPTION WHEN lock_not_available THEN
    RAISE EXCEPTION 'data_bars stayed locked by other transactions for 10 s (a long ingester '
                    'transaction?); migration 012 needs a brief SHARE ROW EXCLUSIVE lock to '
                    'add its triggers: run migrate again'
        USING ERRCODE = 'lock_not_available';
END;
$$;

CREATE OR REPLACE TRIGGER agg_capture_source_update
    AFTER UPDATE ON data_bars
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION agg_capture_source_changes();
CREATE OR REPLACE TRIGGER agg_capture_source_delete
    AFTER DELETE ON data_bars
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION agg_capture_source_changes();
CREATE OR REPLACE TRIGGER agg_capture_source_truncate
    BEFORE TRUNCATE ON data_bars
    FOR EACH STATEMENT EXECUTE FUNCTION agg_capture_source_changes();
ALTER TABLE ONLY data_bars
    ENABLE ALWAYS TRIGGER agg_capture_source_update,
    ENABLE ALWAYS TRIGGER agg_capture_source_delete,
    ENABLE ALWAYS TRIGGER agg_capture_source_truncate;
