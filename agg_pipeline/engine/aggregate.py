"""Set-based roll-up of one (symbol, timeframe) over a time range.

`aggregate` is a pure function of the source rows at the moment it runs (SPEC contract 9):
one SQL statement computes every final window of the range, inserts new bars, updates
changed ones, soft-deletes bars that no longer qualify and leaves the rest unwritten; the
cursor then moves forward within the same transaction. A transaction-scoped advisory lock
keeps two writers off the same (symbol, timeframe) (contract 13).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, fields, replace
from datetime import date, datetime, timedelta

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from agg_pipeline.db import queries
from agg_pipeline.engine import timeframes, windows
from agg_pipeline.engine.errors import (
    InvalidRangeError,
    MissingTaskError,
    NullCursorError,
    TaskConfigError,
    UnknownSymbolError,
)
from agg_pipeline.engine.timeframes import Timeframe

log = logging.getLogger(__name__)

LOCK_NAMESPACE = "agg_pipeline"
# Why bars were (re)written, recorded with every version a restatement replaces
# (derived_bar_revisions.reason).
REASONS = ("catch_up", "late_data", "correction", "deletion", "reconciliation", "backfill",
           "rebuild", "manual")
# Sorts and hashes of a year-long range fit in memory with this, not in temp files.
WORK_MEM = "64MB"

# {window_traded} of aggregate_range.sql: the per-window "has a bar with volume" test costs a
# sort, so only symbols that skip zero-volume fillers pay for it.
WINDOW_HAS_TRADED_BAR = sql.SQL(
    "COALESCE(bool_or(valid AND final AND vol > 0) OVER "
    "(PARTITION BY date_bin(%(step)s, ts_utc, TIMESTAMPTZ '2000-01-01 00:00:00+00')), false)"
)
NO_FILLER_RULE = sql.SQL("false")


@dataclass(frozen=True)
class DayCounts:
    """What one `aggregate` call saw and did in one UTC day (a partition's own counts)."""

    windows_seen: int = 0  # final windows of the day in the range, on or after agg_start_utc
    windows_with_source: int = 0
    windows_skipped: int = 0  # had source rows, too few usable ones for the quality ladder
    bars_inserted: int = 0
    bars_updated: int = 0
    bars_soft_deleted: int = 0
    bars_unchanged: int = 0
    bars_poor_quality: int = 0  # written with quality_score <= 0
    source_rows_read: int = 0
    source_rows_invalid: int = 0
    source_rows_partial: int = 0  # is_partial source rows, left for when they are final
    newest_source_ts: datetime | None = None  # newest usable source row read that day

    def __add__(self, other: DayCounts) -> DayCounts:
        newest = [t for t in (self.newest_source_ts, other.newest_source_ts) if t is not None]
        return DayCounts(
            **{f.name: getattr(self, f.name) + getattr(other, f.name)
               for f in fields(self) if f.name != "newest_source_ts"},
            newest_source_ts=max(newest, default=None),
        )

    def counts(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.type == "int"}


@dataclass(frozen=True)
class AggregationResult:
    """What one `aggregate` call saw and did: totals, and the same per UTC day."""

    symbol: str
    timeframe: str
    as_of: datetime
    windows_seen: int
    windows_with_source: int
    windows_skipped: int
    bars_inserted: int
    bars_updated: int
    bars_soft_deleted: int
    bars_unchanged: int
    bars_poor_quality: int
    source_rows_read: int
    source_rows_invalid: int
    source_rows_partial: int
    newest_source_ts: datetime | None  # the task's source frontier (newest usable row) now
    cursor_before: datetime
    cursor_after: datetime
    final_through: datetime  # windows ending at or before this were final and processed
    derivation_version: int
    forming_ts: datetime | None = None  # the forming bar's window, when one is kept
    # every UTC day of the request that had final windows, source rows or bars
    days: dict[date, DayCounts] = field(default_factory=dict, compare=False)

    @property
    def rows_written(self) -> int:
        return self.bars_inserted + self.bars_updated + self.bars_soft_deleted

    def counts(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.type == "int"}


@dataclass(frozen=True)
class _Task:
    timeframe: Timeframe
    delay: timedelta
    agg_start: datetime
    cursor: datetime
    derivation_version: int
    skip_zero_volume: bool
    forming: bool  # the symbol keeps a forming (is_partial) bar of its open window


def advisory_lock_key(symbol: str, timeframe: str) -> str:
    return f"{LOCK_NAMESPACE}/{symbol}/{timeframe}"


def _lock_and_load(conn: psycopg.Connection, symbol: str, tf: Timeframe) -> _Task:
    conn.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))",
        (advisory_lock_key(symbol, tf.name),),
    )
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(
            queries.query("task_for_update"), {"symbol": symbol, "timeframe": tf.name}
        ).fetchone()
    if row is None:
        known = conn.execute(
            "SELECT 1 FROM core_asset_registry_all WHERE canonical_symbol = %s", (symbol,)
        ).fetchone()
        raise MissingTaskError(symbol, tf.name) if known else UnknownSymbolError(symbol)
    if row["source_timeframe"] != tf.source or row["run_interval_minutes"] != tf.minutes:
        raise TaskConfigError(
            f"task {symbol!r} / {tf.name} is configured as {row['source_timeframe']!r} every "
            f"{row['run_interval_minutes']} min, but {tf.name} is built from {tf.source} every "
            f"{tf.minutes} min; fix the row or let the registry sync rewrite it"
        )
    delay = row["aggregation_delay_seconds"]
    if delay is None or delay < 0:
        raise TaskConfigError(
            f"task {symbol!r} / {tf.name} has aggregation_delay_seconds={delay!r}; "
            "it must be a number of seconds >= 0"
        )
    if row["last_agg_bar_ts_utc"] is None:
        raise NullCursorError(symbol, tf.name)
    return _Task(
        timeframe=tf,
        delay=timedelta(seconds=delay),
        agg_start=row["agg_start_utc"],
        cursor=row["last_agg_bar_ts_utc"],
        derivation_version=row["derivation_version"],
        skip_zero_volume=row["agg_skip_zero_volume_ohlc"],
        forming=row["agg_forming_bars"],
    )


