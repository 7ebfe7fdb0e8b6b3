"""SPEC contract 1: whatever the database's (or the session's) TimeZone, the pipeline builds
exactly what it builds on a UTC database (issue 18, item 1).

Three databases get the same source rows: one in UTC, one west of UTC (America/New_York,
which leaves daylight time on 2025-11-02 at 06:00 UTC, inside the data) and one east
(Pacific/Auckland, UTC+13, whose local date differs from the UTC date for half of every
day). On each, through connections that are NOT pinned to UTC (`psycopg.connect(url)`, the
session zone is the database's, as a user's own connection or an ingester's would be):
the live loop (planner + engine) ticks through the days, rows are corrected, deleted,
landed late and changed behind the capture triggers' back in the database's own zone, the
late-data path and the reconciliation plan and re-run them, and the checks' invariants are
evaluated. Every bar, revision, cursor, fingerprint day, captured-change day, planned
(symbol, days) and check outcome must equal the UTC database's. A second test does the
same through real Dagster runs requested by the schedule and the late-data sensor.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import dagster as dg
import psycopg
import pytest
from psycopg import sql

from agg_pipeline import settings
from agg_pipeline.db import connection, migrations
from agg_pipeline.definitions import defs
from agg_pipeline.defs.resources import MarketDatabase
from agg_pipeline.defs.schedules import catchup_schedule
from agg_pipeline.defs.sensors import ladder_sensor, late_data_sensor, registry_sync_sensor
from agg_pipeline.engine import aggregate as engine
from agg_pipeline.engine import health, monitoring, planning, windows
from agg_pipeline.engine.reasons import Reason
from agg_pipeline_tests.helpers import add_symbol, bar, insert_bars, sync

ZONES = ("UTC", "America/New_York", "Pacific/Auckland")
MINUTE, HOUR, DAY = timedelta(minutes=1), timedelta(hours=1), timedelta(days=1)
START = datetime(2025, 10, 30, tzinfo=UTC)  # agg_start_utc of every task
FIRST_DAY = START.date()
# five whole UTC days and the first two hours of "today" (2025-11-04)
END = START + 5 * DAY + 2 * HOUR
SYMBOLS = {"EURUSD": {}, "XAUUSD": {"calc_15m": True, "calc_4h": True, "calc_1d": True}}
# minutes the source lacks: a gap of 90 minutes, a day's last minutes, and one the late row fills
GAP = (datetime(2025, 11, 1, 10, tzinfo=UTC), datetime(2025, 11, 1, 11, 30, tzinfo=UTC))
LATE_TS = datetime(2025, 11, 1, 23, 58, tzinfo=UTC)
MISSING = {LATE_TS, LATE_TS + MINUTE, datetime(2025, 10, 31, 23, 57, tzinfo=UTC)}
# the changes made after the live ticks, each at a UTC time whose local date differs in one
# of the zones: a correction (NY: Nov 1), a deleted 5m window (NY: Nov 2), a late row
# (Auckland: Nov 2), and an update with the capture triggers disabled (NY: Oct 29)
CORRECTED_TS = datetime(2025, 11, 2, 2, 12, tzinfo=UTC)
DELETED_TS = datetime(2025, 11, 3, 3, 0, tzinfo=UTC)
BYPASSED_TS = datetime(2025, 10, 30, 1, 5, tzinfo=UTC)  # opens its window
CHANGED_AT = END + 30 * MINUTE
# the live ticks: every 5 hours (so every hour of the day comes round), and three inside New
# York's repeated hour 01:00-02:00 (05:00-07:00 UTC on 2025-11-02)
TICKS = sorted({START + timedelta(hours=h) for h in range(3, 5 * 24 + 3, 5)}
               | {datetime(2025, 11, 2, 5, 30, tzinfo=UTC),
                  datetime(2025, 11, 2, 6, 30, tzinfo=UTC),
                  datetime(2025, 11, 2, 6, 47, tzinfo=UTC), END})
LOOKBACK = timedelta(minutes=10)


# ----------------------------------------------------------------------------- databases


def zone_database(server_url: str, make_database: Callable[[str], str], zone: str) -> str:
    """A migrated database whose sessions default to `zone` (ALTER DATABASE ... SET)."""
    url = make_database("agg_tz")
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(sql.SQL("ALTER DATABASE {} SET timezone = {}").format(
            sql.Identifier(connection.parse_url(url)["dbname"]), sql.Literal(zone)))
    migrations.migrate(url)
    with session(url) as conn:
        assert conn.execute("SHOW TimeZone").fetchone()[0] == zone
    return url


def session(url: str) -> psycopg.Connection:
    """A connection in the database's own zone: not pinned to UTC (as a user's or an
    ingester's connection may be)."""
    return psycopg.connect(url)


