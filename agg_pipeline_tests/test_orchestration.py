"""Dagster wiring on a real instance and a real database: assets, schedule and sensor ticks."""

from datetime import UTC, datetime, timedelta

import dagster as dg
import pytest
from dagster._core.events import DagsterEvent
from dagster._core.remote_origin import (
    RegisteredCodeLocationOrigin,
    RemoteJobOrigin,
    RemoteRepositoryOrigin,
)

from agg_pipeline.definitions import defs
from agg_pipeline.defs.assets import AS_OF_TAG
from agg_pipeline.defs.partitions import (
    RANGE_END_TAG,
    RANGE_START_TAG,
    SYMBOL_TAG,
    SYMBOLS_PARTITIONS_NAME,
    partition_key,
    range_tags,
)
from agg_pipeline.defs.requests import next_runs, run_states
from agg_pipeline.defs.resources import MarketDatabase
from agg_pipeline.defs.schedules import catchup_schedule
from agg_pipeline.defs.sensors import (
    ladder_sensor,
    late_data_sensor,
    registry_sync_sensor,
    source_frontier_sensor,
)
from agg_pipeline.defs.tags import LANE_TAG, LIVE_LANE
from agg_pipeline_tests.helpers import (
    AGG_START,
    T0,
    active_bars,
    add_symbol,
    bar,
    cursors_at,
    insert_bars,
    minute_bars,
    sync,
)

RESOURCES = {"market_db": MarketDatabase()}
DAY = T0.date()


def run_range(instance, symbol, first_day, last_day, *, assets=("bars_5m", "bars_1h"),
              as_of: datetime | None = None, last_symbol: str | None = None,
              job_name: str = "aggregate_bars"):
    job = defs.resolve_job_def(job_name)
    tags = range_tags(symbol, first_day, last_day, last_symbol=last_symbol)
    if as_of:
        tags[AS_OF_TAG] = as_of.isoformat()
    return job.execute_in_process(
        instance=instance, tags=tags, asset_selection=[dg.AssetKey(a) for a in assets],
        raise_on_error=False,
    )


def materializations(instance, asset):
    return [e.asset_materialization for e in instance.get_latest_materialization_events(
        [dg.AssetKey(asset)]).values() if e]


@pytest.fixture
def eurusd(db, instance):
    add_symbol(db, "EURUSD")
    sync(db)
    instance.add_dynamic_partitions(SYMBOLS_PARTITIONS_NAME, ["EURUSD"])
    return db


def test_definitions_snapshot():
    """Every asset, job, sensor and schedule; a change here is a change operators see."""
    repo = defs.get_repository_def()
    snapshot = {
        "assets": sorted(k.to_user_string() for k in repo.asset_graph.get_all_asset_keys()),
        "jobs": sorted(j.name for j in repo.get_all_jobs() if not j.name.startswith("__")),
        "sensors": sorted(s.name for s in repo.sensor_defs),
        "schedules": sorted((s.name, s.cron_schedule) for s in repo.schedule_defs),
        "asset_checks": sorted(k.to_user_string() for k in repo.asset_graph.asset_check_keys),
    }
    assert snapshot == {
        "assets": ["bars_15m", "bars_1d", "bars_1h", "bars_1m", "bars_4h", "bars_5m",
                   "synthetic_bars_1m"],
        "jobs": ["aggregate_bars", "aggregate_bars_15m", "aggregate_bars_1d",
                 "aggregate_bars_4h", "backfill_bars", "backup_agg_state", "legacy_cleanup",
                 "legacy_cleanup_undo",
                 "preflight_report", "prune_backups", "rebuild_range", "reset_cursors",
                 "restore_agg_state", "synthetic_bars"],
        "sensors": ["alerts_sensor", "dagster_storage_retention_sensor", "ladder_sensor",
                    "late_data_sensor", "registry_sync_sensor", "run_liveness_sensor",
                    "source_frontier_sensor"],
        "schedules": [("catchup_schedule", "*/5 * * * *")],
        "asset_checks": sorted(
            [f"bars_{tf}:{check}"
             for tf in ("5m", "15m", "1h", "4h", "1d")
             for check in ("cursor_not_ahead", "freshness", "matches_source",
                           "no_bars_before_start", "no_failed_tasks", "ohlc_sane", "quality")]
            + ["bars_5m:no_stray_source_rows"]
        ),
    }
    graph = repo.asset_graph
    assert graph.get(dg.AssetKey("bars_1h")).parent_keys == {dg.AssetKey("bars_5m")}
    assert graph.get(dg.AssetKey("bars_4h")).parent_keys == {dg.AssetKey("bars_1h")}
    assert graph.get(dg.AssetKey("bars_5m")).parent_keys == {dg.AssetKey("bars_1m"),
                                                             dg.AssetKey("synthetic_bars_1m")}
    assert graph.get(dg.AssetKey("synthetic_bars_1m")).parent_keys == {dg.AssetKey("bars_1m")}


