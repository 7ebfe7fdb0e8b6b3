"""Fault injection (issue 6, items 1-2): a run worker killed with SIGKILL mid-materialisation,
and the database connection dropped mid-run.

Both faults are injected while the engine is *inside* its aggregate statement: the test
holds an uncommitted active 5m bar (as the database owner) at a window in the middle of the
requested range, so the pipeline's INSERT of that window waits on the test's transaction
after it has already written the windows before it. The fault lands there, at a moment the
test observes in pg_stat_activity (the backend is `active`, waiting on a lock held by the
test's transaction, running the aggregate statement), not at a guessed instant.

Expected bars are computed from scratch by the independent pandas oracle (oracle.py) from
the `data_bars` rows; every column of every active bar is compared.

Each test's docstring says which protection it covers; removing that protection fails it.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, date, datetime, timedelta

import dagster as dg
import psutil
import psycopg
import pytest

from agg_pipeline import settings
from agg_pipeline.db import connection
from agg_pipeline.definitions import defs
from agg_pipeline.defs.assets import AS_OF_TAG, TRANSIENT_RETRIES
from agg_pipeline.defs.partitions import SYMBOL_TAG, SYMBOLS_PARTITIONS_NAME, range_tags
from agg_pipeline.demo import seed_demo
from agg_pipeline_tests.helpers import AGG_START, sync, wait_for
from agg_pipeline_tests.processes import start_daemon, storage_instance
from agg_pipeline_tests.stored import compare_with_oracle

SYMBOL = "EURUSD"
DATA_END = datetime(2025, 7, 21, tzinfo=UTC)  # a Monday: two weeks of FX sessions before it
DATA_DAYS = 14
FIRST_DAY = AGG_START.date()  # the task's cursor day: runs start there
LAST_DAY = (DATA_END - timedelta(days=1)).date()
AS_OF = DATA_END + timedelta(days=2)  # every window of the data is final
BLOCKED_WINDOW = datetime(2025, 7, 15, 12, 0, tzinfo=UTC)  # a Tuesday, mid-range
STATE_COLUMNS = ("status", "hard_fail_streak", "enabled", "last_agg_bar_ts_utc",
                 "running_started_at_utc", "last_error")
# how pg_stat_activity shows the engine's statement: the start of its first line, before the
# first parameter (the text is truncated to track_activity_query_size, so the INSERT itself
# is not visible)
AGGREGATE_STATEMENT = (settings.project_root() / "sql" / "queries" / "aggregate_windows.sql"
                       ).read_text().splitlines()[0].split("%(")[0]


# ---------------------------------------------------------------------------- helpers


def seed(conn: psycopg.Connection) -> None:
    """Two weeks of realistic EURUSD 1m bars (weekend gap, missing minutes), synced tasks."""
    seed_demo(conn, [SYMBOL], days=DATA_DAYS, end=DATA_END)
    conn.commit()
    sync(conn)
    five = conn.execute(
        "SELECT count(*) FROM data_bars WHERE canonical_symbol = %s AND ts_utc >= %s "
        "AND ts_utc < %s", (SYMBOL, BLOCKED_WINDOW, BLOCKED_WINDOW + timedelta(minutes=5)),
    ).fetchone()[0]
    assert five >= 3, "the blocked window must qualify for a bar, or nothing waits on it"


def task_state(conn: psycopg.Connection, timeframe: str) -> dict:
    row = conn.execute(
        f"SELECT {', '.join(STATE_COLUMNS)} FROM data_agg_state "
        "WHERE canonical_symbol = %s AND timeframe = %s", (SYMBOL, timeframe)).fetchone()
    return dict(zip(STATE_COLUMNS, row, strict=True))


def committed_rows(url: str) -> dict[str, int]:
    """What other sessions see of the symbol's derived rows and fingerprints."""
    with connection.connect(url) as conn:
        bars, deleted = conn.execute(
            "SELECT count(*), count(*) FILTER (WHERE deleted_at IS NOT NULL) "
            "FROM derived_data_bars WHERE canonical_symbol = %s", (SYMBOL,)).fetchone()
        days = conn.execute("SELECT count(*) FROM data_agg_source_days "
                            "WHERE canonical_symbol = %s", (SYMBOL,)).fetchone()[0]
    return {"bars": bars, "soft_deleted": deleted, "source_days": days}


