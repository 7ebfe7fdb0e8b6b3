"""The `agg-pipeline` command line, run as a user runs it (a subprocess)."""

from __future__ import annotations

import os
import subprocess
import sys

from agg_pipeline import settings
from agg_pipeline.db import connection, migrations


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: int = 300):
    return subprocess.run(
        [sys.executable, "-m", "agg_pipeline.cli", *args],
        capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})},
    )


def test_migrate_then_seed_demo_then_status(make_database):
    url = make_database()
    env = {settings.DATABASE_URL_VAR: url}
    first = run_cli("migrate", env=env)
    assert first.returncode == 0, first.stderr
    assert f"applied {len(migrations.discover())} migration(s)" in first.stdout
    again = run_cli("migrate", env=env)
    assert again.returncode == 0 and "is up to date" in again.stdout

    seeded = run_cli("seed-demo", "--symbols", "EURUSD,XAUUSD", "--days", "2", env=env)
    assert seeded.returncode == 0, seeded.stderr
    with connection.connect(url) as conn:
        symbols = {r[0] for r in conn.execute("SELECT DISTINCT canonical_symbol FROM data_bars")}
    assert symbols == {"EURUSD", "XAUUSD"}

    status = run_cli("status", env=env)
    assert status.returncode == 0 and "no aggregation tasks yet" in status.stdout


def test_bad_database_url_is_a_clear_error_without_the_password():
    for url in ("postgresql://agg:hunter2-secret@127.0.0.1:1/agg", "not a url hunter2-secret"):
        result = run_cli("migrate", env={settings.DATABASE_URL_VAR: url}, timeout=60)
        assert result.returncode == 1
        assert "Traceback" not in result.stderr
        assert "hunter2-secret" not in result.stderr + result.stdout
        assert result.stderr.startswith("Error: ")


def test_database_without_migrations_is_refused(make_database):
    url = make_database()
    result = run_cli("seed-demo", "--days", "1", env={settings.DATABASE_URL_VAR: url})
    assert result.returncode == 1
    assert "agg-pipeline migrate" in result.stderr


def test_seed_demo_rejects_unsafe_symbols(make_database):
    result = run_cli("seed-demo", "--symbols", "EUR|USD", env={
        settings.DATABASE_URL_VAR: make_database()})
    assert result.returncode == 2
    assert "EUR|USD" in result.stderr
