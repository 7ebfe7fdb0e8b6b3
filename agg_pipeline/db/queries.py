"""Named SQL statements kept as files in `sql/queries/`."""

from __future__ import annotations

from functools import cache

from psycopg import sql

from agg_pipeline import settings


@cache
def text(name: str) -> str:
    """The text of sql/queries/<name>.sql."""
    path = settings.sql_dir() / "queries" / f"{name}.sql"
    return path.read_text(encoding="utf-8")


def query(name: str, **identifiers: sql.Composable) -> sql.Composed:
    """A statement, with `{placeholders}` filled by fixed identifiers or fragments.

    Only code constants (the timeframe ladder's table names) are substituted here; every
    value a caller supplies travels as a bound parameter. Literal braces in the files are
    written `{{` and `}}`.
    """
    return sql.SQL(text(name)).format(**identifiers)
