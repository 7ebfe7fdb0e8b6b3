"""What the schedule and the sensors should run: plain functions over the task table.

`plan_catchup` says, per symbol, which timeframes have final windows past their cursor and
which UTC days a run must cover to bring them up to their frontier (contracts 7, 8, 12).
`late_days` finds days whose source rows changed after they were materialised (contract 10).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

import psycopg
from psycopg.rows import dict_row

from agg_pipeline.db import queries
from agg_pipeline.engine import timeframes, windows


@dataclass(frozen=True)
class TaskState:
    symbol: str
    timeframe: str
    cursor: datetime
    target: datetime  # the cursor a full catch-up would reach now
    frontier: datetime | None  # newest usable source row
    order: tuple  # contract 12 sort key

    @property
    def behind(self) -> bool:
        return self.target > self.cursor


@dataclass(frozen=True)
class SymbolWork:
    """One run: these timeframes of this symbol over [first_day, last_day]."""

    symbol: str
    timeframes: tuple[str, ...]  # ladder order
    first_day: date
    last_day: date
    signature: str  # changes whenever the work to do changes (run keys)
    order: tuple = field(compare=False)


@dataclass(frozen=True)
class Plan:
    work: list[SymbolWork]
    problems: dict[tuple[str, str], str]  # (symbol, timeframe) -> why it cannot be planned
    tasks: list[TaskState]


def _order(row: dict) -> tuple:
    """Contract 12: mandatory first, 5m before 1h, task_priority ascending, least recently
    successful first (never-run first)."""
    last = row["last_successful_at_utc"]
    return (
        not row["is_mandatory"],
        timeframes.get(row["timeframe"]).minutes,
        row["task_priority"],
        last is not None,
        last or datetime.min,
    )


def _task_state(row: dict, as_of: datetime) -> TaskState | str:
    """The task's catch-up target, or why it cannot have one."""
    name = row["timeframe"]
    if name not in timeframes.TIMEFRAMES:
        return f"unknown timeframe {name!r}"
    tf = timeframes.TIMEFRAMES[name]
    if row["source_timeframe"] != tf.source or row["run_interval_minutes"] != tf.minutes:
        return (f"configured as {row['source_timeframe']!r} every "
                f"{row['run_interval_minutes']} min; {name} needs {tf.source} every {tf.minutes}")
    if row["last_agg_bar_ts_utc"] is None:
        return "cursor is NULL"
    delay = row["aggregation_delay_seconds"]
    if delay is None or delay < 0:
        return f"aggregation_delay_seconds is {delay!r}"
    cursor = row["last_agg_bar_ts_utc"]
    final_end = windows.floor(as_of - timedelta(seconds=delay), tf.step)
    frontier = row["frontier_ts"]
    target = cursor if frontier is None else min(final_end,
                                                  windows.floor(frontier, tf.step) + tf.step)
    return TaskState(row["canonical_symbol"], name, cursor, max(cursor, target), frontier,
                     _order(row))


def _day(value: datetime) -> date:
    return windows.day_start(value).date()


def plan_catchup(
    conn: psycopg.Connection, as_of: datetime, *, roots_only: bool = False,
    first_day: date | None = None,
) -> Plan:
    """Per symbol, the timeframes behind their frontier and the days to run.

    A timeframe behind brings along every enabled timeframe derived from it (a run always
    rebuilds downstream of what it changed). `roots_only` considers only timeframes read from
    data_bars as triggers (the frontier sensor); the schedule considers all. Days before
    `first_day` (the first day partition) are never requested. Ordered by contract 12.
    """
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(queries.query("plan_tasks"), {"as_of": as_of}).fetchall()
    problems: dict[tuple[str, str], str] = {}
    states: list[TaskState] = []
    for row in rows:
        state = _task_state(row, as_of)
        if isinstance(state, str):
            problems[(row["canonical_symbol"], row["timeframe"])] = state
        else:
            states.append(state)

    by_symbol: dict[str, dict[str, TaskState]] = {}
    for state in states:
        by_symbol.setdefault(state.symbol, {})[state.timeframe] = state

    work: list[SymbolWork] = []
    for symbol, tasks in by_symbol.items():
        triggers = [t for t in tasks.values() if t.behind and (
            not roots_only or timeframes.get(t.timeframe).reads_data_bars)]
        if not triggers:
            continue
        selected = {t.timeframe for t in triggers}
        for trigger in triggers:
            selected.update(d.name for d in timeframes.downstream(trigger.timeframe)
                            if d.name in tasks)
        chosen = [tasks[tf.name] for tf in timeframes.ORDERED if tf.name in selected]
        first = min(_day(t.cursor) for t in chosen)
        last = max(_day(max(t.target, t.cursor) - timedelta(microseconds=1)) for t in chosen)
        if first_day is not None:
            first = max(first, first_day)
        last = max(last, first)
        signature = hashlib.sha1(
            "|".join(f"{t.timeframe}:{t.cursor.isoformat()}:{t.target.isoformat()}"
                     for t in chosen).encode()
        ).hexdigest()[:12]
        work.append(SymbolWork(symbol, tuple(t.timeframe for t in chosen), first, last,
                               signature, min(t.order for t in triggers)))
    work.sort(key=lambda w: (w.order, w.symbol))
    return Plan(work=work, problems=problems, tasks=sorted(states, key=lambda s: s.order))


@dataclass(frozen=True)
class LateDays:
    symbol: str
    days: tuple[date, ...]
    fingerprint: str  # of the rows now present: a new landing gives a new fingerprint


def late_days(conn: psycopg.Connection, since: datetime, as_of: datetime) -> list[LateDays]:
    """Symbols and UTC days whose source rows changed after their materialisation."""
    roots = [tf for tf in timeframes.ORDERED if tf.reads_data_bars]
    found: dict[str, list[tuple]] = {}
    for tf in roots:
        with conn.cursor() as cur:
            for row in cur.execute(queries.query("late_source_days"),
                                   {"since": since, "as_of": as_of, "timeframe": tf.name}):
                found.setdefault(row[0], []).append(row[1:])
    result = []
    for symbol, rows in sorted(found.items()):
        days = tuple(sorted({r[0] for r in rows}))
        fingerprint = hashlib.sha1(repr(sorted(rows)).encode()).hexdigest()[:12]
        result.append(LateDays(symbol, days, fingerprint))
    return result
