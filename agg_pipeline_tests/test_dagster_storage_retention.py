"""Bounded Dagster storage (issue 20): dagster_storage_retention_sensor on a real instance with
PostgreSQL storage and real runs of `aggregate_bars`; its decision alone, without storage."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import dagster as dg
import psycopg
import pytest

from agg_pipeline import settings
from agg_pipeline.definitions import defs
from agg_pipeline.defs import storage_retention
from agg_pipeline.defs.partitions import SYMBOLS_PARTITIONS_NAME, range_tags
from agg_pipeline.defs.storage_retention import (
    Policy,
    RunInfo,
    apply_retention,
    dagster_storage_retention_sensor,
    decide,
)
from agg_pipeline.defs.tags import LANE_TAG, LIVE_LANE, RUNBOOK_TAG
from agg_pipeline_tests.helpers import T0, add_symbol, insert_bars, minute_bars, sync

NOW = datetime(2026, 12, 7, 12, tzinfo=UTC)
D1, D2 = T0.date(), T0.date() + timedelta(days=1)
ASSETS = ("bars_5m", "bars_1h")


# ------------------------------------------------------------------ the decision, no storage


def info(run_id: str, days_old: float, failed: bool = False) -> RunInfo:
    return RunInfo(run_id, failed, NOW - timedelta(days=days_old))


def test_decide_deletes_old_runs_holding_nothing_and_keeps_the_rest():
    policy = Policy(success_days=7, failed_days=30, max_deletes=10, keep_newest=0)
    holding = {"b": "latest materialisation of bars_5m EURUSD|2025-07-07"}
    runs = [info("a", 20), info("b", 10), info("c", 8), info("young", 6)]
    decision = decide(runs, policy, NOW, holding.get, room=10)
    assert decision.delete == ["a", "c"]
    assert decision.kept == {"b": holding["b"], "young": "young"}
    assert decision.last_kept == "young" and decision.exhausted and decision.stopped is None


def test_decide_keeps_failed_runs_until_their_own_age_and_honours_off():
    policy = Policy(success_days=7, failed_days=30, max_deletes=10, keep_newest=0)
    runs = [info("f20", 20, failed=True), info("f31", 31, failed=True)]
    assert decide(runs, policy, NOW, lambda _: None, room=10).delete == ["f31"]
    never_failed = Policy(success_days=7, failed_days=None, max_deletes=10)
    decision = decide(runs, never_failed, NOW, lambda _: None, room=10)
    assert decision.delete == [] and set(decision.kept.values()) == {"its class is never deleted"}


def test_decide_stops_at_the_bound_and_at_the_time_budget():
    policy = Policy(success_days=7, failed_days=30, max_deletes=2, keep_newest=0)
    runs = [info(f"r{i}", 10) for i in range(5)]
    asked: list[str] = []

    def holds(run_id: str) -> None:
        asked.append(run_id)

    decision = decide(runs, policy, NOW, holds, room=2)
    assert decision.delete == ["r0", "r1"] and decision.stopped == "bound"
    assert asked == ["r0", "r1"] and not decision.exhausted  # nothing examined past the bound
    decision = decide(runs, policy, NOW, holds, room=2, out_of_time=lambda: True)
    assert decision.delete == [] and decision.stopped == "time"


# ------------------------------------------------------------------ on a real Dagster instance


@pytest.fixture
def symbols(db, instance):
    for symbol in ("EURUSD", "GBPUSD", "USDJPY"):
        add_symbol(db, symbol)
        for day in (D1, D2):
            start = datetime.combine(day, datetime.min.time(), tzinfo=UTC) + timedelta(hours=8)
            insert_bars(db, symbol, minute_bars(start, 120))
    db.commit()
    sync(db)
    instance.add_dynamic_partitions(SYMBOLS_PARTITIONS_NAME, ["EURUSD", "GBPUSD", "USDJPY"])
    return db


def run(instance, first: str, last: str, first_day=D1, last_day=D2, *, live: bool = True,
        extra: dict[str, str] | None = None) -> str:
    tags = range_tags(first, first_day, last_day, last_symbol=last)
    if live:
        tags[LANE_TAG] = LIVE_LANE
    tags.update(extra or {})
    result = defs.resolve_job_def("aggregate_bars").execute_in_process(
        instance=instance, tags=tags, asset_selection=[dg.AssetKey(a) for a in ASSETS],
        raise_on_error=False)
    return result.run_id


def age(storage_url: str, run_id: str, days: float) -> None:
    """Make a run `days` older. Dagster has no API to set a run's timestamps, and a test cannot
    wait a week: its creation and last update move back in the runs table (UTC, naive)."""
    with psycopg.connect(storage_url, autocommit=True) as conn:
        conn.execute("UPDATE runs SET create_timestamp = create_timestamp - make_interval("
                     "secs => %(s)s), update_timestamp = update_timestamp - make_interval("
                     "secs => %(s)s) WHERE run_id = %(id)s",
                     {"s": days * 86400, "id": run_id})


def latest_by_partition(instance) -> dict[tuple[str, str], tuple[int, dict]]:
    """Each (asset, partition)'s latest materialisation: its storage id and its counts."""
    latest = {}
    for asset in ASSETS:
        key = dg.AssetKey(asset)
        for partition in instance.get_materialized_partitions(key):
            record = instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=key, asset_partitions=[partition]),
                limit=1).records[0]
            latest[(asset, partition)] = (record.storage_id, {
                k: v.value for k, v in record.asset_materialization.metadata.items()})
    return latest


