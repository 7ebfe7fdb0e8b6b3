"""SPEC contract 14: each partition's materialisation describes that partition.

Real runs of the aggregate_bars job on a real instance; the expected counts are read back
from the tables, not from the engine.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, date, datetime, timedelta

import dagster as dg
import pandas as pd
import pytest

from agg_pipeline.defs.assets import AS_OF_TAG
from agg_pipeline.defs.config import default_config
from agg_pipeline.defs.factory import build_definitions
from agg_pipeline.defs.metadata import ALWAYS_SHOWN, NO_SOURCE, ZERO_OMITTED
from agg_pipeline.defs.partitions import SYMBOLS_PARTITIONS_NAME, days_tag, partition_key
from agg_pipeline.engine.aggregate import DayCounts
from agg_pipeline_tests.conftest import empty_tables
from agg_pipeline_tests.helpers import (
    T0,
    active_bars,
    add_symbol,
    bar,
    insert_bars,
    minute_bars,
    sync,
)
from agg_pipeline_tests.test_orchestration import run_range

# builds Definitions in this process (conftest.no_defs_state_storage)
pytestmark = pytest.mark.usefixtures("no_defs_state_storage")

DAYS = [T0.date() + timedelta(days=d) for d in range(4)]  # Monday .. Thursday
AS_OF = T0 + timedelta(days=6)


def partition_events(instance, asset: str, symbol: str, days: list[date]) -> dict[date, dict]:
    """The newest materialisation's metadata of each of the symbol's day partitions."""
    keys = {str(partition_key(symbol, day)): day for day in days}
    result = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=list(keys)),
        limit=1000)
    newest: dict[date, dict] = {}
    for record in sorted(result.records, key=lambda r: r.storage_id):
        event = record.asset_materialization
        newest[keys[event.partition]] = {k: v.value for k, v in event.metadata.items()}
    return newest


def stored_per_day(conn, symbol: str, timeframe: str) -> dict[date, int]:
    rows = conn.execute(
        "SELECT (ts_utc AT TIME ZONE 'UTC')::date, count(*) FROM derived_data_bars "
        "WHERE canonical_symbol = %s AND timeframe = %s AND deleted_at IS NULL GROUP BY 1",
        (symbol, timeframe)).fetchall()
    return dict(rows)


def source_per_day(conn, symbol: str) -> dict[date, tuple[int, datetime]]:
    rows = conn.execute(
        "SELECT (ts_utc AT TIME ZONE 'UTC')::date, count(*), max(ts_utc) FROM data_bars "
        "WHERE canonical_symbol = %s GROUP BY 1", (symbol,)).fetchall()
    return {day: (count, newest) for day, count, newest in rows}


@pytest.fixture
def two_days_and_a_gap(db, instance):
    return seed_two_days_and_a_gap(db, instance)


def seed_two_days_and_a_gap(db, instance):
    """EURUSD: Monday full, Tuesday half a day with one invalid row, Wednesday nothing (an
    outage), Thursday full."""
    add_symbol(db, "EURUSD")
    sync(db)
    instance.add_dynamic_partitions(SYMBOLS_PARTITIONS_NAME, ["EURUSD"])
    insert_bars(db, "EURUSD", minute_bars(T0, 24 * 60))
    insert_bars(db, "EURUSD", minute_bars(T0 + timedelta(days=1), 12 * 60, skip=[30]))
    insert_bars(db, "EURUSD", [bar(T0 + timedelta(days=1, minutes=30), 1.1, high=0.5)])  # high<low
    insert_bars(db, "EURUSD", minute_bars(T0 + timedelta(days=3), 24 * 60))
    db.commit()
    return db


def test_each_day_partition_carries_its_own_days_counts(two_days_and_a_gap, instance):
    db = two_days_and_a_gap
    assert run_range(instance, "EURUSD", DAYS[0], DAYS[-1], as_of=AS_OF).success
    five = partition_events(instance, "bars_5m", "EURUSD", DAYS)
    bars = stored_per_day(db, "EURUSD", "5m")
    source = source_per_day(db, "EURUSD")
    assert set(five) == set(DAYS)
    for day in DAYS:
        meta = five[day]
        rows, newest = source.get(day, (0, None))
        assert meta["bars_inserted"] == bars.get(day, 0), day
        assert meta["source_rows_read"] == rows, day
        assert (meta["bars_updated"], meta["bars_soft_deleted"], meta["bars_unchanged"]) == (
            0, 0, 0)
        assert meta["windows_seen"] == 288
        assert meta.get("newest_source_ts") == (newest.timestamp() if newest else None)
    assert (five[DAYS[0]]["bars_inserted"], five[DAYS[1]]["bars_inserted"]) == (288, 144)
    # an anomaly counter is there when not zero; absent, it is 0 (ZERO_OMITTED)
    assert five[DAYS[1]]["source_rows_invalid"] == 1 and "source_rows_invalid" not in five[DAYS[0]]
    # the day without source says so, with zeros
    gap = five[DAYS[2]]
    assert gap["partition_note"] == NO_SOURCE
    assert gap["bars_inserted"] == gap["source_rows_read"] == gap["windows_with_source"] == 0
    hourly = partition_events(instance, "bars_1h", "EURUSD", DAYS)
    assert [hourly[d]["bars_inserted"] for d in DAYS] == [24, 12, 0, 24]
    assert [hourly[d]["source_rows_read"] for d in DAYS] == [288, 144, 0, 288]

    # a correction of Tuesday 03:07 lands; the same range again: only Tuesday changed
    insert_bars(db, "EURUSD", [bar(T0 + timedelta(days=1, hours=3, minutes=7), 1.5,
                                   ingested_at=AS_OF)], upsert=True)
    db.commit()
    assert run_range(instance, "EURUSD", DAYS[0], DAYS[-1], as_of=AS_OF).success
    five = partition_events(instance, "bars_5m", "EURUSD", DAYS)
    assert [(five[d]["bars_inserted"], five[d]["bars_updated"], five[d]["bars_unchanged"])
            for d in DAYS] == [(0, 0, 288), (0, 1, 143), (0, 0, 0), (0, 0, 288)]
    hourly = partition_events(instance, "bars_1h", "EURUSD", DAYS)
    assert [(hourly[d]["bars_updated"], hourly[d]["bars_unchanged"]) for d in DAYS] == [
        (0, 24), (1, 11), (0, 0), (0, 24)]


# what else a partition's metadata may say (partition_metadata); never the run's instant
PARTITION_EXTRAS = {"newest_source_ts", "read_from", "final_through", "days_read",
                    "partition_note"}
# Dagster's tags on a partition's materialisation (data version, its provenance, the
# multi-partition key's dimensions): each a short value
DAGSTER_TAGS = {"dagster/code_version", "dagster/data_version",
                "dagster/data_version_is_user_provided", "dagster/partition/day",
                "dagster/partition/symbol", "dagster/input_data_version/bars_1m",
                "dagster/input_event_pointer/bars_1m",
                "dagster/input_data_version/synthetic_bars_1m",
                "dagster/input_event_pointer/synthetic_bars_1m",
                "dagster/input_data_version/bars_5m", "dagster/input_event_pointer/bars_5m"}


def test_a_partitions_event_stays_as_small_as_the_ui_needs(two_days_and_a_gap, instance):
    """Issue 20: a live run writes one materialisation per partition every few minutes, so
    each carries what describes its partition and no more (README, "Dagster's own
    storage"): the counts an operator reads always, the anomaly counters only when not
    zero, no entry repeating the run's instant, and the run's short id as data version (not
    Dagster's 64-character hash, which is also an indexed asset_event_tags row). Fails if
    an entry or a long tag comes back."""
    assert set(ALWAYS_SHOWN) | set(ZERO_OMITTED) == set(DayCounts().counts())
    assert not set(ALWAYS_SHOWN) & set(ZERO_OMITTED)
    result = run_range(instance, "EURUSD", DAYS[0], DAYS[-1], as_of=AS_OF)
    assert result.success
    storage = instance.event_log_storage
    for asset in ("bars_5m", "bars_1h"):
        key = dg.AssetKey(asset)
        records = instance.fetch_materializations(key, limit=100).records
        assert len(records) == len(DAYS)
        for record in records:
            event = record.asset_materialization
            metadata = {k: v.value for k, v in event.metadata.items()}
            where = f"{asset} {event.partition}"
            assert set(ALWAYS_SHOWN) <= set(metadata), where
            assert set(metadata) <= set(ALWAYS_SHOWN) | set(ZERO_OMITTED) | PARTITION_EXTRAS, (
                where, sorted(metadata))
            assert all(metadata[label] for label in ZERO_OMITTED if label in metadata), where
            assert not str(metadata.get("partition_note", "")).startswith("final through"), where
            assert set(event.tags) <= DAGSTER_TAGS, (where, sorted(event.tags))
            assert event.tags["dagster/data_version"] == result.run_id[:8], where
            # (an input's version over fewer than Dagster's 100 partitions is its own hash of
            # theirs: not ours to shorten)
            assert max(len(value) for tag, value in event.tags.items()
                       if not tag.startswith("dagster/input_data_version/")) <= len(
                result.run_id), (where, event.tags)
            # the rows Dagster indexes for it: the data version and the key's dimensions
            [indexed] = storage.get_event_tags_for_asset(key, filter_event_id=record.storage_id)
            assert indexed == {k: event.tags[k] for k in (
                "dagster/data_version", "dagster/partition/day", "dagster/partition/symbol")}, where


def test_a_failing_symbol_leaves_the_others_partitions_materialised(two_days_and_a_gap,
                                                                    instance):
    db = two_days_and_a_gap
    add_symbol(db, "USDJPY")
    sync(db)
    db.execute("UPDATE data_agg_state SET last_agg_bar_ts_utc = NULL "
               "WHERE canonical_symbol = 'USDJPY' AND timeframe = '5m'")
    db.commit()
    instance.add_dynamic_partitions(SYMBOLS_PARTITIONS_NAME, ["USDJPY"])
    # one run over the rectangle EURUSD..USDJPY x Monday..Thursday
    result = run_range(instance, "EURUSD", DAYS[0], DAYS[-1], as_of=AS_OF,
                       last_symbol="USDJPY")
    assert not result.success
    good = partition_events(instance, "bars_5m", "EURUSD", DAYS)
    assert [good[d]["bars_inserted"] for d in DAYS] == [288, 144, 0, 288]
    assert partition_events(instance, "bars_5m", "USDJPY", DAYS) == {}
    # the downstream step did not run on a failed bars_5m
    assert partition_events(instance, "bars_1h", "EURUSD", DAYS) == {}


def month_run(instance, *days: date, grain: str = "month") -> dict:
    """One run of July's EURUSD partition in Definitions built with the time grain `grain`
    (in this process, beside the default day grain's); `days`: the first and last day a live
    run needs. Returns the bars_5m materialisation's metadata by partition."""
    config = dataclasses.replace(default_config(), time_grain=grain)
    tags = {**config.partitions.range_tags("EURUSD", DAYS[0], DAYS[-1]),
            AS_OF_TAG: AS_OF.isoformat()}
    if days:
        tags.update(days_tag(*days))
    result = build_definitions(config).resolve_job_def("aggregate_bars").execute_in_process(
        instance=instance, tags=tags,
        asset_selection=[dg.AssetKey("bars_5m"), dg.AssetKey("bars_1h")])
    assert result.success
    events = instance.fetch_materializations(dg.AssetKey("bars_5m"), limit=1).records
    return {r.asset_materialization.partition: {
        k: v.value for k, v in r.asset_materialization.metadata.items()} for r in events}


def test_a_month_partition_carries_the_sum_of_its_days(two_days_and_a_gap, instance):
    db = two_days_and_a_gap

    metadata = month_run(instance)
    assert list(metadata) == ["2025-07-01|EURUSD"]
    month = metadata["2025-07-01|EURUSD"]
    bars, source = stored_per_day(db, "EURUSD", "5m"), source_per_day(db, "EURUSD")
    assert month["bars_inserted"] == sum(bars.values()) == 720
    assert month["source_rows_read"] == sum(rows for rows, _ in source.values())
    assert month["source_rows_invalid"] == 1
    # July's windows from agg_start_utc (July 1) were final up to the run's instant (July 13
    # 00:00) less the 60 s confirmation delay: the 23:55 window of July 12 was not yet
    final_through = AS_OF - timedelta(minutes=5)
    assert month["windows_seen"] == (final_through - datetime(2025, 7, 1, tzinfo=UTC)) // (
        timedelta(minutes=5))
    assert month["final_through"] == final_through.timestamp()
    assert "partition_note" not in month  # final_through says it (issue 20: no repeat in words)
    assert "days_read" not in month

    # a live run needing one day of the month (agg/days) re-reads that day, not the month,
    # and the month's materialisation says so, with that day's counts
    insert_bars(db, "EURUSD", [bar(T0 + timedelta(days=1, hours=3, minutes=7), 1.5,
                                   ingested_at=AS_OF)], upsert=True)
    db.commit()
    live = month_run(instance, DAYS[1], DAYS[1])["2025-07-01|EURUSD"]
    assert live["days_read"] == DAYS[1].isoformat()
    assert (live["bars_updated"], live["bars_unchanged"], live["windows_seen"]) == (1, 143, 288)
    assert live["source_rows_read"] == source[DAYS[1]][0]


def test_month_partitions_build_the_same_bars_as_day_partitions(two_days_and_a_gap, instance,
                                                                database_url):
    """Issue 14: the coarser time grain changes the bookkeeping, never a bar. The same source
    built once through one July partition, once (emptied and seeded again) through its days."""
    db = two_days_and_a_gap
    month_run(instance)

    def built() -> dict:
        bars = {tf: active_bars(db, "EURUSD", tf) for tf in ("5m", "1h")}
        cursors = dict(db.execute(
            "SELECT timeframe, last_agg_bar_ts_utc FROM data_agg_state "
            "WHERE canonical_symbol = 'EURUSD'").fetchall())
        db.commit()
        return {"bars": bars, "cursors": cursors}

    by_month = built()
    assert len(by_month["bars"]["5m"]) == 720 and len(by_month["bars"]["1h"]) == 60

    empty_tables(database_url)
    seed_two_days_and_a_gap(db, instance)
    # every day the month's run read: from agg_start_utc (July 1, where the cursors start)
    # up to the run's instant
    july = date(2025, 7, 1)
    days = [july + timedelta(days=d) for d in range((AS_OF.date() - july).days)]
    assert run_range(instance, "EURUSD", days[0], days[-1], as_of=AS_OF).success
    by_day = built()
    assert by_day["cursors"] == by_month["cursors"]
    for tf, frame in by_month["bars"].items():
        pd.testing.assert_frame_equal(by_day["bars"][tf], frame, obj=f"{tf} bars by day")


def test_a_year_partition_carries_its_days_and_a_live_run_reads_only_today(
        two_days_and_a_gap, instance):
    """Issue 20: 10,000 symbols x 5 years fit Dagster's ceiling only in year partitions
    (50,000 per asset). A year's key is its first day; its materialisation carries the sum of
    its days, and a live run needing one day (agg/days) re-reads that day, not the year."""
    db = two_days_and_a_gap
    metadata = month_run(instance, grain="year")
    # (a multi-partition key orders its dimensions by name: "symbol" before "year")
    assert list(metadata) == ["EURUSD|2025-01-01"]
    year = metadata["EURUSD|2025-01-01"]
    source = source_per_day(db, "EURUSD")
    assert year["bars_inserted"] == sum(stored_per_day(db, "EURUSD", "5m").values()) == 720
    assert year["source_rows_read"] == sum(rows for rows, _ in source.values())
    insert_bars(db, "EURUSD", [bar(T0 + timedelta(days=1, hours=3, minutes=7), 1.5,
                                   ingested_at=AS_OF)], upsert=True)
    db.commit()
    live = month_run(instance, DAYS[1], DAYS[1], grain="year")["EURUSD|2025-01-01"]
    assert live["days_read"] == DAYS[1].isoformat()
    assert (live["bars_updated"], live["bars_unchanged"]) == (1, 143)
