"""Hostile input (issue 6, item 4): every case has a clear outcome, an error message or a
counted quarantine, and damages nothing else.

Cases go through the entry points a user hits: the registry-sync sensor, the catch-up
schedule, the frontier and late-data sensors, `aggregate_bars` runs, the asset checks'
invariants, the `MarketDatabase` resource and the `agg-pipeline` command. Each test's
docstring says what it protects; each assertion is exact (the rejected set, the invalid
count, the unchanged cursor, the error text, the absent password) so that removing the
protection fails the test.

Already covered elsewhere and not repeated here: engine errors for '7m', NULL cursors and
bad task config (test_engine.test_errors_name_what_is_wrong), invalid rows counted at the
engine level and the 2099 row at the engine level (test_engine), random invalid rows against
an oracle (test_engine_oracle), three hard failures -> hard_failed (test_orchestration),
NULL/AHEAD cursors failing the check and a blocking failure stopping bars_1h (test_checks),
`migrate` with a wrong port or a garbage URL and `seed-demo` on an unmigrated database
(test_cli), the password absent from everything Dagster stores (test_secrets).
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import dagster as dg
import pandas as pd
import psycopg
import pytest

from agg_pipeline import settings
from agg_pipeline.db import connection, migrations
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
from agg_pipeline.defs.resources import MarketDatabase
from agg_pipeline.defs.schedules import catchup_schedule
from agg_pipeline.defs.sensors import late_data_sensor, registry_sync_sensor, source_frontier_sensor
from agg_pipeline.engine import aggregate as engine
from agg_pipeline.engine import health, monitoring
from agg_pipeline.engine.errors import AggregationError, NullCursorError, UnknownSymbolError
from agg_pipeline.engine.timeframes import UnknownTimeframeError
from agg_pipeline_tests.helpers import (
    AGG_START,
    T0,
    active_bars,
    add_symbol,
    bar,
    insert_bars,
    minute_bars,
    sync,
)

RESOURCES = {"market_db": MarketDatabase()}
MINUTE = timedelta(minutes=1)
HOUR = timedelta(hours=1)
DAY = T0.date()
AS_OF = T0 + timedelta(days=1)  # every window of day T0 is final
NAN, INF = float("nan"), float("inf")
PASSWORD = "S3cret-Hostile-pw"  # in every bad URL below: it must never be shown

# The registry symbols that must be rejected: quotes, separators Dagster gives a meaning to,
# spaces, unicode, SQL, too long, empty.
HOSTILE_SYMBOLS = [
    "EUR'USD",
    'EUR"USD',
    "EUR;USD",
    "EUR|USD",
    "EUR,USD",
    "EUR[USD]",
    "EUR USD",
    " EURUSD",
    "ÉURUSD",
    "€",
    "EUR\tUSD",
    "x'); DROP TABLE data_bars; --",
    "A" * 33,
    "A" * 200,
    "",
]
# Valid at the edges of the rule: punctuation it allows, a leading ^, exactly 32 characters.
EDGE_SYMBOLS = ["^DXY", "BTC-USD.P", "ES=F:CME+1", "A" * 32]


# --------------------------------------------------------------------------- helpers


class LogCapture(logging.Handler):
    """The lines a sensor or schedule wrote to its context.log (the tick's log in the UI)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def messages(self, level: int = logging.DEBUG) -> list[str]:
        return [r.getMessage() for r in self.records if r.levelno >= level]


def captured(context) -> LogCapture:
    handler = LogCapture()
    context.log.addHandler(handler)  # the property creates and caches the tick's logger
    return handler


def sensor_context(instance, cursor: str | None = None):
    return dg.build_sensor_context(instance=instance, resources=RESOURCES, cursor=cursor)


def schedule_context(instance, when: datetime | None = None):
    return dg.build_schedule_context(instance=instance, resources=RESOURCES,
                                     scheduled_execution_time=when or datetime.now(UTC))


def run_job(instance, tags: dict, assets=("bars_5m", "bars_1h")):
    return defs.resolve_job_def("aggregate_bars").execute_in_process(
        instance=instance, tags=tags, asset_selection=[dg.AssetKey(a) for a in assets],
        raise_on_error=False)


def day_tags(symbol: str, as_of: datetime = AS_OF) -> dict:
    return {**range_tags(symbol, DAY, DAY), AS_OF_TAG: as_of.isoformat()}


def materialization_metadata(result, asset: str) -> dict:
    [event] = [e for e in result.get_asset_materialization_events()
               if e.asset_key == dg.AssetKey(asset)]
    return {k: v.value for k, v in event.materialization.metadata.items()}


def task_row(conn, symbol: str, timeframe: str) -> dict:
    with conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        row = cur.execute(
            "SELECT last_agg_bar_ts_utc AS cursor, status, hard_fail_streak, enabled, last_error "
            "FROM data_agg_state WHERE canonical_symbol = %s AND timeframe = %s",
            (symbol, timeframe)).fetchone()
    conn.rollback()
    return row


def tasks_by_symbol(conn) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for symbol, timeframe in conn.execute(
            "SELECT canonical_symbol, timeframe FROM data_agg_state WHERE status <> 'retired'"):
        found.setdefault(symbol, set()).add(timeframe)
    conn.rollback()
    return found


def run_cli(*args: str, url: str, timeout: int = 60) -> subprocess.CompletedProcess:
    """`agg-pipeline ...` as a user runs it, with AGG_DATABASE_URL set to `url`."""
    return subprocess.run([sys.executable, "-m", "agg_pipeline.cli", *args],
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, settings.DATABASE_URL_VAR: url})


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("client went away")
        data += chunk
    return data


