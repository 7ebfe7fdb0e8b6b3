"""Least privilege: the pipeline's role reads sources, writes derived bars and task state,
and nothing more. These tests fail if a grant is widened."""

import subprocess
from datetime import timedelta

import psycopg
import pytest

from agg_pipeline import settings
from agg_pipeline.db import connection, embedded, migrations
from agg_pipeline.defs.resources import MarketDatabase
from agg_pipeline_tests.helpers import T0, add_symbol, insert_bars, minute_bars, sync, wait_for
from agg_pipeline_tests.processes import free_port, start_dev
from agg_pipeline_tests.test_cli import run_cli

FORBIDDEN = [
    ("DROP TABLE derived_data_bars", psycopg.errors.InsufficientPrivilege),
    ("ALTER TABLE data_agg_state ADD COLUMN x int", psycopg.errors.InsufficientPrivilege),
    ("TRUNCATE data_bars", psycopg.errors.InsufficientPrivilege),
    ("DELETE FROM data_bars", psycopg.errors.InsufficientPrivilege),
    ("DELETE FROM derived_data_bars", psycopg.errors.InsufficientPrivilege),
    ("DELETE FROM data_agg_state", psycopg.errors.InsufficientPrivilege),
    ("UPDATE data_bars SET close = 1", psycopg.errors.InsufficientPrivilege),
    ("INSERT INTO core_asset_registry_all (canonical_symbol) VALUES ('X')",
     psycopg.errors.InsufficientPrivilege),
    ("UPDATE core_asset_registry_all SET active = false", psycopg.errors.InsufficientPrivilege),
    ("CREATE TABLE sneaky (x int)", psycopg.errors.InsufficientPrivilege),
    ("DROP VIEW v_aggregation_frontier_health", psycopg.errors.InsufficientPrivilege),
    ("CREATE OR REPLACE FUNCTION agg_bar_is_valid(double precision, double precision, "
     "double precision, double precision, double precision, double precision, integer, "
     "timestamptz, interval) RETURNS boolean LANGUAGE sql AS 'SELECT true'",
     psycopg.errors.InsufficientPrivilege),
]


@pytest.fixture
def as_runtime(db, runtime_url):
    add_symbol(db, "EURUSD")
    insert_bars(db, "EURUSD", minute_bars(T0, 60))
    sync(db)
    db.commit()
    with MarketDatabase().connect() as conn:  # what every asset, check and sensor uses
        yield conn


def test_pipeline_connects_as_the_runtime_role_only(as_runtime, runtime_url):
    user, is_super, member = as_runtime.execute(
        "SELECT current_user, usesuper, pg_has_role(current_user, 'agg_pipeline_runtime', "
        "'MEMBER') FROM pg_user WHERE usename = current_user").fetchone()
    assert user == connection.parse_url(runtime_url)["user"]
    assert not is_super and member


@pytest.mark.parametrize(("statement", "error"), FORBIDDEN, ids=[s[:40] for s, _ in FORBIDDEN])
def test_runtime_role_cannot(as_runtime, statement, error):
    with pytest.raises(error):
        as_runtime.execute(statement)
    as_runtime.rollback()


def test_runtime_role_can_do_its_job(as_runtime):
    from agg_pipeline.engine import aggregate, runbook

    result = aggregate.aggregate(as_runtime, "EURUSD", "5m", T0, T0 + timedelta(hours=1),
                                 now=T0 + timedelta(days=1))
    as_runtime.commit()
    assert result.bars_inserted == 12
    backup = runbook.backup_agg_state(as_runtime)
    assert backup.created and backup.rows == 2
    assert runbook.restore_agg_state(as_runtime, backup.table) == {"rows_restored": 0,
                                                                   "rows_removed": 0}


def test_definer_functions_have_a_fixed_search_path_and_validate_names(as_runtime):
    rows = as_runtime.execute(
        "SELECT proname, prosecdef, proconfig FROM pg_proc WHERE proname IN "
        "('agg_backup_state', 'agg_restore_state', 'agg_prune_backups') ORDER BY 1").fetchall()
    assert len(rows) == 3
    for name, definer, config in rows:
        assert definer, name
        assert any(c.startswith("search_path=") and c.endswith("pg_temp") for c in config), name
    with pytest.raises(psycopg.errors.InvalidName):
        as_runtime.execute("SELECT agg_backup_state('data_agg_state_backup_x; DROP TABLE "
                           "data_bars')")
    as_runtime.rollback()
    with pytest.raises(psycopg.errors.InvalidName):
        as_runtime.execute("SELECT agg_restore_state('data_bars')")
    as_runtime.rollback()


# ----------------------------------------------- the README's commands, as the runtime login

def as_login(url: str, runtime_url: str) -> str:
    """`url`'s database, connected as the runtime login of `runtime_url`."""
    params = connection.parse_url(runtime_url)
    params["dbname"] = connection.parse_url(url)["dbname"]
    return connection.build_url(params)