def _bounds(
    task: _Task, start: datetime, end: datetime, as_of: datetime
) -> tuple[datetime, datetime, datetime]:
    """(lo, hi, read_from): windows starting in [lo, hi) are final; rows before read_from
    (agg_start_utc) are never read."""
    step = task.timeframe.step
    lo = windows.ceil(start, step)
    hi = min(windows.ceil(end, step), windows.floor(as_of - task.delay, step))
    hi = max(hi, lo)
    read_from = max(lo, windows.ceil(task.agg_start, step))
    return lo, hi, read_from


def _day_counts(rows: list[dict], step: timedelta, read_from: datetime,
                hi: datetime) -> dict[date, DayCounts]:
    """The statement's rows per UTC day, plus every day holding final windows of the range
    (windows_seen), so a day without source rows is there with zeros."""
    days = {row["day"]: DayCounts(**{k: v for k, v in row.items() if k != "day"})
            for row in rows}
    day = windows.day_start(read_from)
    while day < hi:
        seen = (min(day + windows.DAY, hi) - max(day, read_from)) // step
        key = day.date()
        days[key] = replace(days.get(key, DayCounts()), windows_seen=seen)
        day += windows.DAY
    return dict(sorted(days.items()))


def _validate_request(conn: object, symbol: object, timeframe: object, start: object,
                      end: object) -> tuple[Timeframe, datetime, datetime]:
    """Each argument checked, each error naming the argument it is about."""
    if not isinstance(conn, psycopg.Connection):
        raise TypeError(f"conn must be a psycopg.Connection, got {type(conn).__name__}")
    if not isinstance(symbol, str) or not symbol:
        raise TypeError(f"symbol must be a non-empty str, got {symbol!r}")
    tf = timeframes.get(timeframe)
    start = windows.require_utc(start, "start")
    end = windows.require_utc(end, "end")
    if end <= start:
        kind = "empty" if end == start else "inverted"
        raise InvalidRangeError(
            f"{kind} range for {symbol!r} / {timeframe}: start {start.isoformat()} must be "
            f"before end {end.isoformat()}"
        )
    return tf, start, end


def _validate_version(derivation_version: object) -> None:
    if derivation_version is not None and (
            isinstance(derivation_version, bool) or not isinstance(derivation_version, int)
            or not 1 <= derivation_version < 2**31):
        raise ValueError(f"derivation_version={derivation_version!r} must be a positive "
                         "integer (or None for the task's own)")