@pytest.fixture
def wrong_password_server() -> Iterator[tuple[int, list[bytes]]]:
    """A TCP server speaking just enough of the PostgreSQL protocol to ask for a password and
    refuse it, as a real server does for a wrong password (SQLSTATE 28P01). Yields its port
    and the passwords it received (proof that the URL's password was really sent)."""
    received: list[bytes] = []
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)

    def serve() -> None:
        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return
            with client:
                try:
                    while True:  # SSL / GSS encryption requests: "N"ot supported
                        length = struct.unpack("!i", _recv_exact(client, 4))[0]
                        code = struct.unpack("!i", _recv_exact(client, length - 4)[:4])[0]
                        if code not in (80877103, 80877104):
                            break
                        client.sendall(b"N")
                    client.sendall(b"R" + struct.pack("!ii", 8, 3))  # cleartext password please
                    _recv_exact(client, 1)
                    length = struct.unpack("!i", _recv_exact(client, 4))[0]
                    received.append(_recv_exact(client, length - 4).rstrip(b"\0"))
                    fields = (b"SFATAL\0VFATAL\0C28P01\0"
                              b'Mpassword authentication failed for user "agg"\0\0')
                    client.sendall(b"E" + struct.pack("!i", len(fields) + 4) + fields)
                except (ConnectionError, OSError, struct.error):
                    pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1], received
    server.close()


# --------------------------------------------------------------------------- registry


def test_registry_sync_rejects_hostile_symbols_and_syncs_the_rest(db, instance):
    """Protects the symbol rule at the registry sync (engine/tasks.py SYMBOL_PATTERN): every
    hostile registry symbol is rejected with a logged reason and counted, gets no task and no
    partition, a stale partition/task of one is removed/retired; the valid symbols of the
    same registry, edge cases included, are synced exactly as usual; no table is touched
    beyond data_agg_state."""
    good = ["EURUSD", *EDGE_SYMBOLS]
    for symbol in good + HOSTILE_SYMBOLS:
        add_symbol(db, symbol)
    insert_bars(db, "EURUSD", minute_bars(T0, 10))
    # a task and a partition for "EUR USD" from before the rule (or made by hand)
    db.execute("INSERT INTO data_agg_state (canonical_symbol, timeframe, source_timeframe, "
               "run_interval_minutes, aggregation_delay_seconds, is_mandatory, "
               "last_agg_bar_ts_utc) VALUES ('EUR USD', '5m', '1m', 5, 60, true, %s)",
               (AGG_START,))
    db.commit()
    instance.add_dynamic_partitions(SYMBOLS_PARTITIONS_NAME, ["EUR USD"])

    context = sensor_context(instance)
    log = captured(context)
    result = registry_sync_sensor(context)

    warnings = log.messages(logging.WARNING)
    rejected = {w.split(" not synced: ")[0].removeprefix("registry symbol ") for w in warnings}
    assert rejected == {repr(s) for s in HOSTILE_SYMBOLS}
    assert all("letters, digits and . _ : ^ = + -" in w or "empty symbol" in w
               for w in warnings), warnings
    assert any(f"rejected={len(HOSTILE_SYMBOLS)}" in m for m in log.messages(logging.INFO))

    requests = {type(r).__name__: sorted(r.partition_keys)
                for r in result.dynamic_partitions_requests}
    assert requests == {"AddDynamicPartitionsRequest": sorted(good),
                        "DeleteDynamicPartitionsRequest": ["EUR USD"]}
    assert tasks_by_symbol(db) == {s: {"5m", "1h"} for s in good}
    assert task_row(db, "EUR USD", "5m")["status"] == "retired"  # kept, not deleted
    # nothing else damaged: registry and source rows are exactly as they were
    assert db.execute("SELECT count(*) FROM core_asset_registry_all").fetchone()[0] == (
        len(good) + len(HOSTILE_SYMBOLS))
    assert db.execute("SELECT count(*) FROM data_bars").fetchone()[0] == 10


def test_symbol_with_trailing_newline_is_rejected(db, instance):
    """Protects the symbol rule against a trailing newline (a classic `$` pitfall): the
    symbol is rejected and gets no task and no partition; EURUSD is synced."""
    add_symbol(db, "EURUSD")
    add_symbol(db, "EURUSD\n")
    db.commit()
    result = registry_sync_sensor(sensor_context(instance))
    [added] = result.dynamic_partitions_requests
    assert list(added.partition_keys) == ["EURUSD"]
    assert tasks_by_symbol(db) == {"EURUSD": {"5m", "1h"}}


def partition_changes(requests) -> dict[tuple[str, str], list[str]]:
    """A registry sync's partition requests: (kind, partitions set) -> sorted symbols."""
    return {(type(r).__name__, r.partitions_def_name): sorted(r.partition_keys)
            for r in requests}


