"""PipelineConfig: everything that shapes the project's Dagster Definitions, in one frozen,
validated object (defs/factory.py builds the Definitions from it).

It holds what the definitions are made of, read once: the time grain and first day of the
partitions, the timeframe ladder and calendars (engine/timeframes.py's Config), the backfill
policy's batch, Dagster's freshness deadlines and the liveness sensor's interval. The run-tag
and revision-reason vocabulary is referenced, not copied: `PipelineConfig.tags` is
defs/tags.py, `PipelineConfig.Reason` engine/reasons.py's enum.

Knobs read at every tick stay in settings.py and are read there when a tick runs (the
planner's limits, the reconciliation's budget, the environment, heartbeats, the storage
retention, the alert webhook): changing them needs no new Definitions.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date
from functools import cached_property
from types import ModuleType
from typing import Any, ClassVar

from agg_pipeline import settings
from agg_pipeline.defs import tags as tag_names
from agg_pipeline.defs.partitions import TimePartitioning
from agg_pipeline.engine import reasons, timeframes

DEFAULT_FIRST_DAY = date.fromisoformat(settings.DEFAULT_START[:10])


def load_timeframes(path: Any) -> timeframes.Config:
    """The ladder in `path`: the engine's own when it loaded the same file (one object, so
    the Definitions and the engine agree), else the file read and validated now."""
    return timeframes.CONFIG if timeframes.CONFIG.path == path else timeframes.load(path)


def packaged_timeframes() -> timeframes.Config:
    """The ladder shipped with the package (agg_pipeline/timeframes.toml)."""
    return load_timeframes(settings.PACKAGE_DIR / "timeframes.toml")


@dataclass(frozen=True)
class PipelineConfig:
    """One configuration of the pipeline's Definitions. `PipelineConfig()` is the defaults
    (the packaged ladder, day partitions from 2025-07-01); `from_env()` reads the
    environment; `dataclasses.replace(config, time_grain="year")` derives another."""

    time_grain: str = "day"
    first_day: date = DEFAULT_FIRST_DAY
    timeframes: timeframes.Config = field(default_factory=packaged_timeframes, repr=False)
    backfill_max_partitions_per_run: int | None = None  # None: single-run backfills
    freshness_cron: str | None = settings.DEFAULT_FRESHNESS_CRON  # None: no freshness policy
    liveness_check_seconds: int = settings.DEFAULT_LIVENESS_CHECK_S
    frontier_interval_seconds: int = settings.DEFAULT_FRONTIER_INTERVAL_S

    # the vocabulary the definitions use (run tags, revision reasons): their one home
    tags: ClassVar[ModuleType] = tag_names
    Reason: ClassVar[type[reasons.Reason]] = reasons.Reason

    def __post_init__(self) -> None:
        problems = []
        if self.time_grain not in settings.TIME_PARTITION_GRAINS:
            problems.append(f"time_grain={self.time_grain!r} is not one of "
                            f"{', '.join(settings.TIME_PARTITION_GRAINS)}")
        if not isinstance(self.first_day, date):
            problems.append(f"first_day={self.first_day!r} is not a date")
        for name in ("backfill_max_partitions_per_run", "liveness_check_seconds",
                     "frontier_interval_seconds"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                problems.append(f"{name}={value!r} must be a positive integer")
        if not isinstance(self.timeframes, timeframes.Config):
            problems.append("timeframes must be an engine.timeframes.Config "
                            "(timeframes.load(path))")
        if problems:
            raise ValueError("; ".join(problems))

    @classmethod
    def from_env(cls) -> PipelineConfig:
        """The configuration the environment describes (AGG_TIME_PARTITION, AGG_START_UTC,
        AGG_TIMEFRAMES_FILE, AGG_BACKFILL_MAX_PARTITIONS_PER_RUN, AGG_FRESHNESS_CRON,
        AGG_LIVENESS_CHECK_SECONDS, AGG_FRONTIER_INTERVAL_SECONDS). ValueError naming every
        bad one, in one line."""
        readers: dict[str, Callable[[], object]] = {
            "time_grain": settings.time_partition,
            "first_day": lambda: settings.default_agg_start().date(),
            "timeframes": lambda: load_timeframes(settings.timeframes_file()),
            "backfill_max_partitions_per_run": settings.backfill_max_partitions_per_run,
            "freshness_cron": settings.freshness_cron,
            "liveness_check_seconds": settings.liveness_check_seconds,
            "frontier_interval_seconds": settings.frontier_interval_seconds,
        }
        values, problems = {}, []
        for name, read in readers.items():
            try:
                values[name] = read()
            except ValueError as exc:  # TimeframeConfigError included
                problems.append(str(exc))
        if problems:
            raise ValueError("; ".join(problems))
        return cls(**values)

    @cached_property
    def partitions(self) -> TimePartitioning:
        """The symbol x time partitions of this configuration, and their keys' helpers."""
        return TimePartitioning(self.time_grain, self.first_day)

    @property
    def ladder(self) -> tuple[timeframes.Timeframe, ...]:
        """The derived timeframes, shortest first (contract 12 orders 5m before 1h)."""
        return tuple(sorted(self.timeframes.timeframes.values(), key=lambda tf: tf.minutes))

    @contextlib.contextmanager
    def engine_ladder(self) -> Iterator[timeframes.Config]:
        """The engine (process-wide, engine/timeframes.py) reads this config's ladder within
        the block: running Definitions built for another ladder than the engine loaded (a
        test's 30m rung) in this process."""
        if self.timeframes is timeframes.CONFIG:
            yield self.timeframes
            return
        with timeframes.configured(self.timeframes) as config:
            yield config


@functools.cache
def default_config() -> PipelineConfig:
    """The process's configuration, from the environment, read once (on first use)."""
    return PipelineConfig.from_env()
