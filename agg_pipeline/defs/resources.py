"""The market-data database as a Dagster resource.

Imported by agg_pipeline.definitions, so by every process that loads the code location
(code server, run workers, `dagster asset materialize`): it also sets the Dagster variables
the product needs there (settings.DAGSTER_PROCESS_ENV), and says once when they were missing.
"""

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

import dagster as dg
import psycopg

from agg_pipeline import settings
from agg_pipeline.db import connection, migrations

_schema_checked: set[str] = set()


def _ensure_dagster_process_env() -> None:
    missing = settings.apply_dagster_process_env()
    if missing:
        names = ", ".join(f"{name}={settings.DAGSTER_PROCESS_ENV[name]}" for name in missing)
        logging.getLogger(__name__).warning(
            "%s missing from the environment: set for this code location and the runs it "
            "starts, but Dagster's webserver and daemon read them from their own environment "
            "and create runs too (without them a run over many partitions is many times "
            "slower); set them for every Dagster process (README, \"Configuration\")", names)


_ensure_dagster_process_env()


class MarketDatabase(dg.ConfigurableResource):
    """PostgreSQL holding the registry, source bars, derived bars and task state.

    The URL is read from AGG_DATABASE_URL at run time (never from resource config), so it
    appears in no UI page, log line or metadata. Unset: the embedded server. The resource has
    no config fields: nothing about it belongs in a launchpad (no field naming a variable
    that may not be set, no secret).
    """

    def url(self) -> str:
        configured = os.environ.get(settings.DATABASE_URL_VAR, "").strip()
        if configured:
            connection.parse_url(configured)
            return configured
        return connection.market_database_url()

    def describe(self) -> str:
        """host:port/dbname, without credentials."""
        return connection.describe_url(self.url())

    @contextmanager
    def connect(self, *, autocommit: bool = False) -> Iterator[psycopg.Connection]:
        """A connection to a migrated database (a clear error names a missing migration)."""
        url = self.url()
        conn = connection.connect(url, autocommit=autocommit)
        try:
            if url not in _schema_checked:
                migrations.assert_migrated(conn)
                if not autocommit:
                    conn.rollback()
                _schema_checked.add(url)
            yield conn
        finally:
            conn.close()