def test_registry_null_flags_mean_off(db, instance, monkeypatch):
    """Protects the NULL handling of registry flags (registry_symbols.sql): NULL active /
    test_active leave a symbol out of its environment (its tasks retired, its partition
    removed, nothing rejected), NULL calc_* flags leave the optional timeframes off."""
    add_symbol(db, "ALLNULL", active=None, test_active=None, calc_15m=None, calc_4h=None,
               calc_1d=None)
    add_symbol(db, "PRODONLY", active=True, test_active=None, calc_15m=None, calc_4h=None,
               calc_1d=None)
    add_symbol(db, "PROD4H", active=True, test_active=False, calc_15m=None, calc_4h=True,
               calc_1d=None)
    add_symbol(db, "TESTONLY", active=None, test_active=True, calc_1d=True)
    db.commit()

    monkeypatch.setenv(settings.ENVIRONMENT_VAR, "prod")
    context = sensor_context(instance)
    log = captured(context)
    requests = registry_sync_sensor(context).dynamic_partitions_requests
    assert partition_changes(requests) == {
        ("AddDynamicPartitionsRequest", SYMBOLS_PARTITIONS_NAME): ["PROD4H", "PRODONLY"],
        ("AddDynamicPartitionsRequest", "symbols_4h"): ["PROD4H"]}
    assert tasks_by_symbol(db) == {"PRODONLY": {"5m", "1h"}, "PROD4H": {"5m", "1h", "4h"}}
    assert log.messages(logging.WARNING) == []  # NULL flags are "off", not an error
    instance.add_dynamic_partitions(SYMBOLS_PARTITIONS_NAME, ["PROD4H", "PRODONLY"])

    monkeypatch.setenv(settings.ENVIRONMENT_VAR, "test")
    requests = registry_sync_sensor(sensor_context(instance)).dynamic_partitions_requests
    assert partition_changes(requests) == {
        ("AddDynamicPartitionsRequest", SYMBOLS_PARTITIONS_NAME): ["TESTONLY"],
        ("DeleteDynamicPartitionsRequest", SYMBOLS_PARTITIONS_NAME): ["PROD4H", "PRODONLY"],
        ("AddDynamicPartitionsRequest", "symbols_1d"): ["TESTONLY"]}
    assert tasks_by_symbol(db) == {"TESTONLY": {"5m", "1h", "1d"}}
    assert task_row(db, "PROD4H", "4h")["status"] == "retired"


def test_hostile_symbols_travel_as_bound_parameters(db):
    """Protects "values always travel as bound parameters" in the engine (task lookup and
    lock, roll-up, cursor update): a symbol made of SQL and quotes that reached
    the engine anyway (a task made by hand) is a plain value: an unknown one is a clear
    UnknownSymbolError naming it, a registered one aggregates like any other, and no table
    is harmed."""
    evil = "x'); DROP TABLE data_bars; --"
    add_symbol(db, "EURUSD")
    sync(db)
    with pytest.raises(UnknownSymbolError, match=r"unknown symbol \"x'\); DROP TABLE"):
        engine.aggregate(db, evil, "5m", T0, T0 + HOUR, now=AS_OF)
    db.rollback()

    add_symbol(db, evil)
    db.execute("INSERT INTO data_agg_state (canonical_symbol, timeframe, source_timeframe, "
               "run_interval_minutes, aggregation_delay_seconds, is_mandatory, "
               "last_agg_bar_ts_utc) VALUES (%s, '5m', '1m', 5, 60, true, %s)", (evil, T0))
    insert_bars(db, evil, minute_bars(T0, 10))
    insert_bars(db, "EURUSD", minute_bars(T0, 10))
    db.commit()
    result = engine.aggregate(db, evil, "5m", T0, T0 + HOUR, now=AS_OF)
    db.commit()
    assert (result.bars_inserted, result.cursor_after) == (2, T0 + 10 * MINUTE)
    assert db.execute("SELECT count(*) FROM data_bars").fetchone()[0] == 20
    assert db.execute("SELECT DISTINCT canonical_symbol FROM derived_data_bars").fetchall() == [
        (evil,)]


# --------------------------------------------------------------------------- source rows

# One invalid row per 5-minute window (minute 2 of the window), replacing a good one: each
# would change its window's bar if it were used.
INVALID_ROWS: list[dict] = [
    {"open": NAN},
    {"high": NAN},
    {"low": NAN},
    {"close": NAN},
    {"high": INF},
    {"low": -INF},
    {"open": -1.1, "high": -1.0, "low": -1.2, "close": -1.1},   # negative prices
    {"open": 0.0, "high": 0.0, "low": 0.0, "close": 0.0},       # zero prices
    {"high": 1.0, "low": 1.2},                                  # high < low
    {"open": 2.0},                                              # open above high
    {"close": 0.5},                                             # close below low
    {"close": None},                                            # NULL price
    {"vol": -1.0},
    {"vol": INF},
    {"vol": NAN},
    {"vwap": NAN},
    {"vwap": -1.1},
    {"trade_count": -1},
    {"open": 1e13, "high": 1e13, "low": 1e13, "close": 1e13},   # implausible magnitude
    {"vol": 1e16},                                              # would overflow the sums
    {"low": 1e-13},                                             # below the smallest price
]
# Extra rows off the minute grid, with prices that would widen their window's high/low.
OFF_GRID = [T0 + timedelta(minutes=2, seconds=30), T0 + timedelta(minutes=33, microseconds=1)]


