"""The embedded server: concurrent first starts share one server; it outlives its starter."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import psycopg
import pytest

from agg_pipeline.db import embedded

pytestmark = pytest.mark.embedded_only


def test_two_processes_starting_at_once_get_one_server(tmp_path):
    home = tmp_path / "home"
    script = textwrap.dedent(f"""
        from pathlib import Path
        from agg_pipeline.db import embedded
        server = embedded.ensure_server(Path({str(home)!r}))
        pid = (server.pgdata / "postmaster.pid").read_text().split()[0]
        print("URL", server.database_url(embedded.MARKET_DATABASE))
        print("PID", pid)
    """)
    try:
        procs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for _ in range(2)]
        results = [p.communicate(timeout=180) for p in procs]
        assert all(p.returncode == 0 for p in procs), [r[1][-2000:] for r in results]
        pids = {line.split()[1] for out, _ in results for line in out.splitlines()
                if line.startswith("PID")}
        urls = {line.split()[1] for out, _ in results for line in out.splitlines()
                if line.startswith("URL")}
        assert len(pids) == 1 and len(urls) == 1
        # both starters have exited; the server is still up and both databases exist
        with psycopg.connect(urls.pop()) as conn:
            names = {r[0] for r in conn.execute("SELECT datname FROM pg_database")}
        assert {embedded.MARKET_DATABASE, embedded.DAGSTER_DATABASE} <= names
    finally:
        embedded.stop_server(home)
    assert not (home / "pg" / "postmaster.pid").exists()


def test_restart_after_stop_keeps_data(tmp_path):
    home = tmp_path / "home"
    try:
        server = embedded.ensure_server(home)
        url = server.database_url(embedded.MARKET_DATABASE)
        with psycopg.connect(url) as conn:
            conn.execute("CREATE TABLE kept (x int); INSERT INTO kept VALUES (42)")
        assert embedded.stop_server(home)
        assert not embedded.stop_server(home)
        server = embedded.ensure_server(home)
        with psycopg.connect(server.database_url(embedded.MARKET_DATABASE)) as conn:
            assert conn.execute("SELECT x FROM kept").fetchone()[0] == 42
    finally:
        embedded.stop_server(home)
