"""The market-data database as a Dagster resource."""


import os
from collections.abc import Iterator
from contextlib import contextmanager

import dagster as dg
import psycopg

from agg_pipeline import settings
from agg_pipeline.db import connection, migrations

_schema_checked: set[str] = set()


class MarketDatabase(dg.ConfigurableResource):
    """PostgreSQL holding the registry, source bars, derived bars and task state.

    The URL is read from an environment variable at run time (never from resource config),
    so it appears in no UI page, log line or metadata. Unset: the embedded server.
    """

    url_env_var: str = settings.DATABASE_URL_VAR

    def url(self) -> str:
        configured = os.environ.get(self.url_env_var, "").strip()
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