def test_invalid_source_rows_are_counted_in_the_run_and_distort_no_bar(db, instance):
    """Protects the row-validity rule (agg_bar_is_valid, sql/009) as the bars_5m asset applies
    it: NaN/inf/negative/zero/NULL prices, high < low, open/close outside [low, high], bad
    volume/vwap/trade_count, implausible magnitudes and off-minute timestamps are counted in
    the run's `source_rows_invalid` metadata, and every 5m and 1h bar equals the bar built
    from the same data without those rows (no distortion); the blocking checks pass."""
    add_symbol(db, "DIRTY")
    add_symbol(db, "CLEAN")
    sync(db)
    good = minute_bars(T0, 120)
    bad_minutes = {5 * w + 2: overrides for w, overrides in enumerate(INVALID_ROWS)}
    dirty = [({**row, **bad_minutes[i]} if i in bad_minutes else row)
             for i, row in enumerate(good)]
    dirty += [bar(ts, 1.1, high=9.9, low=0.1) for ts in OFF_GRID]
    insert_bars(db, "DIRTY", dirty)
    insert_bars(db, "CLEAN", [row for i, row in enumerate(good) if i not in bad_minutes])
    db.commit()
    instance.add_dynamic_partitions(SYMBOLS_PARTITIONS_NAME, ["DIRTY"])

    result = run_job(instance, day_tags("DIRTY"))
    assert result.success
    meta = materialization_metadata(result, "bars_5m")
    assert meta["source_rows_invalid"] == len(INVALID_ROWS) + len(OFF_GRID)
    assert meta["source_rows_read"] == 120 + len(OFF_GRID)
    assert meta["bars_inserted"] == 24
    checks = {(e.asset_key.to_user_string(), e.check_name): e.passed
              for e in result.get_asset_check_evaluations()}
    for asset in ("bars_5m", "bars_1h"):
        for name in ("ohlc_sane", "matches_source", "cursor_not_ahead"):
            assert checks[(asset, name)], (asset, name)

    for timeframe in ("5m", "1h"):
        engine.aggregate(db, "CLEAN", timeframe, T0, AS_OF, now=AS_OF)
        db.commit()
        # to the last bits of a float8 sum: PostgreSQL adds a window's rows in the order
        # its plan reads them, which the table's statistics (autovacuum's analyze) may change
        pd.testing.assert_frame_equal(active_bars(db, "DIRTY", timeframe),
                                      active_bars(db, "CLEAN", timeframe), check_exact=False,
                                      rtol=1e-12, atol=0.0,
                                      obj=f"{timeframe} bars, DIRTY against CLEAN")
    assert len(active_bars(db, "DIRTY", "1h")) == 2


def test_far_future_rows_move_neither_cursor_nor_frontier(db, instance):
    """Protects `ts_utc <= as_of` in agg_source_frontier, the engine's read bound and the
    late-data scan: rows stamped 2099-01-01 and 'infinity' (landing now) leave the run's
    cursor at the end of the newest real window and its source frontier at the newest real
    row; the frontier sensor observes the real frontier and requests nothing, the late-data
    sensor and the schedule request nothing, the health view reports the task OK."""
    add_symbol(db, "EURUSD")
    sync(db)
    insert_bars(db, "EURUSD", minute_bars(T0, 60))
    now = datetime.now(UTC)
    insert_bars(db, "EURUSD", [bar(datetime(2099, 1, 1, tzinfo=UTC), 1.2, ingested_at=now),
                               bar(datetime(2098, 1, 1, tzinfo=UTC), 1.2, ingested_at=now)])
    db.execute("UPDATE data_bars SET ts_utc = 'infinity' WHERE ts_utc = %s",
               (datetime(2098, 1, 1, tzinfo=UTC),))
    db.execute("UPDATE data_agg_state SET last_agg_bar_ts_utc = %s", (T0,))
    db.commit()
    instance.add_dynamic_partitions(SYMBOLS_PARTITIONS_NAME, ["EURUSD"])

    result = run_job(instance, day_tags("EURUSD"))
    assert result.success
    meta = materialization_metadata(result, "bars_5m")
    assert meta["newest_source_ts"] == (T0 + 59 * MINUTE).timestamp()
    assert meta["source_rows_read"] == 60
    assert task_row(db, "EURUSD", "5m")["cursor"] == T0 + HOUR
    assert task_row(db, "EURUSD", "1h")["cursor"] == T0 + HOUR

    frontier = source_frontier_sensor(sensor_context(instance))
    assert frontier.run_requests == []
    [observation] = frontier.asset_events
    assert observation.metadata["frontier"].value == (T0 + 59 * MINUTE).timestamp()
    late = late_data_sensor(sensor_context(instance, cursor=(now - HOUR).isoformat()))
    assert late.run_requests == []
    assert isinstance(catchup_schedule(schedule_context(instance)), dg.SkipReason)
    five = [r for r in health.frontier_health(db) if r["timeframe"] == "5m"]
    assert [(r["source_frontier_ts"], r["cursor_status"]) for r in five] == [
        (T0 + 59 * MINUTE, "OK")]