def run_totals_lines(instance, run_id: str) -> list[str]:
    return [e.user_message for e in instance.all_logs(run_id)
            if e.user_message.startswith("run totals")]


def test_multi_day_range_run_is_one_engine_call_per_timeframe(eurusd, instance):
    for day in range(3):
        insert_bars(eurusd, "EURUSD", minute_bars(T0 + timedelta(days=day), 24 * 60))
    eurusd.commit()
    # from the first day partition (the cursor's day) through the data's last day
    result = run_range(instance, "EURUSD", AGG_START.date(), DAY + timedelta(days=2),
                       as_of=T0 + timedelta(days=4))
    assert result.success
    # the run's totals are logged once per timeframe, labelled as the run's, with the
    # instant the run judged windows final at (not repeated on each partition)
    totals = run_totals_lines(instance, result.run_id)
    as_of = f"windows final as of {T0 + timedelta(days=4):%Y-%m-%d %H:%M:%S} UTC"
    assert [line.splitlines()[0] for line in totals] == [
        f"run totals, bars_5m, 9 partitions of 1 symbols (1 ranges), {as_of}: inserted 864, "
        "updated 0, soft-deleted 0, unchanged 0, skipped windows 0; source rows 4320 "
        "(0 invalid)",
        f"run totals, bars_1h, 9 partitions of 1 symbols (1 ranges), {as_of}: inserted 72, "
        "updated 0, soft-deleted 0, unchanged 0, skipped windows 0; source rows 864 "
        "(0 invalid)"]
    cursors = dict(eurusd.execute("SELECT timeframe, last_agg_bar_ts_utc FROM data_agg_state "
                                  "WHERE canonical_symbol = 'EURUSD'").fetchall())
    assert cursors == {"5m": T0 + timedelta(days=3), "1h": T0 + timedelta(days=3)}
    # one run, every partition of the range materialised
    keys = [str(partition_key("EURUSD", AGG_START.date() + timedelta(days=d))) for d in range(9)]
    status = instance.get_status_by_partition(
        dg.AssetKey("bars_5m"), partition_keys=keys,
        partitions_def=defs.get_assets_def("bars_5m").partitions_def)
    assert set(status.values()) == {dg.AssetPartitionStatus.MATERIALIZED}
    assert len(active_bars(eurusd, "EURUSD", "5m")) == 3 * 288


def test_optional_timeframe_without_task_is_skipped_not_failed(eurusd, instance):
    """A bars_15m partition whose task is gone (retired since the last registry sync)."""
    insert_bars(eurusd, "EURUSD", minute_bars(T0, 120))
    eurusd.commit()
    assert run_range(instance, "EURUSD", DAY, DAY, as_of=T0 + timedelta(days=1)).success
    instance.add_dynamic_partitions("symbols_15m", ["EURUSD"])
    result = run_range(instance, "EURUSD", DAY, DAY, assets=("bars_15m",),
                       as_of=T0 + timedelta(days=1), job_name="aggregate_bars_15m")
    assert result.success
    meta = instance.get_latest_materialization_event(
        dg.AssetKey("bars_15m")).asset_materialization.metadata
    assert meta["partition_note"].value.startswith("skipped: no task")
    assert meta["bars_inserted"].value == 0
    (totals,) = [line for line in run_totals_lines(instance, result.run_id) if "bars_15m" in line]
    assert "(0 ranges)" in totals and "skipped, no task" in totals and "1 symbol: EURUSD" in totals


def apply_partition_requests(instance: dg.DagsterInstance, result) -> None:
    """What the daemon does with a registry_sync_sensor tick's partition requests."""
    for request in result.dynamic_partitions_requests:
        if isinstance(request, dg.AddDynamicPartitionsRequest):
            instance.add_dynamic_partitions(request.partitions_def_name,
                                            list(request.partition_keys))
        else:
            for key in request.partition_keys:
                instance.delete_dynamic_partition(request.partitions_def_name, key)


