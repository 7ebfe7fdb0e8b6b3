"""Partitions: symbol (dynamic, synced from the registry) x day (UTC, from agg_start_utc).

Finer time partitions do not fit Dagster (SPEC, Dagster mapping): a run over a range of
days calls the engine once per (symbol, timeframe), whatever the range's length.
"""


from collections.abc import Iterable
from datetime import UTC, date, datetime, timedelta

import dagster as dg

from agg_pipeline import settings

SYMBOL_DIMENSION = "symbol"
DAY_DIMENSION = "day"
SYMBOLS_PARTITIONS_NAME = "symbols"

symbols_partitions = dg.DynamicPartitionsDefinition(name=SYMBOLS_PARTITIONS_NAME)
FIRST_DAY: date = settings.default_agg_start().date()
days_partitions = dg.DailyPartitionsDefinition(
    start_date=FIRST_DAY.isoformat(),
    timezone="UTC",
    end_offset=1,  # today's partition exists: live bars land in it
)
symbol_day_partitions = dg.MultiPartitionsDefinition(
    {SYMBOL_DIMENSION: symbols_partitions, DAY_DIMENSION: days_partitions}
)

# Run tags: a run's symbol (run-queue concurrency limits, in-flight checks) and the
# single-run partition range Dagster executes.
SYMBOL_TAG = "agg/symbol"
RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"


def partition_key(symbol: str, day: date) -> dg.MultiPartitionKey:
    return dg.MultiPartitionKey({SYMBOL_DIMENSION: symbol, DAY_DIMENSION: day.isoformat()})


def range_tags(symbol: str, first_day: date, last_day: date) -> dict[str, str]:
    """Tags asking for one run over the symbol's days [first_day, last_day]."""
    return {
        SYMBOL_TAG: symbol,
        RANGE_START_TAG: str(partition_key(symbol, first_day)),
        RANGE_END_TAG: str(partition_key(symbol, last_day)),
    }


def day_ranges_by_symbol(partition_keys: Iterable[str]) -> dict[str, list[tuple[date, date]]]:
    """Group symbol|day keys into each symbol's runs of consecutive days (inclusive)."""
    days: dict[str, set[date]] = {}
    for key in partition_keys:
        if not isinstance(key, dg.MultiPartitionKey):
            key = symbol_day_partitions.get_partition_key_from_str(key)
        by_dim = key.keys_by_dimension
        days.setdefault(by_dim[SYMBOL_DIMENSION], set()).add(
            date.fromisoformat(by_dim[DAY_DIMENSION]))
    ranges: dict[str, list[tuple[date, date]]] = {}
    for symbol, found in sorted(days.items()):
        ordered = sorted(found)
        spans: list[tuple[date, date]] = []
        for day in ordered:
            if spans and day == spans[-1][1] + timedelta(days=1):
                spans[-1] = (spans[-1][0], day)
            else:
                spans.append((day, day))
        ranges[symbol] = spans
    return ranges


def day_bounds(first_day: date, last_day: date) -> tuple[datetime, datetime]:
    """[first_day 00:00 UTC, last_day + 1 00:00 UTC)."""
    start = datetime.combine(first_day, datetime.min.time(), tzinfo=UTC)
    return start, datetime.combine(last_day + timedelta(days=1), datetime.min.time(), tzinfo=UTC)