def utc_session(url: str) -> psycopg.Connection:
    """For reading the results back only: every value then prints in UTC."""
    return psycopg.connect(url, options="-c TimeZone=UTC")


@pytest.fixture(scope="module")
def zone_urls(server_url, make_database) -> dict[str, str]:
    return {zone: zone_database(server_url, make_database, zone) for zone in ZONES}


def source_rows(symbol: str) -> list[dict]:
    """Every minute of [START, END) but the gap and MISSING, prices following a saw."""
    rows, ts, base = [], START, 1.1 if symbol == "EURUSD" else 2000.0
    while ts < END:
        if not (GAP[0] <= ts < GAP[1]) and ts not in MISSING:
            i = int((ts - START) / MINUTE)
            rows.append(bar(ts, base * (1 + (i % 97) / 1000 - (i % 13) / 2000),
                            spread=base / 5000))
        ts += MINUTE
    return rows


def seed(url: str) -> None:
    with session(url) as conn:
        for symbol, flags in SYMBOLS.items():
            add_symbol(conn, symbol, **flags)
            insert_bars(conn, symbol, source_rows(symbol))
        sync(conn, agg_start=START)


def in_session_zone(conn: psycopg.Connection, instant: datetime) -> datetime:
    """`instant` as the session returns timestamps (what `SELECT now()` would give then)."""
    value = conn.execute("SELECT %s::timestamptz", (instant,)).fetchone()[0]
    conn.rollback()
    return value


# ----------------------------------------------------------------------------- live loop

def planned(work: list[planning.Work]) -> list[tuple]:
    return sorted((w.reason, w.symbol, w.timeframes, w.first_day, w.last_day,
                   tuple(sorted(w.days))) for w in work)


def run_work(conn: psycopg.Connection, work: list[planning.Work], now: datetime) -> list[tuple]:
    """What the runs of `work` do: one engine call per (symbol, timeframe, days)."""
    done = []
    for item in work:
        start = datetime.combine(item.first_day, time(), tzinfo=UTC)
        end = datetime.combine(item.last_day, time(), tzinfo=UTC) + DAY
        for name in item.timeframes:
            result = engine.aggregate(conn, item.symbol, name, start, end, now=now,
                                      reason=item.reason.revision)
            conn.commit()
            done.append(plain([item.symbol, name, result.cursor_before, result.cursor_after,
                               result.final_through, result.windows_seen,
                               {day: [counts.counts(), counts.newest_source_ts]
                                for day, counts in result.days.items()}]))
    return done


def find_work(conn: psycopg.Connection, now: datetime, since: datetime) -> list[planning.Work]:
    """The schedule's, the late-data sensor's and the reconciliation's work at `now`."""
    tasks = planning.task_states(conn, now)
    assert not tasks.problems
    late, too_early = planning.late_work(conn, tasks, since, now, FIRST_DAY)
    assert not too_early
    reconciled = planning.reconciliation_work(conn, tasks, after=None, budget=10, days=7,
                                              as_of=now, first_day=FIRST_DAY)
    assert not reconciled.errors and not reconciled.busy
    return planning.catchup_work(tasks, roots_only=False, first_day=FIRST_DAY) + late + \
        reconciled.work