def test_registry_sync_sensor_adds_and_removes_partitions(db, instance):
    add_symbol(db, "EURUSD")
    add_symbol(db, "DXY", calc_4h=True)
    add_symbol(db, "BAD|SYM")
    db.commit()
    context = dg.build_sensor_context(instance=instance, resources=RESOURCES)
    result = registry_sync_sensor(context)
    requested = {(type(r).__name__, r.partitions_def_name): sorted(r.partition_keys)
                 for r in result.dynamic_partitions_requests}
    # every symbol in `symbols`; only DXY, which enables 4h, in bars_4h's `symbols_4h`
    assert requested == {("AddDynamicPartitionsRequest", "symbols"): ["DXY", "EURUSD"],
                         ("AddDynamicPartitionsRequest", "symbols_4h"): ["DXY"]}
    apply_partition_requests(instance, result)
    tasks = db.execute("SELECT canonical_symbol, timeframe, is_mandatory FROM data_agg_state "
                       "ORDER BY 1, 2").fetchall()
    assert tasks == [("DXY", "1h", True), ("DXY", "4h", False), ("DXY", "5m", True),
                     ("EURUSD", "1h", True), ("EURUSD", "5m", True)]
    # nothing changed: the sensor skips
    assert isinstance(registry_sync_sensor(context), dg.SkipReason)
    # EURUSD leaves the environment: its partition goes, its tasks are retired (kept)
    db.execute("UPDATE core_asset_registry_all SET active = false "
               "WHERE canonical_symbol = 'EURUSD'")
    db.commit()
    result = registry_sync_sensor(context)
    removed = result.dynamic_partitions_requests[0]
    assert isinstance(removed, dg.DeleteDynamicPartitionsRequest)
    assert list(removed.partition_keys) == ["EURUSD"]
    statuses = dict(db.execute("SELECT timeframe, status FROM data_agg_state "
                               "WHERE canonical_symbol = 'EURUSD'").fetchall())
    assert statuses == {"5m": "retired", "1h": "retired"}


def test_an_optional_timeframe_partition_follows_the_registry(db, instance):
    """A symbol without 15m has no bars_15m partition; enabling 15m in the registry adds it
    at the next registry sync, disabling it removes it (the task is retired)."""
    add_symbol(db, "EURUSD")
    db.commit()
    context = dg.build_sensor_context(instance=instance, resources=RESOURCES)
    apply_partition_requests(instance, registry_sync_sensor(context))
    assert instance.get_dynamic_partitions("symbols") == ["EURUSD"]
    assert instance.get_dynamic_partitions("symbols_15m") == []
    assert not defs.get_assets_def(dg.AssetKey("bars_15m")).partitions_def.get_partition_keys(
        dynamic_partitions_store=instance)

    db.execute("UPDATE core_asset_registry_all SET calc_15m = true "
               "WHERE canonical_symbol = 'EURUSD'")
    db.commit()
    result = registry_sync_sensor(context)
    assert [(type(r).__name__, r.partitions_def_name, list(r.partition_keys))
            for r in result.dynamic_partitions_requests] == [
        ("AddDynamicPartitionsRequest", "symbols_15m", ["EURUSD"])]
    apply_partition_requests(instance, result)
    keys = defs.get_assets_def(dg.AssetKey("bars_15m")).partitions_def.get_partition_keys(
        dynamic_partitions_store=instance)
    assert keys and {k.keys_by_dimension["symbol"] for k in keys} == {"EURUSD"}
    assert instance.get_dynamic_partitions("symbols_4h") == []

    db.execute("UPDATE core_asset_registry_all SET calc_15m = false "
               "WHERE canonical_symbol = 'EURUSD'")
    db.commit()
    result = registry_sync_sensor(context)
    assert [(type(r).__name__, r.partitions_def_name, list(r.partition_keys))
            for r in result.dynamic_partitions_requests] == [
        ("DeleteDynamicPartitionsRequest", "symbols_15m", ["EURUSD"])]
    apply_partition_requests(instance, result)
    assert instance.get_dynamic_partitions("symbols_15m") == []
    assert instance.get_dynamic_partitions("symbols") == ["EURUSD"]


