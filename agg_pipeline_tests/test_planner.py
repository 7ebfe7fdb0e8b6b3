"""The live path's one planner (engine/planning.py) through the real schedule and sensors, on
a real Dagster instance and the pipeline's least-privilege role: work requested once, also
when requesters tick at the same moment; bounded, batched runs over blocks of symbols whose
bars equal the oracle's; late data, pending changes and the reconciliation backstop; the
month time grain; bars_1m observations bounded per tick.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta

import dagster as dg
import pytest

from agg_pipeline.db import connection
from agg_pipeline.definitions import defs
from agg_pipeline.defs import sensors
from agg_pipeline.defs.config import default_config
from agg_pipeline.defs.factory import PipelineParts, build_parts
from agg_pipeline.defs.partitions import (
    RANGE_END_TAG,
    RANGE_START_TAG,
    SYMBOL_TAG,
    SYMBOLS_PARTITIONS_NAME,
    split_key,
)
from agg_pipeline.defs.requests import PLAN_TAG, REASON_TAG
from agg_pipeline.defs.resources import MarketDatabase
from agg_pipeline.defs.schedules import catchup_schedule
from agg_pipeline.defs.sensors import late_data_sensor, source_frontier_sensor
from agg_pipeline.engine import aggregate as engine
from agg_pipeline.engine import planning
from agg_pipeline.engine.reasons import Reason
from agg_pipeline_tests.helpers import (
    AGG_START,
    T0,
    add_symbol,
    bar,
    cursors_at,
    insert_bars,
    minute_bars,
    sync,
    wait_for,
)
from agg_pipeline_tests.oracle import floor_time
from agg_pipeline_tests.reporting import report
from agg_pipeline_tests.stored import compare_with_oracle, derived_rows

RESOURCES = {"market_db": MarketDatabase()}
MINUTE, HOUR, DAY = timedelta(minutes=1), timedelta(hours=1), timedelta(days=1)
SYMBOLS = ("AAA", "BBB", "CCC", "DDD", "EEE", "FFF")


# ----------------------------------------------------------------------------- helpers


def db_now(conn) -> datetime:
    value = conn.execute("SELECT now()").fetchone()[0]
    conn.rollback()
    return value


def schedule(instance, when: datetime | None = None, parts: PipelineParts | None = None):
    # the context is closed: its instance (made from the test instance's ref) leaves
    # Dagster's current defs-state storage as it found it
    with dg.build_schedule_context(instance=instance, resources=RESOURCES,
                                   scheduled_execution_time=when or datetime.now(UTC)) as context:
        result = (parts.catchup_schedule if parts else catchup_schedule)(context)
    return [] if isinstance(result, dg.SkipReason) else result


def frontier(instance, cursor: str | None = None) -> dg.SensorResult:
    with dg.build_sensor_context(instance=instance, resources=RESOURCES,
                                 cursor=cursor) as context:
        return source_frontier_sensor(context)


def late(instance, cursor: str | None = None,
         parts: PipelineParts | None = None) -> dg.SensorResult:
    with dg.build_sensor_context(instance=instance, resources=RESOURCES,
                                 cursor=cursor) as context:
        return (parts.late_data_sensor if parts else late_data_sensor)(context)


def rectangle(instance, request: dg.RunRequest) -> tuple[list[str], date, date]:
    """The request's block of symbols (in the partitions' order) and its periods."""
    order = list(instance.get_dynamic_partitions(SYMBOLS_PARTITIONS_NAME))
    first_symbol, first = split_key(request.tags[RANGE_START_TAG])
    last_symbol, last = split_key(request.tags[RANGE_END_TAG])
    return order[order.index(first_symbol):order.index(last_symbol) + 1], first, last


def covered(instance, requests) -> list[tuple[str, date, date]]:
    """(symbol, first period, last period) of every symbol each request covers."""
    found = []
    for request in requests:
        block, first, last = rectangle(instance, request)
        found += [(symbol, first, last) for symbol in block]
    return found


def execute(instance, request: dg.RunRequest) -> dg.ExecuteInProcessResult:
    """The requested run, as the daemon would launch it (its tags, selection and checks)."""
    return defs.resolve_job_def("aggregate_bars").execute_in_process(
        instance=instance, tags=request.tags, asset_selection=request.asset_selection,
        raise_on_error=False)


def claims(owner) -> list[tuple]:
    rows = owner.execute("SELECT plan_id, canonical_symbol, timeframe, first_day, last_day "
                         "FROM data_agg_plan_claims ORDER BY 2, 3, 1").fetchall()
    owner.rollback()
    return rows


def live_setup(db, instance, symbols=SYMBOLS, *, minutes: int = 60) -> datetime:
    """`symbols` with `minutes` of 1m bars ending ~an hour ago and their cursors at the first
    bar: every symbol has 5m and 1h work today (or from yesterday, just after midnight)."""
    now = db_now(db)
    start = floor_time(now - 2 * HOUR, timedelta(minutes=5))
    for symbol in symbols:
        add_symbol(db, symbol)
        insert_bars(db, symbol, minute_bars(start, minutes))
    sync(db)
    cursors_at(db, start)
    db.commit()
    instance.add_dynamic_partitions(SYMBOLS_PARTITIONS_NAME, list(symbols))
    return start


# ====================================================================== once, also at once


def test_schedule_and_frontier_sensor_together_request_each_symbols_work_once(
        db, instance, monkeypatch):
    """Protects "never the same work twice" (issue 11 item 3): the schedule and the frontier
    sensor evaluated back to back on one instance, in either order, request every symbol's
    work exactly once between them, batched (one run over the block of six symbols, not six),
    with the live lane, reason and plan tags and no agg/symbol (several symbols); a second
    tick of either right after requests nothing. With a bound of 2 partitions per run and 2
    runs per tick, a tick requests 2 runs and the next one the rest, nothing twice."""
    start = live_setup(db, instance)
    first = schedule(instance)
    second = frontier(instance)
    assert len(first) == 1 and second.run_requests == []
    block, first_day, last_day = rectangle(instance, first[0])
    assert block == list(SYMBOLS) and first_day <= start.date() <= last_day
    tags = first[0].tags
    assert (tags["agg/lane"], tags[REASON_TAG]) == ("live", "catch-up")
    assert tags[PLAN_TAG] == first[0].run_key and SYMBOL_TAG not in tags
    assert {k.to_user_string() for k in first[0].asset_selection} == {"bars_5m", "bars_1h"}
    assert schedule(instance) == [] and frontier(instance).run_requests == []
    assert {row[1:3] for row in claims(db)} == {(s, tf) for s in SYMBOLS for tf in ("5m", "1h")}

    # the other order, bounded: the sensor first, at most 2 runs of 2 partitions per tick
    db.execute("DELETE FROM data_agg_plan_claims")
    db.commit()
    monkeypatch.setenv("AGG_MAX_RUNS_PER_TICK", "2")
    span = (last_day - first_day).days + 1  # 2 days just after midnight UTC
    monkeypatch.setenv("AGG_MAX_PARTITIONS_PER_RUN", str(2 * span))
    ticks = [frontier(instance).run_requests, schedule(instance), frontier(instance).run_requests,
             schedule(instance)]
    assert [len(t) for t in ticks] == [2, 1, 0, 0]
    assert {r.tags[REASON_TAG] for r in ticks[0]} == {"new complete windows"}
    symbols = [s for s, _, _ in covered(instance, [r for t in ticks for r in t])]
    assert sorted(symbols) == list(SYMBOLS)  # each once


def test_schedule_and_frontier_sensor_racing_in_two_threads_request_work_once(db, instance):
    """Protects the planner's advisory lock and its READ COMMITTED claim check: the real
    schedule and frontier sensor functions in two threads, released at the same instant
    (both wait on the planner's lock, held by the test, then it is let go), request each
    symbol's work once between them: one gets the run, the other finds it claimed."""
    live_setup(db, instance)
    gate = connection.connect(os.environ["AGG_DATABASE_URL"])
    watcher = connection.connect(os.environ["AGG_DATABASE_URL"], autocommit=True)
    gate.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))",
                 (planning.PLAN_LOCK_KEY,))
    results: dict[str, list] = {}
    errors: list[BaseException] = []

    def call(name, function):
        try:
            results[name] = function()
        except BaseException as exc:  # re-raised below
            errors.append(exc)

    threads = [threading.Thread(target=call, args=("schedule", lambda: schedule(instance))),
               threading.Thread(target=call, args=(
                   "frontier", lambda: frontier(instance).run_requests))]
    for thread in threads:
        thread.start()
    waiting = ("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
               "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())")
    wait_for(lambda: watcher.execute(waiting).fetchone()[0] == 2, 60,
             "both requesters to wait for the planner's lock", interval=0.05)
    gate.rollback()
    for thread in threads:
        thread.join(60)
    gate.close()
    watcher.close()
    assert not errors, errors
    requests = results["schedule"] + results["frontier"]
    assert len(requests) == 1, {k: [r.tags for r in v] for k, v in results.items()}
    assert sorted(s for s, _, _ in covered(instance, requests)) == list(SYMBOLS)