def tick(conn: psycopg.Connection, instant: datetime, since: datetime) -> dict[str, object]:
    """One tick: plan, run, and plan again at the same instant (nothing may be left)."""
    now = in_session_zone(conn, instant)
    work = find_work(conn, now, since)
    done = run_work(conn, work, now)
    again = find_work(conn, now, now - LOOKBACK)
    return {"planned": planned(work), "engine": done, "planned again": planned(again)}


def change_source(url: str, landed_at: datetime = CHANGED_AT) -> None:
    """A correction, a deleted window, a late row and an update the capture does not see,
    each in a session in the database's own zone (the capture triggers run in it); the
    rows changed or landed are stamped `landed_at`."""
    with session(url) as conn:
        conn.execute("UPDATE data_bars SET close = low, ingested_at = %s "
                     "WHERE canonical_symbol = 'EURUSD' AND ts_utc = %s",
                     (landed_at, CORRECTED_TS))
        conn.execute("DELETE FROM data_bars WHERE canonical_symbol = 'XAUUSD' "
                     "AND ts_utc >= %s AND ts_utc < %s", (DELETED_TS, DELETED_TS + 5 * MINUTE))
        insert_bars(conn, "EURUSD", [bar(LATE_TS, 1.2, ingested_at=landed_at)])
        conn.commit()
        conn.execute("ALTER TABLE data_bars DISABLE TRIGGER agg_capture_source_update")
        conn.execute("UPDATE data_bars SET open = low WHERE canonical_symbol = 'EURUSD' "
                     "AND ts_utc = %s", (BYPASSED_TS,))
        conn.execute("ALTER TABLE data_bars ENABLE ALWAYS TRIGGER agg_capture_source_update")
        conn.commit()


def live(url: str) -> dict[str, object]:
    """The whole live history of one database: ticks, the source changes, the tick after."""
    seen: dict[str, object] = {}
    with session(url) as conn:
        previous = START
        for instant in TICKS:
            seen[f"tick {instant:%m-%d %H:%M}"] = tick(conn, instant, previous - LOOKBACK)
            previous = instant
        changes_before = captured_changes(url)
        change_source(url)
        seen["captured changes"] = captured_changes(url)
        seen["captured changes before"] = changes_before
        seen["tick after the changes"] = tick(conn, CHANGED_AT + MINUTE, previous - LOOKBACK)
    return seen


# ----------------------------------------------------------------------------- results


def rows(url: str, statement: str) -> list[tuple]:
    with utc_session(url) as conn:
        return conn.execute(statement).fetchall()


def captured_changes(url: str) -> list[tuple]:
    return rows(url, "SELECT canonical_symbol, timeframe, day, changes, kinds, earliest_ts_utc, "
                     "seq > consumed_seq AS pending FROM data_agg_source_changes ORDER BY 1, 2, 3")


def stored(url: str) -> dict[str, list[tuple]]:
    """Everything the pipeline keeps, but wall-clock stamps (materialized_at, updated_at)."""
    return {
        "active bars": rows(url, """
            SELECT canonical_symbol, timeframe, ts_utc, open, high, low, close, vol, vwap,
                   trade_count, source_candles, expected_candles, quality_score,
                   derivation_version, is_partial
            FROM derived_data_bars WHERE deleted_at IS NULL ORDER BY 1, 2, 3"""),
        "withdrawn bars": rows(url, """
            SELECT canonical_symbol, timeframe, ts_utc, count(*) FROM derived_data_bars
            WHERE deleted_at IS NOT NULL GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"""),
        "revisions": rows(url, """
            SELECT canonical_symbol, timeframe, ts_utc, open, high, low, close, source_candles,
                   change, reason FROM derived_bar_revisions ORDER BY 1, 2, 3, valid_from"""),
        "tasks": rows(url, """
            SELECT canonical_symbol, timeframe, last_agg_bar_ts_utc, total_runs,
                   total_bars_created, total_bars_quality_poor, status, hard_fail_streak
            FROM data_agg_state ORDER BY 1, 2"""),
        "fingerprint days": rows(url, """
            SELECT canonical_symbol, timeframe, day, covered_from, final_through, source_rows,
                   source_ingested_max, source_ingested_sum
            FROM data_agg_source_days ORDER BY 1, 2, 3"""),
        "captured changes": captured_changes(url),
    }