def test_minus_infinity_source_timestamp_is_quarantined(db, instance):
    """Protects the planner and sensors from a source row stamped '-infinity' (a far-past
    sentinel some ingesters write): it is never a frontier, the other symbols are still
    scheduled, the symbol's engine run completes."""
    for symbol in ("EURUSD", "DXY"):
        add_symbol(db, symbol)
    sync(db)
    insert_bars(db, "DXY", minute_bars(T0, 30))
    insert_bars(db, "EURUSD", [bar(T0, 1.1)])
    try:
        db.execute("UPDATE data_bars SET ts_utc = '-infinity', ingested_at = now() "
                   "WHERE canonical_symbol = 'EURUSD'")
        db.commit()
    except psycopg.errors.CheckViolation:
        return  # refused at the door (a constraint): also a clear outcome
    instance.add_dynamic_partitions(SYMBOLS_PARTITIONS_NAME, ["DXY", "EURUSD"])
    now = datetime.now(UTC)
    requests = catchup_schedule(schedule_context(instance, now))
    assert [r.tags[SYMBOL_TAG] for r in requests] == ["DXY"]
    db.execute("DELETE FROM data_agg_plan_claims")  # the schedule's claim, so the sensor plans
    db.commit()
    assert source_frontier_sensor(sensor_context(instance)).run_requests[0].tags[
        SYMBOL_TAG] == "DXY"
    late = late_data_sensor(sensor_context(instance, cursor=(now - HOUR).isoformat()))
    assert late.run_requests == []
    result = engine.aggregate(db, "EURUSD", "5m", T0, T0 + HOUR, now=AS_OF)
    assert result.newest_source_ts is None and result.cursor_after == AGG_START


def test_duplicate_rows_are_refused_and_change_nothing(db):
    """Protects the unique constraints: a second 1m row for the same (symbol, timeframe,
    instant), also when written with another UTC offset or inside a batch, is refused by
    data_bars_symbol_tf_ts_unique, the stored row stays as it was and a re-run writes no bar;
    a second active derived bar is refused by derived_unique_symbol_tf_ts."""
    add_symbol(db, "EURUSD")
    sync(db)
    insert_bars(db, "EURUSD", minute_bars(T0, 60))
    db.commit()
    engine.aggregate(db, "EURUSD", "5m", T0, AS_OF, now=AS_OF)
    db.commit()
    stored = db.execute("SELECT * FROM data_bars ORDER BY id").fetchall()
    bars = active_bars(db, "EURUSD", "5m")

    attempts = [
        [bar(T0 + 7 * MINUTE, 9.0)],
        [bar(T0 + 61 * MINUTE, 1.2), bar(T0 + 61 * MINUTE, 9.0)],  # duplicate within a batch
    ]
    for rows in attempts:
        with pytest.raises(psycopg.errors.UniqueViolation,
                           match="data_bars_symbol_tf_ts_unique"):
            insert_bars(db, "EURUSD", rows)
        db.rollback()
    with pytest.raises(psycopg.errors.UniqueViolation, match="data_bars_symbol_tf_ts_unique"):
        db.execute("INSERT INTO data_bars (canonical_symbol, timeframe, ts_utc, open, high, low, "
                   "close, is_partial, source, ingested_at, raw) VALUES ('EURUSD', '1m', "
                   "(%s || '+07:00')::timestamptz, 9, 9, 9, 9, false, 'test', now(), '{}')",
                   ((T0 + 7 * MINUTE + timedelta(hours=7)).strftime("%Y-%m-%d %H:%M:%S"),))
    db.rollback()
    with pytest.raises(psycopg.errors.UniqueViolation, match="derived_unique_symbol_tf_ts"):
        db.execute("INSERT INTO derived_data_bars (canonical_symbol, timeframe, ts_utc, open, "
                   "high, low, close, is_partial, source, ingested_at, raw) VALUES ('EURUSD', "
                   "'5m', %s, 9, 9, 9, 9, false, 'x', now(), '{}')", (T0,))
    db.rollback()

    assert db.execute("SELECT * FROM data_bars ORDER BY id").fetchall() == stored
    again = engine.aggregate(db, "EURUSD", "5m", T0, AS_OF, now=AS_OF)
    db.commit()
    assert (again.rows_written, again.bars_unchanged) == (0, 12)
    assert active_bars(db, "EURUSD", "5m").equals(bars)


# --------------------------------------------------------------------------- data_agg_state