def bars_completing_the_last_hour(conn) -> datetime:
    """EURUSD's 25 minutes of 1m bars ending at the last full hour, cursors at their first:
    their 5m windows complete that hour, so a run builds 1h too (planning.catchup_work).
    Returns the first bar's time."""
    first_bar = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(
        minutes=25)
    cursors_at(conn, first_bar)
    insert_bars(conn, "EURUSD", minute_bars(first_bar, 25))
    conn.commit()
    return first_bar


def test_frontier_sensor_requests_new_complete_windows_and_skips_when_idle(eurusd, instance):
    first_bar = bars_completing_the_last_hour(eurusd)
    context = dg.build_sensor_context(instance=instance, resources=RESOURCES)
    result = source_frontier_sensor(context)
    assert len(result.run_requests) == 1
    request = result.run_requests[0]
    assert request.tags[SYMBOL_TAG] == "EURUSD"
    assert request.tags[RANGE_START_TAG].endswith("|EURUSD")
    # the range ends on the day of the newest bar (yesterday, just after midnight UTC)
    newest_bar = first_bar + timedelta(minutes=24)
    assert request.tags[RANGE_END_TAG] == str(partition_key("EURUSD", newest_bar.date()))
    assert {k.to_user_string() for k in request.asset_selection} == {"bars_5m", "bars_1h"}
    assert [o.asset_key.to_user_string() for o in result.asset_events] == ["bars_1m"]
    # the run happens; the same tick again has nothing to do
    job = defs.resolve_job_def("aggregate_bars")
    assert job.execute_in_process(instance=instance, tags=request.tags,
                                  asset_selection=request.asset_selection).success
    context = dg.build_sensor_context(instance=instance, resources=RESOURCES,
                                      cursor=result.cursor)
    assert source_frontier_sensor(context).run_requests == []


def test_frontier_sensor_waits_while_a_live_run_is_queued(eurusd, instance):
    """Windows due while a live run waits in the queue are requested at the first tick after
    it has started (a busy lane gets few large runs, not a queue of small ones)."""
    bars_completing_the_last_hour(eurusd)
    # a queued run must name the code location it came from, as the daemon's do
    origin = RemoteJobOrigin(RemoteRepositoryOrigin(
        RegisteredCodeLocationOrigin("agg_pipeline"), "__repository__"), "aggregate_bars")
    waiting = instance.create_run_for_job(defs.resolve_job_def("aggregate_bars"),
                                          tags={LANE_TAG: LIVE_LANE}, remote_job_origin=origin)
    instance.report_dagster_event(DagsterEvent.job_enqueue(waiting), run_id=waiting.run_id)
    assert instance.get_run_by_id(waiting.run_id).status == dg.DagsterRunStatus.QUEUED
    context = dg.build_sensor_context(instance=instance, resources=RESOURCES)
    skipped = source_frontier_sensor(context)
    assert isinstance(skipped, dg.SkipReason) and "waiting in the queue" in skipped.skip_message
    instance.report_run_canceled(waiting)  # it leaves the queue: the work is requested
    context = dg.build_sensor_context(instance=instance, resources=RESOURCES)
    [request] = source_frontier_sensor(context).run_requests
    assert request.tags[SYMBOL_TAG] == "EURUSD"


def test_late_row_rerequests_its_day_for_5m_and_1h(eurusd, instance):
    insert_bars(eurusd, "EURUSD", minute_bars(T0, 24 * 60))
    eurusd.commit()
    assert run_range(instance, "EURUSD", DAY, DAY, as_of=T0 + timedelta(days=2)).success
    context = dg.build_sensor_context(instance=instance, resources=RESOURCES)
    quiet = late_data_sensor(context)
    assert not quiet.run_requests
    # a correction of 03:07 lands now
    insert_bars(eurusd, "EURUSD", [bar(T0 + timedelta(hours=3, minutes=7), 1.5,
                                       ingested_at=datetime.now(UTC))], upsert=True)
    eurusd.commit()
    context = dg.build_sensor_context(instance=instance, resources=RESOURCES, cursor=quiet.cursor)
    result = late_data_sensor(context)
    assert len(result.run_requests) == 1
    request = result.run_requests[0]
    assert request.tags[RANGE_START_TAG] == request.tags[RANGE_END_TAG] == str(
        partition_key("EURUSD", DAY))
    assert {k.to_user_string() for k in request.asset_selection} == {"bars_5m", "bars_1h"}
    # the same state again, before the run exists: requested once, claimed, not twice
    again = late_data_sensor(dg.build_sensor_context(instance=instance, resources=RESOURCES,
                                                     cursor=quiet.cursor))
    assert again.run_requests == []
    # after the re-materialisation the day matches its fingerprint again
    job = defs.resolve_job_def("aggregate_bars")
    assert job.execute_in_process(instance=instance, tags={**request.tags,
                                  AS_OF_TAG: (T0 + timedelta(days=2)).isoformat()},
                                  asset_selection=request.asset_selection).success
    assert active_bars(eurusd, "EURUSD", "1h").set_index("ts_utc").loc[
        T0 + timedelta(hours=3), "high"] == 1.501
    after = late_data_sensor(dg.build_sensor_context(instance=instance, resources=RESOURCES,
                                                     cursor=quiet.cursor))
    assert not after.run_requests


