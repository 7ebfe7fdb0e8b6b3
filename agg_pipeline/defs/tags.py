"""Run tags: the one home of the names the planner, the assets, the checks and the alerts
share (a new tag or lane is added here, not spelled again in each module)."""

# The run queue's live lane (dagster.yaml limits it): every run the planner requests.
LANE_TAG, LIVE_LANE = "agg/lane", "live"
# Why a run writes bars: the planner's reason (catch-up, late data on ..., ...).
REASON_TAG = "agg/reason"
# The plan whose claims the run holds (data_agg_plan_claims; also the run key).
PLAN_TAG = "agg/plan"
# Optional: judge finality at this instant (ISO 8601) instead of the run's creation.
AS_OF_TAG = "agg/as_of"
# The symbol of a run that covers only one.
SYMBOL_TAG = "agg/symbol"
# A live run that needs only some days of its partitions (a month partition's today, say)
# names them, "first..last" (UTC days, inclusive): it re-reads those days, not the months.
DAYS_TAG = "agg/days"
# A runbook job's run.
RUNBOOK_TAG = "agg/runbook"

# Dagster's own: the single-run partition range a run executes, and a backfill's runs.
RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"
BACKFILL_TAG = "dagster/backfill"
# Dagster's run retries: a failed run it will retry, and a retry's parent.
WILL_RETRY_TAG = "dagster/will_retry"
PARENT_RUN_ID_TAG = "dagster/parent_run_id"
# The backfill_bars run (the UI's launchpad backfill) that ran an aggregate_bars run.
LAUNCHED_BY_TAG = "agg/launched_by"
# A live run's place in its plan's chain of runs (one job per partitions definition, ladder
# order: defs/requests.py): its index, and the runs still to launch after it succeeds, as JSON
# [[job, first symbol, last symbol, [timeframes]], ...] (ladder_sensor launches the next one).
STAGE_TAG = "agg/stage"
NEXT_RUNS_TAG = "agg/next_runs"