# ============================================================= final as soon as complete


def test_a_complete_window_is_due_before_its_delay_an_incomplete_one_waits(db, instance):
    """SPEC contract 6 (amended): the window whose every expected 1m bar has landed is due at
    once, not when its confirmation delay has passed (here an hour), so the frontier sensor
    requests it; the same window missing a minute waits for its delay; neither is asked for
    twice. The run the sensor requests builds AAA's bar."""
    now = db_now(db)
    window = floor_time(now, 5 * MINUTE) - 5 * MINUTE  # ended, an hour before its delay
    for symbol, minutes in (("AAA", (0, 1, 2, 3, 4)), ("BBB", (0, 1, 3, 4))):
        add_symbol(db, symbol)
        insert_bars(db, symbol, [bar(window + m * MINUTE, 1.1) for m in minutes])
    sync(db)
    cursors_at(db, window)
    db.execute("UPDATE data_agg_state SET aggregation_delay_seconds = 3600")
    db.commit()
    instance.add_dynamic_partitions(SYMBOLS_PARTITIONS_NAME, ["AAA", "BBB"])
    states = {(s.symbol, s.timeframe): s for s in planning.task_states(db, now).states}
    assert states[("AAA", "5m")].target == window + 5 * MINUTE
    assert states[("BBB", "5m")].target == window

    tick = frontier(instance)
    [request] = tick.run_requests
    assert rectangle(instance, request)[0] == ["AAA"]
    assert frontier(instance, tick.cursor).run_requests == []  # claimed: not asked twice
    result = defs.resolve_job_def("aggregate_bars").execute_in_process(
        instance=instance, tags=request.tags, asset_selection=request.asset_selection)
    assert result.success
    built = db.execute("SELECT canonical_symbol, ts_utc FROM derived_data_bars "
                       "WHERE timeframe = '5m' AND deleted_at IS NULL").fetchall()
    db.rollback()
    assert built == [("AAA", window)]


