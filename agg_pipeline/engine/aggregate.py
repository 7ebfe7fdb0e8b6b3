"""Set-based roll-up of many symbols of one timeframe over their time ranges.

`aggregate_many` is a pure function of the source rows at the moment it runs (SPEC contract
9): for every symbol's range one statement (aggregate_windows.sql) computes the final windows,
inserts new bars, restates changed ones, soft-deletes bars that no longer qualify and leaves
the rest unwritten; a second one (forming_bars.sql) keeps the forming bars; the cursors then
move forward within the same transaction. The number of statements does not depend on the
number of symbols, and each symbol's part reads only its own index ranges, so the cost
follows the rows. The task rows are locked in symbol order for the transaction: one writer
per (symbol, timeframe) (contract 13).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields, replace
from datetime import date, datetime, timedelta

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from agg_pipeline.db import queries
from agg_pipeline.engine import timeframes, windows
from agg_pipeline.engine.bounds import (
    Bounds,
    TaskView,
    cursor_after,
    request_bounds,
    task_grid,
    windows_seen,
)
from agg_pipeline.engine.errors import (
    AggregationError,
    InvalidRangeError,
    MissingTaskError,
    NullCursorError,
    TaskConfigError,
    UnknownSymbolError,
)
from agg_pipeline.engine.reasons import Revision
from agg_pipeline.engine.timeframes import Timeframe

log = logging.getLogger(__name__)

# Sorts and hashes of a year-long range fit in memory with this, not in temp files.
WORK_MEM = "64MB"
# PostgreSQL's JIT (on by default where the server has LLVM, e.g. Debian's 15) compiles the
# engine's statements whenever their estimated cost passes jit_above_cost, which a year or a
# batch of symbols always does: ~105 ms of compilation (173 functions) per statement,
# measured, more than a live tick's whole statement and half a symbol-year's first build.
ENGINE_SESSION = sql.SQL("SET LOCAL work_mem = {}; SET LOCAL jit = off").format(
    sql.Literal(WORK_MEM))

# Source rows per statement of a batch of many symbols over a long range (_chunk_length).
CHUNK_SOURCE_ROWS = 400_000

# {window_traded} of aggregate_windows.sql: the per-window "has a bar with volume" test costs
# a sort, so only symbols that skip zero-volume fillers pay for it (a statement of their own).
WINDOW_HAS_TRADED_BAR = sql.SQL(
    "COALESCE(bool_or(valid AND final AND vol > 0) OVER (PARTITION BY {window}), false)")
NO_FILLER_RULE = sql.SQL("false")

# How the statements find a row's window (their headers say more). On the UTC grid: date_bin,
# every window expects `expected` source bars (the fast path, unchanged for every symbol
# without a calendar). On a calendar (contract 15): the windows the engine computed and bound
# to each request, found by binary search; each has its own expected count.
UTC_WINDOWS = {
    "window": sql.SQL(
        "date_bin(%(step)s::interval, ts_utc, TIMESTAMPTZ '2000-01-01 00:00:00+00')"),
    "in_window": sql.SQL(""),
    "expected": sql.SQL("%(expected)s::integer"),
    "score": sql.SQL("(%(score_by_count)s::integer[])[least(w.n, %(expected)s) + 1]"),
    "pending": sql.SQL("generate_series(r.hi, r.final_to - %(step)s::interval, "
                       "%(step)s::interval)"),
    "request_columns": sql.SQL(""),
    "window_sets": sql.SQL(""),
    "source_grid": sql.SQL("%(source_step)s::interval"),
}
_POSITION = "width_bucket(w.ts_utc, r.starts)"  # a window start's index in the request's
CALENDAR_WINDOWS = {
    "window": sql.SQL("r.starts[width_bucket(ts_utc, r.starts)]"),
    "in_window": sql.SQL("AND b.ts_utc < r.ends[width_bucket(b.ts_utc, r.starts)]"),
    "expected": sql.SQL(f"r.exps[{_POSITION}]"),
    "score": sql.SQL(f"agg_ladder_score(w.n, r.exps[{_POSITION}], %(rung_num)s, "
                     "%(rung_den)s, %(rung_score)s)"),
    "pending": sql.SQL("(SELECT s FROM unnest(r.starts) AS s "
                       "WHERE s >= r.hi AND s < r.final_to)"),
    "request_columns": sql.SQL(", wkey integer, source_grid interval"),
    # (requests of many symbols on one calendar over one range share one set of windows)
    "window_sets": sql.SQL("LEFT JOIN json_to_recordset(%(window_sets)s::json) AS ws(wkey "
                           "integer, starts timestamptz[], ends timestamptz[], exps integer[]) "
                           "USING (wkey)"),
    "source_grid": sql.SQL("r.source_grid"),
}
UTC_FORMING = {
    "newest_window": sql.SQL(
        "date_bin(%(step)s::interval, max(b.ts_utc), TIMESTAMPTZ '2000-01-01 00:00:00+00')"),
    "window_end": sql.SQL("w.ts_utc + %(step)s::interval"),
    **{k: UTC_WINDOWS[k] for k in ("expected", "request_columns", "window_sets",
                                   "source_grid")},
}
CALENDAR_FORMING = {
    "newest_window": sql.SQL("r.starts[width_bucket(max(b.ts_utc), r.starts)]"),
    "window_end": sql.SQL(f"r.ends[{_POSITION}]"),
    **{k: CALENDAR_WINDOWS[k] for k in ("expected", "request_columns", "window_sets",
                                        "source_grid")},
}


@dataclass(frozen=True)
class DayCounts:
    """What one request saw and did in one UTC day (a partition's own counts)."""

    windows_seen: int = 0  # final windows of the day it read, on or after agg_start_utc
    windows_with_source: int = 0
    windows_skipped: int = 0  # had source rows, too few usable ones for the quality ladder
    bars_inserted: int = 0
    bars_updated: int = 0
    bars_soft_deleted: int = 0
    bars_unchanged: int = 0
    bars_kept_source_gone: int = 0  # contract 16: source removed by retention, bar kept
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
    """What one request (a symbol's range) saw and did: totals, and the same per UTC day."""

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
    bars_kept_source_gone: int
    bars_poor_quality: int
    source_rows_read: int
    source_rows_invalid: int
    source_rows_partial: int
    newest_source_ts: datetime | None  # the task's source frontier (newest usable row) now
    cursor_before: datetime
    cursor_after: datetime
    final_through: datetime  # windows ending at or before this were final and processed
    derivation_version: int
    read_from: datetime  # the first source row read: the cursor for an incremental read
    forming_ts: datetime | None = None  # the forming bar's window, when one is kept
    # every UTC day of the request that had final windows, source rows or bars
    days: dict[date, DayCounts] = field(default_factory=dict, compare=False)

    @property
    def rows_written(self) -> int:
        return self.bars_inserted + self.bars_updated + self.bars_soft_deleted

    def counts(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.type == "int"}


@dataclass(frozen=True)
class Span:
    """One request: `symbol` over [start, end) (aware datetimes)."""

    symbol: str
    start: datetime
    end: datetime


@dataclass(frozen=True)
class Batch:
    """What `aggregate_many` did: a result per request that ran, per symbol that could not
    run why (its other symbols are unaffected), and the symbols of an incremental call that
    had nothing new, with their cursors (nothing read, nothing written)."""

    results: list[AggregationResult]
    failed: dict[str, AggregationError]
    idle: dict[str, datetime] = field(default_factory=dict)


# ----------------------------------------------------------------------------- validation


def _validate_spans(conn: object, timeframe: object,
                    spans: Iterable[object]) -> tuple[Timeframe, list[Span]]:
    """Each argument checked, each error naming the argument it is about; a symbol's
    requests sorted and merged where they touch."""
    if not isinstance(conn, psycopg.Connection):
        raise TypeError(f"conn must be a psycopg.Connection, got {type(conn).__name__}")
    tf = timeframes.get(timeframe)
    checked: list[Span] = []
    for span in spans:
        if not isinstance(span, Span):
            raise TypeError(f"spans must be Span(symbol, start, end), got {span!r}")
        if not isinstance(span.symbol, str) or not span.symbol:
            raise TypeError(f"symbol must be a non-empty str, got {span.symbol!r}")
        start = windows.require_utc(span.start, "start")
        end = windows.require_utc(span.end, "end")
        if end <= start:
            kind = "empty" if end == start else "inverted"
            raise InvalidRangeError(
                f"{kind} range for {span.symbol!r} / {tf.name}: start {start.isoformat()} must "
                f"be before end {end.isoformat()}")
        checked.append(Span(span.symbol, start, end))
    merged: list[Span] = []
    for span in sorted(checked, key=lambda s: (s.symbol, s.start)):
        last = merged[-1] if merged else None
        if last and last.symbol == span.symbol and span.start <= last.end:
            merged[-1] = Span(span.symbol, last.start, max(last.end, span.end))
        else:
            merged.append(span)
    return tf, merged


def _validate_version(derivation_version: object) -> None:
    if derivation_version is not None and (
            isinstance(derivation_version, bool) or not isinstance(derivation_version, int)
            or not 1 <= derivation_version < 2**31):
        raise ValueError(f"derivation_version={derivation_version!r} must be a positive "
                         "integer (or None for the task's own)")


def _validate_reason(reason: object, run_id: object) -> str:
    """The revision label (reasons.Revision) as plain text for SQL; ValueError if unknown."""
    label = str(Revision.parse(reason))
    if run_id is not None and (not isinstance(run_id, str) or not 0 < len(run_id) <= 64):
        raise ValueError(f"run_id={run_id!r} must be a run id string (1-64 characters) or None")
    return label


def _resolve_as_of(conn: psycopg.Connection, now: datetime | None) -> datetime:
    if now is None:
        return windows.require_utc(conn.execute("SELECT now()").fetchone()[0], "now()")
    return windows.require_utc(now, "now")


# ----------------------------------------------------------------------------- tasks


def _task_view(row: dict, tf: Timeframe) -> TaskView | AggregationError:
    symbol = row["canonical_symbol"]
    if row["source_timeframe"] != tf.source or row["run_interval_minutes"] != tf.minutes:
        return TaskConfigError(
            f"task {symbol!r} / {tf.name} is configured as {row['source_timeframe']!r} every "
            f"{row['run_interval_minutes']} min, but {tf.name} is built from {tf.source} every "
            f"{tf.minutes} min; fix the row or let the registry sync rewrite it")
    delay = row["aggregation_delay_seconds"]
    if delay is None or delay < 0:
        return TaskConfigError(
            f"task {symbol!r} / {tf.name} has aggregation_delay_seconds={delay!r}; "
            "it must be a number of seconds >= 0")
    if row["last_agg_bar_ts_utc"] is None:
        return NullCursorError(symbol, tf.name)
    calendar = row["window_calendar"]
    if calendar is not None and calendar not in timeframes.CALENDARS:
        return TaskConfigError(
            f"task {symbol!r} / {tf.name} follows calendar {calendar!r}, which "
            f"{timeframes.CONFIG.path.name} does not define; define it, or let the registry "
            "sync rewrite the task")
    utc = windows.utc_or_none  # the session's zone may be any (contract 1)
    return TaskView(
        symbol=symbol, cursor=utc(row["last_agg_bar_ts_utc"]),
        agg_start=utc(row["agg_start_utc"]), delay=timedelta(seconds=delay),
        derivation_version=row["derivation_version"],
        skip_zero_volume=row["agg_skip_zero_volume_ohlc"], forming=row["agg_forming_bars"],
        frontier=utc(row["frontier"]), fingerprint_through=utc(row["fingerprint_through"]),
        retained_from=utc(row["retained_from"]), forming_through=utc(row["forming_through"]),
        calendar=calendar, source_restated_from=utc(row["source_restated_from"]))


def _missing(conn: psycopg.Connection, tf: Timeframe,
             symbols: list[str]) -> dict[str, AggregationError]:
    """Why each of `symbols`, which have no task of `tf`, has none."""
    if not symbols:
        return {}
    known = {r[0] for r in conn.execute(
        "SELECT canonical_symbol FROM core_asset_registry_all "
        "WHERE canonical_symbol = ANY (%s::text[])", (symbols,))}
    return {symbol: (MissingTaskError(symbol, tf.name) if symbol in known
                     else UnknownSymbolError(symbol)) for symbol in symbols}


def _load(conn: psycopg.Connection, tf: Timeframe, symbols: list[str], as_of: datetime, *,
          lock: bool) -> tuple[dict[str, TaskView], dict[str, AggregationError]]:
    """The tasks of `symbols` (locked in symbol order with `lock`); the symbols that cannot
    run, why."""
    statement = queries.query("tasks_for_update",
                              lock=sql.SQL("FOR UPDATE OF s" if lock else ""))
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(statement, {"timeframe": tf.name, "symbols": symbols,
                                       "as_of": as_of}, prepare=False).fetchall()
    tasks: dict[str, TaskView] = {}
    failed: dict[str, AggregationError] = {}
    for row in rows:
        view = _task_view(row, tf)
        if isinstance(view, AggregationError):
            failed[row["canonical_symbol"]] = view
        else:
            tasks[view.symbol] = view
    failed.update(_missing(conn, tf, sorted(set(symbols) - tasks.keys() - failed.keys())))
    return tasks, failed


# ----------------------------------------------------------------------------- statements


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


class _WindowSets:
    """The windows of calendar requests (contract 15), one set per distinct calendar and
    range: many symbols of a run share their calendar and range, and so one set."""

    def __init__(self, tf: Timeframe) -> None:
        self.tf = tf
        self.keys: dict[tuple, int] = {}
        self.sets: list[dict[str, object]] = []

    def fields(self, task: TaskView, lo: datetime, hi: datetime) -> dict[str, object]:
        """A request's `wkey` (its windows starting in [lo, hi)) and the grid its source
        rows' timestamps are checked on: the source's own when it keeps the UTC grid, else
        the minute (a calendar's bars start wherever its sessions do)."""
        if not task.calendar:
            return {}
        key = (task.calendar, lo, hi)
        if key not in self.keys:
            found = task_grid(task, self.tf).windows(lo, hi)
            self.keys[key] = len(self.sets)
            self.sets.append({"wkey": len(self.sets),
                              "starts": [w.start.isoformat() for w in found],
                              "ends": [w.end.isoformat() for w in found],
                              "exps": [w.expected for w in found]})
        source = timeframes.TIMEFRAMES.get(self.tf.source)
        on_calendar = (source is not None
                       and timeframes.CALENDARS[task.calendar].follows(source.step))
        return {"wkey": self.keys[key],
                "source_grid": windows.sql_interval(timedelta(minutes=1) if on_calendar
                                                    else self.tf.source_step)}

    def json(self) -> str:
        return json.dumps(self.sets)


def _requests_json(requests: Sequence[tuple[int, TaskView, Bounds]], version: int | None,
                   sets: _WindowSets) -> str:
    """The requests of aggregate_windows.sql as one JSON parameter (json_to_recordset): a
    thousand symbols' bounds in one value, instead of a dozen arrays psycopg adapts element by
    element. Instants in ISO 8601 with their UTC offset; a calendar request names its windows
    in `sets`."""
    written: dict[int, dict] = {}  # most requests share their Bounds: written once

    def bounds_json(b: Bounds) -> dict:
        if id(b) not in written:
            written[id(b)] = {name: _iso(value) for name, value in (
                ("lo", b.lo), ("hi", b.hi), ("final_to", b.final_to),
                ("read_from", b.read_from), ("record_from", b.record_from),
                ("record_limit", b.record_limit), ("consume_from", b.consume_from))}
        return written[id(b)]

    return json.dumps([{"ord": i, "symbol": t.symbol, **bounds_json(b),
                        "version": version or t.derivation_version,
                        **sets.fields(t, b.lo, b.final_to)} for i, t, b in requests])


def _source(tf: Timeframe) -> tuple[sql.Identifier, sql.SQL]:
    if tf.reads_data_bars:
        return sql.Identifier("data_bars"), sql.SQL("")
    return sql.Identifier("derived_data_bars"), sql.SQL("AND b.deleted_at IS NULL")


def _run_windows(conn: psycopg.Connection, tf: Timeframe,
                 requests: Sequence[tuple[int, TaskView, Bounds]], *, skip_zero_volume: bool,
                 calendar: bool, version: int | None, reason: str,
                 run_id: str | None) -> list[tuple]:
    table, active_only = _source(tf)
    fragments = CALENDAR_WINDOWS if calendar else UTC_WINDOWS
    statement = queries.query(
        "aggregate_windows", source_table=table, active_only=active_only,
        window_traded=(WINDOW_HAS_TRADED_BAR.format(window=fragments["window"])
                       if skip_zero_volume else NO_FILLER_RULE), **fragments)
    sets = _WindowSets(tf)
    params = {
        "requests": _requests_json(requests, version, sets), "window_sets": sets.json(),
        "timeframe": tf.name, "source_timeframe": tf.source,
        "step": windows.sql_interval(tf.step), "source_step": windows.sql_interval(tf.source_step),
        "expected": tf.expected_candles,
        "score_by_count": tf.score_by_count(), "retention_applies": tf.reads_data_bars,
        "reason": reason, "run_id": run_id, **tf.rung_arrays(),
    }
    # Never prepared: psycopg prepares a statement on its 5th execution on a connection, and
    # after 5 more PostgreSQL switches a prepared statement to a generic plan, which for this
    # one (bounds and step unknown) runs ~1.5x slower. Planning it afresh costs ~2 ms.
    return conn.execute(statement, params, prepare=False).fetchall()


def _run_forming(conn: psycopg.Connection, tf: Timeframe,
                 requests: Sequence[tuple[TaskView, Bounds, datetime]], as_of: datetime,
                 version: int | None) -> dict[str, tuple[datetime, int]]:
    """forming_bars.sql for the requests that reach past their last final window and have a
    forming bar to refresh or remove; returns each symbol's forming bar (window, count)."""
    reaching = [(t, b, h) for t, b, h in requests if b.range_end > h and t.forming_work]
    found: dict[str, tuple[datetime, int]] = {}
    for calendar in (False, True):
        group = [(t, b, h) for t, b, h in reaching if bool(t.calendar) is calendar]
        if group:
            found.update(_run_forming_group(conn, tf, group, as_of, version, calendar))
    return found


def _run_forming_group(conn: psycopg.Connection, tf: Timeframe,
                       requests: Sequence[tuple[TaskView, Bounds, datetime]], as_of: datetime,
                       version: int | None, calendar: bool) -> dict[str, tuple[datetime, int]]:
    table, _ = _source(tf)
    statement = queries.query(
        "forming_bars", source_table=table,
        # 5m reads final 1m rows only; 1h and above read final and forming 5m bars
        source_filter=sql.SQL("AND NOT b.is_partial" if tf.reads_data_bars
                              else "AND b.deleted_at IS NULL"),
        **(CALENDAR_FORMING if calendar else UTC_FORMING))
    sets = _WindowSets(tf)
    rows = conn.execute(statement, {
        "requests": json.dumps([
            {"symbol": t.symbol, "hi": h.isoformat(), "range_end": b.range_end.isoformat(),
             "forming": t.forming, "version": version or t.derivation_version,
             **sets.fields(t, h, b.range_end)}
            for t, b, h in requests]),
        "window_sets": sets.json(),
        "timeframe": tf.name, "source_timeframe": tf.source, "as_of": as_of,
        "step": windows.sql_interval(tf.step), "source_step": windows.sql_interval(tf.source_step),
        "expected": tf.expected_candles,
    }, prepare=False).fetchall()
    return {symbol: (windows.utc(ts), candles) for symbol, ts, candles in rows}


# ----------------------------------------------------------------------------- results


_INT_COUNTS = [f.name for f in fields(DayCounts) if f.type == "int"]
# DayCounts' integer fields in the order of aggregate_windows.sql's counts[] (windows_seen
# is the engine's own arithmetic, bounds.windows_seen)
_COUNTED = _INT_COUNTS[1:]
_ZEROS = (0,) * len(_COUNTED)


def _collect(rows: list[tuple]) -> tuple[dict[int, dict[date, tuple]], dict[int, datetime]]:
    """The statements' rows: per request (`ord`) its days' (counts, newest source row), and
    its final_hi."""
    days: dict[int, dict[date, tuple]] = {}
    final_hi: dict[int, datetime] = {}
    for ord_, kind, at, counts, newest in rows:
        if kind == "bound":
            final_hi[ord_] = windows.utc(at)
        else:
            days.setdefault(ord_, {})[windows.utc_date(at)] = (
                counts[:len(_COUNTED)], windows.utc_or_none(newest))
    return days, final_hi


def _result(tf: Timeframe, task: TaskView, bounds: Bounds, final_hi: datetime,
            days: dict[date, tuple], cursors: tuple[datetime, datetime], as_of: datetime,
            version: int | None, forming: tuple[datetime, int] | None) -> AggregationResult:
    seen = windows_seen(bounds, final_hi, task_grid(task, tf))
    mine: dict[date, DayCounts] = {}
    totals = [0] * len(_INT_COUNTS)
    for day in sorted(seen.keys() | days.keys()):
        counts, newest = days.get(day, (_ZEROS, None))
        values = (seen.get(day, 0), *counts)
        mine[day] = DayCounts(*values, newest_source_ts=newest)
        totals = [a + b for a, b in zip(totals, values, strict=True)]
    return AggregationResult(
        symbol=task.symbol, timeframe=tf.name, as_of=as_of,
        **dict(zip(_INT_COUNTS, totals, strict=True)),
        newest_source_ts=task.frontier, cursor_before=cursors[0], cursor_after=cursors[1],
        final_through=final_hi, derivation_version=version or task.derivation_version,
        read_from=bounds.read_from, forming_ts=forming[0] if forming else None, days=mine)


def _restated_read(task: TaskView, results: list[AggregationResult]) -> bool:
    mark = task.source_restated_from
    return mark is not None and min(r.read_from for r in results) <= mark


def _record_success(conn: psycopg.Connection, tf: Timeframe,
                    results: list[AggregationResult], tasks: dict[str, TaskView]) -> None:
    by_symbol: dict[str, list[AggregationResult]] = {}
    for result in results:
        by_symbol.setdefault(result.symbol, []).append(result)
    conn.execute(queries.query("tasks_record_success"), {
        "timeframe": tf.name,
        "tasks": json.dumps([
            {"symbol": symbol,
             "cursor": max(r.cursor_after for r in mine).isoformat(),
             "bars_inserted": sum(r.bars_inserted for r in mine),
             "bars_poor_quality": sum(r.bars_poor_quality for r in mine),
             "forming_through": (tasks[symbol].frontier.isoformat()
                                 if tasks[symbol].forming and tasks[symbol].frontier else None),
             # the source bars written behind its cursor were read again (migration 022)
             "restated_read": _restated_read(tasks[symbol], mine)}
            for symbol, mine in sorted(by_symbol.items())]),
    }, prepare=False)


# ----------------------------------------------------------------------------- the engine


def _materialize(conn: psycopg.Connection, tf: Timeframe,
                 requests: list[tuple[int, TaskView, Bounds]], as_of: datetime, *,
                 version: int | None, reason: str, run_id: str | None,
                 chunk: timedelta | None = None) -> list[AggregationResult]:
    """Both statements for the requests (one per `chunk` of time, see _chunk_length), the
    cursors, the task rows."""
    if not requests:
        return []
    conn.execute(ENGINE_SESSION)
    rows: list[tuple] = []
    for part in _statements(requests, chunk):
        for skip, calendar in ((False, False), (True, False), (False, True), (True, True)):
            group = [r for r in part
                     if r[1].skip_zero_volume is skip and bool(r[1].calendar) is calendar]
            if group:
                rows += _run_windows(conn, tf, group, skip_zero_volume=skip,
                                     calendar=calendar, version=version, reason=reason,
                                     run_id=run_id)
    days, final_hi = _collect(rows)
    forming = _run_forming(conn, tf, [(t, b, final_hi[i]) for i, t, b in requests], as_of,
                           version)
    results: list[AggregationResult] = []
    tasks = {t.symbol: t for _, t, _ in requests}
    cursors = {symbol: task.cursor for symbol, task in tasks.items()}
    for i, task, bounds in requests:  # spans are sorted: a symbol's requests in time order
        before = cursors[task.symbol]
        cursors[task.symbol] = cursor_after(task, tf, bounds, before, final_hi[i])
        results.append(_result(tf, task, bounds, final_hi[i], days.get(i, {}),
                               (before, cursors[task.symbol]), as_of, version,
                               forming.get(task.symbol)))
    _record_success(conn, tf, results, tasks)
    return results


def _chunk_length(tf: Timeframe, spans: list[Span], tasks: dict[str, TaskView]
                  ) -> timedelta | None:
    """How much time one statement of a full (not incremental) read covers: everything
    (None) for one symbol, else whole UTC days of about CHUNK_SOURCE_ROWS source rows.

    A feed writes every symbol's minute together, so each heap page of the source holds rows
    of many symbols, and a statement reading symbol after symbol over a month reads every page
    once per symbol: from the OS cache once the range outgrows shared_buffers (measured: 70% of
    a 100-symbol x 30-day build). A day's pages stay in shared buffers while its symbols read
    them: 19 s -> 12.5 s on that build. Windows on a calendar may span UTC days: not cut."""
    symbols = {s.symbol for s in spans}
    if len(symbols) < 2 or windows.DAY % tf.step or any(tasks[s].calendar for s in symbols):
        return None
    rows_per_day = windows.DAY // tf.source_step
    return windows.DAY * max(1, CHUNK_SOURCE_ROWS // (len(symbols) * rows_per_day))


def _cut(spans: list[Span], chunk: timedelta, until: datetime) -> list[tuple[int, Span]]:
    """Each span cut at the multiples of `chunk` before `until` (every window ending by then
    is final by its delay, so each piece but the last is wholly final), with the index of
    the span each piece came from; a span's pieces in time order."""
    pieces = []
    for index, span in enumerate(spans):
        start = span.start
        edge = windows.floor(start, chunk) + chunk
        while edge < min(span.end, until):
            pieces.append((index, Span(span.symbol, start, edge)))
            start, edge = edge, edge + chunk
        pieces.append((index, Span(span.symbol, start, span.end)))
    return pieces


def _statements(requests: list[tuple[int, TaskView, Bounds]], chunk: timedelta | None
                ) -> list[list[tuple[int, TaskView, Bounds]]]:
    """The requests of each statement, in time order: all, or those of each chunk."""
    if chunk is None:
        return [requests]
    parts: dict[int, list[tuple[int, TaskView, Bounds]]] = {}
    for request in requests:
        parts.setdefault((request[2].lo - windows.ORIGIN) // chunk, []).append(request)
    return [parts[key] for key in sorted(parts)]


def _joined(results: list[AggregationResult], origins: list[int]) -> list[AggregationResult]:
    """One result per span from those of its pieces (in time order)."""
    by_span: dict[int, list[AggregationResult]] = {}
    for origin, result in zip(origins, results, strict=True):
        by_span.setdefault(origin, []).append(result)
    joined = []
    for _, pieces in sorted(by_span.items()):
        first, last = pieces[0], pieces[-1]
        days: dict[date, DayCounts] = {}
        for piece in pieces:
            for day, counts in piece.days.items():
                days[day] = days[day] + counts if day in days else counts
        joined.append(replace(
            last, **{name: sum(getattr(p, name) for p in pieces) for name in _INT_COUNTS},
            cursor_before=first.cursor_before, read_from=first.read_from, days=days))
    return joined


def _full_read(conn: psycopg.Connection, tf: Timeframe, spans: list[Span], as_of: datetime,
               *, version: int | None, reason: str, run_id: str | None) -> Batch:
    """Lock the tasks and materialise the spans whole (not from their cursors), in chunks
    of time when many symbols share them (_chunk_length)."""
    tasks, failed = _load(conn, tf, sorted({s.symbol for s in spans}), as_of, lock=True)
    runnable = [s for s in spans if s.symbol in tasks]
    chunk = _chunk_length(tf, runnable, tasks)
    if chunk is None:
        pieces = list(enumerate(runnable))
    else:
        delay = max(tasks[s.symbol].delay for s in runnable)
        pieces = _cut(runnable, chunk, as_of - delay - tf.step)
    results = _materialize(conn, tf, _requests(tf, [p for _, p in pieces], tasks, as_of, False),
                           as_of, version=version, reason=reason, run_id=run_id, chunk=chunk)
    return Batch(_joined(results, [i for i, _ in pieces]), failed)


def _requests(tf: Timeframe, spans: list[Span], tasks: dict[str, TaskView], as_of: datetime,
              incremental: bool) -> list[tuple[int, TaskView, Bounds]]:
    # most symbols of a live run share their range and their task's position: their bounds
    # are computed once
    found: dict[tuple, Bounds] = {}
    requests = []
    for i, span in enumerate(s for s in spans if s.symbol in tasks):
        task = tasks[span.symbol]
        key = (span.start, span.end, task.cursor, task.agg_start, task.delay,
               task.fingerprint_through, task.retained_from, task.calendar)
        if key not in found:
            found[key] = request_bounds(task, tf, span.start, span.end, as_of,
                                        incremental=incremental)
        requests.append((i, task, found[key]))
    return requests


def _with_work(conn: psycopg.Connection, tf: Timeframe, spans: list[Span], as_of: datetime
               ) -> tuple[list[str], dict[str, datetime], dict[str, AggregationError]]:
    """An incremental batch's symbols with something to do, those without (their cursors),
    and those without a task (tasks_with_work.sql: no locks, one index probe each)."""
    table, active_only = _source(tf)
    rows = conn.execute(queries.query("tasks_with_work", source_table=table,
                                      active_only=active_only), {
        "requests": json.dumps([{"symbol": s.symbol, "start_at": s.start.isoformat(),
                                 "end_at": s.end.isoformat()} for s in spans]),
        "timeframe": tf.name, "source_timeframe": tf.source, "interval_minutes": tf.minutes,
        "step": windows.sql_interval(tf.step), "as_of": as_of,
        # per calendar whose windows `tf` follows: the start of its first window not ended
        "edges": json.dumps({name: timeframes.grid(tf, name).edge(as_of).isoformat()
                             for name, calendar in timeframes.CALENDARS.items()
                             if calendar.follows(tf.step)}),
    }, prepare=False).fetchall()
    busy = {symbol for symbol, is_busy, _, _ in rows if is_busy}
    idle = {symbol: windows.utc(cursor) for symbol, is_busy, cursor, _ in rows
            if symbol not in busy}
    absent = sorted({s.symbol for s in spans} - {row[0] for row in rows})
    return sorted(busy), idle, _missing(conn, tf, absent)


def _load_and_run(conn: psycopg.Connection, tf: Timeframe, spans: list[Span], as_of: datetime,
                  *, version: int | None, reason: str, run_id: str | None,
                  incremental: bool) -> Batch:
    """Lock the tasks and materialise. An incremental batch locks (and writes) only the
    tasks with something to do: a tick in which most symbols have nothing new touches none of
    their rows."""
    if not incremental:
        return _full_read(conn, tf, spans, as_of, version=version, reason=reason,
                          run_id=run_id)
    busy, idle, failed = _with_work(conn, tf, spans, as_of)
    tasks, broken = _load(conn, tf, busy, as_of, lock=True) if busy else ({}, {})
    results = _materialize(conn, tf, _requests(tf, spans, tasks, as_of, True), as_of,
                           version=version, reason=reason, run_id=run_id)
    return Batch(results, {**failed, **broken}, idle)


def aggregate_many(
    conn: psycopg.Connection,
    timeframe: str,
    spans: Iterable[Span],
    *,
    now: datetime | None = None,
    derivation_version: int | None = None,
    reason: str = Revision.MANUAL,
    run_id: str | None = None,
    incremental: bool = False,
) -> Batch:
    """Materialise every final window of each span's [start, end) for one target timeframe.

    A window is labelled by its start; windows whose start lies in a span are considered, and
    those not final at `now` (window end + aggregation delay, or complete: contract 6) are
    left alone but for the forming bar. `now` defaults to the database clock. One
    transaction (a savepoint when the caller holds one) for every span. A symbol whose task
    cannot run (missing, misconfigured, NULL cursor) is in `failed` and the others run.
    `incremental` (live runs) reads each symbol from its cursor when the days before it are
    fingerprinted (bounds.request_bounds). Every bar restated or withdrawn keeps its previous
    version in derived_bar_revisions, labelled with `reason` (a reasons.Revision) and `run_id`.
    """
    tf, checked = _validate_spans(conn, timeframe, spans)
    _validate_version(derivation_version)
    reason = _validate_reason(reason, run_id)
    with conn.transaction():
        as_of = _resolve_as_of(conn, now)
        if not checked:
            return Batch([], {})
        batch = _load_and_run(conn, tf, checked, as_of, version=derivation_version,
                              reason=reason, run_id=run_id, incremental=incremental)
    invalid = [r for r in batch.results if r.source_rows_invalid]
    for result in invalid[:20]:
        log.warning("%s / %s: %d invalid source rows excluded since %s", result.symbol,
                    tf.name, result.source_rows_invalid, result.read_from.isoformat())
    if len(invalid) > 20:
        log.warning("... and %d more symbols with invalid source rows", len(invalid) - 20)
    return batch


def aggregate(
    conn: psycopg.Connection,
    symbol: str,
    timeframe: str,
    start: datetime,
    end: datetime,
    *,
    now: datetime | None = None,
    derivation_version: int | None = None,
    reason: str = Revision.MANUAL,
    run_id: str | None = None,
) -> AggregationResult:
    """One symbol's [start, end): `aggregate_many` with one span, raising its failure."""
    batch = aggregate_many(conn, timeframe, [Span(symbol, start, end)], now=now,
                           derivation_version=derivation_version, reason=reason, run_id=run_id)
    if batch.failed:
        raise batch.failed[symbol]
    return batch.results[0]


def rebuild_many(conn: psycopg.Connection, timeframe: str, spans: Iterable[Span], *,
                 now: datetime | None = None, run_id: str | None = None) -> Batch:
    """Soft-delete the spans' active bars and recompute them under a bumped derivation_version.

    For operators: after a change of derivation rules, or to rewrite a range from scratch.
    The soft-deleted rows remain and their versions go to derived_bar_revisions (reason
    `rebuild`); each task's derivation_version stays bumped for later runs. Bars whose source
    was removed by retention are kept (contract 16).
    """
    tf, checked = _validate_spans(conn, timeframe, spans)
    _validate_reason(Revision.REBUILD, run_id)
    with conn.transaction():
        as_of = _resolve_as_of(conn, now)
        symbols = sorted({s.symbol for s in checked})
        tasks, failed = _load(conn, tf, symbols, as_of, lock=True)
        runnable = [s for s in checked if s.symbol in tasks]
        if not runnable:
            return Batch([], failed)
        conn.execute(
            "UPDATE data_agg_state SET derivation_version = derivation_version + 1 "
            "WHERE timeframe = %s AND canonical_symbol = ANY (%s::text[])",
            (tf.name, sorted({s.symbol for s in runnable})))
        bounds = [request_bounds(tasks[s.symbol], tf, s.start, s.end, as_of, incremental=False)
                  for s in runnable]
        deleted = dict(conn.execute(queries.query("soft_delete_ranges"), {
            "symbols": [s.symbol for s in runnable], "lo": [b.lo for b in bounds],
            "hi": [b.hi for b in bounds], "timeframe": tf.name,
            "retention_applies": tf.reads_data_bars, "run_id": run_id,
            "reason": str(Revision.REBUILD),
        }, prepare=False).fetchall())
        batch = aggregate_many(conn, tf.name, runnable, now=as_of, reason=Revision.REBUILD,
                               run_id=run_id)
    results = []
    for result in batch.results:  # the soft-deleted bars, once per symbol
        results.append(replace(result, bars_soft_deleted=deleted.pop(result.symbol, 0)))
    return Batch(results, {**failed, **batch.failed})


def rebuild_range(conn: psycopg.Connection, symbol: str, timeframe: str, start: datetime,
                  end: datetime, *, now: datetime | None = None,
                  run_id: str | None = None) -> AggregationResult:
    """One symbol's `rebuild_many`, raising its failure."""
    batch = rebuild_many(conn, timeframe, [Span(symbol, start, end)], now=now, run_id=run_id)
    if batch.failed:
        raise batch.failed[symbol]
    return batch.results[0]