def test_schedule_orders_bounds_and_never_duplicates(db, instance, monkeypatch):
    """Contract 12 under the run bound: with one symbol per run (a partition per run) and two
    runs per tick, the most urgent symbols come first; the next tick requests neither the work
    of a run still in flight nor of one within its claim's grace, and does request work whose
    run failed (a finished run releases its claim)."""
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    start = now - timedelta(hours=2)
    start = start - timedelta(minutes=start.minute % 5)
    priorities = {"AAA": 200, "BBB": 50, "CCC": 100, "DDD": 300}
    for symbol in priorities:
        add_symbol(db, symbol)
        insert_bars(db, symbol, minute_bars(start, 60))
    sync(db)
    cursors_at(db, start)
    for symbol, priority in priorities.items():
        db.execute("UPDATE data_agg_state SET task_priority = %s WHERE canonical_symbol = %s",
                   (priority, symbol))
    db.commit()
    instance.add_dynamic_partitions(SYMBOLS_PARTITIONS_NAME, list(priorities))
    monkeypatch.setenv("AGG_MAX_RUNS_PER_TICK", "2")
    monkeypatch.setenv("AGG_MAX_PARTITIONS_PER_RUN", "1")
    context = dg.build_schedule_context(instance=instance, resources=RESOURCES,
                                        scheduled_execution_time=now)
    requests = catchup_schedule(context)
    assert [r.tags[SYMBOL_TAG] for r in requests] == ["BBB", "CCC"]  # priority order, bounded
    assert {r.tags["agg/lane"] for r in requests} == {"live"}
    assert len({r.tags["agg/plan"] for r in requests}) == 2
    # BBB's run is in flight, CCC's failed: the next tick requests CCC again and AAA, not BBB
    job = defs.resolve_job_def("aggregate_bars")
    instance.create_run_for_job(job, tags=requests[0].tags, status=dg.DagsterRunStatus.STARTED)
    instance.create_run_for_job(job, tags=requests[1].tags, status=dg.DagsterRunStatus.FAILURE)
    requests = catchup_schedule(dg.build_schedule_context(
        instance=instance, resources=RESOURCES,
        scheduled_execution_time=now + timedelta(minutes=5)))
    assert [r.tags[SYMBOL_TAG] for r in requests] == ["CCC", "AAA"]
    # and then only DDD is left: AAA's and CCC's runs are not created yet (grace), BBB's runs
    requests = catchup_schedule(dg.build_schedule_context(
        instance=instance, resources=RESOURCES,
        scheduled_execution_time=now + timedelta(minutes=10)))
    assert [r.tags[SYMBOL_TAG] for r in requests] == ["DDD"]


def test_disabled_task_is_not_scheduled_and_resumes_from_its_cursor(eurusd, instance):
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    start = now - timedelta(hours=1)
    start = start - timedelta(minutes=start.minute % 5)
    insert_bars(eurusd, "EURUSD", minute_bars(start, 40))
    cursors_at(eurusd, start)
    eurusd.execute("UPDATE data_agg_state SET enabled = false")
    eurusd.commit()
    context = dg.build_schedule_context(instance=instance, resources=RESOURCES,
                                        scheduled_execution_time=now)
    assert isinstance(catchup_schedule(context), dg.SkipReason)
    eurusd.execute("UPDATE data_agg_state SET enabled = true")
    eurusd.commit()
    requests = catchup_schedule(context)
    assert requests[0].tags[RANGE_START_TAG] == str(partition_key("EURUSD", start.date()))


