"""Partitions: symbol (dynamic, synced from the registry) x time (UTC, from the first day).

The time dimension is a UTC day by default, or a calendar month (`AGG_TIME_PARTITION=month`)
or year (`year`) for universes that would pass Dagster's recommended ~100,000 partitions per
asset in days (symbols x days: 190 symbols over 18 months) or months (1,600 symbols over 5
years; years hold 10,000 symbols over 10 years). Whatever the grain, a run over a rectangle of
partitions calls the engine once per (symbol, run of consecutive days), and everything that
reads partitions (runs, checks, sensors, metadata) works in UTC days through a
`TimePartitioning` (`day_spans_by_symbol`, `partition_key`), built from the PipelineConfig
(defs/config.py) the Definitions are built from. Finer time partitions do not fit Dagster (SPEC,
Dagster mapping).
"""


import calendar
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from functools import cached_property

import dagster as dg
from dagster._check import CheckError
from dagster._core.storage.tags import MULTIDIMENSIONAL_PARTITION_PREFIX  # not re-exported

from agg_pipeline import settings
from agg_pipeline.defs.tags import DAYS_TAG, RANGE_END_TAG, RANGE_START_TAG, SYMBOL_TAG

SYMBOL_DIMENSION = "symbol"
SYMBOLS_PARTITIONS_NAME = "symbols"  # every symbol: bars_1m and the mandatory timeframes
SYNTHETIC_PARTITIONS_NAME = "symbols_synthetic"  # the synthetic series: synthetic_bars_1m

symbols_partitions = dg.DynamicPartitionsDefinition(name=SYMBOLS_PARTITIONS_NAME)


def timeframe_partitions_name(timeframe: str, mandatory: bool) -> str:
    """The symbols partitions of a timeframe's asset: `symbols` for a mandatory one, its own
    `symbols_<timeframe>` (the symbols the registry enables it for) for an optional one."""
    return SYMBOLS_PARTITIONS_NAME if mandatory else f"symbols_{timeframe}"