def one_error_line(result: subprocess.CompletedProcess) -> str:
    """The CLI failed with exactly one line on stderr (no traceback); returns it."""
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    [line] = result.stderr.splitlines()
    assert line.startswith("Error: ")
    return line


HISTORY = ("history", "EURUSD", "5m", "2025-07-07T00:00Z", "2025-07-07T01:00Z")


def test_runtime_login_runs_the_readmes_commands(runtime_url, database_url):
    """migrate with nothing pending says so (no DDL), status and history work."""
    env = {settings.DATABASE_URL_VAR: runtime_url}
    migrate = run_cli("migrate", env=env)
    assert (migrate.returncode, migrate.stderr) == (0, ""), migrate.stderr
    assert migrate.stdout.endswith("is up to date\n")
    for args in (("status",), HISTORY):
        result = run_cli(*args, env=env)
        assert (result.returncode, result.stderr) == (0, ""), (args, result.stderr)


def test_runtime_login_cannot_seed_and_is_told_so_in_one_line(runtime_url, database_url):
    line = one_error_line(run_cli("seed-demo", "--days", "1",
                                  env={settings.DATABASE_URL_VAR: runtime_url}))
    assert "permission denied for table core_asset_registry_all" in line
    assert "migrator's URL" in line


@pytest.fixture(scope="module")
def not_migrated(make_database, tmp_path_factory) -> dict[str, tuple[str, str]]:
    """Databases the runtime login meets before the migrator has run the latest migrations:
    name -> (URL as owner, what the error must name)."""
    partial = make_database("agg_pending")
    sql_dir = tmp_path_factory.mktemp("sql")
    *applied, last = migrations.discover()
    for migration in applied:
        (sql_dir / migration.filename).write_text(migration.sql)
    migrations.migrate(partial, sql_dir=sql_dir)
    return {"pending": (partial, f"pending migrations {last.filename}"),
            "empty": (make_database("agg_unmigrated"), "has no agg_pipeline schema")}


def ledger(url: str) -> list[str]:
    with connection.connect(url) as conn:
        if conn.execute("SELECT to_regclass('agg_schema_migrations')").fetchone()[0] is None:
            return []
        return [r[0] for r in conn.execute("SELECT filename FROM agg_schema_migrations")]


@pytest.mark.parametrize("state", ["pending", "empty"])
def test_runtime_login_is_told_to_migrate_as_the_migrator(runtime_url, not_migrated, state,
                                                          dagster_storage_url, tmp_path):
    """Read-only: the runtime login's commands find what is pending without DDL and say, in
    one line, to run `agg-pipeline migrate` with the migrator's URL; nothing changes."""
    owner_url, what = not_migrated[state]
    before = ledger(owner_url)
    user = connection.parse_url(runtime_url)["user"]
    env = {settings.DATABASE_URL_VAR: as_login(owner_url, runtime_url),
           settings.DAGSTER_STORAGE_URL_VAR: dagster_storage_url,
           settings.HOME_VAR: str(tmp_path / "home")}
    for args in (("migrate",), ("status",), HISTORY,
                 ("dev", "--no-demo", "--port", str(free_port()))):
        line = one_error_line(run_cli(*args, env=env))
        assert what in line, (args, line)
        assert (f"this login ({user}) may not change the schema: run `agg-pipeline migrate` "
                f"with {settings.DATABASE_URL_VAR} set to the migrator's URL") in line, args
    assert ledger(owner_url) == before
    assert not (tmp_path / "home" / "dagster_home").exists()  # dev stopped before Dagster


@pytest.mark.daemon
def test_runtime_login_runs_dev_no_demo(make_database, runtime_url, tmp_path):
    """README, "Point it at an existing database": after `migrate` as the migrator, `dev
    --no-demo` as the runtime login comes up, syncs the registry and serves the UI."""
    owner_url = make_database("agg_rtdev")
    migrations.migrate(owner_url)
    with connection.connect(owner_url) as conn:
        add_symbol(conn, "EURUSD")
        insert_bars(conn, "EURUSD", minute_bars(T0, 60))
        conn.commit()
    storage = make_database("agg_rtdag")
    embedded.tune_dagster_storage(storage)
    dev = start_dev(tmp_path / "home", "--no-demo", env={
        settings.DATABASE_URL_VAR: as_login(owner_url, runtime_url),
        settings.DAGSTER_STORAGE_URL_VAR: storage})
    try:
        dev.wait_until_loaded()
        log = wait_for(lambda: "agg-pipeline dev is up" in dev.log() and dev.log(), 60,
                       "the start-up summary", dev.log)
        assert "  symbols     1 symbol: EURUSD  (--no-demo)" in log
        assert "(0 migration(s) applied)" in log
        assert "Traceback" not in log and "permission denied" not in log
    finally:
        dev.stop()
    assert dev.process.returncode == 0, dev.log()
    with connection.connect(owner_url) as conn:  # the registry sync ran as the runtime login
        tasks = conn.execute("SELECT timeframe FROM data_agg_state ORDER BY 1").fetchall()
    assert [t[0] for t in tasks] == ["1h", "5m"]