def test_null_cursor_is_a_named_hard_failure_that_spares_other_symbols(db, instance):
    """Protects contract 7 ("NULL is an error, never a silent bootstrap") and contract 11 as
    a run meets it: in a run over DXY and EURUSD, EURUSD's NULL 5m cursor fails the step
    with a message naming 'EURUSD' / 5m, the failure is booked on that task only (streak 1,
    last_error), the cursor stays NULL, DXY's bars are built and committed, cursor_not_ahead
    names the task, and the schedule logs why it skips it instead of crashing."""
    for symbol in ("DXY", "EURUSD"):
        add_symbol(db, symbol)
        insert_bars(db, symbol, minute_bars(T0, 60))
    sync(db)
    db.execute("UPDATE data_agg_state SET last_agg_bar_ts_utc = NULL "
               "WHERE canonical_symbol = 'EURUSD' AND timeframe = '5m'")
    db.commit()
    instance.add_dynamic_partitions(SYMBOLS_PARTITIONS_NAME, ["DXY", "EURUSD"])

    tags = {RANGE_START_TAG: str(partition_key("DXY", DAY)),
            RANGE_END_TAG: str(partition_key("EURUSD", DAY)), AS_OF_TAG: AS_OF.isoformat()}
    result = run_job(instance, tags)
    assert not result.success
    [failure] = result.get_step_failure_events()
    assert failure.step_key == "bars_5m"
    data = failure.step_failure_data.user_failure_data
    assert data.description == "5m failed for 1 symbol: EURUSD"
    null_cursor = NullCursorError("EURUSD", "5m")
    assert data.metadata["failures"].value == {"EURUSD": f"NullCursorError: {null_cursor}"}
    assert data.metadata["succeeded_requests"].value == 1

    assert len(active_bars(db, "DXY", "5m")) == 12  # the other symbol was not held back
    assert active_bars(db, "EURUSD", "5m").empty
    eur = task_row(db, "EURUSD", "5m")
    assert (eur["cursor"], eur["status"], eur["hard_fail_streak"]) == (None, "idle", 1)
    assert eur["last_error"].startswith(
        "NullCursorError: cursor (last_agg_bar_ts_utc) of 'EURUSD' / 5m is NULL")
    assert task_row(db, "DXY", "5m")["hard_fail_streak"] == 0

    outcome = monitoring.cursor_not_ahead(db, "5m", monitoring.Scope())
    db.rollback()
    assert not outcome.passed
    assert [(o["canonical_symbol"], o["cursor_status"]) for o in outcome.offenders] == [
        ("EURUSD", "NULL")]

    context = schedule_context(instance)
    log = captured(context)
    catchup_schedule(context)
    assert "task 'EURUSD' / '5m' not scheduled: cursor is NULL" in log.messages(logging.WARNING)


def test_cursor_ahead_of_source_is_flagged_and_never_moved_back(db, instance):
    """Protects contract 7's "forward only" and the corrected AHEAD rule against a cursor
    set ten days past the newest source row: the schedule and the frontier sensor neither
    crash nor request 5m for it, an engine run over the data's day completes and leaves the
    cursor exactly where it was, and cursor_not_ahead fails naming the task as AHEAD."""
    add_symbol(db, "EURUSD")
    sync(db)
    insert_bars(db, "EURUSD", minute_bars(T0, 60))
    ahead = T0 + timedelta(days=10)
    db.execute("UPDATE data_agg_state SET last_agg_bar_ts_utc = %s WHERE timeframe = '5m'",
               (ahead,))
    db.commit()
    instance.add_dynamic_partitions(SYMBOLS_PARTITIONS_NAME, ["EURUSD"])

    assert isinstance(catchup_schedule(schedule_context(instance)), dg.SkipReason)
    assert source_frontier_sensor(sensor_context(instance)).run_requests == []

    result = engine.aggregate(db, "EURUSD", "5m", T0, T0 + timedelta(days=1), now=AS_OF)
    db.commit()
    assert (result.cursor_before, result.cursor_after) == (ahead, ahead)
    assert task_row(db, "EURUSD", "5m")["cursor"] == ahead

    outcome = monitoring.cursor_not_ahead(db, "5m", monitoring.Scope())
    db.rollback()
    assert not outcome.passed
    assert [(o["canonical_symbol"], o["cursor_ts"], o["frontier_window_end"],
             o["cursor_status"]) for o in outcome.offenders] == [
        ("EURUSD", ahead, T0 + HOUR, "AHEAD")]


def test_infinite_cursor_is_reported_and_spares_other_tasks(db, instance):
    """Protects scheduling from one task whose cursor an operator set to 'infinity' (to park
    it): the schedule still requests the other symbol and logs the bad task, and
    cursor_not_ahead fails naming it instead of crashing."""
    for symbol in ("DXY", "EURUSD"):
        add_symbol(db, symbol)
        insert_bars(db, symbol, minute_bars(T0, 30))
    sync(db)
    try:
        db.execute("UPDATE data_agg_state SET last_agg_bar_ts_utc = 'infinity' "
                   "WHERE canonical_symbol = 'EURUSD' AND timeframe = '5m'")
        db.commit()
    except psycopg.errors.CheckViolation:
        return  # refused at the door (a constraint): also a clear outcome
    instance.add_dynamic_partitions(SYMBOLS_PARTITIONS_NAME, ["DXY", "EURUSD"])
    context = schedule_context(instance)
    log = captured(context)
    requests = catchup_schedule(context)
    assert "DXY" in [r.tags[SYMBOL_TAG] for r in requests]
    assert any("'EURUSD' / '5m'" in m for m in log.messages(logging.WARNING))
    outcome = monitoring.cursor_not_ahead(db, "5m", monitoring.Scope())
    assert [o["canonical_symbol"] for o in outcome.offenders] == ["EURUSD"]