def states(url: str) -> dict[str, dict]:
    with connection.connect(url) as conn:
        return {tf: task_state(conn, tf) for tf in ("5m", "1h")}


@contextmanager
def held_window(url: str, window: datetime = BLOCKED_WINDOW) -> Iterator[psycopg.Connection]:
    """An uncommitted active 5m bar at `window`: the engine's INSERT of that window waits on
    this transaction (unique index of active bars) until it ends. Rolled back on exit."""
    conn = connection.connect(url)
    conn.execute(
        "INSERT INTO derived_data_bars (canonical_symbol, timeframe, ts_utc, open, high, low, "
        "close, is_partial, source, ingested_at, raw) "
        "VALUES (%s, '5m', %s, 1, 1, 1, 1, false, 'fault-test', now(), '{}')",
        (SYMBOL, window))
    try:
        yield conn
    finally:
        if not conn.closed:
            conn.rollback()
        conn.close()


def blocked_in_aggregate(admin: psycopg.Connection, blocker_pid: int,
                         exclude: set[int] = frozenset()) -> int | None:
    """The pipeline backend running the aggregate statement and waiting on `blocker_pid`."""
    rows = admin.execute(
        "SELECT pid, query FROM pg_stat_activity WHERE datname = current_database() "
        "AND usename <> current_user AND state = 'active' AND wait_event_type = 'Lock' "
        "AND %s = ANY(pg_blocking_pids(pid))", (blocker_pid,)).fetchall()
    found = [pid for pid, query in rows
             if query.startswith(AGGREGATE_STATEMENT) and pid not in exclude]
    return found[0] if found else None


def waiting_on(admin: psycopg.Connection, holder_pid: int) -> list[tuple]:
    """Backends waiting on a lock `holder_pid` holds: (pid, wait_event, query)."""
    return admin.execute(
        "SELECT pid, wait_event, query FROM pg_stat_activity "
        "WHERE %s = ANY(pg_blocking_pids(pid))", (holder_pid,)).fetchall()


def activity(admin: psycopg.Connection) -> str:
    """pg_stat_activity of the test database, for failure messages."""
    rows = admin.execute(
        "SELECT pid, usename, application_name, state, wait_event_type, wait_event, "
        "pg_blocking_pids(pid), left(regexp_replace(query, '\\s+', ' ', 'g'), 120) "
        "FROM pg_stat_activity WHERE datname = current_database()").fetchall()
    return "\n".join(map(str, rows))


def backend_alive(admin: psycopg.Connection, pid: int) -> bool:
    return admin.execute("SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = %s)",
                         (pid,)).fetchone()[0]


def task_lock_free(admin: psycopg.Connection, timeframe: str) -> bool:
    """Nobody holds the task row's lock (the engine's, contract 13)."""
    with admin.transaction(force_rollback=True):
        return bool(admin.execute(
            "SELECT 1 FROM data_agg_state WHERE canonical_symbol = %s AND timeframe = %s "
            "FOR UPDATE SKIP LOCKED", (SYMBOL, timeframe)).fetchone())


def assert_bars_equal_oracle(url: str) -> dict[str, int]:
    """Every active 5m/1h bar and both cursors equal the from-scratch computation, column by
    column, no window missing or extra; no soft-deleted leftovers of an aborted write.
    Returns the compared counts."""
    with connection.connect(url) as conn:
        figures = compare_with_oracle(conn, [SYMBOL], AS_OF)
    assert figures["5m bars"] and figures["1h bars"], "the oracle derives no bars: bad fixture"
    assert committed_rows(url)["soft_deleted"] == 0
    return figures


def run_range(instance, first_day: date = FIRST_DAY, last_day: date = LAST_DAY):
    tags = {**range_tags(SYMBOL, first_day, last_day), AS_OF_TAG: AS_OF.isoformat()}
    return defs.resolve_job_def("aggregate_bars").execute_in_process(
        instance=instance, tags=tags,
        asset_selection=[dg.AssetKey("bars_5m"), dg.AssetKey("bars_1h")], raise_on_error=False)


