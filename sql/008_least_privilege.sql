-- Least privilege: the pipeline connects as a member of agg_pipeline_runtime, which can read
-- the registry and source bars, write derived bars, task state and source-day fingerprints,
-- and nothing more: no DDL, no DELETE anywhere, no writes to data_bars or the registry.
-- The runbook's DDL (backup tables) runs in SECURITY DEFINER functions owned by the
-- migrating user, with a fixed search_path, that validate every identifier they build.
--
-- Grant the role to the pipeline's login user:  GRANT agg_pipeline_runtime TO <user>;

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'agg_pipeline_runtime') THEN
        CREATE ROLE agg_pipeline_runtime NOLOGIN;
    END IF;
EXCEPTION WHEN insufficient_privilege THEN
    RAISE EXCEPTION 'role agg_pipeline_runtime is missing and this user cannot create it: '
                    'have an administrator run CREATE ROLE agg_pipeline_runtime NOLOGIN, '
                    'then migrate again';
END;
$$;

DO $$
BEGIN
    EXECUTE format('GRANT USAGE ON SCHEMA %I TO agg_pipeline_runtime', current_schema());
END;
$$;

GRANT SELECT ON core_asset_registry_all, data_bars, agg_schema_migrations,
                v_aggregation_frontier_health, v_agg_state_backups
    TO agg_pipeline_runtime;
GRANT SELECT, INSERT, UPDATE ON derived_data_bars, data_agg_state, data_agg_source_days
    TO agg_pipeline_runtime;
GRANT USAGE ON SEQUENCE derived_data_bars_id_seq TO agg_pipeline_runtime;

-- Backups of data_agg_state for the runbook: CREATE TABLE data_agg_state_backup_<name>.
CREATE OR REPLACE FUNCTION agg_backup_state(p_name text)
RETURNS TABLE (backup_table text, backup_rows bigint, created boolean)
LANGUAGE plpgsql SECURITY DEFINER AS $$
BEGIN
    IF p_name IS NULL OR p_name !~ '^data_agg_state_backup_[a-z0-9_]{1,40}$' THEN
        RAISE EXCEPTION 'backup table name % must match ^data_agg_state_backup_[a-z0-9_]{1,40}$',
            quote_literal(COALESCE(p_name, 'NULL')) USING ERRCODE = 'invalid_name';
    END IF;
    backup_table := p_name;
    IF to_regclass(p_name) IS NOT NULL THEN
        EXECUTE format('SELECT EXISTS (SELECT * FROM data_agg_state EXCEPT SELECT * FROM %1$I) '
                       'OR EXISTS (SELECT * FROM %1$I EXCEPT SELECT * FROM data_agg_state)',
                       p_name) INTO created;
        IF created THEN
            RAISE EXCEPTION 'backup % exists with different contents; choose another name',
                p_name USING ERRCODE = 'duplicate_table';
        END IF;
    ELSE
        EXECUTE format('CREATE TABLE %I AS SELECT * FROM data_agg_state', p_name);
        EXECUTE format('COMMENT ON TABLE %I IS %L', p_name,
                       'backup of data_agg_state taken ' || now());
        created := true;
    END IF;
    EXECUTE format('SELECT count(*) FROM %I', p_name) INTO backup_rows;
    RETURN NEXT;
END;
$$;

-- Bring data_agg_state back to a backup exactly: differing rows upserted with every column
-- (updated_at included; equal rows left alone), rows absent from the backup deleted.
CREATE OR REPLACE FUNCTION agg_restore_state(p_backup text)
RETURNS TABLE (rows_restored bigint, rows_removed bigint)
LANGUAGE plpgsql SECURITY DEFINER AS $$
DECLARE
    v_cols text;
    v_excluded text;
    v_current text;
    v_missing text;