def _validate_reason(reason: object, run_id: object) -> None:
    if reason not in REASONS:
        raise ValueError(f"reason={reason!r} is not one of {', '.join(REASONS)}")
    if run_id is not None and (not isinstance(run_id, str) or not 0 < len(run_id) <= 64):
        raise ValueError(f"run_id={run_id!r} must be a run id string (1-64 characters) or None")


def _resolve_as_of(conn: psycopg.Connection, now: datetime | None) -> datetime:
    if now is None:
        return conn.execute("SELECT now()").fetchone()[0]
    return windows.require_utc(now, "now")


def aggregate(
    conn: psycopg.Connection,
    symbol: str,
    timeframe: str,
    start: datetime,
    end: datetime,
    *,
    now: datetime | None = None,
    derivation_version: int | None = None,
    reason: str = "manual",
    run_id: str | None = None,
) -> AggregationResult:
    """Materialise every final window of [start, end) for one symbol and target timeframe.

    A window is labelled by its start; windows whose start lies in [start, end) are
    considered, those not yet final at `now` (window end + aggregation delay) are left alone.
    `now` defaults to the database clock. Runs in one transaction (a savepoint when the
    caller already holds one). Every bar it restates or withdraws keeps its previous version
    in derived_bar_revisions, labelled with `reason` (one of REASONS) and `run_id`.
    """
    tf, start, end = _validate_request(conn, symbol, timeframe, start, end)
    _validate_version(derivation_version)
    _validate_reason(reason, run_id)
    with conn.transaction():
        as_of = _resolve_as_of(conn, now)
        task = _lock_and_load(conn, symbol, tf)
        version = derivation_version if derivation_version is not None else task.derivation_version
        lo, hi, read_from = _bounds(task, start, end, as_of)

        if tf.reads_data_bars:
            # fingerprint the UTC days the request covers completely (late-data detection)
            record_from = windows.ceil(lo, windows.DAY)
            record_to = max(record_from, min(windows.floor(end, windows.DAY),
                                             windows.ceil(hi, windows.DAY)))
            source_table, active_only = "data_bars", sql.SQL("")
        else:
            record_from = record_to = lo
            source_table, active_only = "derived_data_bars", sql.SQL("AND b.deleted_at IS NULL")

        statement = queries.query(
            "aggregate_range",
            source_table=sql.Identifier(source_table),
            active_only=active_only,
            window_traded=WINDOW_HAS_TRADED_BAR if task.skip_zero_volume else NO_FILLER_RULE,
        )
        conn.execute(sql.SQL("SET LOCAL work_mem = {}").format(sql.Literal(WORK_MEM)))
        with conn.cursor(row_factory=dict_row) as cur:
            # Never prepared: psycopg prepares a statement on its 5th execution on a connection,
            # and after 5 more PostgreSQL switches a prepared statement to a generic plan,
            # which for this one (bounds and step unknown) runs ~1.5x slower. Planning it
            # afresh costs about a millisecond.
            day_rows = cur.execute(
                statement,
                {
                    "symbol": symbol,
                    "timeframe": tf.name,
                    "source_timeframe": tf.source,
                    "step": tf.step,
                    "source_step": tf.source_step,
                    "lo": lo,
                    "hi": hi,
                    "read_from": read_from,
                    "expected": tf.expected_candles,
                    "score_by_count": tf.score_by_count(),
                    "derivation_version": version,
                    "record_from": record_from,
                    "record_to": record_to,
                    "reason": reason,
                    "run_id": run_id,
                },
                prepare=False,
            ).fetchall()
        days = _day_counts(day_rows, tf.step, read_from, hi)
        totals = sum(days.values(), DayCounts())

        newest = conn.execute(
            "SELECT agg_source_frontier(%s, %s, %s)", (symbol, tf.source, as_of)
        ).fetchone()[0]
        cursor_after = task.cursor
        # (an off-grid cursor, e.g. after agg_start_utc was set mid-window, points at the
        # window starting at its next boundary)
        if lo <= windows.ceil(task.cursor, tf.step) and newest is not None:
            # contract 7: forward only, never past the end of the window holding the newest
            # source row; contract 8: empty windows behind newer data are passed over
            frontier_end = windows.floor(newest, tf.step) + tf.step
            # and never past the first window not yet final (contract 6): `hi` alone is not
            # that bound when nothing of the range is final (it is raised to `lo` then)
            first_not_final = windows.floor(as_of - task.delay, tf.step)
            cursor_after = max(task.cursor, min(hi, frontier_end, first_not_final))

        forming_ts = _refresh_forming_bar(conn, task, symbol, lo, end, as_of, version,
                                          source_table)
        conn.execute(
            queries.query("task_record_success"),
            {
                "symbol": symbol,
                "timeframe": tf.name,
                "cursor": cursor_after,
                "bars_inserted": totals.bars_inserted,
                "bars_poor_quality": totals.bars_poor_quality,
                "forming_through": newest if task.forming else None,
            },
        )

    result = AggregationResult(
        symbol=symbol,
        timeframe=tf.name,
        as_of=as_of,
        **{**totals.counts(), "windows_seen": max(0, (hi - read_from) // tf.step)},
        newest_source_ts=newest,
        cursor_before=task.cursor,
        cursor_after=cursor_after,
        final_through=hi,
        derivation_version=version,
        forming_ts=forming_ts,
        days=days,
    )
    if result.source_rows_invalid:
        log.warning(
            "%s / %s: %d invalid source rows excluded in [%s, %s)",
            symbol, tf.name, result.source_rows_invalid, read_from.isoformat(), hi.isoformat(),
        )
    return result


def _refresh_forming_bar(conn: psycopg.Connection, task: _Task, symbol: str, lo: datetime,
                         end: datetime, as_of: datetime, version: int,
                         source_table: str) -> datetime | None:
    """The forming bar of the window still open, when the request reaches it (forming_bar.sql);
    for a symbol without forming bars only the clean-up of any left over. Returns its window."""
    tf = task.timeframe
    forming_from = max(lo, windows.floor(as_of - task.delay, tf.step))  # first not final
    range_end = windows.ceil(end, tf.step)
    if range_end <= forming_from:
        return None  # the request ends among final windows: nothing is forming in it
    statement = queries.query(
        "forming_bar",
        source_table=sql.Identifier(source_table),
        # 5m reads final 1m rows only; 1h and above read final and forming 5m bars
        source_filter=sql.SQL("AND NOT b.is_partial" if tf.reads_data_bars
                              else "AND b.deleted_at IS NULL"),
    )
    row = conn.execute(statement, {
        "forming": task.forming, "symbol": symbol, "timeframe": tf.name,
        "source_timeframe": tf.source, "hi": forming_from, "range_end": range_end,
        "as_of": as_of, "step": tf.step, "source_step": tf.source_step,
        "expected": tf.expected_candles, "derivation_version": version,
    }, prepare=False).fetchone()
    return row[0]


def rebuild_range(
    conn: psycopg.Connection,
    symbol: str,
    timeframe: str,
    start: datetime,
    end: datetime,
    *,
    now: datetime | None = None,
    run_id: str | None = None,
) -> AggregationResult:
    """Soft-delete the range's active bars and recompute them under a bumped derivation_version.

    For operators: after a change of derivation rules, or to rewrite a range from scratch.
    The soft-deleted rows remain and their versions go to derived_bar_revisions (reason
    `rebuild`); the task's derivation_version stays bumped for later runs.
    """
    tf, start, end = _validate_request(conn, symbol, timeframe, start, end)
    _validate_reason("rebuild", run_id)
    with conn.transaction():
        as_of = _resolve_as_of(conn, now)
        task = _lock_and_load(conn, symbol, tf)
        version = conn.execute(
            "UPDATE data_agg_state SET derivation_version = derivation_version + 1 "
            "WHERE canonical_symbol = %s AND timeframe = %s RETURNING derivation_version",
            (symbol, tf.name),
        ).fetchone()[0]
        lo, hi, _ = _bounds(task, start, end, as_of)
        deleted = conn.execute(
            queries.query("soft_delete_range"),
            {"symbol": symbol, "timeframe": tf.name, "lo": lo, "hi": hi, "run_id": run_id},
        ).fetchone()[0]
        result = aggregate(conn, symbol, tf.name, start, end, now=as_of,
                           derivation_version=version, reason="rebuild", run_id=run_id)
    return replace(result, bars_soft_deleted=deleted)
