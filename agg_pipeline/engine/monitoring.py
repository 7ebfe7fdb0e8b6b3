"""Invariants of the seeds as plain functions: each returns whether it holds and who breaks it.

The Dagster asset checks (defs/checks.py) call these; so can anything else. A `Scope`
narrows a check to the symbols and days a run touched; no scope means everything.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

import psycopg
from psycopg.rows import dict_row

from agg_pipeline.db import queries
from agg_pipeline.engine import aggregate as engine
from agg_pipeline.engine import health, timeframes, windows

OFFENDER_LIMIT = 50


@dataclass(frozen=True)
class Scope:
    """Symbols and their day ranges (inclusive); None: every symbol, all time. `recent`: the
    run wrote only windows this close before each cursor (a live run's incremental read),
    so a recomputation looks at no more than that."""

    days_by_symbol: dict[str, list[tuple[date, date]]] | None = None
    recent: timedelta | None = None

    @property
    def symbols(self) -> list[str] | None:
        return None if self.days_by_symbol is None else sorted(self.days_by_symbol)

    def bounds(self) -> tuple[datetime | None, datetime | None]:
        if not self.days_by_symbol:
            return None, None
        spans = [span for spans in self.days_by_symbol.values() for span in spans]
        first = min(s[0] for s in spans)
        last = max(s[1] for s in spans)
        start = datetime.combine(first, datetime.min.time(), tzinfo=windows.ORIGIN.tzinfo)
        return start, datetime.combine(last, datetime.min.time(),
                                       tzinfo=windows.ORIGIN.tzinfo) + windows.DAY


@dataclass
class Outcome:
    passed: bool
    summary: dict[str, object] = field(default_factory=dict)
    offenders: list[dict] = field(default_factory=list)


def _rows(conn: psycopg.Connection, name: str, params: dict) -> list[dict]:
    """The query's rows, instants in UTC whatever the session's TimeZone (offenders show
    UTC, and day arithmetic on them is on UTC days)."""
    with conn.cursor(row_factory=dict_row) as cur:
        return [windows.utc_values(row) for row in cur.execute(queries.query(name), params)]


def cursor_not_ahead(conn: psycopg.Connection, timeframe: str, scope: Scope) -> Outcome:
    """Contract 7 with the corrected bound: cursor <= floor(frontier, interval) + interval;
    a NULL cursor fails."""
    rows = [health.on_calendar(r) for r in _rows(conn, "check_cursor_not_ahead",
                                                 {"timeframe": timeframe,
                                                  "symbols": scope.symbols})]
    bad = [r for r in rows if r["cursor_status"] in ("AHEAD", "NULL", "BAD_CONFIG")]
    return Outcome(not bad, {"tasks_checked": len(rows), "offending_tasks": len(bad)}, bad)


def freshness(conn: psycopg.Connection, timeframe: str, scope: Scope, *,
              max_minutes_since_success: float, schedule_period_minutes: float) -> Outcome:
    """A task is stale when work has waited longer than one window, its delay and one schedule
    period, or when work is pending and the last success is too old. A closed market
    (no new source, nothing pending) is never stale."""
    rows = [_on_calendar_gap(r) for r in _rows(conn, "check_freshness",
                                                {"timeframe": timeframe,
                                                 "symbols": scope.symbols})]
    stale = []
    for row in rows:
        if row["gap"] is None:
            continue  # no source at all yet: nothing to be late with
        allowed = row.get("window", timedelta(minutes=row["run_interval_minutes"])) + timedelta(
            minutes=schedule_period_minutes, seconds=row["aggregation_delay_seconds"] or 0)
        pending = row["gap"] > timedelta(0)
        since = row["minutes_since_success"]
        reasons = []
        if row["gap"] > allowed:
            reasons.append(f"lag {row['gap']} > allowed {allowed}")
        if pending and (since is None or float(since) > max_minutes_since_success):
            reasons.append(f"work pending and last success {since} min ago "
                           f"(limit {max_minutes_since_success})")
        if reasons:
            stale.append({**row, "why": "; ".join(reasons)})
    worst = max((r["gap"] for r in rows if r["gap"] is not None), default=timedelta(0))
    return Outcome(not stale, {"tasks_checked": len(rows), "stale_tasks": len(stale),
                               "max_lag_minutes": worst.total_seconds() / 60}, stale)


def _on_calendar_gap(row: dict) -> dict:
    """A task on a calendar: its gap to the end of its frontier's window, and that window's
    own length (a session of 23 hours, a 30-minute last hour) in place of the interval."""
    row = health.on_calendar(row)
    if "frontier_window_start" not in row:
        return row
    end, start = row.pop("frontier_window_end"), row.pop("frontier_window_start")
    return {**row, "gap": end - row["cursor_ts"], "window": end - start}


def ohlc_sane(conn: psycopg.Connection, timeframe: str, scope: Scope) -> Outcome:
    start, end = scope.bounds()
    row = _rows(conn, "check_ohlc_sane", {"timeframe": timeframe, "symbols": scope.symbols,
                                          "start": start, "end": end,
                                          "limit": OFFENDER_LIMIT})[0]
    return Outcome(row["violations"] == 0,
                   {"bars_checked": row["checked"], "violations": row["violations"]},
                   row["sample"])


def bars_before_start(conn: psycopg.Connection, timeframe: str, scope: Scope) -> Outcome:
    rows = _rows(conn, "check_bars_before_start",
                 {"timeframe": timeframe, "symbols": scope.symbols})
    return Outcome(not rows, {"offending_tasks": len(rows),
                              "bars_before_start": sum(r["bars"] for r in rows)}, rows)


def stray_source_rows(conn: psycopg.Connection, scope: Scope) -> Outcome:
    """Rows of data_bars that no rung of the ladder reads (not 1m), per symbol: an ingester
    writing the wrong timeframe, or data that belongs elsewhere. Never aggregated, never lost:
    counted here, on the health view and by `agg-pipeline status`."""
    rows = _rows(conn, "check_stray_source_rows", {"symbols": scope.symbols})
    return Outcome(not rows, {"stray_rows": sum(r["rows"] for r in rows),
                              "symbols_with_stray_rows": len({r["canonical_symbol"]
                                                              for r in rows})},
                   rows[:OFFENDER_LIMIT])


def failed_tasks(conn: psycopg.Connection, timeframe: str) -> Outcome:
    """hard_failed tasks and disabled mandatory tasks fail; auto-disabled optional tasks are
    listed but only fail the check when mandatory."""
    rows = _rows(conn, "check_failed_tasks", {"timeframe": timeframe})
    failing = [r for r in rows if r["status"] == "hard_failed" or r["is_mandatory"]]
    return Outcome(not failing, {"failed_tasks": len(failing),
                                 "disabled_optional_tasks": len(rows) - len(failing)}, rows)


def poor_quality(conn: psycopg.Connection, timeframe: str, scope: Scope, *, days: int,
                 max_share: float) -> Outcome:
    rows = _rows(conn, "check_quality", {"timeframe": timeframe, "symbols": scope.symbols,
                                         "days": days})
    offenders = [{**r, "share": round(r["poor"] / r["bars"], 4)} for r in rows
                 if r["bars"] and r["poor"] / r["bars"] > max_share]
    return Outcome(not offenders, {"symbols_checked": len(rows),
                                   "symbols_over_threshold": len(offenders),
                                   "window_days": days, "max_share": max_share}, offenders)


@dataclass(frozen=True)
class Recheck:
    """A rolled-back recomputation of many tasks of one timeframe (`recheck`)."""

    pending_days: dict[str, set[date]]  # days whose fingerprint changed since materialised
    captured_days: dict[str, set[date]]  # days with a captured change pending (migration 012)
    changed: dict[str, list[dict]]  # windows the recomputation would write (ts_utc, problem)
    windows_checked: int
    busy: list[str]  # a run holds the task: not rechecked
    errors: dict[str, str]  # the task cannot run (misconfigured, NULL cursor): why


def recheck(conn: psycopg.Connection, timeframe: str, spans: list[engine.Span], *,
            as_of: datetime | None = None, skip_busy: bool = False) -> Recheck:
    """Recompute the spans from source in one transaction that is rolled back, and list the
    windows that would change and the days whose fingerprint no longer matches (late data
    the late-data sensor re-materialises). `skip_busy` leaves out tasks a run holds
    instead of waiting for them."""
    busy: list[str] = []
    with conn.transaction(force_rollback=True):
        if skip_busy and spans:
            free = {r[0] for r in conn.execute(
                "SELECT canonical_symbol FROM data_agg_state WHERE timeframe = %s "
                "AND canonical_symbol = ANY (%s::text[]) FOR UPDATE SKIP LOCKED",
                (timeframe, sorted({s.symbol for s in spans})))}
            busy = sorted({s.symbol for s in spans} - free)
            spans = [s for s in spans if s.symbol in free]
        arrays = {"timeframe": timeframe, "symbols": [s.symbol for s in spans],
                  "starts": [s.start for s in spans], "ends": [s.end for s in spans]}
        pending: dict[str, set[date]] = {}
        captured: dict[str, set[date]] = {}
        for row in _rows(conn, "recheck_pending_days", arrays):
            found = pending if row["kind"] == "fingerprint" else captured
            found.setdefault(row["symbol"], set()).add(row["day"])
        batch = engine.aggregate_many(conn, timeframe, spans, now=as_of)
        changed: dict[str, list[dict]] = {}
        if any(r.rows_written for r in batch.results):
            for row in _rows(conn, "recheck_changed_windows", arrays):
                changed.setdefault(row.pop("symbol"), []).append(row)
    conn.rollback()
    return Recheck(pending, captured, changed, sum(r.windows_seen for r in batch.results), busy,
                   {s: f"{type(e).__name__}: {e}" for s, e in batch.failed.items()})


def matches_source(conn: psycopg.Connection, timeframe: str, scope: Scope, *,
                   sample: timedelta) -> Outcome:
    """Recompute the `sample` before each cursor (the scope's `recent` when shorter; at least
    two windows; within the scope) from source, in a transaction that is rolled back, and
    list the windows that would change.

    A window in a day whose 1m rows changed after its last materialisation (its recorded
    fingerprint no longer matches, or a captured change is pending) is pending late data,
    which the late-data sensor re-materialises: counted, not failed (a live run reads only
    from its cursor and leaves a correction behind it to that sensor). Without this, a row
    landing between a run's write and its check would fail the run under a live feed.
    Timeframes that read derived bars record no fingerprints, so every mismatch of theirs
    fails.
    """
    tf = timeframes.get(timeframe)
    with conn.cursor() as cur:
        tasks = cur.execute(
            "SELECT canonical_symbol, last_agg_bar_ts_utc FROM data_agg_state "
            "WHERE timeframe = %s AND status <> 'retired' AND last_agg_bar_ts_utc IS NOT NULL "
            "AND (%s::text[] IS NULL OR canonical_symbol = ANY (%s::text[])) ORDER BY 1",
            (timeframe, scope.symbols, scope.symbols)).fetchall()
    conn.rollback()
    scope_start, scope_end = scope.bounds()
    sample = max(min(sample, scope.recent or sample), 2 * tf.step)
    spans = []
    for symbol, cursor in tasks:
        cursor = windows.utc(cursor)  # `cursor - days` in the session's zone is wall-clock
        end = min(cursor, scope_end) if scope_end else cursor
        start = end - sample
        if scope_start:
            start = max(start, scope_start)
        if end > start:
            spans.append(engine.Span(symbol, start, end))
    found = recheck(conn, timeframe, spans)
    offenders: list[dict] = []
    pending = 0
    for symbol, rows in sorted(found.changed.items()):
        late = found.pending_days.get(symbol, set()) | found.captured_days.get(symbol, set())
        for row in rows:
            if windows.utc_date(row["ts_utc"]) in late:
                pending += 1
            else:
                offenders.append({"symbol": symbol, **row})
    return Outcome(not offenders, {"windows_checked": found.windows_checked,
                                   "mismatched_windows": len(offenders),
                                   "pending_late_data_windows": pending,
                                   "sample_minutes": sample // timedelta(minutes=1),
                                   "interval_minutes": tf.minutes},
                   offenders[:OFFENDER_LIMIT])
