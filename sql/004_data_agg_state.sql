-- One row per (symbol, target timeframe) aggregation task (seed 004, B.3), including the
-- Phase 5 columns agg_start_utc, enabled and task_priority.
CREATE TABLE IF NOT EXISTS data_agg_state (
    canonical_symbol          text NOT NULL,
    timeframe                 text NOT NULL,
    run_interval_minutes      integer,
    aggregation_delay_seconds integer,
    source_timeframe          text,
    is_mandatory              boolean NOT NULL DEFAULT false,
    last_agg_bar_ts_utc       timestamptz,
    last_attempted_at_utc     timestamptz,
    last_successful_at_utc    timestamptz,
    last_error                text,
    status                    text NOT NULL DEFAULT 'idle',
    hard_fail_streak          integer NOT NULL DEFAULT 0,
    total_runs                bigint NOT NULL DEFAULT 0,
    total_bars_created        bigint NOT NULL DEFAULT 0,
    total_bars_quality_poor   bigint NOT NULL DEFAULT 0,
    next_run_at               timestamptz,
    running_started_at_utc    timestamptz,
    updated_at                timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (canonical_symbol, timeframe)
);

ALTER TABLE data_agg_state
    ADD COLUMN IF NOT EXISTS agg_start_utc timestamptz NOT NULL DEFAULT '2025-07-01 00:00:00+00',
    ADD COLUMN IF NOT EXISTS enabled boolean NOT NULL DEFAULT true,
    ADD COLUMN IF NOT EXISTS task_priority integer NOT NULL DEFAULT 100,
    -- The derivation_version written on new and changed bars; a range rebuild bumps it.
    ADD COLUMN IF NOT EXISTS derivation_version integer NOT NULL DEFAULT 1;

COMMENT ON COLUMN data_agg_state.last_agg_bar_ts_utc IS
    'Cursor: start of the next window to process. Only moves forward; never beyond the end of '
    'the window holding the newest source row; NULL is an error.';
COMMENT ON COLUMN data_agg_state.status IS
    'idle | hard_failed (mandatory task after 3 hard failures, still scheduled) | disabled '
    '(optional task after 3 hard failures) | retired (symbol or timeframe left the registry). '
    'Never ''running'': a PostgreSQL advisory lock, not a status, marks a task in progress.';

CREATE OR REPLACE FUNCTION data_agg_state_before_update() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := now();
    -- An operator re-enabling an auto-disabled task gives it a fresh start from its cursor.
    IF NEW.enabled AND NOT OLD.enabled AND NEW.status = 'disabled' THEN
        NEW.status := 'idle';
        NEW.hard_fail_streak := 0;
    END IF;
    RETURN NEW;
END;
$$;

DROP TRIGGER IF EXISTS data_agg_state_before_update ON data_agg_state;
CREATE TRIGGER data_agg_state_before_update
    BEFORE UPDATE ON data_agg_state
    FOR EACH ROW EXECUTE FUNCTION data_agg_state_before_update();
