-- Claims of the live planner (agg_pipeline/engine/planning.py). The schedule, the frontier
-- sensor and the late-data sensor run in different daemon threads or processes and may tick
-- at the same moment; each plans under one transaction-scoped advisory lock and, in the same
-- transaction, records here the (symbol, timeframe, UTC days) of every run it requests. Work
-- overlapping a live claim is not requested again. A claim is live while its run (found by
-- its `agg/plan` tag) is queued or running, or for a short grace period after it was made
-- (the daemon creates the run after the tick returns); the next planner deletes the others.
--
-- Bounded: only live claims stay, at most one per (task, run in flight). No foreign key to
-- data_agg_state on purpose: checking it would take a KEY SHARE lock on the task row, which
-- the engine holds FOR UPDATE for a whole materialisation, so planning would wait for runs.
CREATE TABLE IF NOT EXISTS data_agg_plan_claims (
    plan_id          text NOT NULL,  -- the run's agg/plan tag (and run key)
    canonical_symbol text NOT NULL,
    timeframe        text NOT NULL,
    first_day        date NOT NULL,  -- the UTC days the run covers for this task
    last_day         date NOT NULL,
    reason           text NOT NULL,  -- the run's agg/reason
    claimed_at       timestamptz NOT NULL,
    PRIMARY KEY (plan_id, canonical_symbol, timeframe),
    CONSTRAINT data_agg_plan_claims_days CHECK (first_day <= last_day)
);

CREATE INDEX IF NOT EXISTS data_agg_plan_claims_task_idx
    ON data_agg_plan_claims (canonical_symbol, timeframe);

COMMENT ON TABLE data_agg_plan_claims IS
    'Work the live planner requested and not yet done (migration 013): one row per task and '
    'run, live while the run with that agg/plan tag is queued or running; released rows are '
    'deleted by the next planner.';

-- DELETE is the one extra right: a claim is released by deleting it, so the table holds only
-- live claims (without it, one row per task and run would pile up forever). Nothing of value
-- is lost: the run's history is Dagster's, and no other table is deletable by the role.
GRANT SELECT, INSERT, DELETE ON data_agg_plan_claims TO agg_pipeline_runtime;