BEGIN
    IF p_backup IS NULL OR p_backup !~ '^data_agg_state_backup_[a-z0-9_]{1,40}$' THEN
        RAISE EXCEPTION 'backup table name % is not a data_agg_state backup',
            quote_literal(COALESCE(p_backup, 'NULL')) USING ERRCODE = 'invalid_name';
    END IF;
    IF to_regclass(p_backup) IS NULL THEN
        RAISE EXCEPTION 'backup table % does not exist', p_backup
            USING ERRCODE = 'undefined_table';
    END IF;
    SELECT string_agg(quote_ident(c.column_name), ', ' ORDER BY c.ordinal_position),
           string_agg('excluded.' || quote_ident(c.column_name), ', ' ORDER BY c.ordinal_position),
           string_agg('s.' || quote_ident(c.column_name), ', ' ORDER BY c.ordinal_position),
           string_agg(c.column_name, ', ') FILTER (WHERE b.column_name IS NULL)
      INTO v_cols, v_excluded, v_current, v_missing
      FROM information_schema.columns c
      LEFT JOIN information_schema.columns b
        ON b.table_schema = c.table_schema AND b.table_name = p_backup
       AND b.column_name = c.column_name
     WHERE c.table_schema = current_schema() AND c.table_name = 'data_agg_state';
    IF v_missing IS NOT NULL THEN
        RAISE EXCEPTION 'backup % lacks columns %', p_backup, v_missing
            USING ERRCODE = 'undefined_column';
    END IF;
    EXECUTE format(
        'INSERT INTO data_agg_state AS s (%1$s) SELECT %1$s FROM %2$I '
        'ON CONFLICT (canonical_symbol, timeframe) DO UPDATE SET (%1$s) = ROW(%3$s) '
        'WHERE ROW(%4$s) IS DISTINCT FROM ROW(%3$s)', v_cols, p_backup, v_excluded, v_current);
    GET DIAGNOSTICS rows_restored = ROW_COUNT;
    EXECUTE format(
        'DELETE FROM data_agg_state s WHERE NOT EXISTS (SELECT 1 FROM %I b '
        'WHERE b.canonical_symbol = s.canonical_symbol AND b.timeframe = s.timeframe)',
        p_backup);
    GET DIAGNOSTICS rows_removed = ROW_COUNT;
    RETURN NEXT;
END;
$$;

-- Drop timestamped backups (data_agg_state_backup_YYYYMMDDtHHMMSSz) older than p_older_than.
CREATE OR REPLACE FUNCTION agg_prune_backups(p_older_than interval, p_now timestamptz)
RETURNS SETOF text
LANGUAGE plpgsql SECURITY DEFINER
SET TimeZone = 'UTC'  -- the names' timestamps are UTC
AS $$
DECLARE
    v_table text;
BEGIN
    FOR v_table IN
        SELECT c.relname FROM pg_class c
        WHERE c.relkind = 'r' AND c.relnamespace = current_schema()::regnamespace
          AND c.relname ~ '^data_agg_state_backup_[0-9]{8}t[0-9]{6}z$'
          AND to_timestamp(substring(c.relname FROM 23 FOR 15), 'YYYYMMDD"t"HH24MISS')
              < p_now - p_older_than
        ORDER BY c.relname
    LOOP
        EXECUTE format('DROP TABLE %I', v_table);
        RETURN NEXT v_table;
    END LOOP;
END;
$$;

-- Fixed search_path (this schema, then pg_temp last) so callers cannot shadow the tables;
-- only the pipeline role may run them.
DO $$
DECLARE
    v_fn text;
BEGIN
    FOREACH v_fn IN ARRAY ARRAY['agg_backup_state(text)', 'agg_restore_state(text)',
                                'agg_prune_backups(interval, timestamptz)'] LOOP
        EXECUTE format('ALTER FUNCTION %s SET search_path = %I, pg_temp', v_fn, current_schema());
        EXECUTE format('REVOKE ALL ON FUNCTION %s FROM PUBLIC', v_fn);
        EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO agg_pipeline_runtime', v_fn);
    END LOOP;
END;
$$;