def policy(**overrides) -> Policy:
    return Policy(**{"success_days": 7, "failed_days": 30, "max_deletes": 50, "keep_newest": 0,
                     **overrides})


def test_superseded_runs_go_and_every_partitions_latest_stays(symbols, instance,
                                                              dagster_storage_url):
    now = datetime.now(UTC)
    a = run(instance, "EURUSD", "GBPUSD")  # 2 symbols x 2 days, superseded by b
    b = run(instance, "EURUSD", "GBPUSD")  # then holds the latest of 3 of its 4 partitions
    c = run(instance, "EURUSD", "EURUSD", D1, D1)  # the latest of EURUSD's first day
    symbols.execute("UPDATE data_agg_state SET last_agg_bar_ts_utc = NULL "
                    "WHERE canonical_symbol = 'USDJPY' AND timeframe = '5m'")
    symbols.commit()
    failed = run(instance, "USDJPY", "USDJPY")
    assert instance.get_run_by_id(failed).status == dg.DagsterRunStatus.FAILURE
    runbook = run(instance, "EURUSD", "GBPUSD", live=False, extra={RUNBOOK_TAG: "rebuild_range"})
    young = run(instance, "GBPUSD", "GBPUSD", D2, D2)
    for run_id in (a, b, c, runbook):
        assert instance.get_run_by_id(run_id).status == dg.DagsterRunStatus.SUCCESS
        age(dagster_storage_url, run_id, 10)
    age(dagster_storage_url, failed, 10)
    before = latest_by_partition(instance)
    assert len(before) == 2 * 2 * 2  # EURUSD, GBPUSD x 2 days x 2 assets (USDJPY's run failed)

    outcome = apply_retention(instance, policy(), now)
    # a, b, c: every partition of theirs was re-materialised later (by the runbook run, which
    # is not live and stays, then young for GBPUSD's second day): superseded, deleted
    assert set(outcome.deleted) == {a, b, c}
    assert failed not in outcome.deleted + list(outcome.kept)  # 10 < 30 days: no candidate
    for run_id in (a, b, c):
        assert instance.get_run_by_id(run_id) is None
        assert not instance.get_records_for_run(run_id).records
    for run_id in (failed, runbook, young):
        assert instance.get_run_by_id(run_id) is not None
    assert latest_by_partition(instance) == before  # every partition's latest and its counts
    assert "deleted 3 runs older than 7 days" in outcome.summary

    age(dagster_storage_url, failed, 21)  # now 31 days old
    outcome = apply_retention(instance, policy(), now)
    assert outcome.deleted == [failed]
    assert latest_by_partition(instance) == before


def test_a_run_holding_a_partitions_latest_materialisation_is_kept(symbols, instance,
                                                                   dagster_storage_url):
    now = datetime.now(UTC)
    a = run(instance, "EURUSD", "GBPUSD")
    b = run(instance, "EURUSD", "GBPUSD")  # holds all four partitions' latest
    c = run(instance, "EURUSD", "EURUSD", D1, D1)  # then EURUSD's first day's
    for run_id in (a, b, c):
        age(dagster_storage_url, run_id, 10)
    young = run(instance, "GBPUSD", "GBPUSD", D1, D1)
    before = latest_by_partition(instance)
    check_runs_before = {r.run_id for r in instance.event_log_storage
                         .get_latest_asset_check_execution_by_key(
                             storage_retention.check_keys()).values()}

    outcome = apply_retention(instance, policy(), now)
    assert outcome.deleted == [a]
    assert outcome.kept[b].startswith("latest materialisation of bars_")  # EURUSD|D2 ...
    assert outcome.kept[c].startswith("latest ")
    assert young not in outcome.kept  # not a candidate at all
    assert "kept 2 holding a partition's latest materialisation" in outcome.summary
    assert latest_by_partition(instance) == before
    # the checks' latest evaluations are untouched, and the deleted run's are gone
    after = instance.event_log_storage.get_latest_asset_check_execution_by_key(
        storage_retention.check_keys())
    assert {r.run_id for r in after.values()} == check_runs_before
    history = instance.event_log_storage.get_asset_check_execution_history(
        dg.AssetCheckKey(dg.AssetKey("bars_5m"), "ohlc_sane"), limit=100)
    assert a not in {r.run_id for r in history}
    assert {r.run_id for r in history} >= {b, c}