# ===================================================================== batched, like the oracle


def test_a_live_run_builds_a_derived_timeframe_only_when_its_source_completes_a_window():
    """Pure planning: a live tick's 5m work takes 1h (and 4h from 1h) along only when the 5m
    bars it builds reach the end of the window at that timeframe's cursor, or when that
    timeframe is behind by itself; otherwise its step would find nothing final."""
    ten = datetime(2025, 11, 3, 10, tzinfo=UTC)
    minutes = lambda n: ten + timedelta(minutes=n)  # noqa: E731

    def planned(reach_5m: datetime, behind_1h: bool = False) -> list[tuple[str, ...]]:
        states = [
            planning.TaskState("EURUSD", "5m", minutes(40), reach_5m, reach_5m, (0,),
                               next_end=minutes(45)),
            planning.TaskState("EURUSD", "1h", ten, minutes(60) if behind_1h else ten,
                               minutes(35), (1,), next_end=minutes(60)),
            planning.TaskState("EURUSD", "4h", minutes(-120), minutes(-120), minutes(-60), (2,),
                               next_end=minutes(120)),
        ]
        work = planning.catchup_work(planning.Tasks(states, {}), roots_only=True,
                                     first_day=date(2025, 1, 1))
        return [w.timeframes for w in work]

    assert planned(minutes(50)) == [("5m",)]
    assert planned(minutes(60)) == [("5m", "1h")]
    assert planned(minutes(50), behind_1h=True) == [("5m", "1h")]
    assert planned(minutes(120)) == [("5m", "1h", "4h")]
    assert planned(minutes(40)) == []  # nothing new


def test_a_batched_run_builds_every_symbols_bars_equal_to_the_oracle(db, instance):
    """Protects batching end to end: the schedule's one run over five symbols x two days
    (a symbol already up to date rides along in the middle of the block) builds every
    symbol's 5m and 1h bars and cursors exactly as the oracle does from the source rows,
    rewrites nothing of the rider, releases its claims when it has finished, and leaves the
    schedule and sensors nothing to do."""
    symbols = SYMBOLS[:5]
    now = db_now(db)
    first_day = floor_time(now, DAY) - DAY
    data_end = floor_time(now, HOUR) - HOUR
    for i, symbol in enumerate(symbols):
        add_symbol(db, symbol)
        insert_bars(db, symbol, minute_bars(first_day, int((data_end - first_day) / MINUTE),
                                            price=1.0 + i, skip=range(7, 4000, 97)))
    sync(db)
    db.execute("UPDATE data_agg_state SET last_agg_bar_ts_utc = %s", (first_day,))
    db.commit()
    for timeframe in ("5m", "1h"):  # CCC is up to date: a rider
        engine.aggregate(db, "CCC", timeframe, first_day, data_end + HOUR)
        db.commit()
    rider_before = {r["id"]: r["xmin"] for r in derived_rows(db, "CCC", "5m")}
    instance.add_dynamic_partitions(SYMBOLS_PARTITIONS_NAME, list(symbols))

    [request] = schedule(instance)
    block, first, last = rectangle(instance, request)
    # (the last day holding data: yesterday when data_end is today's midnight, 01:00-02:00)
    assert block == list(symbols) and (first, last) == (first_day.date(),
                                                        (data_end - MINUTE).date())
    assert {row[1] for row in claims(db)} == set(symbols) - {"CCC"}  # riders hold no claim
    result = execute(instance, request)
    assert result.success
    as_of = instance.get_run_record_by_id(result.run_id).create_timestamp
    figures = compare_with_oracle(db, symbols, as_of)
    assert {r["id"]: r["xmin"] for r in derived_rows(db, "CCC", "5m")} == rider_before
    assert schedule(instance) == [] and frontier(instance).run_requests == []
    assert claims(db) == []  # the finished run released them, the planner deleted them
    report(f"planner, one batched run over {len(symbols)} symbols x 2 days: {figures}")