def test_cursor_at_the_end_of_time_does_not_crash_the_engine(db):
    """Protects the engine from a cursor parked at the end of the representable range
    (9999-12-31 23:59:59, an "ahead of everything" sentinel): a run completes and leaves the
    cursor where it is (the check reports AHEAD, as for any cursor ahead), or refuses with an
    AggregationError naming the task."""
    add_symbol(db, "EURUSD")
    sync(db)
    insert_bars(db, "EURUSD", minute_bars(T0, 30))
    parked = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)
    try:
        db.execute("UPDATE data_agg_state SET last_agg_bar_ts_utc = %s WHERE timeframe = '5m'",
                   (parked,))
        db.commit()
    except psycopg.errors.CheckViolation as exc:
        assert "data_agg_state_cursor_range" in str(exc)
        return  # refused at the door (a constraint): also a clear outcome
    try:
        result = engine.aggregate(db, "EURUSD", "5m", T0, T0 + HOUR, now=AS_OF)
    except AggregationError as exc:  # a clear, named refusal is acceptable too
        assert "'EURUSD' / 5m" in str(exc)
    else:
        assert result.cursor_after == parked


def test_unknown_timeframe_tasks_are_reported_retired_and_refused(db, instance):
    """Protects the planner's guard on data_agg_state.timeframe, the registry sync's
    retirement of unwanted tasks and the engine's timeframe lookup: tasks '7m' and '' (made
    by hand) do not crash the schedule or the sensors, are not scheduled and are logged with
    the reason, EURUSD's real timeframes are scheduled as usual; the registry sync retires
    them (rows kept); the engine refuses them naming the timeframe; the health view lists
    them."""
    add_symbol(db, "EURUSD")
    sync(db)
    now = datetime.now(UTC)
    insert_bars(db, "EURUSD", minute_bars(T0, 30))
    for name in ("7m", ""):
        db.execute("INSERT INTO data_agg_state (canonical_symbol, timeframe, source_timeframe, "
                   "run_interval_minutes, aggregation_delay_seconds, is_mandatory, "
                   "last_agg_bar_ts_utc) VALUES ('EURUSD', %s, '1m', 7, 60, false, %s)",
                   (name, AGG_START))
    db.commit()
    instance.add_dynamic_partitions(SYMBOLS_PARTITIONS_NAME, ["EURUSD"])

    context = schedule_context(instance, now)
    log = captured(context)
    [request] = catchup_schedule(context)
    assert {k.to_user_string() for k in request.asset_selection} == {"bars_5m", "bars_1h"}
    assert sorted(log.messages(logging.WARNING)) == [
        "task 'EURUSD' / '' not scheduled: unknown timeframe ''",
        "task 'EURUSD' / '7m' not scheduled: unknown timeframe '7m'"]
    db.execute("DELETE FROM data_agg_plan_claims")  # the schedule's claim, so the sensor plans
    db.commit()
    assert len(source_frontier_sensor(sensor_context(instance)).run_requests) == 1
    assert late_data_sensor(sensor_context(
        instance, cursor=(now - HOUR).isoformat())).run_requests == []
    assert sorted(r["timeframe"] for r in health.frontier_health(db)) == ["", "1h", "5m", "7m"]
    db.rollback()

    for name in ("7m", ""):
        with pytest.raises(UnknownTimeframeError,
                           match=f"unknown target timeframe '{name}'; known: 5m, 15m, 1h"):
            engine.aggregate(db, "EURUSD", name, T0, T0 + HOUR, now=AS_OF)

    sync_context = sensor_context(instance)
    sync_log = captured(sync_context)
    registry_sync_sensor(sync_context)
    assert any("retired=2" in m for m in sync_log.messages(logging.INFO))
    statuses = dict(db.execute("SELECT timeframe, status FROM data_agg_state").fetchall())
    db.rollback()
    assert statuses == {"5m": "idle", "1h": "idle", "7m": "retired", "": "retired"}
    context = schedule_context(instance, now + timedelta(minutes=5))
    log = captured(context)
    catchup_schedule(context)
    assert log.messages(logging.WARNING) == []


# --------------------------------------------------------------------------- configuration


def bad_urls(port_refusing_password: int) -> dict[str, tuple[str, str, str]]:
    """name -> (AGG_DATABASE_URL, how the error starts, the cause it must name)."""
    return {
        "wrong password": (
            f"postgresql://agg:{PASSWORD}@127.0.0.1:{port_refusing_password}/markets",
            f"cannot connect to PostgreSQL at 127.0.0.1:{port_refusing_password}/markets: ",
            'password authentication failed for user "agg"'),
        "wrong port": (f"postgresql://agg:{PASSWORD}@127.0.0.1:1/markets",
                       "cannot connect to PostgreSQL at 127.0.0.1:1/markets: ",
                       "Connection refused"),
        "garbage": (f"agg:{PASSWORD} at the markets db",
                    "the database URL is not a valid PostgreSQL connection string",
                    "(expected postgresql://user:password@host:port/dbname)"),
    }


