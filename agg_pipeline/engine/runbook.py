"""The deployment runbook (seed 000) as functions: pre-flight, backup, cursor reset with
post-reset validation, restore, range rebuild, backup pruning. Each runs in one
transaction and reports what it changed."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from agg_pipeline.db import migrations, queries
from agg_pipeline.engine import aggregate as engine
from agg_pipeline.engine import timeframes

BACKUP_PREFIX = "data_agg_state_backup_"
BACKUP_NAME = re.compile(r"^data_agg_state_backup_[a-z0-9_]{1,40}$")
TIMESTAMPED_BACKUP = re.compile(r"^data_agg_state_backup_(\d{8}t\d{6}z)$")


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


def validate_backup_name(name: str) -> str:
    if not BACKUP_NAME.match(name or ""):
        raise RunbookError(
            f"backup table name {name!r} must match {BACKUP_NAME.pattern} (lowercase letters, "
            "digits and underscores after the prefix)")
    return name


def _backup_exists(conn: psycopg.Connection, name: str) -> bool:
    return conn.execute("SELECT to_regclass(%s) IS NOT NULL", (name,)).fetchone()[0]


@dataclass(frozen=True)
class BackupResult:
    table: str
    rows: int
    created: bool  # False: an identical backup of that name existed already


def backup_agg_state(conn: psycopg.Connection, name: str | None = None,
                     now: datetime | None = None) -> BackupResult:
    """CREATE TABLE <name> AS SELECT * FROM data_agg_state (default name: UTC timestamp)."""
    now = now or datetime.now(UTC)
    name = validate_backup_name(name or f"{BACKUP_PREFIX}{now:%Y%m%dt%H%M%Sz}")
    table = sql.Identifier(name)
    with conn.transaction():
        if _backup_exists(conn, name):
            differs = conn.execute(sql.SQL(
                "SELECT EXISTS (SELECT * FROM data_agg_state EXCEPT SELECT * FROM {t}) OR "
                "EXISTS (SELECT * FROM {t} EXCEPT SELECT * FROM data_agg_state)").format(
                    t=table)).fetchone()[0]
            if differs:
                raise RunbookError(f"backup {name} exists with different contents; "
                                   "choose another name")
            rows = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(table)).fetchone()[0]
            return BackupResult(name, rows, created=False)
        conn.execute(sql.SQL("CREATE TABLE {} AS SELECT * FROM data_agg_state").format(table))
        rows = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(table)).fetchone()[0]
        conn.execute(sql.SQL("COMMENT ON TABLE {} IS {}").format(
            table, sql.Literal(f"backup of data_agg_state taken {now.isoformat()}, {rows} rows")))
    return BackupResult(name, rows, created=True)


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
    validate_backup_name(backup)
    with conn.transaction():
        if not _backup_exists(conn, backup):
            raise RunbookError(f"backup table {backup} does not exist")
        live = [r[0] for r in conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = "
            "current_schema() AND table_name = 'data_agg_state' ORDER BY ordinal_position")]
        saved = {r[0] for r in conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = "
            "current_schema() AND table_name = %s", (backup,))}
        missing = [c for c in live if c not in saved]
        if missing:
            raise RunbookError(f"backup {backup} lacks columns {', '.join(missing)}")
        columns = sql.SQL(", ").join(sql.Identifier(c) for c in live)
        excluded = sql.SQL(", ").join(sql.SQL("excluded.{}").format(sql.Identifier(c))
                                      for c in live)
        current = sql.SQL(", ").join(sql.SQL("s.{}").format(sql.Identifier(c)) for c in live)
        counts = conn.execute(queries.query(
            "restore_agg_state", columns=columns, excluded=excluded, current=current,
            backup=sql.Identifier(backup))).fetchone()
    return {"rows_restored": counts[0], "rows_removed": counts[1]}


def rebuild_range(conn: psycopg.Connection, symbols: list[str], start: datetime, end: datetime,
                  timeframe_names: list[str] | None = None) -> list[engine.AggregationResult]:
    """Soft-delete and recompute [start, end) with a new derivation_version, each timeframe
    after its source (ladder order)."""
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
            results.append(engine.rebuild_range(conn, symbol, tf.name, start, end))
            conn.commit()
    return results


def prune_backups(conn: psycopg.Connection, older_than: timedelta,
                  now: datetime | None = None) -> list[str]:
    """Drop timestamped backups older than `older_than`; named backups are kept."""
    now = now or datetime.now(UTC)
    dropped = []
    with conn.transaction():
        for (table,) in conn.execute("SELECT backup_table FROM v_agg_state_backups").fetchall():
            match = TIMESTAMPED_BACKUP.match(table)
            if not match:
                continue
            taken = datetime.strptime(match.group(1), "%Y%m%dt%H%M%Sz").replace(tzinfo=UTC)
            if now - taken > older_than:
                conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(table)))
                dropped.append(table)
    return dropped