def step_events(result, step_key: str, event_type: dg.DagsterEventType) -> list:
    return [e for e in result.all_events
            if e.event_type == event_type and e.step_key == step_key]


class Injector(threading.Thread):
    """Runs a fault script beside a run; its exception is re-raised by `check()`. `cleanup`
    runs whatever happens (it releases what the run may be waiting on)."""

    def __init__(self, script: Callable[[], None], cleanup: Callable[[], None]):
        super().__init__(daemon=True)
        self.script, self.cleanup, self.error = script, cleanup, None

    def run(self) -> None:
        try:
            self.script()
        except BaseException as exc:  # re-raised by check()
            self.error = exc
        finally:
            self.cleanup()

    def check(self) -> None:
        self.join(timeout=120)
        assert not self.is_alive(), "the fault script did not finish"
        if self.error is not None:
            raise self.error


@pytest.fixture
def seeded(db, instance):
    seed(db)
    instance.add_dynamic_partitions(SYMBOLS_PARTITIONS_NAME, [SYMBOL])
    return db


# ---------------------------------------------------------------------------- outage


def test_terminated_backend_mid_statement_is_transient_retried_and_not_counted(
        seeded, database_url, instance):
    """Protects contract 11 for a database outage: `tasks.is_transient` classifying
    AdminShutdown (57P01) as transient, `materialize_timeframe` booking it without adding to
    `hard_fail_streak` and raising `RetryRequested`, and the engine's single transaction
    (nothing of the terminated attempt is committed).

    The task starts with hard_fail_streak = 2, so a transient failure booked as hard would
    make it hard_failed at once; without the retry the run fails."""
    seeded.execute("UPDATE data_agg_state SET hard_fail_streak = 2 WHERE timeframe = '5m'")
    seeded.commit()
    observed: dict[str, object] = {}

    with held_window(database_url) as blocker, \
            connection.connect(database_url, autocommit=True) as admin:
        blocker_pid = blocker.info.backend_pid

        def script() -> None:
            first = wait_for(lambda: blocked_in_aggregate(admin, blocker_pid), 60,
                             "the run's aggregate statement to wait on the held window",
                             lambda: activity(admin))
            assert admin.execute("SELECT pg_terminate_backend(%s)", (first,)).fetchone()[0]
            wait_for(lambda: not backend_alive(admin, first), 10, "the backend to end")
            # the terminated attempt wrote nothing anyone can see
            observed["after_kill"] = committed_rows(database_url)
            # the retry comes back to the same window and waits there: the failure of the
            # first attempt has been booked by now
            wait_for(lambda: blocked_in_aggregate(admin, blocker_pid, {first}), 60,
                     "the retried attempt to reach the held window", lambda: activity(admin))
            observed["booked"] = states(database_url)["5m"]

        injector = Injector(script, cleanup=blocker.rollback)
        injector.start()
        result = run_range(instance)
        injector.check()

    assert observed["after_kill"] == {"bars": 0, "soft_deleted": 0, "source_days": 0}
    booked = observed["booked"]
    assert booked["hard_fail_streak"] == 2 and booked["status"] == "idle" and booked["enabled"]
    assert booked["last_error"].startswith("AdminShutdown"), booked["last_error"]
    assert booked["last_agg_bar_ts_utc"] == AGG_START  # the cursor did not move
    assert result.success, [e.message for e in result.all_events if e.is_failure]
    assert len(step_events(result, "bars_5m", dg.DagsterEventType.STEP_UP_FOR_RETRY)) == 1
    assert len(step_events(result, "bars_5m", dg.DagsterEventType.STEP_RESTARTED)) == 1
    assert not step_events(result, "bars_1h", dg.DagsterEventType.STEP_UP_FOR_RETRY)
    assert_bars_equal_oracle(database_url)
    after = states(database_url)
    for timeframe in ("5m", "1h"):
        assert after[timeframe]["hard_fail_streak"] == 0
        assert after[timeframe]["status"] == "idle" and after[timeframe]["last_error"] is None