def test_invalid_database_url_cli_is_a_clear_error_without_the_password(wrong_password_server):
    """Protects the CLI's clean errors (cli._clean_errors, connection.connect's message
    rewrite) for `status`: a wrong password, a closed port or a garbage AGG_DATABASE_URL
    exit 1 with a first line `Error: ...` naming host:port/db (never user or password) and
    the cause, and no traceback. (`migrate` is covered by test_cli.)"""
    port, received = wrong_password_server
    for name, (url, expected, cause) in bad_urls(port).items():
        result = run_cli("status", url=url)
        assert result.returncode == 1, (name, result.stderr)
        assert "Traceback" not in result.stderr, name
        first = result.stderr.splitlines()[0]
        assert first.startswith(f"Error: {expected}") and cause in first, (name, first)
        assert PASSWORD not in result.stderr + result.stdout, name
        assert "agg:" not in result.stderr, name  # no user either
    assert received == [PASSWORD.encode()]  # the password was really tried, once


def test_invalid_connection_option_in_url_is_a_clear_error():
    """Protects the CLI's clean errors from URL options psycopg validates itself: a bad
    connect_timeout exits 1 with one `Error: ...` naming the option, no traceback, no
    password."""
    result = run_cli("status", url=f"postgresql://agg:{PASSWORD}@127.0.0.1:1/markets"
                                   "?connect_timeout=abc")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("Error: ") and "connect_timeout" in result.stderr
    assert PASSWORD not in result.stderr


def test_invalid_database_url_fails_sensors_and_runs_clearly(db, instance, monkeypatch,
                                                             wrong_password_server):
    """Protects the MarketDatabase resource's errors: with a wrong password, a closed port or
    a garbage AGG_DATABASE_URL, a sensor tick raises DatabaseConfigError naming host:port/db
    and the cause, never the password; a run fails on its first step with the same message
    and books nothing (the session database is untouched)."""
    port, _ = wrong_password_server
    add_symbol(db, "EURUSD")
    sync(db)
    db.commit()
    instance.add_dynamic_partitions(SYMBOLS_PARTITIONS_NAME, ["EURUSD"])
    for name, (url, expected, cause) in bad_urls(port).items():
        monkeypatch.setenv(settings.DATABASE_URL_VAR, url)
        with pytest.raises(connection.DatabaseConfigError) as raised:
            registry_sync_sensor(sensor_context(instance))
        message = str(raised.value)
        assert message.startswith(expected) and cause in message, (name, message)
        assert PASSWORD not in message, name
        assert raised.value.__cause__ is None and raised.value.__suppress_context__, name

    monkeypatch.setenv(settings.DATABASE_URL_VAR, bad_urls(port)["wrong password"][0])
    result = run_job(instance, day_tags("EURUSD"), assets=("bars_5m",))
    assert not result.success
    [failure] = result.get_step_failure_events()
    error = failure.step_failure_data.error  # Dagster's wrapper, caused by ours
    assert error.cause.cls_name == "DatabaseConfigError"
    assert error.cause.message.startswith(
        f"agg_pipeline.db.connection.DatabaseConfigError: cannot connect to PostgreSQL at "
        f"127.0.0.1:{port}/markets: ")
    assert "password authentication failed" in error.cause.message
    assert error.cause.cause is None  # psycopg's exception is not chained
    assert PASSWORD not in str(error)
    assert task_row(db, "EURUSD", "5m")["hard_fail_streak"] == 0


def test_database_without_migrations_is_refused_everywhere(make_database, instance,
                                                           monkeypatch, tmp_path):
    """Protects migrations.assert_migrated as the CLI, a sensor and a run meet it: on an empty
    database and on one with pending migrations, `agg-pipeline status`, the registry sync
    sensor and an aggregate_bars run all stop with a clear error telling to run
    `agg-pipeline migrate` (naming the pending files), with no traceback from the CLI, and
    create nothing in the database."""
    empty = make_database("agg_nomig")
    partial = make_database("agg_partial")
    first_three = tmp_path / "sql"
    first_three.mkdir()
    for path in migrations.discover()[:3]:
        shutil.copy(settings.sql_dir() / path.filename, first_three / path.filename)
    migrations.migrate(partial, sql_dir=first_three)
    pending = ", ".join(m.filename for m in migrations.discover()[3:])
    expected = {
        empty: "this database has no agg_pipeline schema (table agg_schema_migrations is "
               "missing); run `agg-pipeline migrate` first",
        partial: f"pending migrations {pending}; run `agg-pipeline migrate` first",
    }
    instance.add_dynamic_partitions(SYMBOLS_PARTITIONS_NAME, ["EURUSD"])
    for url, message in expected.items():
        result = run_cli("status", url=url)
        assert (result.returncode, result.stderr) == (1, f"Error: {message}\n")

        monkeypatch.setenv(settings.DATABASE_URL_VAR, url)
        with pytest.raises(migrations.SchemaNotReadyError) as raised:
            registry_sync_sensor(sensor_context(instance))
        assert str(raised.value) == message
        run = run_job(instance, day_tags("EURUSD"), assets=("bars_5m",))
        assert not run.success
        [failure] = run.get_step_failure_events()
        cause = failure.step_failure_data.error.cause
        assert cause.cls_name == "SchemaNotReadyError" and message in cause.message

        with connection.connect(url) as conn:
            tables = {r[0] for r in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
        assert tables == (set() if url == empty else {
            "agg_schema_migrations", "core_asset_registry_all", "data_bars",
            "derived_data_bars"})