def test_hard_failures_follow_the_state_machine_through_dagster(eurusd, instance):
    eurusd.execute("UPDATE data_agg_state SET last_agg_bar_ts_utc = NULL WHERE timeframe = '5m'")
    eurusd.commit()
    for _ in range(3):
        result = run_range(instance, "EURUSD", DAY, DAY, assets=("bars_5m",))
        assert not result.success
    row = eurusd.execute("SELECT status, hard_fail_streak, enabled, last_error FROM "
                         "data_agg_state WHERE timeframe = '5m'").fetchone()
    assert row[:3] == ("hard_failed", 3, True)
    assert "NULL" in row[3]


def test_frontier_tick_builds_an_optional_timeframe_after_its_5m_in_a_chained_run(db, instance):
    """A block of symbols where one enables 15m: the tick requests one aggregate_bars run over
    the block; when it succeeds ladder_sensor launches the aggregate_bars_15m run over that
    symbol alone, under the same plan (its claims held in between), and 15m is built from the
    5m bars the first run wrote."""
    add_symbol(db, "AUDUSD")
    add_symbol(db, "EURUSD", calc_15m=True)
    add_symbol(db, "GBPUSD")
    db.commit()
    context = dg.build_sensor_context(instance=instance, resources=RESOURCES)
    apply_partition_requests(instance, registry_sync_sensor(context))
    start = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=2)
    cursors_at(db, start)
    for symbol in ("AUDUSD", "EURUSD", "GBPUSD"):
        insert_bars(db, symbol, minute_bars(start, 60))
    db.commit()

    tick = source_frontier_sensor(dg.build_sensor_context(instance=instance, resources=RESOURCES))
    [first] = tick.run_requests  # one run per tick for the block, as without optional rungs
    assert first.job_name == "aggregate_bars"
    assert {k.to_user_string() for k in first.asset_selection} == {"bars_5m", "bars_1h"}
    assert first.tags[RANGE_START_TAG].endswith("|AUDUSD")
    assert first.tags[RANGE_END_TAG].endswith("|GBPUSD")
    assert next_runs(first.tags) == [("aggregate_bars_15m", "EURUSD", "EURUSD", ["15m"])]
    ladder = dg.build_sensor_context(instance=instance, resources=RESOURCES)
    assert isinstance(ladder_sensor(ladder), dg.SkipReason)  # nothing ran yet

    mandatory = defs.resolve_job_def("aggregate_bars").execute_in_process(
        instance=instance, tags=first.tags, asset_selection=first.asset_selection)
    assert mandatory.success
    assert active_bars(db, "EURUSD", "15m").empty
    plan = first.tags["agg/plan"]
    # the chain is not through: its plan stays live, its work is not requested again
    assert run_states(instance, [plan]).live == {plan}
    assert source_frontier_sensor(dg.build_sensor_context(
        instance=instance, resources=RESOURCES, cursor=tick.cursor)).run_requests == []

    [second] = ladder_sensor(ladder).run_requests
    assert second.job_name == "aggregate_bars_15m"
    assert {k.to_user_string() for k in second.asset_selection} == {"bars_15m"}
    assert second.tags[RANGE_START_TAG].endswith("|EURUSD")
    assert second.tags[RANGE_END_TAG].endswith("|EURUSD")
    assert second.tags["agg/plan"] == plan and second.run_key == f"{plan}/1"
    assert not next_runs(second.tags)
    optional = defs.resolve_job_def("aggregate_bars_15m").execute_in_process(
        instance=instance, tags=second.tags, asset_selection=second.asset_selection)
    assert optional.success
    assert len(active_bars(db, "EURUSD", "15m")) == 4
    assert len(active_bars(db, "EURUSD", "5m")) == 12
    # the 15m run was created after the 5m run ended
    runs = {r.job_name: r for r in (rec.dagster_run for rec in instance.get_run_records(
        dg.RunsFilter(tags={"agg/plan": plan})))}
    ended_5m = instance.get_run_record_by_id(runs["aggregate_bars"].run_id).end_time
    created_15m = instance.get_run_record_by_id(runs["aggregate_bars_15m"].run_id).create_timestamp
    assert created_15m.timestamp() >= ended_5m
    assert isinstance(ladder_sensor(ladder), dg.SkipReason)  # launched once
    assert run_states(instance, [plan]).live == set()