@dataclass(frozen=True)
class TimePartitioning:
    """The symbol x time partitions of one configuration (PipelineConfig.partitions): the
    grain ("day", "month" or "year") and the first day, and everything that reads or writes
    their keys. Two of them live side by side in one process (tests build several)."""

    grain: str
    first_day: date

    def __post_init__(self) -> None:
        if self.grain not in settings.TIME_PARTITION_GRAINS:
            raise ValueError(f"time grain {self.grain!r} is not one of "
                             f"{', '.join(settings.TIME_PARTITION_GRAINS)}")

    @property
    def time_dimension(self) -> str:
        """The time dimension's name, as the UI shows it: the grain."""
        return self.grain

    def period_start(self, day: date) -> date:
        """The first day of the time partition holding `day`."""
        if self.grain == "day":
            return day
        return day.replace(day=1) if self.grain == "month" else day.replace(month=1, day=1)

    def period_last_day(self, period: date) -> date:
        """The last day (inclusive) of the time partition starting on `period`."""
        if self.grain == "day":
            return period
        if self.grain == "year":
            return period.replace(month=12, day=31)
        return period.replace(day=calendar.monthrange(period.year, period.month)[1])

    @cached_property
    def time_partitions(self) -> dg.TimeWindowPartitionsDefinition:
        # end_offset=1: the current day's (month's, year's) partition exists, live bars land in it
        first = self.period_start(self.first_day).isoformat()
        if self.grain == "day":
            return dg.DailyPartitionsDefinition(start_date=first, timezone="UTC", end_offset=1)
        if self.grain == "month":
            return dg.MonthlyPartitionsDefinition(start_date=first, timezone="UTC", end_offset=1)
        # Dagster has no YearlyPartitionsDefinition: a cron on January 1st; keys are the year's
        # first day, like a month's, so every key parses the same way whatever the grain
        return dg.TimeWindowPartitionsDefinition(cron_schedule="0 0 1 1 *", start=first,
                                                 fmt="%Y-%m-%d", timezone="UTC", end_offset=1)

    @cached_property
    def symbol_time_partitions(self) -> dg.MultiPartitionsDefinition:
        """Every symbol x time: the mandatory timeframes' partitions."""
        return self.symbol_time_partitions_of(SYMBOLS_PARTITIONS_NAME)

    def symbol_time_partitions_of(self, symbols_name: str) -> dg.MultiPartitionsDefinition:
        """The symbols of the dynamic partitions `symbols_name` x time (one object per name)."""
        found = self._by_symbols_name.get(symbols_name)
        if found is None:
            symbols = (symbols_partitions if symbols_name == SYMBOLS_PARTITIONS_NAME
                       else dg.DynamicPartitionsDefinition(name=symbols_name))
            found = self._by_symbols_name[symbols_name] = dg.MultiPartitionsDefinition(
                {SYMBOL_DIMENSION: symbols, self.time_dimension: self.time_partitions})
        return found

    @cached_property
    def _by_symbols_name(self) -> dict[str, dg.MultiPartitionsDefinition]:
        return {}

    def partition_key(self, symbol: str, day: date) -> dg.MultiPartitionKey:
        """The key of the symbol's partition holding `day`."""
        return dg.MultiPartitionKey({SYMBOL_DIMENSION: symbol,
                                     self.time_dimension: self.period_start(day).isoformat()})

    def range_tags(self, symbol: str, first_day: date, last_day: date, *,
                   last_symbol: str | None = None) -> dict[str, str]:
        """Tags asking for one run over the rectangle [symbol .. last_symbol] (in the `symbols`
        partitions' order; default: the one symbol) x the periods holding [first_day,
        last_day]."""
        tags = {
            RANGE_START_TAG: str(self.partition_key(symbol, first_day)),
            RANGE_END_TAG: str(self.partition_key(last_symbol or symbol, last_day)),
        }
        if last_symbol in (None, symbol):
            tags[SYMBOL_TAG] = symbol
        return tags

    def run_symbols(self, tags: Mapping[str, str], symbols_in_order: Sequence[str]) -> list[str]:
        """The symbols a run covers: its SYMBOL_TAG, or the symbol of its one partition (a
        "Launch backfill" run), or the block between its range tags' symbols in the `symbols`
        partitions' order (Dagster's range over a multi-partition is each dimension's range: a
        rectangle); [] for a run without symbol x period partitions."""
        one = (tags.get(SYMBOL_TAG)
               or tags.get(f"{MULTIDIMENSIONAL_PARTITION_PREFIX}{SYMBOL_DIMENSION}"))
        if one:
            return [one]
        if RANGE_START_TAG not in tags or RANGE_END_TAG not in tags:
            return []
        try:
            first = self.split_key(tags[RANGE_START_TAG])[0]
            last = self.split_key(tags[RANGE_END_TAG])[0]
        except CheckError:  # a range of another partitions definition: no symbols of ours
            return []
        # the slice DynamicPartitionsDefinition.get_partition_keys_in_range takes, on a list the
        # caller fetched once: Dagster's own would query both ends' existence for every run
        if first in symbols_in_order and last in symbols_in_order:
            return list(symbols_in_order[symbols_in_order.index(first):
                                         symbols_in_order.index(last) + 1])
        return sorted({first, last})  # a symbol since removed from the partitions: the ends

    def split_key(self, key: str) -> tuple[str, date]:
        """(symbol, first day of the period) of a symbol x period key."""
        if not isinstance(key, dg.MultiPartitionKey):
            key = self.symbol_time_partitions.get_partition_key_from_str(key)
        by_dim = key.keys_by_dimension
        return by_dim[SYMBOL_DIMENSION], date.fromisoformat(by_dim[self.time_dimension])

    def day_spans_by_symbol(self, partition_keys: Iterable[str]
                            ) -> dict[str, list[tuple[date, date]]]:
        """Group symbol x period keys into each symbol's runs of consecutive UTC days
        (inclusive), whatever the time grain."""
        days: dict[str, set[date]] = {}
        for key in partition_keys:
            symbol, period = self.split_key(key)
            days.setdefault(symbol, set()).add(period)
        spans_by_symbol: dict[str, list[tuple[date, date]]] = {}
        for symbol, periods in sorted(days.items()):
            spans: list[tuple[date, date]] = []
            for period in sorted(periods):
                last = self.period_last_day(period)
                if spans and period == spans[-1][1] + timedelta(days=1):
                    spans[-1] = (spans[-1][0], last)
                else:
                    spans.append((period, last))
            spans_by_symbol[symbol] = spans
        return spans_by_symbol

    def run_day_spans(self, partition_keys: Iterable[str],
                      tags: Mapping[str, str]) -> dict[str, list[tuple[date, date]]]:
        """Each symbol's days of a run: its partitions' days (day_spans_by_symbol), within the
        run's DAYS_TAG when it has one."""
        spans = self.day_spans_by_symbol(partition_keys)
        if DAYS_TAG not in tags:
            return spans
        first, _, last = tags[DAYS_TAG].partition("..")
        low, high = date.fromisoformat(first), date.fromisoformat(last)
        clipped = {symbol: [(max(a, low), min(b, high)) for a, b in found
                            if a <= high and low <= b]
                   for symbol, found in spans.items()}
        return {symbol: found for symbol, found in clipped.items() if found}


# The process's default partitioning (PipelineConfig.from_env(), read on first use, not at
# import), under the names these had before the factory: for callers that work in one
# configuration (the CLI, benchmarks, tests). Code building Definitions takes its config's.
_DEFAULT_NAMES = {"TIME_GRAIN": "grain", "TIME_DIMENSION": "time_dimension",
                  "FIRST_DAY": "first_day", "time_partitions": "time_partitions",
                  "symbol_time_partitions": "symbol_time_partitions",
                  **{name: name for name in ("period_start", "period_last_day", "partition_key",
                                             "range_tags", "run_symbols", "split_key",
                                             "day_spans_by_symbol", "run_day_spans")}}


def __getattr__(name: str) -> object:
    if name in _DEFAULT_NAMES:
        from agg_pipeline.defs.config import default_config

        return getattr(default_config().partitions, _DEFAULT_NAMES[name])
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def days_tag(first_day: date, last_day: date) -> dict[str, str]:
    return {DAYS_TAG: f"{first_day.isoformat()}..{last_day.isoformat()}"}


def day_bounds(first_day: date, last_day: date) -> tuple[datetime, datetime]:
    """[first_day 00:00 UTC, last_day + 1 00:00 UTC)."""
    start = datetime.combine(first_day, datetime.min.time(), tzinfo=UTC)
    return start, datetime.combine(last_day + timedelta(days=1), datetime.min.time(), tzinfo=UTC)