# ====================================================================== late data, changes


def materialised(db, instance, symbols, days: int = 3) -> datetime:
    """`symbols` with `days` full days of 1m bars ending at today's midnight, materialised
    through a run of the schedule's; returns the first day's midnight."""
    now = db_now(db)
    first_day = floor_time(now, DAY) - days * DAY
    for i, symbol in enumerate(symbols):
        add_symbol(db, symbol)
        insert_bars(db, symbol, minute_bars(first_day, days * 24 * 60, price=1.0 + i,
                                            ingested_at=now - 2 * DAY))
    sync(db)
    db.execute("UPDATE data_agg_state SET last_agg_bar_ts_utc = %s", (first_day,))
    db.commit()
    instance.add_dynamic_partitions(SYMBOLS_PARTITIONS_NAME, list(symbols))
    for request in schedule(instance):
        assert execute(instance, request).success
    return first_day


def test_late_rows_and_pending_changes_request_the_right_days_once(db, instance):
    """Protects contract 10 through the planner: on materialised days, a late row (by
    ingested_at) on day 1, three of five 1m rows of a window deleted on day 2 and a row
    edited in place without touching ingested_at on day 3 (seen only by the change capture,
    migration 012) are requested as one late-data run over those days and symbols, with
    the causes in its reason; the same tick again requests nothing; after the run the bars
    equal the oracle over the remaining source and the next tick is quiet."""
    first_day = materialised(db, instance, ("AAA", "BBB"))
    quiet = late(instance)
    assert quiet.run_requests == []
    now = db_now(db)
    insert_bars(db, "AAA", [bar(first_day + 3 * HOUR + 7 * MINUTE, 1.5, ingested_at=now)],
                upsert=True)
    db.execute("DELETE FROM data_bars WHERE canonical_symbol = 'BBB' AND ts_utc >= %s "
               "AND ts_utc < %s", (first_day + DAY + 10 * HOUR, first_day + DAY + 10 * HOUR
                                   + 3 * MINUTE))
    db.execute("UPDATE data_bars SET high = high + 0.5 WHERE canonical_symbol = 'BBB' "
               "AND ts_utc = %s", (first_day + 2 * DAY + 4 * HOUR,))
    db.commit()

    result = late(instance, quiet.cursor)
    [request] = result.run_requests
    block, first, last = rectangle(instance, request)
    assert block == ["AAA", "BBB"]
    assert (first, last) == (first_day.date(), (first_day + 2 * DAY).date())
    days = ", ".join((first_day + d * DAY).date().isoformat() for d in range(3))
    assert request.tags[REASON_TAG] == f"late data on {days}: correction, deletion"
    assert late(instance, quiet.cursor).run_requests == []  # claimed: not twice
    run = execute(instance, request)
    assert run.success
    compare_with_oracle(db, ("AAA", "BBB"), instance.get_run_record_by_id(
        run.run_id).create_timestamp)
    assert late(instance, result.cursor).run_requests == []
    # the consumed change days are pruned by the sensor once a day old
    db.execute("UPDATE data_agg_source_changes SET last_changed_at = last_changed_at - %s",
               (sensors.CONSUMED_CHANGES_KEPT + MINUTE,))
    db.commit()
    assert db.execute("SELECT count(*) FROM data_agg_source_changes").fetchone()[0] == 3
    db.rollback()
    late(instance, result.cursor)
    assert db.execute("SELECT count(*) FROM data_agg_source_changes").fetchone()[0] == 0
    db.rollback()


def test_late_rows_on_claimed_days_wait_and_are_not_lost(db, instance):
    """Protects the late-data cursor under claims: a late row on a day a run in flight was
    requested for is not requested beside it, and the sensor's window does not move past
    it, so once that run has finished (without having read the row) the day is requested."""
    first_day = materialised(db, instance, ("AAA",), days=1)
    quiet = late(instance)
    insert_bars(db, "AAA", [bar(first_day + 5 * HOUR, 2.0, ingested_at=db_now(db))],
                upsert=True)
    db.commit()
    [request] = late(instance, quiet.cursor).run_requests
    job = defs.resolve_job_def("aggregate_bars")
    held = instance.create_run_for_job(job, tags=request.tags,
                                       status=dg.DagsterRunStatus.STARTED)
    insert_bars(db, "AAA", [bar(first_day + 6 * HOUR, 2.0, ingested_at=db_now(db))],
                upsert=True)
    db.commit()
    waiting = late(instance, quiet.cursor)
    assert waiting.run_requests == []
    assert json.loads(waiting.cursor)["since"] == json.loads(quiet.cursor)["since"]
    instance.report_run_canceled(held)  # over without having read anything
    [again] = late(instance, waiting.cursor).run_requests
    assert rectangle(instance, again) == (["AAA"], first_day.date(), first_day.date())


