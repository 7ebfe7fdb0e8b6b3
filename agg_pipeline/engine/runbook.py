"""The deployment runbook (seed 000) as functions: pre-flight, backup, cursor reset with
post-reset validation, restore, range rebuild, backup pruning, and the seeds' legacy
clean-up (seed 004's "Phase 9") with its undo. Each runs in one transaction and reports
what it changed. Backup DDL runs in the SECURITY DEFINER functions of sql/008, so the
pipeline's own role needs no DDL rights."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import psycopg
from psycopg.rows import dict_row

from agg_pipeline.db import migrations, queries
from agg_pipeline.engine import aggregate as engine
from agg_pipeline.engine import health, timeframes, windows
from agg_pipeline.engine.reasons import Revision

BACKUP_PREFIX = "data_agg_state_backup_"  # sql/008 validates and builds the table names
# prune_backups' bound: backups are a deployment's safety net, kept days, not decades; a
# larger value is a slip (and 1e308 days overflows any date arithmetic)
MAX_PRUNE_DAYS = 3650


class RunbookError(RuntimeError):
    """An operator action refused: nothing was changed."""


def _rows(conn: psycopg.Connection, statement, params: dict | None = None) -> list[dict]:
    """Rows with their instants in UTC (reports show them as UTC whatever the session's zone)."""
    with conn.cursor(row_factory=dict_row) as cur:
        return [windows.utc_values(row) for row in cur.execute(statement, params or {})]


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


def _listed(names: Sequence[str]) -> str:
    return ", ".join(repr(name) for name in names)


def check_selection(conn: psycopg.Connection, symbols: Sequence[str],
                    timeframe_names: Sequence[str]) -> dict[str, dict]:
    """Refuse (RunbookError, before anything changes) a selection naming what does not
    exist, which would otherwise be a green run doing nothing (or less than it was asked):
    a timeframe outside the ladder, a symbol without tasks (not in the registry, or not
    synced), a named timeframe no task has, a named symbol x named timeframe without a task.
    Returns each named symbol's row: its task `timeframes` and those with `null_cursors`."""
    unknown = sorted({name for name in timeframe_names if name not in timeframes.TIMEFRAMES})
    if unknown:
        raise RunbookError(f"unknown timeframe(s) {_listed(unknown)}: the ladder has "
                           f"{', '.join(tf.name for tf in timeframes.ORDERED)}; nothing changed")
    found = {r["symbol"]: r for r in _rows(conn, queries.query("runbook_symbols"),
                                           {"symbols": list(dict.fromkeys(symbols))})}
    unregistered = [s for s, r in found.items() if not r["registered"]]
    unsynced = [s for s, r in found.items() if r["registered"] and not r["timeframes"]]
    if unregistered or unsynced:
        parts = ([f"not in the registry: {_listed(unregistered)}"] if unregistered else [])
        parts += ([f"in the registry but without tasks (not active in this environment, or "
                   f"not synced yet): {_listed(unsynced)}"] if unsynced else [])
        raise RunbookError(f"unknown symbol(s), {'; '.join(parts)}; nothing changed")
    names = list(dict.fromkeys(timeframe_names))
    if names and not symbols:
        have = {r["timeframe"] for r in _rows(conn, queries.query("runbook_timeframes"),
                                              {"timeframes": names})}
        if missing := [name for name in names if name not in have]:
            raise RunbookError(f"no task has timeframe(s) {_listed(missing)}; nothing changed")
    pairs = [f"{s}/{tf}" for s, r in found.items() for tf in names if tf not in r["timeframes"]]
    if pairs:
        raise RunbookError(f"no such task(s): {', '.join(pairs)}; nothing changed")
    return found


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
    """Reset cursors of the selection in one transaction; refuse (roll back) a selection
    naming an unknown symbol or timeframe, and the result if afterwards any task's cursor,
    selected or not, is NULL or ahead of its source."""
    with conn.transaction(force_rollback=dry_run):
        check_selection(conn, symbols or [], timeframes_ or [])
        ends = [{"canonical_symbol": r["canonical_symbol"], "timeframe": r["timeframe"],
                 "frontier_window_end": r["frontier_window_end"].isoformat()}
                for r in _calendar_rows(conn) if r["source_frontier_ts"] is not None]
        changed = _rows(conn, queries.query("reset_cursors"),
                        {"symbols": symbols or None, "timeframes": timeframes_ or None,
                         "calendar_ends": json.dumps(ends)})
        ahead = [r for r in _rows(conn, queries.query("cursors_ahead"))
                 if r["cursor_status"] == "NULL" or not r.get("window_calendar")]
        ahead += [r for r in _calendar_rows(conn) if r["cursor_status"] == "AHEAD"]
        if ahead:
            listed = ", ".join(f"{r['canonical_symbol']}/{r['timeframe']} ({r['cursor_status']})"
                               for r in ahead)
            raise RunbookError(f"post-reset validation failed, nothing committed: {listed}")
    return ResetResult(changed, dry_run)


def _calendar_rows(conn: psycopg.Connection) -> list[dict]:
    """Health rows of the tasks on a calendar, with their exact frontier windows."""
    return [health.on_calendar(r) for r in _rows(conn, queries.query("calendar_tasks_health"))]


RESTORE_CHOICES_SHOWN = 5  # backups a restore without a name lists


def backup_tables(conn: psycopg.Connection) -> list[str]:
    """The data_agg_state backups (v_agg_state_backups), newest name first."""
    names = [row[0] for row in conn.execute("SELECT backup_table FROM v_agg_state_backups")]
    conn.rollback()
    return names


def restore_agg_state(conn: psycopg.Connection, backup: str) -> dict[str, int]:
    """Make data_agg_state equal to the backup table (every column, updated_at included)."""
    if not backup:
        shown = backup_tables(conn)
        raise RunbookError(
            "name the backup to restore (backup_table): "
            + (", ".join(shown[:RESTORE_CHOICES_SHOWN])
               + (f" (and {len(shown) - RESTORE_CHOICES_SHOWN} older)"
                  if len(shown) > RESTORE_CHOICES_SHOWN else "")
               if shown else "there is none (backup_agg_state makes one)")
            + "; nothing changed")
    with _refusals(), conn.transaction():
        restored, removed = conn.execute("SELECT * FROM agg_restore_state(%s)",
                                         (backup,)).fetchone()
    return {"rows_restored": restored, "rows_removed": removed}


def rebuild_bounds(start: datetime, end: datetime) -> tuple[datetime, datetime]:
    """[start, end) as UTC instants (any offset is converted; none is refused), start first,
    within the engine's range; else RunbookError."""
    try:
        start, end = windows.require_utc(start, "start"), windows.require_utc(end, "end")
    except (TypeError, ValueError) as exc:
        raise RunbookError(f"{exc}; nothing changed") from None
    if end <= start:
        raise RunbookError(f"start {start.isoformat()} must be before end {end.isoformat()} "
                           "(UTC); nothing changed")
    return start, end


def rebuild_range(conn: psycopg.Connection, symbols: list[str], start: datetime, end: datetime,
                  timeframe_names: list[str] | None = None, *,
                  run_id: str | None = None) -> list[engine.AggregationResult]:
    """Soft-delete and recompute [start, end) with a new derivation_version, each timeframe
    after its source (ladder order); the replaced versions keep `run_id`. The whole request
    is checked first (symbols, timeframes, every named pair, the range): a refusal changes
    nothing."""
    if not symbols:
        raise RunbookError("name at least one symbol to rebuild; nothing changed")
    start, end = rebuild_bounds(start, end)
    found = check_selection(conn, symbols, timeframe_names or [])
    conn.rollback()
    chosen = timeframe_names or [tf.name for tf in timeframes.ORDERED]
    tasks = {symbol: [tf for tf in row["timeframes"] if tf in chosen]
             for symbol, row in found.items()}
    null = [f"{symbol}/{tf}" for symbol, row in found.items() for tf in row["null_cursors"]
            if tf in tasks[symbol]]
    if null:  # the engine would refuse them half-way, after the others were rebuilt
        raise RunbookError(f"NULL cursor on {', '.join(null)}: run reset_cursors first; "
                           "nothing changed")
    results = []
    for tf in timeframes.ORDERED:
        spans = [engine.Span(symbol, start, end) for symbol, names in tasks.items()
                 if tf.name in names]  # not chosen, or an optional timeframe it does not have
        if not spans:
            continue
        batch = engine.rebuild_many(conn, tf.name, spans, run_id=run_id)
        conn.commit()
        if batch.failed:  # (a task changed since it was checked)
            raise RunbookError("; ".join(f"{s}/{tf.name}: {e}" for s, e in batch.failed.items()))
        results += batch.results
    return results


def backup_age(days: object) -> timedelta:
    """prune_backups' `older_than_days` as a timedelta: a finite number of days from 0 to
    MAX_PRUNE_DAYS (a negative age would drop a backup taken a second ago)."""
    if (isinstance(days, bool) or not isinstance(days, int | float)
            or not math.isfinite(days) or not 0 <= days <= MAX_PRUNE_DAYS):
        raise RunbookError(f"older_than_days={days!r} must be a number of days from 0 to "
                           f"{MAX_PRUNE_DAYS}; nothing dropped")
    return timedelta(days=days)


def prune_backups(conn: psycopg.Connection, older_than: timedelta,
                  now: datetime | None = None) -> list[str]:
    """Drop timestamped backups older than `older_than`; named backups are kept."""
    if not isinstance(older_than, timedelta) or not (
            timedelta(0) <= older_than <= timedelta(days=MAX_PRUNE_DAYS)):
        raise RunbookError(f"older_than={older_than!r} must be a timedelta from 0 to "
                           f"{MAX_PRUNE_DAYS} days; nothing dropped")
    with conn.transaction():
        rows = conn.execute("SELECT agg_prune_backups(%s, %s)",
                            (older_than, now or datetime.now(UTC))).fetchall()
    return [r[0] for r in rows]


# derived_bar_revisions.reason of a withdrawn legacy bar (plain text: a query parameter)
LEGACY_REASON = str(Revision.LEGACY_CLEANUP)


@dataclass(frozen=True)
class LegacyCleanup:
    symbol: str
    timeframe: str
    dry_run: bool
    by_source: list[dict]  # source, bars, first_ts_utc, last_ts_utc

    @property
    def bars(self) -> int:
        return sum(row["bars"] for row in self.by_source)


def withdraw_legacy_bars(conn: psycopg.Connection, symbol: str, timeframe: str, *,
                         run_id: str, dry_run: bool = True) -> LegacyCleanup:
    """Soft-delete every active bar of `symbol` / `timeframe` in derived_data_bars, a
    timeframe no rung of the ladder produces (seed 004's legacy DXY 1m rows); each withdrawn
    version is kept in derived_bar_revisions under `run_id`, which `restore_legacy_bars`
    undoes. A dry run (the default) counts the same rows in a transaction rolled back."""
    if not isinstance(symbol, str) or not symbol:
        raise RunbookError(f"symbol must be a non-empty string, got {symbol!r}")
    if not isinstance(timeframe, str) or not timeframe:
        raise RunbookError(f"timeframe must be a non-empty string, got {timeframe!r}")
    if timeframe in timeframes.TIMEFRAMES:
        raise RunbookError(
            f"{timeframe} is produced by the ladder ({timeframes.TIMEFRAMES[timeframe].source} "
            f"-> {timeframe}): its bars are not legacy; rebuild_range replaces them")
    if not run_id:
        raise RunbookError("run_id is required: the undo finds the withdrawn bars by it")
    with conn.transaction(force_rollback=dry_run):
        known = _rows(conn, queries.query("legacy_known"),
                      {"symbol": symbol, "timeframe": timeframe})[0]
        if not known["symbol_known"]:
            raise RunbookError(f"unknown symbol {symbol!r}: not in the registry; nothing changed")
        if not known["bars_known"]:  # a typo'd timeframe would count 0 bars, green
            raise RunbookError(f"{symbol} has no {timeframe!r} bars in derived_data_bars, active "
                               "or withdrawn: unknown timeframe for it; nothing changed")
        rows = _rows(conn, queries.query("legacy_withdraw"),
                     {"symbol": symbol, "timeframe": timeframe, "run_id": run_id,
                      "reason": LEGACY_REASON})
    return LegacyCleanup(symbol, timeframe, dry_run, rows)


@dataclass(frozen=True)
class LegacyRestore:
    run_id: str
    dry_run: bool
    restored: int
    refused: list[dict]  # canonical_symbol, timeframe, ts_utc: an active bar holds the slot


def restore_legacy_bars(conn: psycopg.Connection, run_id: str, *,
                        dry_run: bool = True) -> LegacyRestore:
    """Undo a legacy clean-up: make active again the bars run `run_id` withdrew, except
    where an active bar now occupies the slot (refused, listed). Bars withdrawn again since
    (by another run) are that run's to restore. A dry run counts in a rolled-back
    transaction."""
    if not run_id:
        raise RunbookError("run_id of the clean-up run to undo is required")
    with conn.transaction(force_rollback=dry_run):
        rows = _rows(conn, queries.query("legacy_restore"),
                     {"run_id": run_id, "reason": LEGACY_REASON})
        # nothing to restore: an undo done already, or a run id that withdrew nothing
        if not rows and not conn.execute(queries.query("legacy_run_known"),
                                         {"run_id": run_id, "reason": LEGACY_REASON}
                                         ).fetchone()[0]:
            raise RunbookError(f"run {run_id!r} withdrew no legacy bars (not a legacy_cleanup "
                               "run, a dry run, or one that found nothing); nothing changed")
    refused = [{k: r[k] for k in ("canonical_symbol", "timeframe", "ts_utc")}
               for r in rows if not r["restored"]]
    return LegacyRestore(run_id, dry_run, len(rows) - len(refused), refused)
