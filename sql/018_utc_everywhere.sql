-- SPEC contract 1 (issue 18, item 1): what the database computes is the same whatever the
-- session's TimeZone, including inside the sessions of the ingesters (whose statements fire
-- migration 012's capture triggers) and of users' own connections, which nothing pins.
--
-- Audit of every function, trigger and view of migrations 001-017 (each day or window
-- derived from a timestamptz must not depend on TimeZone):
--   * windows: date_bin(..., TIMESTAMPTZ '2000-01-01 00:00:00+00') works on absolute time
--     (agg_bar_is_valid, the health view, the synthetic build): zone-independent;
--   * days: (ts AT TIME ZONE 'UTC')::date and day::timestamp AT TIME ZONE 'UTC' (the
--     capture triggers of 012, the synthetic build of 017): zone-independent;
--     agg_build_synthetic_bars and agg_prune_backups also run with SET TimeZone = 'UTC';
--   * epochs: date_part('epoch', timestamptz) and extract(epoch FROM interval) are absolute;
--   * interval arithmetic: `timestamptz - interval '1 day'` is calendar arithmetic in the
--     session's zone (23 or 25 hours across a DST switch). agg_prune_source_changes did that
--     with its argument (the late-data sensor passes 1 day); redefined below.

-- Consumed days older than p_older_than (by their last change) are history nobody reads:
-- without pruning the table keeps one row per symbol-day ever changed. Pending days are never
-- removed; a day changed again while being pruned is either kept (its new seq fails the
-- re-check) or recorded afresh. The age is absolute (a day is 24 hours), whatever the
-- session's TimeZone; no SET clause, so the function stays as cheap as before.
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
     WHERE seq = consumed_seq
       AND last_changed_at < now() - make_interval(secs => extract(epoch FROM p_older_than));
    GET DIAGNOSTICS v_removed = ROW_COUNT;
    RETURN v_removed;
END;
$$;

-- CREATE OR REPLACE drops the function's SET clauses: the fixed search_path of migration 012
-- again (this schema, then pg_temp last), and its rights as they were (idempotent).
DO $$
BEGIN
    EXECUTE format('ALTER FUNCTION agg_prune_source_changes(interval) SET search_path = %I, '
                   'pg_temp', current_schema());
END;
$$;
REVOKE ALL ON FUNCTION agg_prune_source_changes(interval) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION agg_prune_source_changes(interval) TO agg_pipeline_runtime;
