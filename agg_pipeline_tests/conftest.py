"""Every test talks to a real PostgreSQL server.

The server is AGG_TEST_DATABASE_URL's when that is set (any database on it; tests create
their own), else the project's embedded server. Each test session creates uniquely named
databases, applies the migrations, and drops them at the end.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Callable, Iterator

import psycopg
import pytest

from agg_pipeline import settings
from agg_pipeline.db import connection, embedded, migrations

RUNTIME_ROLE = "agg_pipeline_runtime"  # created by sql/008_least_privilege.sql
# Sessions sharing a server (CI runs two at once) serialise creating and dropping that
# cluster-wide role on this key: two migrations of 008 in different databases would both
# see no role and one would fail on pg_authid's unique index.
RUNTIME_ROLE_LOCK_KEY = "agg_pipeline_tests:runtime_role"


@contextlib.contextmanager
def runtime_role_lock(server_url: str) -> Iterator[psycopg.Connection]:
    """An autocommit connection to server_url's database holding the role's advisory lock
    (advisory locks are per database, so every session takes it in the same one)."""
    with connection.connect(server_url, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(hashtextextended(%s, 0))",
                     (RUNTIME_ROLE_LOCK_KEY,))
        yield conn


@pytest.fixture(scope="session")
def server_url() -> str:
    """A URL on the test server whose credentials may create and drop databases, on which
    the runtime role exists (so no migration of this session creates it concurrently with
    another session's)."""
    configured = os.environ.get(settings.TEST_DATABASE_URL_VAR, "").strip()
    url = configured or embedded.ensure_server().server_url
    with runtime_role_lock(url) as conn:
        if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s",
                            (RUNTIME_ROLE,)).fetchone():
            conn.execute(psycopg.sql.SQL("CREATE ROLE {} NOLOGIN").format(
                psycopg.sql.Identifier(RUNTIME_ROLE)))
    return url


def unique_name(prefix: str) -> str:
    return f"{prefix}_{os.getpid()}_{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="session")
def make_database(server_url: str) -> Iterator:
    """Factory: a fresh, empty database on the test server, dropped when the session ends."""
    created: list[str] = []

    def make(prefix: str = "agg_test") -> str:
        name = unique_name(prefix)
        connection.create_database(server_url, name)
        created.append(name)
        return connection.with_database(server_url, name)

    yield make
    for name in created:
        connection.drop_database(server_url, name)
    # the runtime role is cluster-wide: drop it once no database grants it anything (another
    # database on this server may still use it; then it stays)
    with (runtime_role_lock(server_url) as conn,
          contextlib.suppress(psycopg.errors.DependentObjectsStillExist)):
        conn.execute(psycopg.sql.SQL("DROP ROLE IF EXISTS {}").format(
                psycopg.sql.Identifier(RUNTIME_ROLE)))


@pytest.fixture(scope="session")
def runtime_login(server_url: str) -> Iterator[tuple[str, str, Callable[[], None]]]:
    """A login role that is only a member of the pipeline's least-privilege role."""
    name, password = unique_name("agg_rt"), f"pw-{uuid.uuid4().hex}"
    created = False

    def create() -> None:
        nonlocal created
        with connection.connect(server_url, autocommit=True) as conn:
            conn.execute(psycopg.sql.SQL("CREATE ROLE {} LOGIN PASSWORD {} IN ROLE {}").format(
                psycopg.sql.Identifier(name), psycopg.sql.Literal(password),
                psycopg.sql.Identifier(RUNTIME_ROLE)))
        created = True

    yield name, password, create
    with connection.connect(server_url, autocommit=True) as conn:
        if created:
            conn.execute(psycopg.sql.SQL("DROP ROLE IF EXISTS {}").format(
                psycopg.sql.Identifier(name)))