def plain(value: object) -> object:
    """Results compared as values: instants in UTC (Python's `==` between a time of New
    York's repeated hour and another zone's is False even for the same instant)."""
    if isinstance(value, datetime):
        return value.astimezone(UTC)
    if isinstance(value, dict):
        return {k: plain(v) for k, v in sorted(value.items())}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


def check_outcomes(url: str) -> dict[str, object]:
    """The checks' invariants (engine/monitoring.py) evaluated on a session in the zone."""
    everything = monitoring.Scope()
    run = monitoring.Scope({"EURUSD": [(date(2025, 11, 1), date(2025, 11, 2))],
                            "XAUUSD": [(date(2025, 11, 3), date(2025, 11, 4))]})
    found: dict[str, object] = {}
    with session(url) as conn:
        for name in ("5m", "15m", "1h", "4h", "1d"):
            for label, scope in (("all", everything), ("run", run)):
                outcomes = {
                    "cursor_not_ahead": monitoring.cursor_not_ahead(conn, name, scope),
                    "ohlc_sane": monitoring.ohlc_sane(conn, name, scope),
                    "bars_before_start": monitoring.bars_before_start(conn, name, scope),
                    "matches_source": monitoring.matches_source(
                        conn, name, scope, sample=timedelta(days=2)),
                }
                for check, outcome in outcomes.items():
                    found[f"{name} {check} ({label})"] = plain(
                        [outcome.passed, outcome.summary, outcome.offenders])
            fresh = monitoring.freshness(conn, name, everything, max_minutes_since_success=1e9,
                                         schedule_period_minutes=5)
            found[f"{name} freshness"] = [fresh.passed, plain(fresh.summary)]
            conn.rollback()
        found["health"] = [{k: plain(v) for k, v in row.items() if k != "minutes_since_success"}
                           for row in health.frontier_health(conn)]
    return found


def assert_same(zone: str, found: dict[str, object], expected: dict[str, object]) -> None:
    """Each part equal to the UTC database's; on failure, the first part and item differing."""
    assert list(found) == list(expected)
    for part, want in expected.items():
        got = found[part]
        if got == want:
            continue
        if isinstance(got, dict) and isinstance(want, dict):
            key = next(k for k in want if got.get(k) != want[k])
            got, want, part = got.get(key), want[key], f"{part} / {key}"
        if isinstance(got, list) and isinstance(want, list):
            pairs = enumerate(zip(got, want, strict=False))
            index = next((i for i, (a, b) in pairs if a != b), min(len(got), len(want)))
            got, want = got[index:index + 3], want[index:index + 3]
            part = f"{part}, item {index}"
        pytest.fail(f"{zone} differs from UTC in {part}:\n  {zone}: {got!r:.1500}\n"
                    f"  UTC: {want!r:.1500}")


# ----------------------------------------------------------------------------- tests


def test_every_bar_cursor_plan_and_check_is_the_same_in_any_session_time_zone(zone_urls):
    results = {}
    for zone, url in zone_urls.items():
        seed(url)
        results[zone] = {**live(url), **stored(url), **check_outcomes(url)}
    expected = results["UTC"]
    # the scenario does what it is for: today's bars are built, the live ticks leave
    # nothing behind, and each source change is planned for its own UTC day and reason
    assert any(r[0] == "EURUSD" and r[1] == "5m" and r[2] >= END - 2 * HOUR
               for r in expected["active bars"])
    assert all(not t["planned again"] for k, t in expected.items() if k.startswith("tick"))
    days: dict[tuple[str, str], set[date]] = {}
    for reason, symbol, _, _, _, found in expected["tick after the changes"]["planned"]:
        days.setdefault((reason, symbol), set()).update(found)
    assert days[Reason.LATE_DATA, "EURUSD"] == {date(2025, 11, 1), date(2025, 11, 2)}
    assert days[Reason.LATE_DATA, "XAUUSD"] == {date(2025, 11, 3)}
    assert date(2025, 10, 30) in days[Reason.RECONCILIATION, "EURUSD"]
    assert [(c[0], c[2], c[4]) for c in expected["captured changes"]] == [
        ("EURUSD", date(2025, 11, 2), ["update"]), ("XAUUSD", date(2025, 11, 3), ["delete"])]
    for zone in ZONES[1:]:
        assert_same(zone, results[zone], expected)


