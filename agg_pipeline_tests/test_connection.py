"""connection.connect: every session it opens runs in UTC (SPEC contract 1), whatever the
database's default TimeZone, and keeps the options the URL already has; it never JIT-compiles."""

from __future__ import annotations

from urllib.parse import quote

import psycopg
import pytest

from agg_pipeline.db import connection

NEW_YORK = "America/New_York"


@pytest.fixture(scope="module")
def new_york_url(make_database) -> str:
    """A database whose sessions default to New York time."""
    url = make_database("agg_tz")
    name = connection.parse_url(url)["dbname"]
    with connection.connect(url, autocommit=True) as conn:
        conn.execute(psycopg.sql.SQL("ALTER DATABASE {} SET timezone = {}").format(
            psycopg.sql.Identifier(name), psycopg.sql.Literal(NEW_YORK)))
    return url


def show(conn: psycopg.Connection, setting: str) -> str:
    return conn.execute(psycopg.sql.SQL("SHOW {}").format(psycopg.sql.Identifier(setting))
                        ).fetchone()[0]


def test_a_new_york_database_is_read_in_utc(new_york_url):
    # the database's default is in force for a plain session: the pin is what changes it
    with psycopg.connect(new_york_url) as plain:
        assert show(plain, "TimeZone") == NEW_YORK
    with connection.connect(new_york_url) as conn:
        assert show(conn, "TimeZone") == "UTC"
        # a UTC day boundary, as the engine's ::date and date_trunc compute it
        assert conn.execute("SELECT '2026-03-08 03:30:00+00'::timestamptz::date::text"
                            ).fetchone()[0] == "2026-03-08"


@pytest.mark.parametrize("form", ["url", "key=value"])
def test_the_urls_own_options_are_kept(new_york_url, form):
    options = "-c statement_timeout=4321 -c TimeZone=Asia/Tokyo"
    params = connection.parse_url(new_york_url)
    if form == "url":
        url = f"{new_york_url}{'&' if '?' in new_york_url else '?'}options={quote(options)}"
    else:
        params["options"] = options
        url = psycopg.conninfo.make_conninfo(**params)
    with connection.connect(url) as conn:
        assert show(conn, "statement_timeout") == "4321ms"
        assert show(conn, "TimeZone") == "UTC"  # contract 1 wins over the URL's own zone


def test_sessions_do_not_compile_statements(new_york_url):
    # JIT would compile each of the pipeline's statements (~100 ms on a server with LLVM,
    # more than most of them take): the pipeline's sessions turn it off
    with psycopg.connect(new_york_url) as plain:
        plain.execute("SET jit = on")
        assert show(plain, "jit") == "on"
    with connection.connect(new_york_url) as conn:
        assert show(conn, "jit") == "off"
