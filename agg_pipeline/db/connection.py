"""Connection URLs and connections to the market-data database.

URLs carry secrets, so every message that mentions a server goes through `describe_url`,
which keeps only host, port and database name. A URL whose password holds an unencoded `@`
or `/` is refused before anything reads it: libpq would end the password there and take the
rest of it as host, port and database name, which error messages then print.
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


# libpq recognises these prefixes exactly (case-sensitive); anything else is key=value.
URI_PREFIXES = ("postgresql://", "postgres://")
# Shorter strings occur inside ordinary words ("p" in "supported"): masking them everywhere
# would garble messages, and a fragment that short tells nothing.
MIN_SECRET_FRAGMENT = 4
MASK = "***"
PERCENT_ENCODING_HINT = (
    "percent-encode the user name and password: @ as %40, / as %2F, : as %3A, % as %25, "
    "space as %20"
)
MALFORMED_URL = (
    "the database URL is malformed: an '@' or '/' in its user name or password would be read "
    f"as host and database name; {PERCENT_ENCODING_HINT}"
)
INVALID_URL = (
    "the database URL is not a valid PostgreSQL connection string "
    f"(expected postgresql://user:password@host:port/dbname); {PERCENT_ENCODING_HINT}"
)


def is_ambiguous_uri(url: str) -> bool:
    """True for a postgresql:// URL with an '@' that libpq would not read as the end of the
    credentials. libpq ends them at the first '@' and looks for it only before the first
    '/': a password holding an unencoded '@' or '/' spills into host, port and database."""
    prefix = next((p for p in URI_PREFIXES if url.startswith(p)), None)
    if prefix is None:
        return False
    rest = url[len(prefix):]
    at, slash = rest.find("@"), rest.find("/")
    return at >= 0 and (rest.count("@") > 1 or 0 <= slash < at)


def parse_url(url: str) -> dict[str, str]:
    """Split a libpq URL or key=value string into its parameters (clear error if malformed;
    the error names no part of the URL)."""
    if is_ambiguous_uri(url):
        raise DatabaseConfigError(MALFORMED_URL)
    try:
        params = conninfo.conninfo_to_dict(url)
    except (psycopg.ProgrammingError, UnicodeDecodeError):
        # psycopg's message can quote the string, password included: do not chain it. (A
        # percent-escape that decodes to no UTF-8, `%80`, fails in psycopg's decoding.)
        raise DatabaseConfigError(INVALID_URL) from None
    return {k: str(v) for k, v in params.items() if v is not None}


def mask_secret(message: str, secret: str | None) -> str:
    """`message` with `secret` replaced by ***: everywhere when it is MIN_SECRET_FRAGMENT
    characters or longer, else only where it stands alone (not inside a word)."""
    if not secret:
        return message
    if len(secret) >= MIN_SECRET_FRAGMENT:
        return message.replace(secret, MASK)
    return re.sub(rf"(?<!\w){re.escape(secret)}(?!\w)", MASK, message)


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


def without_driver(url: str) -> str:
    """A SQLAlchemy URL (`postgresql+psycopg2://...`, as DAGSTER_POSTGRES_URL may be) as
    libpq reads it; other strings unchanged."""
    return re.sub(r"^postgresql\+\w+://", "postgresql://", url)


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
        return "<malformed URL>" if is_ambiguous_uri(url) else "<invalid URL>"
    host = params.get("host", "localhost")
    port = params.get("port", "5432")
    return f"{host}:{port}/{params.get('dbname', '')}"


def describe_error(exc: psycopg.Error) -> str:
    """One line for a user: the server's message and hint, without the statement excerpt
    (LINE 2: ...) psycopg appends. Server messages never contain the connection's password."""
    diag = exc.diag
    text = diag.message_primary or " ".join(str(exc).split()) or type(exc).__name__
    return f"{text} ({diag.message_hint})" if diag.message_hint else text


# Every session runs in UTC whatever the server's or database's default TimeZone (SPEC
# contract 1): date_trunc, ::date and day boundaries on timestamptz follow the session zone.
# And the server gives up a pipeline client whose host is lost within ~2 minutes (idle 60 s,
# then 6 probes 10 s apart; unacknowledged data 60 s) instead of the kernel's 2 h 11 min: a
# run worker's backend, idle in its transaction, would hold the task rows' locks that long and
# its retry would wait on them. These only detect dead TCP peers, and only for our sessions.
# No JIT: the pipeline's statements are short and many, and compiling one costs ~100 ms
# (measured on Debian's PostgreSQL 15: more than the statement itself; aggregate.py).
SESSION_OPTIONS = ("-c TimeZone=UTC -c jit=off -c tcp_keepalives_idle=60 "
                   "-c tcp_keepalives_interval=10 -c tcp_keepalives_count=6 "
                   "-c tcp_user_timeout=60000")


def connect(url: str, *, autocommit: bool = False, connect_timeout: int = 10) -> psycopg.Connection:
    """Open a connection in UTC; failures name the server but never the credentials."""
    params = parse_url(url)
    params.setdefault("application_name", APPLICATION_NAME)
    params.setdefault("connect_timeout", str(connect_timeout))
    # appended, so the URL's own options stay, and ours wins a conflicting TimeZone
    params["options"] = " ".join(filter(None, [params.get("options"), SESSION_OPTIONS]))
    try:
        return psycopg.connect(conninfo.make_conninfo(**params), autocommit=autocommit)
    except (psycopg.OperationalError, psycopg.ProgrammingError) as exc:  # also bad options
        # one line (libpq adds a tab-indented hint line)
        message = " ".join(mask_secret(str(exc), params.get("password")).split())
        unavailable = isinstance(exc, psycopg.OperationalError) and _UNAVAILABLE.search(message)
        error = DatabaseUnavailableError if unavailable else DatabaseConfigError
        raise error(
            f"cannot connect to PostgreSQL at {describe_url(url)}: {message}"
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