def test_transient_failure_at_the_final_retry_does_not_hard_fail_the_task(
        seeded, database_url, instance):
    """Protects contract 11 at the end of the retry budget: every attempt (the first and the
    TRANSIENT_RETRIES = 3 retries) loses its connection, so the step finally fails, but each
    failure is booked transient: hard_fail_streak stays where it was (2, one short of
    hard_failed), the task is neither hard_failed nor disabled, the cursor and the bars are
    untouched. A following run then completes with correct bars and resets the streak."""
    seeded.execute("UPDATE data_agg_state SET hard_fail_streak = 2 WHERE timeframe = '5m'")
    seeded.commit()
    terminated: list[int] = []

    with held_window(database_url) as blocker, \
            connection.connect(database_url, autocommit=True) as admin:
        blocker_pid = blocker.info.backend_pid

        def script() -> None:
            for _ in range(1 + TRANSIENT_RETRIES):
                pid = wait_for(
                    lambda: blocked_in_aggregate(admin, blocker_pid, set(terminated)), 60,
                    f"attempt {len(terminated) + 1} to reach the held window",
                    lambda: activity(admin))
                assert admin.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone()[0]
                terminated.append(pid)

        injector = Injector(script, cleanup=blocker.rollback)
        injector.start()
        result = run_range(instance)
        injector.check()

    assert len(terminated) == 1 + TRANSIENT_RETRIES
    assert not result.success
    assert len(step_events(result, "bars_5m", dg.DagsterEventType.STEP_UP_FOR_RETRY)) == 3
    assert len(step_events(result, "bars_5m", dg.DagsterEventType.STEP_FAILURE)) == 1
    assert not step_events(result, "bars_1h", dg.DagsterEventType.STEP_SUCCESS)
    five = states(database_url)["5m"]
    assert (five["status"], five["hard_fail_streak"], five["enabled"]) == ("idle", 2, True)
    assert five["last_error"].startswith("AdminShutdown"), five["last_error"]
    assert five["last_agg_bar_ts_utc"] == AGG_START
    assert committed_rows(database_url) == {"bars": 0, "soft_deleted": 0, "source_days": 0}

    assert run_range(instance).success
    assert_bars_equal_oracle(database_url)
    assert states(database_url)["5m"]["hard_fail_streak"] == 0