@pytest.mark.parametrize("bypass", ["triggers disabled", "replica role"])
def test_reconciliation_finds_changes_made_around_the_capture(db, instance, monkeypatch,
                                                              bypass):
    """Protects the backstop (issue 12 item 1): an in-place edit that leaves ingested_at as
    it was and a deleted row, made with data_bars' capture triggers disabled, are seen by no
    late-data path, yet the reconciliation re-checking the symbol requests its changed days
    once (reason reconciliation); the run makes the bars equal the oracle. With
    session_replication_role = replica the capture still fires (its triggers are ENABLE
    ALWAYS), so the same edits are requested once as late data."""
    monkeypatch.setenv("AGG_RECONCILE_SYMBOLS_PER_TICK", "1")
    first_day = materialised(db, instance, ("AAA", "BBB"), days=2)
    quiet = late(instance)
    statements = [("UPDATE data_bars SET low = low - 0.25 WHERE canonical_symbol = 'BBB' "
                   "AND ts_utc = %s", (first_day + 9 * HOUR,)),
                  ("DELETE FROM data_bars WHERE canonical_symbol = 'BBB' AND ts_utc = %s",
                   (first_day + DAY + 2 * HOUR,))]
    capture = ("agg_capture_source_update", "agg_capture_source_delete")
    if bypass == "triggers disabled":
        for trigger in capture:
            db.execute(f"ALTER TABLE data_bars DISABLE TRIGGER {trigger}")
    else:
        db.execute("SET session_replication_role = replica")
    for statement, params in statements:
        db.execute(statement, params)
    if bypass == "triggers disabled":
        for trigger in capture:
            db.execute(f"ALTER TABLE data_bars ENABLE ALWAYS TRIGGER {trigger}")
    else:
        db.execute("RESET session_replication_role")
    db.commit()

    # the rotation re-checks one symbol per tick: the quiet tick took AAA, this one BBB
    assert json.loads(quiet.cursor)["reconcile_after"] == "AAA"
    first = late(instance, quiet.cursor)
    [request] = first.run_requests
    assert rectangle(instance, request) == (["BBB"], first_day.date(),
                                            (first_day + DAY).date())
    reason = request.tags[REASON_TAG]
    if bypass == "triggers disabled":  # no late-data path saw it
        assert reason == "reconciliation"
        assert json.loads(first.cursor)["reconcile_after"] == "BBB"
    else:
        assert reason.startswith("late data on") and reason.endswith("correction, deletion")
    assert late(instance, first.cursor).run_requests == []  # AAA again; BBB's is claimed
    run = execute(instance, request)
    assert run.success
    compare_with_oracle(db, ("AAA", "BBB"), instance.get_run_record_by_id(
        run.run_id).create_timestamp)


# ========================================================================== runs, riders


def test_riders_only_in_short_blocks_and_only_healthy_symbols(db, instance):
    """Protects the ride-along rule: in a short block a symbol without work rides along, but
    not one whose task cannot run (a NULL cursor would fail the run) and a long range (a
    year of re-reads) never carries riders: its block is cut instead."""
    start = live_setup(db, instance, SYMBOLS[:4])
    for timeframe in ("5m", "1h"):  # BBB is up to date
        engine.aggregate(db, "BBB", timeframe, floor_time(start, HOUR), start + DAY)
        db.commit()
    bbb = db.execute("SELECT timeframe, last_agg_bar_ts_utc FROM data_agg_state "
                     "WHERE canonical_symbol = 'BBB'").fetchall()
    [request] = schedule(instance)  # BBB has no work (cursor at the frontier): it rides
    assert rectangle(instance, request)[0] == ["AAA", "BBB", "CCC", "DDD"]
    db.execute("DELETE FROM data_agg_plan_claims")
    db.execute("UPDATE data_agg_state SET last_agg_bar_ts_utc = NULL "
               "WHERE canonical_symbol = 'BBB' AND timeframe = '1h'")
    db.commit()
    assert [rectangle(instance, r)[0] for r in schedule(instance)] == [["AAA"], ["CCC", "DDD"]]
    db.execute("DELETE FROM data_agg_plan_claims")
    for timeframe, cursor in bbb:
        db.execute("UPDATE data_agg_state SET last_agg_bar_ts_utc = %s "
                   "WHERE canonical_symbol = 'BBB' AND timeframe = %s", (cursor, timeframe))
    db.execute("UPDATE data_agg_state SET last_agg_bar_ts_utc = %s "
               "WHERE canonical_symbol <> 'BBB'", (start - 30 * DAY,))
    db.commit()
    runs = schedule(instance)
    assert [rectangle(instance, r)[0] for r in runs] == [["AAA"], ["CCC", "DDD"]]
    assert {rectangle(instance, r)[1] for r in runs} == {(start - 30 * DAY).date()}


