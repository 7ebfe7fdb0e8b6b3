"""`agg-pipeline dev` on the embedded default, one session for the whole module (cheap):
UI up with a start-up summary, demo data in place and built, partitions from the demo's
first day, the live feed writing, a second dev refused, and dev gone when its daemon dies.
The last test ends the session."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime

import psutil
import pytest

from agg_pipeline import demo, demo_feed, settings
from agg_pipeline.db import connection, embedded, migrations
from agg_pipeline_tests.helpers import wait_for
from agg_pipeline_tests.processes import free_port, start_dev
from agg_pipeline_tests.reporting import report

pytestmark = pytest.mark.embedded_only

DEMO_SYMBOLS = set(demo.DEMO_SYMBOLS)


def running(processes: list[psutil.Process]) -> list[psutil.Process]:
    alive = []
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                alive.append(process)
    return alive


@pytest.fixture(scope="module")
def dev_server(tmp_path_factory):
    home = tmp_path_factory.mktemp("dev") / "home"
    server = start_dev(home, "--demo-days", "3")
    server.started_at = datetime.now(UTC)
    try:
        yield server
    finally:
        server.stop()
        embedded.stop_server(home)


@pytest.fixture(scope="module")
def market(dev_server):
    return embedded.ensure_server(dev_server.home).database_url(embedded.MARKET_DATABASE)


@pytest.fixture(scope="module")
def loaded(dev_server, market):
    """The UI's workspace, once loaded; notes when, and each symbol's newest bar then (the
    seeded history's end: the feed starts after the UI answers)."""
    entries = dev_server.wait_until_loaded()
    dev_server.ui_answered_at = time.monotonic()
    with connection.connect(market) as conn:
        dev_server.seeded_until = dict(conn.execute(
            "SELECT canonical_symbol, max(ts_utc) FROM data_bars GROUP BY 1").fetchall())
    return entries


def test_dev_serves_definitions_on_embedded_database_with_demo_data(dev_server, loaded,
                                                                    market):
    assert [e["name"] for e in loaded] == ["agg_pipeline"]
    assert loaded[0]["locationOrLoadError"]["__typename"] == "RepositoryLocation"

    with connection.connect(market) as conn:
        symbols = {r[0] for r in conn.execute("SELECT DISTINCT canonical_symbol FROM data_bars")}
        applied = conn.execute("SELECT count(*) FROM agg_schema_migrations").fetchone()[0]
        first_minute = demo.first_minute(conn)
    # the feed's symbols were seeded; DXY's rows are the pipeline's (computed from them)
    assert set(demo_feed.feed_symbols()) <= symbols <= DEMO_SYMBOLS
    assert applied == len(migrations.discover())

    # Dagster's own storage is the embedded server's separate database
    dagster_db = embedded.ensure_server(dev_server.home).database_url(embedded.DAGSTER_DATABASE)
    with connection.connect(dagster_db) as conn:
        assert conn.execute("SELECT to_regclass('runs')").fetchone()[0] == "runs"

    # the day partitions start on the demo's first day, not at the default AGG_START_UTC
    node = dev_server.graphql("""{ assetNodeOrError(assetKey: {path: ["bars_5m"]}) {
        ... on AssetNode { partitionKeysByDimension { name partitionKeys } } } }""")
    dims = {d["name"]: d["partitionKeys"]
            for d in node["assetNodeOrError"]["partitionKeysByDimension"]}
    [times] = [keys for name, keys in dims.items() if name != "symbol"]
    assert times[0] == first_minute.astimezone(UTC).date().isoformat()
    assert set(dims["symbol"]) == DEMO_SYMBOLS  # synced before the daemon started

    log = wait_for(lambda: "agg-pipeline dev is up" in dev_server.log() and dev_server.log(),
                   30, "the start-up summary", dev_server.log)
    assert f"  UI          {dev_server.url}\n" in log
    assert f"  symbols     8 symbols: {', '.join(sorted(DEMO_SYMBOLS))}" in log
    assert "/agg_market  (Dagster's storage: " in log
    assert "the feed writes a bar per symbol every minute" in log
    assert "Traceback" not in log
    assert "DEBUG" not in log  # no event-by-event run output
    assert "dg dev" not in log and "dagster.yaml" not in log  # dagster dev's warnings


def test_a_second_dev_on_the_same_home_is_refused(dev_server, loaded):
    # refused first thing, before any database is looked at
    second = subprocess.run(
        [sys.executable, "-m", "agg_pipeline.cli", "dev", "--port", str(free_port())],
        capture_output=True, text=True, timeout=120,
        env={**os.environ, "AGG_HOME": str(dev_server.home)})
    assert second.returncode == 1, second.stdout + second.stderr
    assert "already running" in second.stderr
    assert f"pid {dev_server.process.pid}" in second.stderr and dev_server.url in second.stderr
    assert "Traceback" not in second.stderr
    # the first one is untouched
    assert dev_server.process.poll() is None
    assert dev_server.wait_until_loaded(timeout=30)


def test_every_demo_symbol_has_its_5m_and_1h_bars_soon(dev_server, loaded, market):
    def built() -> bool:
        with connection.connect(market) as conn:
            have = set(conn.execute(
                "SELECT canonical_symbol, timeframe FROM derived_data_bars "
                "WHERE deleted_at IS NULL AND timeframe IN ('5m', '1h') GROUP BY 1, 2"
            ).fetchall())
        return have == {(s, tf) for s in DEMO_SYMBOLS for tf in ("5m", "1h")}

    wait_for(built, 180, "every demo symbol's 5m and 1h bars", dev_server.log, interval=1)
    with connection.connect(market) as conn:  # DXY built live from its components
        assert conn.execute("SELECT array_agg(DISTINCT source) FROM data_bars "
                            "WHERE canonical_symbol = 'DXY'").fetchone()[0] == ["synthetic:DXY"]
    report(f"agg-pipeline dev, 3 demo days: every symbol's 5m and 1h bars "
           f"{time.monotonic() - dev_server.ui_answered_at:.0f} s after the UI answered")


def test_the_live_feed_writes_every_demo_symbols_next_minute(dev_server, loaded, market):
    def fed() -> dict[str, int]:
        with connection.connect(market) as conn:
            return dict(conn.execute(
                "SELECT canonical_symbol, count(*) FROM data_bars b "
                "WHERE source = 'demo' AND ts_utc > (%s::jsonb ->> canonical_symbol)::timestamptz"
                " AND ingested_at >= ts_utc + interval '1 minute' GROUP BY 1",
                (json.dumps({s: t.isoformat() for s, t in dev_server.seeded_until.items()}),)
            ).fetchall())

    wait_for(lambda: set(fed()) == set(demo_feed.feed_symbols()), 150,
             "a minute from the feed for every demo symbol", dev_server.log, interval=2)


def test_dev_stops_everything_and_fails_when_its_daemon_dies(dev_server, loaded, market):
    """Last in the module: it ends the session."""
    dev = psutil.Process(dev_server.process.pid)
    children = dev.children(recursive=True)
    # every child runs with the Dagster process settings and the demo's first day
    with connection.connect(market) as conn:
        first_day = demo.first_minute(conn).astimezone(UTC).date()
    for child in dev.children():
        environment = child.environ()
        assert settings.DAGSTER_PROCESS_ENV.items() <= environment.items(), child.cmdline()
        assert environment[settings.START_VAR].startswith(first_day.isoformat())
    [daemon] = [p for p in dev.children() if "dagster._daemon" in " ".join(p.cmdline())]
    daemon.send_signal(signal.SIGKILL)
    assert dev_server.process.wait(timeout=90) == 1
    log = dev_server.log()
    assert f"dagster-daemon (pid {daemon.pid}) was killed by signal 9" in log
    assert "agg-pipeline dev stopped" in log
    wait_for(lambda: not running(children), 30, "dev's processes to exit",
             lambda: str(running(children)))


def test_dev_again_on_the_same_home_finds_the_demo_and_its_first_day(dev_server, loaded,
                                                                    market):
    """After the previous test (dev gone, the home free): no new demo data, the same first
    day partition, derived from the data; --no-feed says so; SIGTERM stops it all."""
    assert dev_server.process.poll() is not None
    with connection.connect(market) as conn:
        first_day = demo.first_minute(conn).astimezone(UTC).date().isoformat()
    again = start_dev(dev_server.home, "--no-feed")
    try:
        again.wait_until_loaded()
        log = wait_for(lambda: "agg-pipeline dev is up" in again.log() and again.log(), 30,
                       "the start-up summary", again.log)
        assert "registry is empty" not in log
        assert f"  partitions  days from {first_day} (AGG_START_UTC)" in log
        assert "(no live feed: --no-feed)" in log
        # SIGTERM (what Ctrl-C does too) stops every child, then dev, cleanly
        children = psutil.Process(again.process.pid).children(recursive=True)
        again.process.send_signal(signal.SIGTERM)
        assert again.process.wait(timeout=90) == 0
        wait_for(lambda: not running(children), 30, "dev's processes to exit",
                 lambda: str(running(children)))
        assert "agg-pipeline dev stopped" in again.log()
    finally:
        again.stop()