@pytest.fixture(scope="session")
def database_url(make_database, runtime_login) -> Iterator[str]:
    """The session's migrated market-data database, as its owner. AGG_DATABASE_URL points
    at it as the least-privilege pipeline role (runtime_url), so every Dagster-level test
    runs the pipeline with the rights it has in production."""
    url = make_database("agg_test")
    migrations.migrate(url)
    name, password, create = runtime_login
    create()
    runtime = connection.parse_url(url)
    runtime.update(user=name, password=password)
    previous = os.environ.get(settings.DATABASE_URL_VAR)
    os.environ[settings.DATABASE_URL_VAR] = connection.build_url(runtime)
    yield url
    if previous is None:
        os.environ.pop(settings.DATABASE_URL_VAR, None)
    else:
        os.environ[settings.DATABASE_URL_VAR] = previous


@pytest.fixture(scope="session")
def runtime_url(database_url: str) -> str:
    """The session database as the pipeline's least-privilege role."""
    return os.environ[settings.DATABASE_URL_VAR]


def empty_tables(url: str) -> None:
    """Empty every table of the database's schema but the migration ledger, and drop the
    runbook's backup tables."""
    with connection.connect(url, autocommit=True) as conn:
        tables = [psycopg.sql.Identifier(name) for (name,) in conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = current_schema() "
            "AND tablename <> 'agg_schema_migrations'").fetchall()]
        # one statement: data_bars' BEFORE TRUNCATE trigger (migration 012) records the days
        # it empties in data_agg_source_changes before any of the tables is emptied
        conn.execute(psycopg.sql.SQL("TRUNCATE {} RESTART IDENTITY CASCADE").format(
            psycopg.sql.SQL(", ").join(tables)))
        for (table,) in conn.execute("SELECT backup_table FROM v_agg_state_backups").fetchall():
            conn.execute(psycopg.sql.SQL("DROP TABLE {}").format(psycopg.sql.Identifier(table)))


@pytest.fixture
def clean_database(database_url: str) -> str:
    """The session database, emptied before the test."""
    empty_tables(database_url)
    return database_url


@pytest.fixture
def db(clean_database: str) -> Iterator[psycopg.Connection]:
    """A connection to the emptied session database (not autocommit)."""
    conn = connection.connect(clean_database)
    yield conn
    conn.close()


def pytest_terminal_summary(terminalreporter) -> None:
    from agg_pipeline_tests.reporting import LINES

    if LINES:
        terminalreporter.section("agg_pipeline figures")
        for line in LINES:
            terminalreporter.write_line(line)


@pytest.fixture
def no_defs_state_storage() -> Iterator[None]:
    """For tests that build Definitions: no "current" Dagster defs-state storage. Entering a
    Dagster instance sets it (a context variable) and leaving restores the value from before;
    an instance a test entered and did not leave (a sensor context not closed) restores it
    when it is garbage collected, possibly during a later test, to a storage whose instance is
    gone, and building Definitions then fails ("Attempted to resolve undefined DagsterInstance
    weakref"). Collected first, then cleared."""
    import gc

    from dagster._core.storage.defs_state.base import set_defs_state_storage

    gc.collect()
    with set_defs_state_storage(None):
        yield


@pytest.fixture(scope="session")
def dagster_storage_url(make_database) -> str:
    """A database for Dagster's own run/event/schedule storage (dagster-postgres)."""
    url = make_database("agg_dagster")
    embedded.tune_dagster_storage(url)
    return url


@pytest.fixture
def instance(dagster_storage_url: str, clean_database: str, tmp_path) -> Iterator:
    """A real Dagster instance on PostgreSQL storage, emptied before the test."""
    from agg_pipeline.defs.partitions import SYMBOLS_PARTITIONS_NAME, SYNTHETIC_PARTITIONS_NAME
    from agg_pipeline.engine import timeframes
    from agg_pipeline_tests.processes import storage_instance

    # every symbols partitions: all symbols, the synthetic series, each optional timeframe's
    # (a test's 30m rung included)
    names = {SYMBOLS_PARTITIONS_NAME, SYNTHETIC_PARTITIONS_NAME, "symbols_30m",
             *(f"symbols_{tf.name}" for tf in timeframes.ORDERED)}
    with storage_instance(dagster_storage_url, tmp_path) as inst:
        inst.wipe()
        for name in sorted(names):
            for key in inst.get_dynamic_partitions(name):
                inst.delete_dynamic_partition(name, key)
        yield inst