def test_a_failing_symbol_runs_alone_and_no_rider_can_stop_a_run(db, instance):
    """Protects the batch from one symbol: a symbol whose task is failing hard gets a run of
    its own (tagged agg/symbol, so alerts name it) and rides in no other, so its failure
    stops no other symbol's downstream steps; a symbol whose cursor is ahead of its source
    (its blocking cursor_not_ahead check fails) does not ride along either."""
    live_setup(db, instance, SYMBOLS[:4])
    db.execute("UPDATE data_agg_state SET hard_fail_streak = 1 "
               "WHERE canonical_symbol = 'BBB' AND timeframe = '5m'")
    db.commit()
    runs = schedule(instance)
    assert sorted(rectangle(instance, r)[0] for r in runs) == [["AAA"], ["BBB"], ["CCC", "DDD"]]
    [alone] = [r for r in runs if rectangle(instance, r)[0] == ["BBB"]]
    assert alone.tags[SYMBOL_TAG] == "BBB"
    ahead = floor_time(db_now(db), HOUR) + HOUR
    db.execute("DELETE FROM data_agg_plan_claims")
    db.execute("UPDATE data_agg_state SET hard_fail_streak = 0")
    db.execute("UPDATE data_agg_state SET last_agg_bar_ts_utc = %s "
               "WHERE canonical_symbol = 'CCC'", (ahead,))
    db.commit()
    assert sorted(rectangle(instance, r)[0] for r in schedule(instance)) == [["AAA", "BBB"],
                                                                              ["DDD"]]


# ========================================================================== month grain

def month_grain() -> PipelineParts:
    """The Definitions' parts with month partitions, built in this process beside the
    default day grain's."""
    return build_parts(replace(default_config(), time_grain="month"))


def test_month_grain_requests_month_partitions(db, instance):
    """Protects the time grain (issue 14 item 6): with AGG_TIME_PARTITION=month (Definitions
    built in this process for that grain) the schedule's catch-up from agg_start_utc (2025-07-01) to
    the data in August asks for one run over the block of symbols x the months July ..
    August, and a late row on 2025-08-02 for the month of August."""
    for symbol in ("AAA", "BBB"):
        add_symbol(db, symbol)
        insert_bars(db, symbol, minute_bars(T0 + 26 * DAY, 120))  # 2025-08-02
    sync(db)
    db.commit()
    instance.add_dynamic_partitions(SYMBOLS_PARTITIONS_NAME, ["AAA", "BBB"])
    months = month_grain()
    [tags] = [r.tags for r in schedule(instance, parts=months)]
    assert (tags[RANGE_START_TAG], tags[RANGE_END_TAG]) == ("2025-07-01|AAA", "2025-08-01|BBB")
    assert tags[REASON_TAG] == "catch-up"

    # the run happens (in days, as the engine works); then a late row in August
    for symbol in ("AAA", "BBB"):
        for timeframe in ("5m", "1h"):
            engine.aggregate(db, symbol, timeframe, AGG_START, T0 + 30 * DAY)
            db.commit()
    db.execute("DELETE FROM data_agg_plan_claims")
    db.commit()
    since = db_now(db)
    insert_bars(db, "BBB", [bar(T0 + 26 * DAY + 10 * MINUTE, 1.7, ingested_at=since)],
                upsert=True)
    db.commit()
    [tags] = [r.tags for r in late(instance, json.dumps({"since": (since - MINUTE).isoformat()}),
                                   parts=months).run_requests]
    assert (tags[RANGE_START_TAG], tags[RANGE_END_TAG]) == ("2025-08-01|BBB", "2025-08-01|BBB")
    assert tags[REASON_TAG].startswith("late data on 2025-08-02")


# ================================================================= bars_1m observations


def test_frontier_observations_are_bounded_per_tick(db, instance, monkeypatch):
    """Protects the bars_1m observations' cost (issue 11 item 3's brief, point 5): with
    fewer than two ticks' budget of symbols (sensors.OBSERVATIONS_PER_TICK), the first tick
    observes the budget's symbols, the next the others, and the one after (within the
    5-minute cycle) none; the cursor stays a few bytes whatever the number of symbols. A new
    cycle observes only frontiers that moved."""
    budget = sensors.OBSERVATIONS_PER_TICK
    symbols = [f"S{i:02d}" for i in range(2 * budget - 1)]
    live_setup(db, instance, symbols, minutes=30)
    ticks = []
    cursor = None
    for _ in range(3):
        result = frontier(instance, cursor)
        cursor = result.cursor
        ticks.append(sorted(e.partition for e in result.asset_events))
    assert ticks[0] == symbols[:budget] and ticks[1] == symbols[budget:] and ticks[2] == []
    assert len(cursor) < 200
    # 5 minutes on, a new cycle: only frontiers newer than the last cycle's start
    insert_bars(db, "S03", [bar(floor_time(db_now(db), MINUTE) - MINUTE, 1.2)])
    db.commit()
    state = dict(json.loads(cursor), cycle=(db_now(db) - sensors.OBSERVATION_CYCLE
                                            - MINUTE).isoformat())
    result = frontier(instance, json.dumps(state))
    assert [e.partition for e in result.asset_events] == ["S03"]
    assert json.loads(result.cursor)["after"] == symbols[budget - 1]


