"""The one place that assembles the project's Dagster `Definitions` (loaded by workspace.yaml)."""

import dagster as dg

from agg_pipeline.defs.alerts import alerts_sensor
from agg_pipeline.defs.assets import bars_1m, derived_bars_assets
from agg_pipeline.defs.backfill_job import backfill_bars_job
from agg_pipeline.defs.checks import all_checks
from agg_pipeline.defs.jobs import aggregate_bars_job
from agg_pipeline.defs.liveness import heartbeat_executor, run_liveness_sensor
from agg_pipeline.defs.resources import MarketDatabase
from agg_pipeline.defs.runbook import runbook_jobs
from agg_pipeline.defs.schedules import catchup_schedule
from agg_pipeline.defs.sensors import late_data_sensor, registry_sync_sensor, source_frontier_sensor
from agg_pipeline.defs.storage_retention import dagster_storage_retention_sensor
from agg_pipeline.defs.synthetic import synthetic_bars_1m

defs = dg.Definitions(
    assets=[bars_1m, synthetic_bars_1m, *derived_bars_assets],
    asset_checks=all_checks,
    jobs=[aggregate_bars_job, backfill_bars_job, *runbook_jobs],
    schedules=[catchup_schedule],
    sensors=[registry_sync_sensor, source_frontier_sensor, late_data_sensor, alerts_sensor,
             run_liveness_sensor, dagster_storage_retention_sensor],
    resources={"market_db": MarketDatabase()},
    # a run's steps are sequential (5m, then what derives from it): one process, no
    # process start per step; its worker records a heartbeat (defs/liveness.py)
    executor=heartbeat_executor,
)
