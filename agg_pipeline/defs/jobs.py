"""Jobs the schedule and sensors launch: one asset job per partitions definition.

Dagster 1.13 refuses an asset job whose assets have different partitions definitions
(`_infer_and_validate_common_partitions_def`), and a run of the implicit asset job over such
assets fails at creation as soon as its range's ends are not partitions of every selected asset
(a block of symbols where only some enable 15m). So each partitions definition has its job, in
ladder order: `synthetic_bars` (the synthetic series' 1m), `aggregate_bars` (the mandatory
timeframes, every symbol), then `aggregate_bars_<timeframe>` per optional timeframe (the
symbols that enable it). A live run of a block of symbols is a chain of such runs in that order
(defs/requests.py); a block of symbols without optional timeframes or synthetic series is one
`aggregate_bars` run, as before.
"""

from collections.abc import Sequence
from dataclasses import dataclass

import dagster as dg
from dagster._core.definitions.unresolved_asset_job_definition import (  # not re-exported
    UnresolvedAssetJobDefinition as AssetJob,
)

from agg_pipeline.defs.config import PipelineConfig
from agg_pipeline.defs.partitions import (
    SYMBOLS_PARTITIONS_NAME,
    SYNTHETIC_PARTITIONS_NAME,
    timeframe_partitions_name,
)

JOB_NAME = "aggregate_bars"
SYNTHETIC_JOB_NAME = "synthetic_bars"


@dataclass(frozen=True)
class LadderJob:
    """One job of the ladder: its symbols partitions and what it materialises."""

    job_name: str
    symbols_name: str  # its assets' dynamic symbols partitions
    timeframes: tuple[str, ...]  # its bars assets' timeframes; () for synthetic_bars
    asset_keys: tuple[dg.AssetKey, ...]

    @property
    def synthetic(self) -> bool:
        return self.symbols_name == SYNTHETIC_PARTITIONS_NAME

    @property
    def mandatory(self) -> bool:
        return self.symbols_name == SYMBOLS_PARTITIONS_NAME


def ladder_jobs(config: PipelineConfig, synthetic: dg.AssetsDefinition) -> tuple[LadderJob, ...]:
    """The ladder's jobs in the order a block's runs go: synthetic, mandatory, optional."""
    optional = [tf for tf in config.ladder if not tf.mandatory]
    return (
        LadderJob(SYNTHETIC_JOB_NAME, SYNTHETIC_PARTITIONS_NAME, (), (synthetic.key,)),
        LadderJob(JOB_NAME, SYMBOLS_PARTITIONS_NAME,
                  tuple(tf.name for tf in config.ladder if tf.mandatory),
                  tuple(dg.AssetKey(tf.asset_name) for tf in config.ladder if tf.mandatory)),
        *(LadderJob(f"{JOB_NAME}_{tf.name}", timeframe_partitions_name(tf.name, False),
                    (tf.name,), (dg.AssetKey(tf.asset_name),)) for tf in optional),
    )


def build_ladder_jobs(config: PipelineConfig, ladder: Sequence[LadderJob]) -> list[AssetJob]:
    """One asset job per LadderJob, partitioned as `config` says."""
    return [
        dg.define_asset_job(
            name=job.job_name,
            selection=dg.AssetSelection.assets(*job.asset_keys),
            partitions_def=config.partitions.symbol_time_partitions_of(job.symbols_name),
            description=(
                "Build synthetic series' 1m bars for a block of them x days, before their "
                "bars_5m run (schedule and sensors)." if job.synthetic else
                f"Materialise {', '.join(job.timeframes)} bars for a block of symbols x days "
                + ("(schedule and sensors)." if job.mandatory else
                   f"(the symbols enabling it), after their {JOB_NAME} run.")),
        )
        for job in ladder
    ]


def __getattr__(name: str) -> object:
    """aggregate_bars_job and ladder_jobs: the process's default Definitions'
    (defs/factory.py)."""
    if name.startswith("__"):  # dunder look-ups (import machinery, dataclasses): not ours
        raise AttributeError(name)
    from agg_pipeline.defs import factory

    return factory.default_part(__name__, name)