def test_claims_are_released_and_bounded(db, instance):
    """Protects the claims table's size and release: the claims of a plan whose run failed
    or finished go at the next planner's turn, those of a plan with no run go after the
    grace period, and nothing else stays."""
    live_setup(db, instance, SYMBOLS[:2])
    [_] = schedule(instance)
    assert len(claims(db)) == 4
    db.execute("UPDATE data_agg_plan_claims SET claimed_at = claimed_at - %s",
               (planning.CLAIM_GRACE + MINUTE,))
    db.commit()
    [again] = schedule(instance)  # the first tick's runs were never created: re-requested
    assert {row[0] for row in claims(db)} == {again.tags[PLAN_TAG]}
    job = defs.resolve_job_def("aggregate_bars")
    instance.create_run_for_job(job, tags=again.tags, status=dg.DagsterRunStatus.FAILURE)
    [third] = schedule(instance)
    assert {row[0] for row in claims(db)} == {third.tags[PLAN_TAG]}
    assert execute(instance, third).success
    assert schedule(instance) == []
    assert claims(db) == []


# ============================================================ a run's bound along time


URGENT, LATER = (False, 5, 0, False, datetime.min), (False, 5, 1, False, datetime.min)
FIRST = date(2019, 1, 1)


def day_period(day: date) -> tuple[date, date]:
    return day, day


def month_period(day: date) -> tuple[date, date]:
    first = day.replace(day=1)
    return first, (first + timedelta(days=32)).replace(day=1) - timedelta(days=1)


def work(symbol: str, first: date, days: int, *, order=URGENT, reason=Reason.CATCH_UP,
         changed: frozenset[date] = frozenset()) -> planning.Work:
    return planning.Work(symbol, ("5m", "1h"), first, first + timedelta(days=days - 1), reason,
                         order, frozenset({"correction"}) if changed else frozenset(), changed)


def plan(conn, items, *, max_runs: int = 10, max_partitions: int = 1000, alone=frozenset(),
         finished=frozenset(), period=day_period) -> planning.Plan:
    return planning.plan_runs(
        conn, items, requester="test", runs=planning.RunStates(finished=frozenset(finished)),
        symbols=sorted({w.symbol for w in items}), riders=set(), alone=set(alone),
        limits=planning.Limits(max_runs=max_runs, max_partitions=max_partitions),
        period=period)


def partitions(run: planning.PlannedRun, period=day_period) -> int:
    return len(run.symbols) * planning._periods(run.first_day, run.last_day, period)


def test_one_symbols_long_range_is_cut_along_time_earliest_range_first(db):
    """Protects AGG_MAX_PARTITIONS_PER_RUN (issue 18): one symbol with 2,898 days to catch up
    got one run of 2,898 partitions against a bound of 1,000. It gets a run over its
    earliest 1,000 days, claimed for those days only; the rest waits, held off by that
    claim while the run is in flight, and is requested range by range as runs end (the
    cursor moves forward in order), every day exactly once."""
    covered: list[date] = []
    item, finished = work("AAA", FIRST, 2898), frozenset()
    expected = [(FIRST, 1000), (FIRST + timedelta(days=1000), 1000),
                (FIRST + timedelta(days=2000), 898)]
    for first, days in expected:
        result = plan(db, [item], finished=finished)
        [run] = result.runs
        assert (run.first_day, run.last_day) == (first, first + timedelta(days=days - 1))
        assert partitions(run) == days <= 1000
        assert [(w.first_day, w.last_day) for w in run.work] == [(run.first_day, run.last_day)]
        assert {row[3:] for row in claims(db)} == {(run.first_day, run.last_day)}
        rest = [] if days < 1000 else [(run.last_day + DAY, item.last_day)]
        assert [(w.first_day, w.last_day) for w in result.waiting] == rest
        again = plan(db, [item], finished=finished)  # its run in flight: nothing twice
        assert again.runs == [] and again.claimed == [item]
        covered += [run.first_day + timedelta(days=d) for d in range(days)]
        # the run ends: its cursor moved past its days, the work starts after them
        finished = frozenset({run.plan_id})
        item = replace(item, first_day=run.last_day + DAY)
    assert covered == [FIRST + timedelta(days=d) for d in range(2898)]