# ----------------------------------------------------------------------------- Dagster


def dagster_history(url: str, instance: dg.DagsterInstance, monkeypatch: pytest.MonkeyPatch,
                    landed_at: datetime) -> dict[str, object]:
    """The schedule and the late-data sensor tick, and their runs materialise, through the
    normal Dagster path on the database `url` (the pipeline's own connections); the source
    changes land at `landed_at` (recently: the late-data sensor looks 10 minutes back)."""
    monkeypatch.setenv(settings.DATABASE_URL_VAR, url)
    resources = {"market_db": MarketDatabase()}
    # the registry sync's partitions: every symbol's, and its optional timeframes' (XAUUSD's
    # 4h and 1d, built by the runs ladder_sensor chains after its 5m/1h)
    with dg.build_sensor_context(instance=instance, resources=resources) as context:
        sync = registry_sync_sensor(context)
    for request in [] if isinstance(sync, dg.SkipReason) else sync.dynamic_partitions_requests:
        if isinstance(request, dg.AddDynamicPartitionsRequest):
            instance.add_dynamic_partitions(request.partitions_def_name,
                                            list(request.partition_keys))
    seen: dict[str, object] = {}
    for turn in range(3):
        context = dg.build_schedule_context(instance=instance, resources=resources)
        seen[f"schedule {turn}"] = materialise(instance, catchup_schedule(context), resources)
    cursor = None
    for turn, change in enumerate((lambda: change_source(url, landed_at), lambda: None)):
        change()
        context = dg.build_sensor_context(instance=instance, resources=resources, cursor=cursor)
        result = late_data_sensor(context)
        cursor = result.cursor
        seen[f"late data {turn}"] = materialise(instance, result.run_requests or [], resources)
    return seen


def materialise(instance: dg.DagsterInstance, requests: object,
                resources: dict[str, object]) -> list[object]:
    """Run each request as the daemon would, then the runs ladder_sensor chains after them
    (a symbol's optional timeframes); what each asked for and what each partition's
    materialisation says (its own day's counts, SPEC contract 14)."""
    pending = [] if isinstance(requests, dg.SkipReason) else list(requests)
    found = []
    while pending:
        for request in pending:
            job = defs.resolve_job_def(request.job_name or "aggregate_bars")
            tags = {k: v for k, v in request.tags.items() if not k.startswith("agg/plan")}
            result = job.execute_in_process(instance=instance, tags=request.tags,
                                            asset_selection=request.asset_selection)
            assert result.success
            made = [e.event_specific_data.materialization for e in result.all_events
                    if e.is_step_materialization]
            found.append([tags, sorted(
                (m.asset_key.to_user_string(), str(m.partition),
                 {k: v.value for k, v in m.metadata.items() if k != "as_of"}) for m in made)])
        with dg.build_sensor_context(instance=instance, resources=resources) as context:
            chained = ladder_sensor(context)
        pending = [] if isinstance(chained, dg.SkipReason) else chained.run_requests
    return found


