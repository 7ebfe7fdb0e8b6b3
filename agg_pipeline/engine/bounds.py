"""Where each engine request reads and writes: pure window arithmetic, no database.

A request is one symbol's [start, end) of one timeframe, judged at one instant (`as_of`).
Its `Bounds` say which windows are final (SPEC contract 6: by the confirmation delay, or as
soon as they are complete), which source rows are read (all of the range, or for an
incremental live read only those from the cursor on), which UTC days get a fingerprint and
which captured changes are consumed; `cursor_after` applies contracts 7 and 8 to what the
statement found final. Windows are those of the task's grid: the UTC grid, or its calendar's
(contract 15; calendars.py), whose windows may leave gaps (between sessions) and differ in
length, so "floor" is the start of the first window not yet ended (`edge`) and a cursor may
rest at a window's end.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta

from agg_pipeline.engine import calendars, timeframes, windows
from agg_pipeline.engine.timeframes import Timeframe


@dataclass(frozen=True)
class TaskView:
    """What the engine needs of one task row (tasks_for_update.sql), read under its lock;
    every instant in UTC."""

    symbol: str
    cursor: datetime
    agg_start: datetime
    delay: timedelta
    derivation_version: int
    skip_zero_volume: bool
    forming: bool
    frontier: datetime | None  # newest usable source row now
    fingerprint_through: datetime | None  # end of the cursor's day's recorded fingerprint
    retained_from: datetime | None  # the source's declared retention horizon (contract 16)
    forming_through: datetime | None = None  # the frontier its forming bar reflects
    calendar: str | None = None  # the calendar its windows follow (None: the UTC grid)
    # a source bar written behind its cursor since it last read (derived timeframes only)
    source_restated_from: datetime | None = None

    @property
    def forming_work(self) -> bool:
        """Its forming bar lags the frontier, or one is left over from before it opted out."""
        if not self.forming:
            return self.forming_through is not None
        return self.frontier is not None and (self.forming_through is None
                                              or self.frontier > self.forming_through)


def task_grid(task: TaskView, tf: Timeframe) -> calendars.Grid:
    return timeframes.grid(tf, task.calendar)


@dataclass(frozen=True)
class Bounds:
    """One request's windows and reads (aggregate_windows.sql's header says what each is)."""

    lo: datetime
    hi: datetime
    final_to: datetime
    read_from: datetime
    record_from: datetime
    record_limit: datetime
    consume_from: datetime | None
    range_end: datetime  # the forming bar is looked for in [final_hi, range_end)
    incremental: bool


def request_bounds(task: TaskView, tf: Timeframe, start: datetime, end: datetime,
                   as_of: datetime, *, incremental: bool) -> Bounds:
    """The bounds of [start, end) for `task` at `as_of`.

    `incremental` (live runs) reads from the cursor instead of the range's start when what
    lies before it was read and fingerprinted by earlier runs: for a timeframe read from
    data_bars, when the cursor's day's fingerprint ends at the cursor (or the cursor is the
    day's start); for one read from derived bars, unless a source bar was written behind its
    cursor since (source_restated_from, migration 022: a live 5m read of a whole day that
    consumed a correction). Source rows a late-data run
    re-reads are then never missed: late rows before the cursor change the fingerprint.
    """
    grid = task_grid(task, tf)
    # windows starting in [start, end); on a calendar also the one `start` falls in (a session
    # opened the evening before): a changed source row of the range changes it too
    lo = grid.edge(start) if isinstance(grid, calendars.CalendarGrid) else grid.ceil(start)
    if task.retained_from is not None and tf.reads_data_bars:
        lo = max(lo, grid.ceil(task.retained_from))  # frozen before it
    range_end = max(grid.ceil(end), lo)
    hi = max(min(range_end, grid.edge(as_of - task.delay)), lo)
    final_to = max(min(range_end, grid.edge(as_of)), hi)
    read_from = max(lo, grid.ceil(task.agg_start))
    cursor = grid.ceil(task.cursor)
    restated = task.source_restated_from is not None and task.source_restated_from < cursor
    chained = incremental and read_from < cursor <= final_to and not restated and (
        not tf.reads_data_bars or cursor == windows.day_start(cursor)
        or (task.fingerprint_through is not None and task.fingerprint_through == cursor))
    if chained:
        lo = read_from = cursor
    if not tf.reads_data_bars:
        record_from = record_limit = lo  # fingerprints are of data_bars only
    else:
        record_from = (windows.day_start(read_from) if chained
                       else windows.ceil(lo, windows.DAY))
        record_limit = max(record_from, windows.floor(end, windows.DAY))
    return Bounds(lo=lo, hi=hi, final_to=final_to, read_from=read_from,
                  record_from=record_from, record_limit=record_limit,
                  consume_from=read_from if chained else None, range_end=range_end,
                  incremental=chained)


def cursor_after(task: TaskView, tf: Timeframe, bounds: Bounds, cursor: datetime,
                 final_hi: datetime) -> datetime:
    """The cursor once the request's final windows (up to `final_hi`, the first that is not)
    are materialised: forward only, never past the end of the window holding the newest
    source row (contract 7), passing over empty windows behind newer data (contract 8).
    `cursor` is the task's cursor before (or after an earlier request of the same run)."""
    grid = task_grid(task, tf)
    if task.frontier is None or bounds.lo > grid.ceil(cursor):
        return cursor  # (an off-grid cursor points at the window starting at its next boundary)
    return max(cursor, min(final_hi, grid.frontier_end(task.frontier)))


def windows_seen(bounds: Bounds, final_hi: datetime, grid: calendars.Grid) -> dict[date, int]:
    """Final windows of the request per UTC day of their start, on or after agg_start_utc
    (read_from)."""
    seen: dict[date, int] = {}
    if isinstance(grid, calendars.CalendarGrid):
        for window in grid.windows(bounds.read_from, final_hi):
            day = windows.utc_date(window.start)
            seen[day] = seen.get(day, 0) + 1
        return seen
    day = windows.day_start(bounds.read_from)
    while day < final_hi:
        count = (min(day + windows.DAY, final_hi) - max(day, bounds.read_from)) // grid.step
        if count > 0:
            seen[day.date()] = count
        day += windows.DAY
    return seen
