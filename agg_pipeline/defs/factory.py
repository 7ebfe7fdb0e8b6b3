"""build_definitions(config): the project's Dagster Definitions, built from one PipelineConfig.

Every asset, check, job, sensor, schedule and partitions definition that depends on the
configuration is made here by the builders of the defs modules, so several configurations
(day and year grains, another ladder) can be built side by side in one process; nothing in
defs/ reads the environment when imported. `agg_pipeline/definitions.py` builds the
environment's (PipelineConfig.from_env()) for workspace.yaml.

The defs modules still answer their former module-level names (`schedules.catchup_schedule`,
`checks.all_checks`, `partitions.partition_key`, ...) for callers that work in one
configuration (the CLI, benchmarks, tests): those are the parts of the process's default
Definitions, built on first use (default_parts()), the same objects `definitions.defs` holds.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass

import dagster as dg

from agg_pipeline.defs.alerts import build_alerts_sensor
from agg_pipeline.defs.assets import asset_keys_by_timeframe, bars_1m, build_bars_assets
from agg_pipeline.defs.backfill_job import backfill_bars_job
from agg_pipeline.defs.checks import build_all_checks, check_keys_by_timeframe
from agg_pipeline.defs.config import PipelineConfig, default_config
from agg_pipeline.defs.jobs import AssetJob, build_ladder_jobs, ladder_jobs
from agg_pipeline.defs.liveness import build_run_liveness_sensor, heartbeat_executor
from agg_pipeline.defs.requests import LiveRequests
from agg_pipeline.defs.resources import MarketDatabase
from agg_pipeline.defs.runbook import runbook_jobs
from agg_pipeline.defs.schedules import build_catchup_schedule
from agg_pipeline.defs.sensors import build_live_sensors, registry_sync_sensor
from agg_pipeline.defs.storage_retention import build_storage_retention_sensor
from agg_pipeline.defs.synthetic import build_synthetic_asset


@dataclass(frozen=True)
class PipelineParts:
    """Everything one configuration's Definitions hold, by name."""

    config: PipelineConfig
    synthetic_bars_1m: dg.AssetsDefinition
    derived_bars_assets: list[dg.AssetsDefinition]
    all_checks: list[dg.AssetChecksDefinition]
    ladder_jobs: list[AssetJob]  # one per partitions definition, ladder order
    live_requests: LiveRequests
    catchup_schedule: dg.ScheduleDefinition
    source_frontier_sensor: dg.SensorDefinition
    late_data_sensor: dg.SensorDefinition
    ladder_sensor: dg.SensorDefinition
    alerts_sensor: dg.SensorDefinition
    run_liveness_sensor: dg.SensorDefinition
    dagster_storage_retention_sensor: dg.SensorDefinition
    registry_sync_sensor: dg.SensorDefinition = registry_sync_sensor  # needs no config

    @property
    def aggregate_bars_job(self) -> AssetJob:
        """The mandatory timeframes' job (every symbol): what the schedule launches."""
        return next(job for job in self.ladder_jobs if job.name == "aggregate_bars")

    @property
    def ASSET_KEY_BY_TIMEFRAME(self) -> Mapping[str, dg.AssetKey]:
        return self.live_requests.asset_keys

    @property
    def CHECK_KEYS_BY_TIMEFRAME(self) -> Mapping[str, list[dg.AssetCheckKey]]:
        return self.live_requests.check_keys

    def definitions(self) -> dg.Definitions:
        return dg.Definitions(
            assets=[bars_1m, self.synthetic_bars_1m, *self.derived_bars_assets],
            asset_checks=self.all_checks,
            jobs=[*self.ladder_jobs, backfill_bars_job, *runbook_jobs],
            schedules=[self.catchup_schedule],
            sensors=[self.registry_sync_sensor, self.source_frontier_sensor,
                     self.late_data_sensor, self.ladder_sensor, self.alerts_sensor,
                     self.run_liveness_sensor, self.dagster_storage_retention_sensor],
            resources={"market_db": MarketDatabase()},
            # a run's steps are sequential (5m, then 1h): one process, no
            # process start per step; its worker records a heartbeat (defs/liveness.py)
            executor=heartbeat_executor,
        )


def build_parts(config: PipelineConfig) -> PipelineParts:
    """Every configuration-dependent definition of `config`, wired together."""
    synthetic = build_synthetic_asset(config)
    bars = build_bars_assets(config)
    checks = build_all_checks(config)
    ladder = ladder_jobs(config, synthetic)
    jobs = build_ladder_jobs(config, ladder)
    live = LiveRequests(config.partitions, asset_keys_by_timeframe(config),
                        check_keys_by_timeframe(config, checks), ladder)
    frontier, late, chained = build_live_sensors(jobs, live, config.frontier_interval_seconds)
    return PipelineParts(
        config=config,
        synthetic_bars_1m=synthetic,
        derived_bars_assets=bars,
        all_checks=checks,
        ladder_jobs=jobs,
        live_requests=live,
        catchup_schedule=build_catchup_schedule(jobs[1], live),
        source_frontier_sensor=frontier,
        late_data_sensor=late,
        ladder_sensor=chained,
        alerts_sensor=build_alerts_sensor(
            [key for check in checks for key in check.check_keys], config.partitions,
            {job.job_name: job.symbols_name for job in ladder}),
        run_liveness_sensor=build_run_liveness_sensor(config.liveness_check_seconds),
        dagster_storage_retention_sensor=build_storage_retention_sensor(checks),
    )


def build_definitions(config: PipelineConfig) -> dg.Definitions:
    """The project's Definitions for `config`."""
    return build_parts(config).definitions()


@functools.cache
def default_parts() -> PipelineParts:
    """The parts of the process's default Definitions (default_config(): the environment's),
    built once, on first use."""
    return build_parts(default_config())


# The former module-level names each defs module still answers, from default_parts().
DEFAULT_NAMES: dict[str, tuple[str, ...]] = {
    "agg_pipeline.defs.assets": ("derived_bars_assets", "ASSET_KEY_BY_TIMEFRAME"),
    "agg_pipeline.defs.synthetic": ("synthetic_bars_1m",),
    "agg_pipeline.defs.checks": ("all_checks", "CHECK_KEYS_BY_TIMEFRAME"),
    "agg_pipeline.defs.jobs": ("aggregate_bars_job", "ladder_jobs"),
    "agg_pipeline.defs.requests": ("live_requests",),
    "agg_pipeline.defs.schedules": ("catchup_schedule",),
    "agg_pipeline.defs.sensors": ("source_frontier_sensor", "late_data_sensor", "ladder_sensor"),
    "agg_pipeline.defs.alerts": ("alerts_sensor",),
    "agg_pipeline.defs.liveness": ("run_liveness_sensor",),
    "agg_pipeline.defs.storage_retention": ("dagster_storage_retention_sensor",),
}


def default_part(module: str, name: str) -> object:
    """`module`'s former module-level `name`, from the default Definitions (a module's
    `__getattr__`); AttributeError for any other name, without building anything."""
    if name not in DEFAULT_NAMES.get(module, ()):
        raise AttributeError(f"module {module!r} has no attribute {name!r}")
    return getattr(default_parts(), name)
