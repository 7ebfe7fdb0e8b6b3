"""The `agg-pipeline` command line, run as a user runs it (a subprocess)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

from agg_pipeline import cli, settings
from agg_pipeline.db import connection, migrations


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: int = 300):
    return subprocess.run(
        [sys.executable, "-m", "agg_pipeline.cli", *args],
        capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})},
    )


def command_lines(help_text: str) -> list[str]:
    """The synopsis lines of the help's Commands section (indented by two spaces)."""
    section = help_text.split("\nCommands:\n", 1)[1]
    return [line[2:] for line in section.splitlines()
            if line.startswith("  ") and not line.startswith("   ")]


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


def test_help_lists_every_command_with_its_options():
    result = run_cli("--help", timeout=60)
    assert result.returncode == 0, result.stderr
    lines = command_lines(result.stdout)
    expected = []
    for name, command in cli.main.commands.items():
        subs = getattr(command, "commands", None)
        expected += [f"{name} {sub}" for sub in subs] if subs else [name]
    # a synopsis: the command's name, its ARGUMENTS (upper case), then [--options]
    names = {" ".join(word for word in line.split(" [")[0].split() if not word.isupper())
             for line in lines}
    assert names == {*expected, "./run test"}
    assert "history SYMBOL TIMEFRAME START [END] [--as-of INSTANT]" in lines
    dev_line = next(line for line in lines if line.startswith("dev "))
    assert "[--port 3000]" in dev_line and "[--no-feed]" in dev_line
    assert all(len(line) <= 100 for line in result.stdout.splitlines())


def test_run_help_says_test_exists_only_there():
    result = subprocess.run(["bash", str(settings.project_root() / "run"), "--help"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "./run test [PYTEST ARGS]" in result.stdout and "exists only here" in result.stdout
    assert "dev [--host 127.0.0.1]" in result.stdout  # then agg-pipeline's own list


def test_dev_refuses_a_port_in_use_before_starting_anything(tmp_path):
    home = tmp_path / "home"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli("dev", "--port", str(port), env={"AGG_HOME": str(home)}, timeout=120)
    assert result.returncode == 1
    assert f"127.0.0.1:{port}" in result.stderr and "--port" in result.stderr
    assert "Traceback" not in result.stderr
    assert "Serving" not in result.stdout + result.stderr
    assert not (home / "pg").exists() and not (home / "dagster_home").exists()