def test_the_per_tick_bound_and_the_cursor(symbols, instance, dagster_storage_url):
    now = datetime.now(UTC)
    runs = [run(instance, "EURUSD", "GBPUSD") for _ in range(3)]  # the last holds everything
    for run_id in runs:
        age(dagster_storage_url, run_id, 10)
    first = apply_retention(instance, policy(max_deletes=1), now)
    assert first.deleted == [runs[0]] and first.stopped == ["bound"]
    assert first.cursor["success"] is None  # nothing kept before the stop: from the oldest
    second = apply_retention(instance, policy(max_deletes=1), now, first.cursor)
    assert second.deleted == [runs[1]]
    third = apply_retention(instance, policy(max_deletes=1), now, second.cursor)
    assert third.deleted == [] and third.kept[runs[2]].startswith("latest")
    assert third.cursor["success"] is None  # every candidate seen: the next pass starts over
    assert instance.get_run_by_id(runs[2]) is not None


def test_the_sensor_deletes_once_enabled_and_nothing_when_off(symbols, instance,
                                                              dagster_storage_url, monkeypatch):
    old, holder = run(instance, "EURUSD", "GBPUSD"), run(instance, "EURUSD", "GBPUSD")
    for run_id in (old, holder):
        age(dagster_storage_url, run_id, 10)
    for var in ("DAGSTER_RETENTION_DAYS_VAR", "DAGSTER_RETENTION_FAILED_DAYS_VAR"):
        monkeypatch.setenv(getattr(settings, var), "off")
    result = dagster_storage_retention_sensor(dg.build_sensor_context(instance=instance))
    assert "off" in result.skip_message
    assert instance.get_run_by_id(old) is not None

    monkeypatch.delenv(settings.DAGSTER_RETENTION_DAYS_VAR)
    monkeypatch.delenv(settings.DAGSTER_RETENTION_FAILED_DAYS_VAR)
    # the alerts' window of the newest finished runs (200) keeps every run of a test: shrink it
    monkeypatch.setattr(storage_retention, "KEEP_NEWEST", 1)
    context = dg.build_sensor_context(instance=instance)
    result = dagster_storage_retention_sensor(context)
    assert result.skip_message.startswith("deleted 1 runs older than 7 days")
    assert "kept 1 holding a partition's latest materialisation" in result.skip_message
    assert instance.get_run_by_id(old) is None and instance.get_run_by_id(holder) is not None


def test_the_newest_finished_runs_are_kept_whatever_their_age(symbols, instance,
                                                              dagster_storage_url):
    old, holder = run(instance, "EURUSD", "GBPUSD"), run(instance, "EURUSD", "GBPUSD")
    for run_id in (old, holder):
        age(dagster_storage_url, run_id, 10)
    outcome = apply_retention(instance, policy(keep_newest=200), datetime.now(UTC))
    assert outcome.deleted == [] and outcome.kept[old] == "one of the newest 200 finished runs"


@pytest.mark.parametrize(("env", "message"), [
    ({"AGG_DAGSTER_RETENTION_DAYS": "seven"}, "AGG_DAGSTER_RETENTION_DAYS='seven' must be a "
     "whole number of days, or 0 / 'off' to disable it"),
    ({"AGG_DAGSTER_RETENTION_DAYS": "-1"}, "AGG_DAGSTER_RETENTION_DAYS='-1' must be a whole"),
    ({"AGG_DAGSTER_RETENTION_FAILED_DAYS": "1.5"}, "AGG_DAGSTER_RETENTION_FAILED_DAYS='1.5'"),
    ({"AGG_DAGSTER_RETENTION_DAYS": "14", "AGG_DAGSTER_RETENTION_FAILED_DAYS": "3"},
     "AGG_DAGSTER_RETENTION_FAILED_DAYS=3 must be at least AGG_DAGSTER_RETENTION_DAYS (14)"),
    ({"AGG_DAGSTER_RETENTION_RUNS_PER_TICK": "0"},
     "AGG_DAGSTER_RETENTION_RUNS_PER_TICK='0' must be a positive integer"),
])
def test_bad_values_are_refused_clearly(monkeypatch, env, message):
    for var in (settings.DAGSTER_RETENTION_DAYS_VAR, settings.DAGSTER_RETENTION_FAILED_DAYS_VAR,
                settings.DAGSTER_RETENTION_RUNS_PER_TICK_VAR):
        monkeypatch.delenv(var, raising=False)
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    with pytest.raises(ValueError, match="^" + message.replace("(", r"\(").replace(")", r"\)")
                       .replace(".", r"\.")):
        Policy.from_settings()
    with pytest.raises(ValueError, match=message.split("=")[0]):
        settings.validate()


@pytest.mark.parametrize(("raw", "expected"), [("", 7), ("0", None), ("off", None),
                                               (" OFF ", None), ("3", 3)])
def test_days_are_read_as_given(monkeypatch, raw, expected):
    monkeypatch.setenv(settings.DAGSTER_RETENTION_DAYS_VAR, raw)
    monkeypatch.delenv(settings.DAGSTER_RETENTION_FAILED_DAYS_VAR, raising=False)
    assert settings.dagster_retention_days() == expected
