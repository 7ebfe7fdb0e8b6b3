"""The frontier-health view (v_aggregation_frontier_health) for people and checks: one row
per task, with its lag (sql/queries/frontier_health.sql), and `agg-pipeline status`'s table."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from decimal import Decimal

import psycopg
from psycopg.rows import dict_row

from agg_pipeline.db import queries
from agg_pipeline.engine import timeframes, windows


def _ladder_rank(timeframe: str) -> int:
    known = [tf.name for tf in timeframes.ORDERED]
    return known.index(timeframe) if timeframe in known else len(known)


def _ladder_minutes() -> dict[str, list]:
    """Every timeframe's length in minutes, 1m included, as the query's bound arrays."""
    names = [timeframes.ROOT_TIMEFRAME, *(tf.name for tf in timeframes.ORDERED)]
    minutes = [timeframes.ROOT_MINUTES, *(tf.minutes for tf in timeframes.ORDERED)]
    return {"ladder_names": names, "ladder_minutes": minutes}


def on_calendar(row: dict) -> dict:
    """A health-view row of a task on a calendar (window_calendar) with the exact end of the
    window holding its frontier, and its cursor status by it (the view's own bound, plain SQL,
    is frontier + interval: contract 15's windows are the engine's arithmetic). Other rows are
    returned as they are."""
    calendar, frontier = row.get("window_calendar"), row.get("source_frontier_ts")
    tf = timeframes.TIMEFRAMES.get(row["timeframe"])
    if not calendar or calendar not in timeframes.CALENDARS or tf is None or frontier is None:
        return row
    grid = timeframes.grid(tf, calendar)
    end = grid.frontier_end(windows.utc(frontier))
    status = row.get("cursor_status")
    if status in ("OK", "AHEAD"):
        status = "AHEAD" if windows.utc(row["cursor_ts"]) > end else "OK"
    # (the window ending there: a calendar's windows differ in length)
    start = max(w.start for w in grid.windows(end - 2 * grid.step, end))
    return {**row, "frontier_window_end": end, "frontier_window_start": start,
            "cursor_status": status}


def _calendar_lag(row: dict, judged_at: datetime) -> dict:
    """`due_through` and `lag` of a task on a calendar: the newest window ended by its delay,
    never past the frontier's window (a complete window that is final early is not seen
    here: the lag may read up to the delay longer)."""
    row = on_calendar(row)
    if not row.get("window_calendar") or row.get("cursor_ts") is None \
            or row.get("source_frontier_ts") is None or row["cursor_status"] == "BAD_CONFIG":
        return row
    grid = timeframes.grid(timeframes.get(row["timeframe"]), row["window_calendar"])
    delay = timedelta(seconds=row["aggregation_delay_seconds"])
    due = min(grid.edge(windows.utc(judged_at) - delay), row["frontier_window_end"])
    return {**row, "due_through": due,
            "lag": max(due - windows.utc(row["cursor_ts"]), timedelta(0))}


def frontier_health(conn: psycopg.Connection, *, now: datetime | None = None) -> list[dict]:
    """One dict per task, by symbol and then in ladder order (5m, 15m, 1h, 4h, 1d); `lag` is
    how far its cursor is behind the end of the newest window final at `now` (default: the
    database's now()); zero: caught up."""
    with conn.cursor(row_factory=dict_row) as cur:
        rows = [windows.utc_values(row) for row in cur.execute(
            queries.query("frontier_health"), {**_ladder_minutes(), "now": now})]
    rows = [_calendar_lag(row, row.pop("judged_at")) for row in rows]
    return sorted(rows, key=lambda r: (r["canonical_symbol"], _ladder_rank(r["timeframe"])))


def timestamp(value: datetime, *, seconds: bool = False) -> str:
    """UTC `YYYY-MM-DD HH:MM` (with `:SS` when asked, or when the instant has seconds)."""
    if value.tzinfo is not None:  # the session's zone otherwise: every time shown is UTC
        value = windows.utc(value)
    if seconds or value.second or value.microsecond:
        return f"{value:%Y-%m-%d %H:%M:%S}"
    return f"{value:%Y-%m-%d %H:%M}"


def minutes_text(value: timedelta | float | Decimal) -> str:
    """Whole minutes, thousands grouped: every duration `status` prints is in this one unit."""
    minutes = value.total_seconds() / 60 if isinstance(value, timedelta) else float(value)
    return f"{round(minutes):,} min"


def lag_text(row: dict) -> str:
    lag = row.get("lag")
    if lag is None:
        return "-"  # no cursor, no source row yet, or a misconfigured task
    return "caught up" if lag <= timedelta(0) else minutes_text(lag)


def task_status(row: dict) -> str:
    """The task's status, and `paused` when an operator set enabled = false (an automatic
    `disabled` sets it too, and says so itself)."""
    if row["enabled"] or row["status"] == "disabled":
        return row["status"]
    return "paused" if row["status"] == "idle" else f"{row['status']}, paused"


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, datetime):
        return timestamp(value)
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


# (title, how to print the row's value); `agg-pipeline status --help` explains each title
STATUS_COLUMNS = (
    ("symbol", lambda r: r["canonical_symbol"]),
    ("tf", lambda r: r["timeframe"]),
    ("cursor", lambda r: _cell(r["cursor_ts"])),
    ("frontier", lambda r: _cell(r["source_frontier_ts"])),
    ("lag", lag_text),
    ("cursor status", lambda r: _cell(r["cursor_status"])),
    ("task status", lambda r: task_status(r)),
    ("since success", lambda r: "-" if r["minutes_since_success"] is None
     else minutes_text(r["minutes_since_success"])),
    ("fail streak", lambda r: _cell(r["hard_fail_streak"])),
    ("stray rows", lambda r: _cell(r["stray_source_rows"])),  # on the task reading data_bars
)
RIGHT_ALIGNED_STATUS = {"lag", "since success", "fail streak", "stray rows"}


def format_table(rows: list[dict]) -> str:
    """`agg-pipeline status`'s table: one line per task."""
    titles = [title for title, _ in STATUS_COLUMNS]
    body = [[show(row) for _, show in STATUS_COLUMNS] for row in rows]
    right = [i for i, title in enumerate(titles) if title in RIGHT_ALIGNED_STATUS]
    return text_table(titles, body, right=right)


def text_table(titles: Sequence[str], body: Sequence[Sequence[str]], *,
               right: Sequence[int] = ()) -> str:
    """A plain-text table: a title line, a rule, one line per row; columns two spaces apart,
    those in `right` (indexes) right-aligned, trailing blanks stripped."""
    widths = [max(len(line[i]) for line in [titles, *body]) for i in range(len(titles))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(text.rjust(width) if i in right else text.ljust(width)
                         for i, (text, width) in enumerate(zip(cells, widths, strict=True)))

    lines = [line(titles), "  ".join("-" * width for width in widths), *map(line, body)]
    return "\n".join(text.rstrip() for text in lines)
