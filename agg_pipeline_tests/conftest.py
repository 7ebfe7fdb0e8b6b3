"""Every test talks to a real PostgreSQL server.

The server is AGG_TEST_DATABASE_URL's when that is set (any database on it; tests create
their own), else the project's embedded server. Each test session creates uniquely named
databases, applies the migrations, and drops them at the end.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import psycopg
import pytest

from agg_pipeline import settings
from agg_pipeline.db import connection, embedded, migrations

MARKET_TABLES = (
    "data_agg_source_days, data_agg_state, derived_data_bars, data_bars, core_asset_registry_all"
)


@pytest.fixture(scope="session")
def server_url() -> str:
    """A URL on the test server whose credentials may create and drop databases."""
    configured = os.environ.get(settings.TEST_DATABASE_URL_VAR, "").strip()
    if configured:
        return configured
    return embedded.ensure_server().server_url


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


@pytest.fixture(scope="session")
def database_url(make_database) -> Iterator[str]:
    """The session's migrated market-data database; AGG_DATABASE_URL points at it."""
    url = make_database("agg_test")
    migrations.migrate(url)
    previous = os.environ.get(settings.DATABASE_URL_VAR)
    os.environ[settings.DATABASE_URL_VAR] = url
    yield url
    if previous is None:
        os.environ.pop(settings.DATABASE_URL_VAR, None)
    else:
        os.environ[settings.DATABASE_URL_VAR] = previous


@pytest.fixture
def clean_database(database_url: str) -> str:
    """The session database with every table emptied (and runbook backups dropped) before
    the test."""
    with connection.connect(database_url, autocommit=True) as conn:
        conn.execute(f"TRUNCATE {MARKET_TABLES} RESTART IDENTITY CASCADE")
        for (table,) in conn.execute("SELECT backup_table FROM v_agg_state_backups").fetchall():
            conn.execute(psycopg.sql.SQL("DROP TABLE {}").format(psycopg.sql.Identifier(table)))
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


@pytest.fixture(scope="session")
def dagster_storage_url(make_database) -> str:
    """A database for Dagster's own run/event/schedule storage (dagster-postgres)."""
    return make_database("agg_dagster")


@pytest.fixture
def instance(dagster_storage_url: str, clean_database: str, tmp_path) -> Iterator:
    """A real Dagster instance on PostgreSQL storage, emptied before the test."""
    from agg_pipeline.defs.partitions import SYMBOLS_PARTITIONS_NAME
    from agg_pipeline_tests.processes import storage_instance

    with storage_instance(dagster_storage_url, tmp_path) as inst:
        inst.wipe()
        for key in inst.get_dynamic_partitions(SYMBOLS_PARTITIONS_NAME):
            inst.delete_dynamic_partition(SYMBOLS_PARTITIONS_NAME, key)
        yield inst
