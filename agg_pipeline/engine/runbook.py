"""The deployment runbook (seed 000) as functions: pre-flight, backup, cursor reset with
post-reset validation, restore, range rebuild, backup pruning. Each runs in one
transaction and reports what it changed. Backup DDL runs in the SECURITY DEFINER functions
of sql/008, so the pipeline's own role needs no DDL rights."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import psycopg
from psycopg.rows import dict_row

from agg_pipeline.db import migrations, queries
from agg_pipeline.engine import aggregate as engine
from agg_pipeline.engine import timeframes

BACKUP_PREFIX = "data_agg_state_backup_"  # sql/008 validates and builds the table names


class RunbookError(RuntimeError):
    """An operator action refused: nothing was changed."""


def _rows(conn: psycopg.Connection, statement, params: dict | None = None) -> list[dict]:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(statement, params or {}).fetchall()


def preflight(conn: psycopg.Connection) -> dict[str, list[dict]]:
    """Seed 000's pre-flight questions answered: schema, tasks against source, statuses."""
    applied = {r["filename"] for r in _rows(conn, "SELECT filename FROM agg_schema_migrations")}
    schema = [{"item": f"migration {m.filename}", "present": m.filename in applied}
              for m in migrations.discover()]
    schema += _rows(conn, queries.query("preflight_schema"))
    tasks = _rows(conn, queries.query("preflight_tasks"))
    statuses: dict[str, int] = {}
    for task in tasks:
        statuses[task["status"]] = statuses.get(task["status"], 0) + 1
    conn.rollback()
    return {"schema": schema, "tasks": tasks,
            "status_counts": [{"status": k, "tasks": v} for k, v in sorted(statuses.items())]}


@contextmanager
def _refusals() -> Iterator[None]:
    """The runbook functions' own refusals (bad names, missing tables) become RunbookError."""
    try:
        yield
    except (psycopg.errors.InvalidName, psycopg.errors.DuplicateTable,
            psycopg.errors.UndefinedTable, psycopg.errors.UndefinedColumn) as exc:
        raise RunbookError(exc.diag.message_primary or str(exc)) from None


@dataclass(frozen=True)
class BackupResult:
    table: str
    rows: int
    created: bool  # False: an identical backup of that name existed already


def backup_agg_state(conn: psycopg.Connection, name: str | None = None,
                     now: datetime | None = None) -> BackupResult:
    """CREATE TABLE <name> AS SELECT * FROM data_agg_state (default name: UTC timestamp)."""
    now = now or datetime.now(UTC)
    name = name or f"{BACKUP_PREFIX}{now:%Y%m%dt%H%M%Sz}"
    with _refusals(), conn.transaction():
        row = conn.execute("SELECT * FROM agg_backup_state(%s)", (name,)).fetchone()
    return BackupResult(*row)


@dataclass(frozen=True)
class ResetResult:
    changed: list[dict]  # symbol, timeframe, old_cursor, new_cursor
    dry_run: bool


def reset_cursors(conn: psycopg.Connection, *, symbols: list[str] | None = None,
                  timeframes_: list[str] | None = None, dry_run: bool = False) -> ResetResult:
    """Reset cursors of the selection in one transaction; refuse (roll back) if afterwards
    any task's cursor, selected or not, is NULL or ahead of its source."""
    with conn.transaction(force_rollback=dry_run):
        changed = _rows(conn, queries.query("reset_cursors"),
                        {"symbols": symbols or None, "timeframes": timeframes_ or None})
        ahead = _rows(conn, queries.query("cursors_ahead"))
        if ahead:
            listed = ", ".join(f"{r['canonical_symbol']}/{r['timeframe']} ({r['cursor_status']})"
                               for r in ahead)
            raise RunbookError(f"post-reset validation failed, nothing committed: {listed}")
    return ResetResult(changed, dry_run)


def restore_agg_state(conn: psycopg.Connection, backup: str) -> dict[str, int]:
    """Make data_agg_state equal to the backup table (every column, updated_at included)."""
    with _refusals(), conn.transaction():
        restored, removed = conn.execute("SELECT * FROM agg_restore_state(%s)",
                                         (backup,)).fetchone()
    return {"rows_restored": restored, "rows_removed": removed}


def rebuild_range(conn: psycopg.Connection, symbols: list[str], start: datetime, end: datetime,
                  timeframe_names: list[str] | None = None, *,
                  run_id: str | None = None) -> list[engine.AggregationResult]:
    """Soft-delete and recompute [start, end) with a new derivation_version, each timeframe
    after its source (ladder order); the replaced versions keep `run_id`."""
    chosen = timeframe_names or [tf.name for tf in timeframes.ORDERED]
    for name in chosen:
        timeframes.get(name)
    results = []
    for tf in timeframes.ORDERED:
        if tf.name not in chosen:
            continue
        for symbol in symbols:
            exists = conn.execute("SELECT 1 FROM data_agg_state WHERE canonical_symbol = %s "
                                  "AND timeframe = %s", (symbol, tf.name)).fetchone()
            if exists is None and timeframe_names is None:
                continue  # optional timeframe this symbol does not have
            results.append(engine.rebuild_range(conn, symbol, tf.name, start, end,
                                                run_id=run_id))
            conn.commit()
    return results


def prune_backups(conn: psycopg.Connection, older_than: timedelta,
                  now: datetime | None = None) -> list[str]:
    """Drop timestamped backups older than `older_than`; named backups are kept."""
    with conn.transaction():
        rows = conn.execute("SELECT agg_prune_backups(%s, %s)",
                            (older_than, now or datetime.now(UTC))).fetchall()
    return [r[0] for r in rows]
