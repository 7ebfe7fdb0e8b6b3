"""Connection URLs and connections to the market-data database.

URLs carry secrets, so every message that mentions a server goes through `describe_url`,
which keeps only host, port and database name.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import quote, urlencode

import psycopg
from psycopg import conninfo

from agg_pipeline import settings

APPLICATION_NAME = "agg_pipeline"


class DatabaseConfigError(RuntimeError):
    """The database URL is unusable, or the server refused the connection."""


class DatabaseUnavailableError(DatabaseConfigError):
    """The server could not be reached or is not accepting connections yet (down, restarting,
    out of connection slots): an outage that passes, not a configuration problem."""


# libpq reports a failed connection without a SQLSTATE, so its message is all there is to
# tell an outage (retry later) from a refusal by the server (wrong password, no such
# database: retrying cannot help).
_UNAVAILABLE = re.compile(
    r"Connection refused|timeout expired|Connection timed out|Connection reset"
    r"|server closed the connection unexpectedly|No route to host|Network is unreachable"
    r"|No such file or directory"  # a Unix socket that is gone: the server is down
    r"|the database system is (starting up|shutting down|in recovery mode|not yet accepting)"
    r"|too many clients already|remaining connection slots are reserved",
    re.IGNORECASE,
)


def parse_url(url: str) -> dict[str, str]:
    """Split a libpq URL or key=value string into its parameters (clear error if malformed)."""
    try:
        params = conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        # psycopg's message can quote the string, password included: do not chain it.
        raise DatabaseConfigError(
            "the database URL is not a valid PostgreSQL connection string "
            "(expected postgresql://user:password@host:port/dbname)"
        ) from None
    return {k: str(v) for k, v in params.items() if v is not None}


def build_url(params: dict[str, str]) -> str:
    """A postgresql:// URL from libpq parameters (socket hosts go in the query string)."""
    params = dict(params)
    user = params.pop("user", "")
    password = params.pop("password", None)
    host = params.pop("host", "")
    port = params.pop("port", "")
    dbname = params.pop("dbname", "")
    netloc = ""
    if user:
        netloc = quote(user, safe="")
        if password is not None:
            netloc += ":" + quote(password, safe="")
        netloc += "@"
    if host.startswith("/"):
        params["host"] = host
    else:
        netloc += host
        if port:
            netloc += f":{port}"
    if host.startswith("/") and port:
        params["port"] = port
    query = f"?{urlencode(params)}" if params else ""
    return f"postgresql://{netloc}/{quote(dbname, safe='')}{query}"


def with_database(url: str, dbname: str) -> str:
    """The same server and credentials, another database."""
    params = parse_url(url)
    params["dbname"] = dbname
    return build_url(params)


def describe_url(url: str) -> str:
    """host:port/dbname, with no user or password: safe for logs and errors."""
    try:
        params = parse_url(url)
    except DatabaseConfigError:
        return "<invalid URL>"
    host = params.get("host", "localhost")
    port = params.get("port", "5432")
    return f"{host}:{port}/{params.get('dbname', '')}"


def connect(url: str, *, autocommit: bool = False, connect_timeout: int = 10) -> psycopg.Connection:
    """Open a connection; failures name the server but never the credentials."""
    params = parse_url(url)
    params.setdefault("application_name", APPLICATION_NAME)
    params.setdefault("connect_timeout", str(connect_timeout))
    try:
        return psycopg.connect(conninfo.make_conninfo(**params), autocommit=autocommit)
    except (psycopg.OperationalError, psycopg.ProgrammingError) as exc:  # also bad options
        message = str(exc)
        if params.get("password"):
            message = message.replace(params["password"], "***")
        unavailable = isinstance(exc, psycopg.OperationalError) and _UNAVAILABLE.search(message)
        error = DatabaseUnavailableError if unavailable else DatabaseConfigError
        raise error(
            f"cannot connect to PostgreSQL at {describe_url(url)}: {message.strip()}"
        ) from None


def market_database_url() -> str:
    """AGG_DATABASE_URL, or the embedded server's URL when it is unset (starting it if needed)."""
    url = settings.configured_database_url()
    if url is not None:
        parse_url(url)
        return url
    from agg_pipeline.db import embedded

    return embedded.ensure_server().database_url(embedded.MARKET_DATABASE)


@contextmanager
def market_connection(*, autocommit: bool = False) -> Iterator[psycopg.Connection]:
    """A connection to the configured market-data database, closed on exit."""
    conn = connect(market_database_url(), autocommit=autocommit)
    try:
        yield conn
    finally:
        conn.close()


def create_database(server_url: str, dbname: str) -> bool:
    """CREATE DATABASE if it is missing; returns True when it was created."""
    with connect(server_url, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (dbname,)).fetchone()
        if exists:
            return False
        try:
            conn.execute(
                psycopg.sql.SQL("CREATE DATABASE {}").format(psycopg.sql.Identifier(dbname))
            )
        except psycopg.errors.DuplicateDatabase:
            return False  # created by a concurrent process between the check and here
        return True


def drop_database(server_url: str, dbname: str) -> None:
    """DROP DATABASE ... WITH (FORCE): used by tests for their throwaway databases."""
    with connect(server_url, autocommit=True) as conn:
        conn.execute(
            psycopg.sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                psycopg.sql.Identifier(dbname)
            )
        )