def test_dagster_runs_requested_by_the_schedule_and_sensors_build_the_same(
        server_url, make_database, instance, monkeypatch):
    results, landed_at = {}, datetime.now(UTC)
    for zone in ZONES:
        url = zone_database(server_url, make_database, zone)
        seed(url)
        results[zone] = {**dagster_history(url, instance, monkeypatch, landed_at),
                         **stored(url)}
    expected = results["UTC"]
    assert expected["schedule 0"] and not expected["schedule 1"]
    assert expected["late data 0"] and not expected["late data 1"]
    for zone in ZONES[1:]:
        assert_same(zone, results[zone], expected)


def test_pruning_consumed_changes_counts_days_of_24_hours_and_keeps_its_rights(zone_urls):
    """Migration 018's agg_prune_source_changes: an age in absolute time (interval '1 day'
    on a timestamptz is 23 or 25 hours across a DST switch in the session's zone), and still
    SECURITY DEFINER with a fixed search_path, for the runtime role only."""
    url = zone_urls["America/New_York"]
    with session(url) as conn:
        conn.execute("INSERT INTO data_agg_source_changes (canonical_symbol, timeframe, day, "
                     "first_changed_at, last_changed_at, changes, kinds, earliest_ts_utc, seq, "
                     "consumed_seq) SELECT 'TZ', '1m', d, now() - age, now() - age, 1, "
                     "ARRAY['update'], now(), 1, 1 FROM (VALUES (date '2025-01-01', "
                     "interval '24 hours 1 second'), (date '2025-01-02', "
                     "interval '23 hours 59 minutes')) v(d, age)")
        assert conn.execute("SELECT agg_prune_source_changes(interval '1 day')").fetchone() == (1,)
        assert conn.execute("SELECT day FROM data_agg_source_changes WHERE canonical_symbol = "
                            "'TZ'").fetchall() == [(date(2025, 1, 2),)]
        definer, config, public, runtime = conn.execute(
            "SELECT p.prosecdef, p.proconfig, has_function_privilege('public', p.oid, "
            "'EXECUTE'), has_function_privilege('agg_pipeline_runtime', p.oid, 'EXECUTE') "
            "FROM pg_proc p WHERE p.oid = 'agg_prune_source_changes(interval)'::regprocedure"
        ).fetchone()
        conn.rollback()
    assert definer and config == ["search_path=public, pg_temp"]
    assert runtime and not public


# ----------------------------------------------------------------------------- units


NEW_YORK = ZoneInfo("America/New_York")


@pytest.mark.parametrize("instant", [
    datetime(2025, 11, 2, 5, 30, tzinfo=UTC),  # 01:30 EDT
    datetime(2025, 11, 2, 6, 30, tzinfo=UTC),  # 01:30 EST, the repeated hour (fold=1)
    datetime(2025, 11, 3, 0, 0, tzinfo=UTC),  # midnight UTC: 19:00 the day before in NY
    datetime(2025, 3, 9, 7, 10, tzinfo=UTC),  # 03:10 EDT, just after the spring switch
])
def test_window_arithmetic_is_utc_whatever_the_input_zone(instant):
    for zone in (NEW_YORK, ZoneInfo("Pacific/Auckland"), UTC):
        local = instant.astimezone(zone)
        for step in (5 * MINUTE, HOUR, 4 * HOUR, DAY):
            floored = windows.floor(local, step)
            assert floored == windows.floor(instant, step)
            assert floored.utcoffset() == timedelta(0)
            assert windows.ceil(local, step) == windows.ceil(instant, step)
        assert windows.day_start(local).date() == instant.date()
        assert windows.utc_date(local) == instant.date()


def test_health_table_shows_utc_whatever_the_session_zone():
    instant = datetime(2025, 11, 2, 2, 12, tzinfo=UTC)
    assert health.format_table([{"canonical_symbol": "EURUSD", "timeframe": "5m",
                                 "cursor_ts": instant.astimezone(NEW_YORK),
                                 "source_frontier_ts": None, "gap": None,
                                 "cursor_status": "OK", "status": "idle", "enabled": True,
                                 "minutes_since_success": None, "hard_fail_streak": 0,
                                 "stray_source_rows": None}]).count("2025-11-02 02:12") == 1
