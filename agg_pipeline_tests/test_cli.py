"""The `agg-pipeline` command line, run as a user runs it (a subprocess)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import click
import pytest

from agg_pipeline import cli, settings
from agg_pipeline.db import connection, migrations
from agg_pipeline_tests.processes import free_port


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
    assert "history SYMBOL TIMEFRAME START [END] [--as-of INSTANT] [--wide]" in lines
    assert "backfill SYMBOL[,SYMBOL...] FIRST_DAY LAST_DAY [--timeframes 5m,1h]" in lines
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


def leaf_commands(group: click.Group = cli.main, path: str = "") -> dict[str, click.Command]:
    found = {}
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            found.update(leaf_commands(command, f"{path}{name} "))
        else:
            found[f"{path}{name}"] = command
    return found


def test_every_command_turns_expected_failures_into_one_line():
    unwrapped = [name for name, command in leaf_commands().items()
                 if not getattr(command.callback, "cleans_errors", False)]
    assert not unwrapped


def single_error_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    [line] = result.stderr.splitlines()
    assert line.startswith("Error: ")
    return line


UNREACHABLE = "postgresql://agg:hunter2-secret@127.0.0.1:1/markets"


def test_an_unreachable_database_is_one_line_for_every_command(tmp_path):
    commands = [("migrate",), ("status",), ("seed-demo", "--days", "1"),
                ("history", "EURUSD", "5m", "2025-07-07T00:00Z"),
                ("backfill", "EURUSD", "2025-07-07", "2025-07-07"),
                ("dev", "--no-demo", "--port", "1")]
    for args in commands:
        env = {settings.DATABASE_URL_VAR: UNREACHABLE, settings.HOME_VAR: str(tmp_path),
               settings.DAGSTER_STORAGE_URL_VAR: UNREACHABLE.replace("markets", "dagster")}
        if args[0] == "dev":  # its UI port must be free to get as far as the databases
            args = (*args[:-1], str(free_port()))
        line = single_error_line(run_cli(*args, env=env, timeout=120))
        assert "cannot connect to PostgreSQL at 127.0.0.1:1/" in line, (args, line)
        assert "Connection refused" in line and "hunter2" not in line, (args, line)


@pytest.mark.parametrize(("var", "value"), [
    (settings.ENVIRONMENT_VAR, "staging"),
    (settings.START_VAR, "yesterday"),
    (settings.START_VAR, "2025-07-01T06:00:00+00:00"),
    (settings.TIME_PARTITION_VAR, "week"),
    (settings.FRESHNESS_CRON_VAR, "every five minutes"),
    (settings.MAX_RUNS_PER_TICK_VAR, "0"),
])
def test_bad_configuration_stops_dev_before_it_starts_anything(tmp_path, var, value):
    home = tmp_path / "home"
    line = single_error_line(run_cli("dev", "--port", str(free_port()),
                                     env={var: value, settings.HOME_VAR: str(home)}))
    assert f"{var}={value!r}" in line
    assert not home.exists()  # no embedded server, no Dagster home


def test_every_bad_setting_is_named_at_once(tmp_path):
    line = single_error_line(run_cli("dev", env={
        settings.ENVIRONMENT_VAR: "staging", settings.TIME_PARTITION_VAR: "week",
        settings.HOME_VAR: str(tmp_path)}))
    assert "AGG_ENV='staging'" in line and "AGG_TIME_PARTITION='week'" in line


@pytest.mark.parametrize(("storage", "expected"), [
    ("postgresql://dagster:pa@ss/word@127.0.0.1:5432/dagster",
     f"Error: {settings.DAGSTER_STORAGE_URL_VAR}: {connection.MALFORMED_URL}"),
    ("postgresql+psycopg2://dagster:hunter2-secret@127.0.0.1:1/dagster",
     f"Error: {settings.DAGSTER_STORAGE_URL_VAR}: cannot connect to PostgreSQL at "
     "127.0.0.1:1/dagster: "),
])
def test_dev_checks_dagsters_storage_url_first(tmp_path, storage, expected):
    """Before dev migrates or starts Dagster (whose SQLAlchemy would quote a mis-parsed
    password in its own traceback)."""
    line = single_error_line(run_cli("dev", "--port", str(free_port()), env={
        settings.DATABASE_URL_VAR: UNREACHABLE, settings.DAGSTER_STORAGE_URL_VAR: storage,
        settings.HOME_VAR: str(tmp_path)}))
    assert line.startswith(expected)
    assert "hunter2" not in line and "word@" not in line and "ss/" not in line


def test_the_start_up_summary_names_a_few_symbols_and_counts_the_rest(monkeypatch):
    symbols = [f"{a}{b}{c}" for a in "ABCDEFGHIJ" for b in "ABCDEFGHIJ" for c in "ABCDEFGHIJ"]
    monkeypatch.setenv(settings.DAGSTER_STORAGE_URL_VAR, "postgresql://d@127.0.0.1:5432/dag")
    summary = cli._summary("http://127.0.0.1:3000", "postgresql://m@127.0.0.1:5432/market",
                           symbols, None, False, True, False, 12.0)
    [line] = [line for line in summary.splitlines() if line.startswith("  symbols")]
    assert line.startswith("  symbols     1000 symbols: AAA, AAB, AAC, ")
    shown = line.split(": ", 1)[1].split(", ...")[0].split(", ")
    assert line.endswith(f", ... (+{1000 - len(shown)} more)  (--no-demo)")
    assert shown == symbols[:len(shown)] and len(shown) >= 5
    assert all(len(line) <= 100 for line in summary.splitlines())
    assert cli._symbols_text(["EURUSD"]) == "1 symbol: EURUSD"
    assert cli._symbols_text([]) == "none in the registry yet"
    assert cli._symbols_text(["A" * 80, "B"]) == f"2 symbols: {'A' * 80}, ... (+1 more)"
    demo = ["DXY", "EURUSD", "GBPUSD", "USDCAD", "USDCHF", "USDJPY", "USDSEK", "XAUUSD"]
    assert cli._symbols_text(demo) == f"8 symbols: {', '.join(demo)}"


def test_per_item_log_lines_are_capped_with_a_count():
    """Issue 21: a tick or command over 1,000 symbols logs a few lines and a count, not
    1,000 lines (schedule, late-data sensor, dev's registry sync)."""
    from agg_pipeline.listing import LOG_LINES, capped

    lines = [f"task {i}" for i in range(1000)]
    assert capped(lines, "tasks not scheduled") == [
        *lines[:LOG_LINES], f"... and {1000 - LOG_LINES} more tasks not scheduled"]
    assert capped(lines[:LOG_LINES], "tasks") == lines[:LOG_LINES]
    assert capped([], "tasks") == []
