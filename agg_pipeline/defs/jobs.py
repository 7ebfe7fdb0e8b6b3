"""Jobs the schedule and sensors launch."""


import dagster as dg
from dagster._core.definitions.unresolved_asset_job_definition import (  # not re-exported
    UnresolvedAssetJobDefinition as AssetJob,
)

from agg_pipeline.defs.config import PipelineConfig

JOB_NAME = "aggregate_bars"


def build_aggregate_job(config: PipelineConfig, assets: list[dg.AssetsDefinition]
                        ) -> AssetJob:
    """aggregate_bars over `assets` (synthetic_bars_1m and the ladder's bars), partitioned as
    `config` says."""
    return dg.define_asset_job(
        name=JOB_NAME,
        selection=dg.AssetSelection.assets(*assets),
        partitions_def=config.partitions.symbol_time_partitions,
        description="Materialise derived bars for a symbol's range of days (schedule and "
                    "sensors).",
    )


def __getattr__(name: str) -> object:
    """aggregate_bars_job: the process's default Definitions' (defs/factory.py)."""
    from agg_pipeline.defs import factory

    return factory.default_part(__name__, name)