def test_cutting_along_time_keeps_the_order_and_the_run_bound_per_tick(db):
    """Protects the other properties of plan_runs beside the cut: contract-12 order (the
    most urgent work first), at most max_runs runs a tick (the rest waits whole), symbols
    running alone (a failing one) cut too, and late data's days and reason follow the cut:
    each run names only its own changed days."""
    late_days = frozenset({FIRST + timedelta(days=d) for d in (0, 1, 2, 3, 4)})
    items = [work("AAA", FIRST, 2500, order=LATER),
             work("BBB", FIRST, 2500, order=LATER),
             work("CCC", FIRST, 5, reason=Reason.LATE_DATA, changed=late_days),
             work("DDD", FIRST, 30, order=LATER)]
    result = plan(db, items, max_runs=3, max_partitions=2, alone={"BBB"})
    assert [(r.symbols, r.first_day, r.last_day) for r in result.runs] == [
        (("CCC",), FIRST, FIRST + DAY),  # urgent first
        (("AAA",), FIRST, FIRST + DAY),
        (("BBB",), FIRST, FIRST + DAY)]
    assert all(partitions(r) <= 2 for r in result.runs)
    assert result.runs[0].reason == (f"late data on {FIRST.isoformat()}, "
                                     f"{(FIRST + DAY).isoformat()}: correction")
    waiting = {(w.symbol, w.first_day, w.last_day, w.days) for w in result.waiting}
    assert waiting == {("CCC", FIRST + 2 * DAY, FIRST + 4 * DAY,
                        frozenset(d for d in late_days if d >= FIRST + 2 * DAY)),
                       ("AAA", FIRST + 2 * DAY, FIRST + 2499 * DAY, frozenset()),
                       ("BBB", FIRST + 2 * DAY, FIRST + 2499 * DAY, frozenset()),
                       ("DDD", FIRST, FIRST + 29 * DAY, frozenset())}  # beyond max_runs: whole


def test_a_long_range_of_month_partitions_is_cut_at_month_boundaries(db):
    """Protects the cut under the month grain: 30 months with a bound of 12 partitions: a run
    over 12 whole months (first to last day), the rest waiting from the 13th month's
    first day."""
    item = work("AAA", date(2020, 1, 15), 900)  # 2020-01-15 .. 2022-07-02: 31 months
    result = plan(db, [item], max_partitions=12, period=month_period)
    [run] = result.runs
    assert (run.first_day, run.last_day) == (date(2020, 1, 1), date(2020, 12, 31))
    assert partitions(run, month_period) == 12
    assert [(w.first_day, w.last_day) for w in run.work] == [(date(2020, 1, 15),
                                                              date(2020, 12, 31))]
    [rest] = result.waiting
    assert (rest.first_day, rest.last_day) == (date(2021, 1, 1), item.last_day)


def test_a_cut_range_always_moves_a_cursor(db):
    """Protects the cut from asking for the same range forever: a catch-up whose first day
    is pinned by a task that cannot move yet (1h's cursor, with no 5m bar after it) while
    the task that can (5m) is past that range starts where 5m's cursor is; when the task
    that can move lies within the first range, the range starts at the first day."""
    pinned = replace(work("AAA", FIRST, 2898), moving_from=FIRST + 1500 * DAY)
    [run] = plan(db, [pinned]).runs
    assert (run.first_day, run.last_day) == (FIRST + 1500 * DAY, FIRST + 2499 * DAY)
    db.execute("DELETE FROM data_agg_plan_claims")
    db.commit()
    within = replace(pinned, moving_from=FIRST + 999 * DAY)
    [run] = plan(db, [within]).runs
    assert (run.first_day, run.last_day) == (FIRST, FIRST + 999 * DAY)


def test_the_schedule_requests_a_long_catch_up_range_by_range(db, instance, monkeypatch):
    """Protects the cut end to end: with AGG_MAX_PARTITIONS_PER_RUN=4 a symbol 6 days behind
    with its data today gets runs of at most 4 partitions (partition range and agg/days
    alike), nothing more while one is in flight, each range once: 5m through the empty days
    to today (1h cannot move before a 5m bar exists), then 1h; the bars equal the oracle's
    and the schedule is quiet."""
    monkeypatch.setenv("AGG_MAX_PARTITIONS_PER_RUN", "4")
    start = live_setup(db, instance, ("AAA",))
    behind = floor_time(start, DAY) - 6 * DAY
    db.execute("UPDATE data_agg_state SET last_agg_bar_ts_utc = %s", (behind,))
    db.commit()
    ranges, run = [], None
    for _ in range(6):  # 4 runs, then nothing
        requests = schedule(instance)
        if not requests:
            break
        [request] = requests
        block, first, last = rectangle(instance, request)
        assert block == ["AAA"] and (last - first).days + 1 <= 4
        assert request.tags["agg/days"] == f"{first.isoformat()}..{last.isoformat()}"
        assert schedule(instance) == []  # claimed while in flight
        run = execute(instance, request)
        assert run.success
        timeframes = tuple(k.to_user_string() for k in request.asset_selection)
        ranges.append((first, last, timeframes))
    b, end = behind.date(), ranges[-1][1]
    both, hourly = ("bars_5m", "bars_1h"), ("bars_1h",)
    assert ranges == [(b, b + 3 * DAY, both), (b + 4 * DAY, end, both),
                      (b, b + 3 * DAY, hourly), (b + 4 * DAY, end, hourly)]
    compare_with_oracle(db, ("AAA",), instance.get_run_record_by_id(
        run.run_id).create_timestamp)