class FlakyServer:
    """A TCP port in front of the PostgreSQL server (its Unix socket or its TCP address) that
    can go down: `down()` cuts every connection through it (the client sees the server
    vanish) and refuses new ones until `up()`, as during a server restart or a network
    outage."""

    def __init__(self, family: socket.AddressFamily, address: str | tuple[str, int]):
        self.family, self.address = family, address
        self.port = 0
        self.listener: socket.socket | None = None
        self.pairs: list[tuple[socket.socket, socket.socket]] = []
        self.lock = threading.Lock()

    def up(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.port, self.listener = listener.getsockname()[1], listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def down(self) -> None:
        with self.lock:
            listener, self.listener = self.listener, None
            pairs, self.pairs = self.pairs, []
        if listener is not None:
            with suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() thread
            listener.close()
        for pair in pairs:
            for sock in pair:
                self._close(sock)

    @staticmethod
    def _close(sock: socket.socket) -> None:
        with suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        sock.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            server = socket.socket(self.family)
            server.connect(self.address)
            with self.lock:
                if self.listener is not listener:  # went down meanwhile
                    self._close(client)
                    self._close(server)
                    return
                self.pairs.append((client, server))
            for src, dst in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        with suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        with suppress(OSError):
            dst.shutdown(socket.SHUT_WR)


@pytest.fixture
def flaky_runtime_url(runtime_url, monkeypatch) -> Iterator[tuple[str, FlakyServer]]:
    """AGG_DATABASE_URL through a FlakyServer (the pipeline role, as in every run)."""
    params = connection.parse_url(runtime_url)
    host, port = params.get("host", "localhost"), params.get("port", "5432")
    if host.startswith("/"):
        flaky = FlakyServer(socket.AF_UNIX, os.path.join(host, f".s.PGSQL.{port}"))
    else:
        flaky = FlakyServer(socket.AF_INET, (host, int(port)))
    flaky.up()
    params.update(host="127.0.0.1", port=str(flaky.port))
    url = connection.build_url(params)
    monkeypatch.setenv(settings.DATABASE_URL_VAR, url)
    yield url, flaky
    flaky.down()


def test_outage_outlasting_the_first_backoff_is_ridden_out_by_the_retries(
        seeded, database_url, instance, flaky_runtime_url):
    """Protects contract 11 for an outage longer than the first back-off (5 s): the server
    vanishes mid-statement and refuses connections for 8 s, as a restart does. The retry
    budget (3 retries over 5 + 10 + 20 s) exists to ride this out: the attempts that find
    the server down are transient too, the run ends with correct bars, the streak is not
    touched."""
    _, flaky = flaky_runtime_url
    seeded.execute("UPDATE data_agg_state SET hard_fail_streak = 2 WHERE timeframe = '5m'")
    seeded.commit()

    with held_window(database_url) as blocker, \
            connection.connect(database_url, autocommit=True) as admin:
        blocker_pid = blocker.info.backend_pid

        def script() -> None:
            orphan = wait_for(lambda: blocked_in_aggregate(admin, blocker_pid), 60,
                              "the run's aggregate statement to wait on the held window",
                              lambda: activity(admin))
            flaky.down()
            time.sleep(8)
            flaky.up()
            # the cut backend still waits on the held window (holding the task's lock) until
            # it is released; then it finds its client gone and rolls back
            blocker.rollback()
            wait_for(lambda: not backend_alive(admin, orphan), 30,
                     "the cut backend to end", lambda: activity(admin))

        injector = Injector(script, cleanup=blocker.rollback)
        injector.start()
        result = run_range(instance)
        injector.check()

    assert result.success, [e.message for e in result.all_events if e.is_failure]
    assert step_events(result, "bars_5m", dg.DagsterEventType.STEP_UP_FOR_RETRY)
    assert_bars_equal_oracle(database_url)
    five = states(database_url)["5m"]
    assert (five["status"], five["hard_fail_streak"]) == ("idle", 0)


# ---------------------------------------------------------------------------- crash


def run_worker(instance, run_id: str) -> psutil.Process | None:
    """The run worker, by the pid its own "Started process for run" event records."""
    for record in instance.all_logs(run_id, of_type=dg.DagsterEventType.ENGINE_EVENT):
        if record.message.startswith("Started process for run"):
            pid = int(record.dagster_event.engine_event_data.metadata["pid"].value)
            return psutil.Process(pid)
    return None


def runs_of(instance, **filters) -> list[dg.DagsterRun]:
    return [r.dagster_run for r in instance.get_run_records(dg.RunsFilter(**filters))]


@pytest.mark.daemon
def test_sigkilled_run_worker_leaves_no_partial_range_and_the_retry_completes(
        db, database_url, runtime_url, make_database, tmp_path):
    """Protects, for a run worker killed with SIGKILL mid-statement (OOM killer, lost host):
    the engine's single transaction (no window of the range committed, no fingerprint, cursor
    unmoved: none or all), the task row's lock (the retry cannot write beside the orphaned
    backend, which keeps running its statement until it notices its client is gone, then
    rolls back), no 'running' task status to get stuck, the instance's crash detection and
    run_retries (the run is failed and retried with dagster/parent_run_id, not left
    'started'), and the engine's idempotence (the retry's bars equal a from-scratch oracle).

    The real path: dagster-daemon with the project's dagster.yaml; the frontier sensor
    requests the run, the queue starts it, the test kills the worker the run's own event
    log names, while its backend waits inside the aggregate statement."""
    seed(db)
    storage_url = make_database("agg_crash_dagster")
    with storage_instance(storage_url, tmp_path / "setup") as setup:
        setup.add_dynamic_partitions(SYMBOLS_PARTITIONS_NAME, [SYMBOL])
    before = states(database_url)

    with held_window(database_url) as blocker, \
            connection.connect(database_url, autocommit=True) as admin, \
            storage_instance(storage_url, tmp_path / "watch") as watch:
        daemon = start_daemon(tmp_path / "dagster_home", market_url=runtime_url,
                              storage_url=storage_url)
        try:
            def context() -> str:
                runs = [(r.run_id[:8], r.status.value, r.tags.get("agg/reason"))
                        for r in runs_of(watch)]
                return f"{activity(admin)}\nruns: {runs}\n{daemon.log()[-4000:]}"

            # 1. the frontier sensor's run reaches the held window, mid-statement
            orphan = wait_for(lambda: blocked_in_aggregate(admin, blocker.info.backend_pid),
                              240, "the sensor's run to wait inside its aggregate statement",
                              context, interval=1)
            [crashed] = runs_of(watch, statuses=[dg.DagsterRunStatus.STARTED])
            assert crashed.tags[SYMBOL_TAG] == SYMBOL
            assert crashed.tags["agg/reason"] == "new complete windows"
            worker = run_worker(watch, crashed.run_id)
            assert worker is not None and worker.is_running(), context()
            assert daemon.process.pid in {p.pid for p in worker.parents()}  # not ours to kill
            assert worker.pid != os.getpid()

            # 2. SIGKILL the worker (and anything it started)
            victims = [worker, *worker.children(recursive=True)]
            for victim in victims:
                victim.send_signal(signal.SIGKILL)
            psutil.wait_procs(victims, timeout=10)

            # 3. the run is failed as crashed, not left started
            wait_for(lambda: watch.get_run_by_id(crashed.run_id).status
                     == dg.DagsterRunStatus.FAILURE, 90, "the crashed run to be failed", context,
                     interval=1)
            messages = [r.message for r in watch.all_logs(crashed.run_id)]
            assert any("SIGKILL" in m for m in messages), messages[-10:]
            # nothing of the range is committed; the task is not 'running'; cursors unmoved
            assert committed_rows(database_url) == {"bars": 0, "soft_deleted": 0,
                                                    "source_days": 0}
            assert states(database_url) == before
            assert all(s["status"] == "idle" and s["running_started_at_utc"] is None
                       for s in before.values())

            # 4. the orphaned backend still runs its statement and holds the task row's lock:
            # the retry waits for it there (contract 13), it does not write beside it
            assert backend_alive(admin, orphan)
            retry = wait_for(lambda: next(iter(runs_of(
                watch, tags={"dagster/parent_run_id": crashed.run_id})), None), 120,
                "run_retries to retry the crashed run", context, interval=1)
            assert retry.tags[SYMBOL_TAG] == SYMBOL and retry.tags["dagster/retry_number"] == "1"
            waiters = wait_for(lambda: waiting_on(admin, orphan), 180,
                               "the retry to wait for the orphaned backend", context, interval=1)
            # (a row lock is waited for as the holder's transaction id)
            assert [event for _, event, _ in waiters] == ["transactionid"], waiters

            # 5. the held window is released: the orphan finishes its statement, finds its
            # client gone and ends without committing; the lock passes to the retry
            blocker.rollback()
            wait_for(lambda: not backend_alive(admin, orphan), 60,
                     "the orphaned backend to end", context)
            wait_for(lambda: watch.get_run_by_id(retry.run_id).status
                     == dg.DagsterRunStatus.SUCCESS, 180, "the retry to succeed", context,
                     interval=1)
            five = watch.get_latest_materialization_event(dg.AssetKey("bars_5m"))
            assert five.run_id == retry.run_id
            # each day partition carries its own day's counts: the retry's sum
            inserted_by_retry = sum(
                record.event_log_entry.asset_materialization.metadata["bars_inserted"].value
                for record in watch.get_records_for_run(
                    retry.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION).records
                if record.event_log_entry.asset_materialization.asset_key
                == dg.AssetKey("bars_5m"))
        finally:
            daemon.stop()

    # every bar came from the retry's one committed transaction: the orphan committed nothing
    figures = assert_bars_equal_oracle(database_url)
    assert inserted_by_retry == figures["5m bars"]
    with connection.connect(database_url) as conn:
        after = {tf: task_state(conn, tf) for tf in ("5m", "1h")}
        total_runs = dict(conn.execute(
            "SELECT timeframe, total_runs FROM data_agg_state WHERE canonical_symbol = %s",
            (SYMBOL,)).fetchall())
    assert total_runs == {"5m": 1, "1h": 1}
    for timeframe in ("5m", "1h"):
        assert after[timeframe]["status"] == "idle"
        assert after[timeframe]["hard_fail_streak"] == 0
    with connection.connect(database_url, autocommit=True) as admin:
        assert task_lock_free(admin, "5m") and task_lock_free(admin, "1h")
