"""Ordered SQL migrations from `sql/NNN_*.sql`.

Each file is applied once, in its own transaction, and recorded with its SHA-256. A file
whose checksum no longer matches the record stops the run before anything is applied: an
applied migration is history and must not be edited (add a new file instead). A
session-level advisory lock serialises concurrent `migrate` calls; the second caller waits,
then finds nothing left to do.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psycopg

from agg_pipeline import settings
from agg_pipeline.db.connection import connect, describe_error

MIGRATION_FILE = re.compile(r"^(\d{3})_[a-z0-9_]+\.sql$")
# pg_advisory_lock key for migrations: any constant distinct from the per-task keys, which
# are hashes of 'agg_pipeline/<symbol>/<timeframe>'.
MIGRATION_LOCK_KEY = 0x616767_6D6967  # "agg" "mig"

LEDGER_DDL = """
CREATE TABLE IF NOT EXISTS agg_schema_migrations (
    filename   text PRIMARY KEY,
    checksum   text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


class MigrationError(RuntimeError):
    """The database's migration history and the files on disk disagree."""


class SchemaNotReadyError(MigrationError):
    """The database lacks migrations this version of agg_pipeline needs."""


@dataclass(frozen=True)
class Migration:
    filename: str
    sql: str
    checksum: str


def discover(sql_dir: Path | None = None) -> list[Migration]:
    """Migration files in apply order; other names in `sql/` are rejected, not skipped."""
    folder = sql_dir or settings.sql_dir()
    migrations = []
    for path in sorted(folder.glob("*.sql")):
        if not MIGRATION_FILE.match(path.name):
            raise MigrationError(
                f"{path.name}: migration files must be named NNN_lowercase_name.sql"
            )
        data = path.read_bytes()
        migrations.append(
            Migration(path.name, data.decode("utf-8"), hashlib.sha256(data).hexdigest())
        )
    numbers = [m.filename[:3] for m in migrations]
    duplicates = sorted({n for n in numbers if numbers.count(n) > 1})
    if duplicates:
        raise MigrationError(f"two migration files share the number(s) {', '.join(duplicates)}")
    return migrations


def _ledger_exists(conn: psycopg.Connection) -> bool:
    return conn.execute("SELECT to_regclass('agg_schema_migrations') IS NOT NULL").fetchone()[0]


def _applied(conn: psycopg.Connection) -> dict[str, str]:
    return dict(conn.execute("SELECT filename, checksum FROM agg_schema_migrations").fetchall())


def _verify(applied: dict[str, str], migrations: list[Migration]) -> None:
    on_disk = {m.filename: m for m in migrations}
    for filename, checksum in sorted(applied.items()):
        migration = on_disk.get(filename)
        if migration is None:
            raise MigrationError(
                f"migration {filename} is recorded as applied but is missing from sql/"
            )
        if migration.checksum != checksum:
            raise MigrationError(
                f"migration {filename} was changed after it was applied "
                f"(recorded sha256 {checksum[:12]}…, file now {migration.checksum[:12]}…); "
                "restore the file and put the change in a new migration"
            )


def pending(conn: psycopg.Connection, migrations: list[Migration]) -> list[Migration]:
    """The migrations not applied yet, read without DDL (so any login that may read the
    ledger can ask); MigrationError when the ledger and the files disagree."""
    if not _ledger_exists(conn):
        return list(migrations)
    applied = _applied(conn)
    _verify(applied, migrations)
    return [m for m in migrations if m.filename not in applied]


def _may_change_schema(conn: psycopg.Connection) -> bool:
    """Whether this login may create in its schema: the migrator may, the pipeline's runtime
    login (member of agg_pipeline_runtime only) may not."""
    return bool(conn.execute(
        "SELECT coalesce(has_schema_privilege(current_schema(), 'CREATE'), false)").fetchone()[0])


def _not_ready(conn: psycopg.Connection, todo: list[Migration]) -> SchemaNotReadyError:
    """What is missing and how to fix it: `agg-pipeline migrate`, as this login if it may
    change the schema, else with the migrator's URL (one line, for the CLI, a sensor tick or
    a run)."""
    if _ledger_exists(conn):
        what = f"pending migrations {', '.join(m.filename for m in todo)}"
    else:
        what = ("this database has no agg_pipeline schema (table agg_schema_migrations is "
                "missing)")
    if _may_change_schema(conn):
        return SchemaNotReadyError(f"{what}; run `agg-pipeline migrate` first")
    user = conn.execute("SELECT current_user").fetchone()[0]
    return SchemaNotReadyError(
        f"{what}; this login ({user}) may not change the schema: run `agg-pipeline migrate` "
        f"with {settings.DATABASE_URL_VAR} set to the migrator's URL first")


def _apply(conn: psycopg.Connection, migration: Migration) -> None:
    try:
        with conn.transaction():
            conn.execute(migration.sql)
            conn.execute(
                "INSERT INTO agg_schema_migrations (filename, checksum) VALUES (%s, %s)",
                (migration.filename, migration.checksum),
            )
    except psycopg.errors.InsufficientPrivilege as exc:
        raise MigrationError(
            f"migration {migration.filename} failed: {describe_error(exc)}: run `agg-pipeline "
            "migrate` as the migrator (a login that owns the schema, with CREATEROLE for "
            "migration 008)") from exc
    except psycopg.Error as exc:
        raise MigrationError(
            f"migration {migration.filename} failed: {describe_error(exc)}") from exc


def migrate(
    url: str, *, sql_dir: Path | None = None, echo: Callable[[str], None] = lambda _: None
) -> list[str]:
    """Apply pending migrations; returns the names applied (empty when up to date).

    Nothing pending: no DDL at all, so the pipeline's runtime login may run it. Something
    pending and a login that may not change the schema: SchemaNotReadyError naming them."""
    migrations = discover(sql_dir)
    with connect(url, autocommit=True) as conn:
        locked = conn.execute("SELECT pg_try_advisory_lock(%s)", (MIGRATION_LOCK_KEY,)).fetchone()
        if not locked[0]:
            echo("another process is migrating this database; waiting for it")
            conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK_KEY,))
        try:
            todo = pending(conn, migrations)
            if not todo:
                return []
            if not _may_change_schema(conn):
                raise _not_ready(conn, todo)
            conn.execute(LEDGER_DDL)
            for migration in todo:
                echo(f"applying {migration.filename}")
                _apply(conn, migration)
            return [m.filename for m in todo]
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK_KEY,))


def assert_migrated(conn: psycopg.Connection, *, sql_dir: Path | None = None) -> None:
    """Raise SchemaNotReadyError unless every migration on disk is applied, unchanged."""
    todo = pending(conn, discover(sql_dir))
    if todo:
        raise _not_ready(conn, todo)
