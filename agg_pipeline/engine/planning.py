"""The live path's one planner: what the schedule and the sensors run (plain Python + SQL).

Work is found per symbol in UTC days:
- `catchup_work`: timeframes with final windows past their cursor, and what derives from them
  (contracts 6-8): the schedule (every timeframe) and the frontier sensor (roots only).
- `late_work`: days already materialised whose source changed (contract 10): rows that landed
  late (by `ingested_at`) and days the change capture of migration 012 recorded as updated,
  deleted or truncated and not yet re-read.
- `reconciliation_work`: the backstop for changes made with the capture bypassed: a budgeted
  rotation over symbols re-checks recent days' fingerprints and re-aggregates them in a
  rolled-back transaction.

`plan_runs` turns work into a bounded number of runs, each a rectangle of partitions (a block
of consecutive symbols in the partitions' order x a range of days) of at most
`max_partitions` (a symbol whose own range is longer is cut along time, and its earliest range
requested first), ordered by contract 12, and claims that work in `data_agg_plan_claims` in
the same transaction, under one transaction-scoped advisory lock: requesters ticking at the
same moment in other threads or processes never request the same work twice. The planner
works in UTC days; the caller passes the time partitions' bounds (`period`) and maps runs to
partition keys.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta

import psycopg
from psycopg.rows import dict_row

from agg_pipeline.db import queries
from agg_pipeline.engine import aggregate as engine
from agg_pipeline.engine import monitoring, synthetic, timeframes, windows
from agg_pipeline.engine.reasons import Reason

PLAN_LOCK_KEY = "agg_pipeline/plan"
# A claim whose run Dagster does not know (yet) stays live this long: the daemon creates a
# sensor's or schedule's runs right after the tick returns, within seconds.
CLAIM_GRACE = timedelta(minutes=2)
# A symbol with no work of a block may ride along in it (the engine is idempotent; an
# up-to-date day costs ~2-8 ms per timeframe, a run of its own ~10 s of Dagster start-up)
# when the block covers at most this many days, and a gap of such riders is bridged when it
# adds at most this many partitions (~1-3 s of engine time).
RIDE_ALONG_DAYS = 3
RIDE_ALONG_GAP_PARTITIONS = 200

# A run's reason (engine/reasons.py): catch-up (the schedule), new complete windows and
# forming bar (the frontier sensor), late data and reconciliation (the late-data sensor).

# what a pending change of migration 012 is, for the late-data run's reason
CHANGE_CAUSES = {"update": Reason.CORRECTION, "delete": Reason.DELETION,
                 "truncate": Reason.DELETION}
LATE_ROWS = "late rows"


@dataclass(frozen=True)
class TaskState:
    symbol: str
    timeframe: str
    cursor: datetime
    target: datetime  # the cursor a full catch-up would reach now
    frontier: datetime | None  # newest usable source row
    order: tuple  # contract 12 sort key
    failing: bool = False  # hard failures since its last success (hard_failed included)
    ahead: bool = False  # cursor past the end of the window holding the newest source row
    forming_behind: bool = False  # its forming bar reflects an older frontier than the newest
    # the end of the window at its cursor: the source must reach it for the task to have a
    # window to finalise (None: unknown; always worth a run)
    next_end: datetime | None = None
    # the furthest a run now could move the cursor: past the target when the engine finds the
    # windows up to the frontier's complete (contract 6; None: the target)
    reach: datetime | None = None

    @property
    def behind(self) -> bool:
        return self.target > self.cursor


@dataclass(frozen=True)
class Tasks:
    """The schedulable tasks (contract-12 order) and the ones that cannot be planned."""

    states: list[TaskState]
    problems: dict[tuple[str, str], str]  # (symbol, timeframe) -> why

    def by_symbol(self) -> dict[str, dict[str, TaskState]]:
        found: dict[str, dict[str, TaskState]] = {}
        for state in self.states:
            found.setdefault(state.symbol, {})[state.timeframe] = state
        return found

    def failing(self) -> set[str]:
        """Symbols with a task failing hard: their work runs alone, so their failure fails
        (and stops the downstream steps of) no other symbol's run."""
        return {s.symbol for s in self.states if s.failing}

    def riders(self) -> set[str]:
        """Symbols that may ride along in a run without work of their own: every task of
        theirs is plannable, none is failing, none has a cursor ahead (its blocking
        cursor_not_ahead check would stop the run's downstream steps for every symbol)."""
        blocked = {symbol for symbol, _ in self.problems} | self.failing()
        blocked |= {s.symbol for s in self.states if s.ahead}
        return {s.symbol for s in self.states} - blocked


@dataclass(frozen=True)
class Work:
    """Days [first_day, last_day] of one symbol to (re)materialise for these timeframes."""

    symbol: str
    timeframes: tuple[str, ...]  # ladder order
    first_day: date
    last_day: date
    reason: Reason  # one of reasons.PLANNER_REASONS
    order: tuple = field(compare=False)  # contract 12 key of its most urgent task
    causes: frozenset[str] = frozenset()  # late data: late rows, correction, deletion
    days: frozenset[date] = frozenset()  # late data: the days that changed
    # catch-up: the earliest cursor day of its tasks that are behind (first_day may be an
    # earlier cursor of a task that cannot move yet, e.g. 1h before any newer 5m bar)
    moving_from: date | None = None

    @property
    def lead_day(self) -> date:
        """The first day a run of this work moves a cursor from."""
        return max(self.moving_from or self.first_day, self.first_day)


@dataclass(frozen=True)
class PlannedRun:
    """One run: `symbols` (consecutive in the partitions' order) x [first_day, last_day]."""

    plan_id: str
    symbols: tuple[str, ...]
    first_day: date
    last_day: date
    timeframes: tuple[str, ...]
    reason: str  # its run tag's text: a Reason, late data's with its days and causes
    work: tuple[Work, ...]  # what it was planned for; the other symbols ride along
    order: tuple = field(compare=False)


@dataclass(frozen=True)
class RunStates:
    """What Dagster knows of the runs of claimed plans: queued/running, or finished."""

    live: frozenset[str] = frozenset()
    finished: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Limits:
    max_runs: int  # per tick
    max_partitions: int  # symbol x period partitions per run


@dataclass(frozen=True)
class Plan:
    runs: list[PlannedRun]
    claimed: list[Work]  # overlaps work a live run was requested for: not requested again
    waiting: list[Work]  # beyond this tick's run bound, or a long range's later days: next ticks
    unsynced: list[Work]  # the symbol has no partition (yet)
    released: int  # claims released by this planner


# ----------------------------------------------------------------------------- tasks


def _order(row: dict, tf: timeframes.Timeframe) -> tuple:
    """Contract 12: mandatory first, 5m before 1h, task_priority ascending, least recently
    successful first (never-run first)."""
    last = row["last_successful_at_utc"]
    return (
        not row["is_mandatory"],
        tf.minutes,
        row["task_priority"],
        last is not None,
        last or datetime.min,
    )


def _task_state(row: dict, as_of: datetime, memo: dict[tuple, datetime]
                ) -> TaskState | str:
    """The task's catch-up target, or why it cannot have one. `memo`: window edges already
    found in this pass (every task of a timeframe shares its final edge, most share their
    frontier's window: at 10,000 symbols they were half of a tick's Python)."""
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
    if (calendar := row["window_calendar"]) and calendar not in timeframes.CALENDARS:
        return f"follows calendar {calendar!r}, which the config does not define"
    # in UTC: the session's zone would make their days local days (SPEC contract 1)
    cursor = windows.utc(row["last_agg_bar_ts_utc"])
    final_end = _window_edge(memo, tf, calendar, as_of - timedelta(seconds=delay), end=False)
    frontier = windows.utc_or_none(row["frontier_ts"])
    forming_through = windows.utc_or_none(row["forming_through"])
    frontier_end = (None if frontier is None
                    else _window_edge(memo, tf, calendar, frontier, end=True))
    if (frontier_end is not None and frontier_end <= as_of
            and cursor >= frontier_end - tf.step
            and (row["frontier_window_rows"] or 0) >= tf.expected_candles):
        # contract 6: the one window left, complete (every expected source bar landed,
        # usable), is final at once, not only once its delay has passed; behind an earlier
        # incomplete window it waits for that one's delay, or each tick would ask again
        final_end = max(final_end, frontier_end)
    target = cursor if frontier_end is None else min(final_end, frontier_end)
    reach = target
    if frontier is not None:  # up to the frontier's window, through it once it has ended
        reach = (frontier_end if frontier_end <= as_of
                 else _window_edge(memo, tf, calendar, frontier, end=False))
    return TaskState(row["canonical_symbol"], name, cursor, max(cursor, target), frontier,
                     _order(row, tf),
                     failing=row["status"] == "hard_failed" or row["hard_fail_streak"] > 0,
                     ahead=frontier_end is not None and cursor > frontier_end,
                     forming_behind=bool(row["forming"]) and tf.reads_data_bars
                     and frontier is not None
                     and (forming_through is None or frontier > forming_through),
                     next_end=_window_edge(memo, tf, calendar, cursor, end=True),
                     reach=max(reach, target, cursor))


def _window_edge(memo: dict[tuple, datetime], tf: timeframes.Timeframe, calendar: str | None,
                 instant: datetime, *, end: bool) -> datetime:
    """On the timeframe's grid (the UTC grid, or its calendar's: contract 15), memoised per
    pass: with `end`, the end of the window holding `instant` (on a calendar, of the last one
    starting at or before it); otherwise the start of the window holding it (or of the next
    one)."""
    key = (end, tf.name, calendar, instant)
    if (found := memo.get(key)) is None:
        grid = timeframes.grid(tf, calendar)
        found = memo[key] = grid.frontier_end(instant) if end else grid.edge(instant)
    return found


def task_states(conn: psycopg.Connection, as_of: datetime) -> Tasks:
    """Every schedulable task with its catch-up target at `as_of` (read-only)."""
    as_of = windows.utc(as_of)  # e.g. `SELECT now()` in a session west of UTC
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(queries.query("plan_tasks"), {
            "as_of": as_of,
            "source_minutes": json.dumps({tf.name: tf.source_minutes
                                          for tf in timeframes.TIMEFRAMES.values()}),
        }).fetchall()
    conn.rollback()
    problems: dict[tuple[str, str], str] = {}
    states: list[TaskState] = []
    memo: dict[tuple, datetime] = {}
    for row in rows:
        state = _task_state(row, as_of, memo)
        if isinstance(state, str):
            problems[(row["canonical_symbol"], row["timeframe"])] = state
        else:
            states.append(state)
    return Tasks(sorted(states, key=lambda s: (s.order, s.symbol)), problems)


def _day(value: datetime) -> date:
    return windows.utc_date(value)


def _with_downstream(names: Iterable[str], enabled: Iterable[str]) -> tuple[str, ...]:
    """`names` and every enabled timeframe derived from them, in ladder order (a run always
    rebuilds downstream of what it changed)."""
    enabled = set(enabled)
    selected = set(names)
    for name in names:
        selected.update(d.name for d in timeframes.downstream(name) if d.name in enabled)
    return tuple(tf.name for tf in timeframes.ORDERED if tf.name in selected)


# ----------------------------------------------------------------------------- work


def catchup_work(tasks: Tasks, *, roots_only: bool, first_day: date) -> list[Work]:
    """Per symbol, the timeframes behind their frontier and the days bringing them up to it.

    `roots_only` considers only timeframes read from data_bars as triggers (the frontier
    sensor, Reason.NEW_WINDOWS); otherwise every timeframe (the schedule, Reason.CATCH_UP).
    Days before `first_day` (the first partition) are never requested.
    """
    reason = Reason.NEW_WINDOWS if roots_only else Reason.CATCH_UP
    work: list[Work] = []
    for symbol, states in tasks.by_symbol().items():
        triggers = [t for t in states.values() if t.behind and (
            not roots_only or timeframes.get(t.timeframe).reads_data_bars)]
        if not triggers:
            continue
        chosen = _movable(triggers, states)
        first = max(min(_day(t.cursor) for t in chosen), first_day)
        last = max(_day(max(t.target, t.cursor) - timedelta(microseconds=1)) for t in chosen)
        work.append(Work(symbol, tuple(t.timeframe for t in chosen), first, max(last, first),
                         reason, min(t.order for t in triggers),
                         moving_from=max(min(_day(t.cursor) for t in triggers), first_day)))
    return work


def _movable(triggers: list[TaskState], states: Mapping[str, TaskState]) -> list[TaskState]:
    """The triggers and, in ladder order, each enabled timeframe derived from them that a run
    can move: behind by itself, or with the window at its cursor ending where the run's
    upstream step may build its source to (the upstream's reach). A live 5m run thus builds
    1h when it completes an hour, not every 5 minutes: the 1h step would find nothing final
    and still write a materialisation per partition (issue 20). One left out is not lost:
    once its source is there, its own frontier makes it behind at a later tick."""
    reach = {t.timeframe: t.reach or t.target for t in triggers}
    for name in _with_downstream(list(reach), states):
        task = states[name]
        upstream = reach.get(timeframes.get(name).source)
        if name not in reach and (task.behind or task.next_end is None or (
                upstream is not None and upstream >= task.next_end)):
            reach[name] = max(task.reach or task.target, upstream or task.target)
    return [states[tf.name] for tf in timeframes.ORDERED if tf.name in reach]


def forming_work(tasks: Tasks, *, first_day: date) -> list[Work]:
    """Symbols keeping a forming bar (registry agg_forming_bars) whose newest source row is
    past what their forming bar reflects: the frontier's day, for the roots and what derives
    from them (the engine refreshes the forming bars of every rung it runs). The frontier
    sensor, Reason.FORMING."""
    work: list[Work] = []
    for symbol, states in tasks.by_symbol().items():
        stale = [t for t in states.values() if t.forming_behind]
        if not stale:
            continue
        day = max(_day(max(t.frontier for t in stale)), first_day)
        chosen = _with_downstream([t.timeframe for t in stale], states)
        work.append(Work(symbol, chosen, day, day, Reason.FORMING, min(t.order for t in stale)))
    return work


def _spans(days: Iterable[date], gap: int) -> list[tuple[date, date]]:
    """Consecutive runs of `days`, bridging holes of at most `gap` days."""
    spans: list[tuple[date, date]] = []
    for day in sorted(set(days)):
        if spans and (day - spans[-1][1]).days <= gap + 1:
            spans[-1] = (spans[-1][0], day)
        else:
            spans.append((day, day))
    return spans


def _day_work(found: dict[str, dict[date, set[str]]], tasks: Tasks, reason: Reason,
              first_day: date) -> list[Work]:
    """Work re-materialising each symbol's `found` days (day -> causes) for its roots and
    everything derived from them."""
    states = tasks.by_symbol()
    work: list[Work] = []
    for symbol, days in sorted(found.items()):
        mine = states.get(symbol, {})
        roots = [name for name in mine if timeframes.get(name).reads_data_bars]
        if not roots:
            continue
        chosen = _with_downstream(roots, mine)
        order = min(mine[name].order for name in roots)
        for first, last in _spans((d for d in days if d >= first_day), RIDE_ALONG_DAYS):
            inside = [d for d in days if first <= d <= last]
            causes = frozenset().union(*(days[d] for d in inside))
            work.append(Work(symbol, chosen, first, last, reason, order, causes,
                             frozenset(inside)))
    return work


def late_work(conn: psycopg.Connection, tasks: Tasks, since: datetime, as_of: datetime,
              first_day: date) -> tuple[list[Work], list[tuple[str, date]]]:
    """Days already materialised whose source changed (contract 10), and the (symbol, day)
    found before `first_day`, which no partition can hold. Read-only; reads only what
    changed (rows landed since `since`, pending changes), never the whole source."""
    found: dict[str, dict[date, set[str]]] = {}
    for tf in timeframes.ORDERED:
        if not tf.reads_data_bars:
            continue
        with conn.cursor() as cur:
            rows = cur.execute(queries.query("late_source_days"),
                               {"since": since, "as_of": as_of, "timeframe": tf.name}).fetchall()
        for symbol, day, kinds in rows:
            found.setdefault(symbol, {}).setdefault(day, set()).update(map(_cause, kinds))
    conn.rollback()
    too_early = sorted((s, d) for s, days in found.items() for d in days if d < first_day)
    return _day_work(found, tasks, Reason.LATE_DATA, first_day), too_early


def _cause(kind: str) -> str:
    """A late-data query's kind (late rows, update, delete, truncate) as a run's cause."""
    return LATE_ROWS if kind == LATE_ROWS else CHANGE_CAUSES[kind]


def synthetic_work(conn: psycopg.Connection, tasks: Tasks, as_of: datetime, first_day: date,
                   *, since: datetime | None = None) -> list[Work]:
    """Synthetic symbols (engine/synthetic.py) whose components moved past what their index
    was built from: without `since`, new final component minutes (the frontier sensor,
    Reason.NEW_WINDOWS); with it, component rows landed since then or changes recorded in
    days already built (the late-data sensor, Reason.LATE_DATA). Work for 5m and what derives
    from it; the run's synthetic step rebuilds the index's 1m rows first. Read-only."""
    if since is None:
        found = {symbol: {day: set() for day in days}
                 for symbol, days in synthetic.frontier_days(conn, as_of).items()}
    else:
        found = {symbol: {day: set(map(_cause, kinds)) for day, kinds in days.items()}
                 for symbol, days in synthetic.late_days(conn, since, as_of).items()}
    conn.rollback()
    return _day_work(found, tasks, Reason.NEW_WINDOWS if since is None else Reason.LATE_DATA,
                     first_day)


def prune_consumed_changes(conn: psycopg.Connection, older_than: timedelta) -> int:
    """Delete the change capture's consumed days whose last change is older than
    `older_than` (migration 012's agg_prune_source_changes): the late-data query scans that
    table, which so stays the size of what changed recently. Returns the days removed."""
    removed = conn.execute("SELECT agg_prune_source_changes(%s)", (older_than,)).fetchone()[0]
    conn.commit()
    return removed


@dataclass(frozen=True)
class Reconciliation:
    work: list[Work]
    checked: tuple[str, ...]  # the symbols re-checked this time, in rotation order
    busy: tuple[str, ...]  # skipped: a run held the task (they come round again)
    errors: dict[str, str]  # symbol -> why its re-aggregation failed (its runs will say too)
    windows_checked: int


def reconciliation_work(conn: psycopg.Connection, tasks: Tasks, *, after: str | None,
                        budget: int, days: int, as_of: datetime,
                        first_day: date) -> Reconciliation:
    """The backstop for source changes the capture triggers did not see (a trigger
    disabled, a statement on a partition of data_bars): for the next `budget` symbols after
    `after` (a rotation over all symbols, by name), the last `days` UTC days are re-checked
    twice: the recorded day fingerprints against the rows present (rows added or removed),
    and the engine's own re-aggregation of the span behind the cursor, in a transaction that
    is rolled back (in-place edits that left ingested_at as it was). Days either finds
    changed become work, for the roots and what derives from them, and so do the days of
    synthetic indices that read them."""
    states = tasks.by_symbol()
    candidates = sorted(s for s, mine in states.items()
                        if any(timeframes.get(n).reads_data_bars for n in mine))
    if not candidates:
        return Reconciliation([], (), (), {}, 0)
    start = next((i for i, s in enumerate(candidates) if after is None or s > after), 0)
    checked = tuple((candidates[start:] + candidates[:start])[:budget])
    window_start = max(windows.day_start(as_of) - timedelta(days=days - 1),
                       windows.day_instant(first_day))
    found: dict[str, dict[date, set[str]]] = {}
    busy: list[str] = []
    errors: dict[str, str] = {}
    windows_checked = 0
    for tf in timeframes.ORDERED:
        if not tf.reads_data_bars:
            continue
        spans = [engine.Span(symbol, window_start, states[symbol][tf.name].cursor)
                 for symbol in checked
                 if tf.name in states[symbol] and states[symbol][tf.name].cursor > window_start]
        # a run holding a task has it in hand: skipped rather than waited for
        rechecked = monitoring.recheck(conn, tf.name, spans, as_of=as_of, skip_busy=True)
        busy += rechecked.busy
        errors.update(rechecked.errors)
        windows_checked += rechecked.windows_checked
        for symbol, days in rechecked.pending_days.items():
            for day in days:
                found.setdefault(symbol, {}).setdefault(day, set()).add(Reason.RECONCILIATION)
        for symbol, rows in rechecked.changed.items():
            for row in rows:
                found.setdefault(symbol, {}).setdefault(_day(row["ts_utc"]), set()).add(
                    Reason.RECONCILIATION)
    # a synthetic index read those component days: its days are rebuilt too (its own
    # recorded inputs, unlike the late-data path's, cannot see a change the capture missed)
    for symbol, days in synthetic.reading_days(conn, found).items():
        for day in days:
            found.setdefault(symbol, {}).setdefault(day, set()).add(Reason.RECONCILIATION)
    conn.rollback()
    return Reconciliation(_day_work(found, tasks, Reason.RECONCILIATION, first_day), checked,
                          tuple(dict.fromkeys(busy)), errors, windows_checked)


# ----------------------------------------------------------------------------- runs


def claimed_plans(conn: psycopg.Connection) -> list[str]:
    """The plan ids holding claims: the caller asks Dagster about their runs."""
    plans = [row[0] for row in conn.execute(queries.query("plan_claimed_ids"))]
    conn.rollback()
    return plans


def _merge(work: Sequence[Work]) -> list[Work]:
    """One item per symbol and overlapping (or nearly adjacent) days: late data found twice
    (late rows and reconciliation) is one run's work, not two."""
    by_symbol: dict[str, list[Work]] = {}
    for item in work:
        by_symbol.setdefault(item.symbol, []).append(item)
    merged: list[Work] = []
    for items in by_symbol.values():
        items.sort(key=lambda w: (w.first_day, w.last_day))
        current = items[0]
        for item in items[1:]:
            if (item.first_day - current.last_day).days > RIDE_ALONG_DAYS + 1:
                merged.append(current)
                current = item
                continue
            reasons = {current.reason, item.reason}
            current = Work(
                current.symbol,
                tuple(tf.name for tf in timeframes.ORDERED
                      if tf.name in set(current.timeframes) | set(item.timeframes)),
                current.first_day, max(current.last_day, item.last_day),
                Reason.LATE_DATA if Reason.LATE_DATA in reasons else current.reason,
                min(current.order, item.order), current.causes | item.causes,
                current.days | item.days, min(current.lead_day, item.lead_day))
        merged.append(current)
    return merged


def _overlaps(item: Work, first: date, last: date,
              claims: dict[tuple[str, str], list[tuple[date, date]]]) -> bool:
    return any(a <= last and first <= b
               for tf in item.timeframes for a, b in claims.get((item.symbol, tf), ()))


@dataclass
class _Cluster:
    reason: Reason
    first_day: date
    last_day: date
    items: list[Work]

    @property
    def days(self) -> int:
        return (self.last_day - self.first_day).days + 1


def _clusters(items: list[Work], period: Callable[[date], tuple[date, date]]) -> list[_Cluster]:
    """Work with the same reason and day range (widened to whole time partitions, which is
    what a run reads) forms one cluster; short ranges (RIDE_ALONG_DAYS at most) are merged
    into short hulls, so yesterday+today and today-only symbols share runs."""
    clusters: list[_Cluster] = []
    by_reason: dict[Reason, list[tuple[date, date, Work]]] = {}
    for item in items:
        by_reason.setdefault(item.reason, []).append(
            (period(item.first_day)[0], period(item.last_day)[1], item))
    for reason, ranged in by_reason.items():
        ranged.sort(key=lambda r: (r[0], r[1], r[2].symbol))
        short: list[_Cluster] = []
        exact: dict[tuple[date, date], _Cluster] = {}
        for first, last, item in ranged:
            if (last - first).days + 1 > RIDE_ALONG_DAYS:
                exact.setdefault((first, last), _Cluster(reason, first, last, [])).items.append(
                    item)
            elif short and (max(last, short[-1].last_day) - short[-1].first_day).days + 1 \
                    <= RIDE_ALONG_DAYS:
                short[-1].last_day = max(last, short[-1].last_day)
                short[-1].items.append(item)
            else:
                short.append(_Cluster(reason, first, last, [item]))
        clusters += short + list(exact.values())
    return clusters


def _periods(first: date, last: date, period: Callable[[date], tuple[date, date]]) -> int:
    count, day = 0, first
    while day <= last:
        count += 1
        day = period(day)[1] + timedelta(days=1)
    return count


@dataclass(frozen=True)
class _Block:
    start: int  # its first and last symbol's positions in the partitions' order
    end: int
    spans: tuple[tuple[date, date], ...]  # its day ranges in time order: one run each


def _cut(first: date, last: date, most: int,
         period: Callable[[date], tuple[date, date]]) -> tuple[tuple[date, date], ...]:
    """[first, last] as consecutive ranges of whole time partitions, at most `most` each."""
    spans: list[tuple[date, date]] = []
    count, day = 0, first
    while day <= last:
        start, end = period(day)
        if not spans or count == most:
            spans.append((start, end))
            count = 0
        spans[-1] = (spans[-1][0], end)
        count += 1
        day = end + timedelta(days=1)
    return tuple(spans)


def _blocks(cluster: _Cluster, position: dict[str, int], symbols: Sequence[str],
            riders: set[str], limits: Limits,
            period: Callable[[date], tuple[date, date]]) -> list[_Block]:
    """Cut the cluster's symbols, in the partitions' order, into blocks of consecutive
    symbols: at most `max_partitions` partitions each; symbols without work in between ride
    along only in short clusters, when they may (`riders`) and the gap is small. A symbol
    whose own day range alone holds more periods than `max_partitions` is a block of one,
    cut along time too: consecutive day ranges of at most `max_partitions` periods."""
    periods = _periods(cluster.first_day, cluster.last_day, period)
    width = max(1, limits.max_partitions // periods)
    may_ride = cluster.days <= RIDE_ALONG_DAYS
    places = sorted({position[w.symbol] for w in cluster.items})
    ranges: list[tuple[int, int]] = []
    start = previous = places[0]
    for place in places[1:]:
        gap = symbols[previous + 1:place]
        bridged = not gap or (may_ride and len(gap) * periods <= RIDE_ALONG_GAP_PARTITIONS
                              and riders.issuperset(gap))
        if not bridged or place - start + 1 > width:
            ranges.append((start, previous))
            start = place
        previous = place
    ranges.append((start, previous))
    if periods <= limits.max_partitions:
        return [_Block(a, b, ((cluster.first_day, cluster.last_day),)) for a, b in ranges]
    blocks = []
    for a, b in ranges:  # (width 1: one symbol each) its own days, not the cluster's hull
        mine = [w for w in cluster.items if position[w.symbol] == a]
        last = period(max(w.last_day for w in mine))[1]
        spans = _cut(period(min(w.first_day for w in mine))[0], last, limits.max_partitions,
                     period)
        lead = min(min(w.lead_day for w in mine), last)
        if lead > spans[0][1]:  # its first range would move no cursor: asked for forever
            spans = _cut(period(lead)[0], last, limits.max_partitions, period)
        blocks.append(_Block(a, b, spans))
    return blocks


def _trim(item: Work, first: date, last: date) -> Work | None:
    """The part of `item` within days [first, last] (None: nothing of it)."""
    lo, hi = max(item.first_day, first), min(item.last_day, last)
    if lo > hi:
        return None
    return replace(item, first_day=lo, last_day=hi,
                   days=frozenset(d for d in item.days if lo <= d <= hi))


@dataclass(frozen=True)
class _Candidate:
    run: PlannedRun
    work: list[Work]  # the block's whole work (what waits when the run is not chosen)
    later: list[Work]  # the block's days after the run's range: the next ticks'


def _candidates(clusters: list[_Cluster], position: dict[str, int], symbols: Sequence[str],
                riders: set[str], limits: Limits, period: Callable[[date], tuple[date, date]],
                requester: str) -> list[_Candidate]:
    """One run per block, over its first day range. A block cut along time requests its
    earliest range only: the catch-up's cursor moves forward in order (a later range run
    first would not move it, and would be re-read), and the rest, left `later`, is found
    again and requested by a tick after that run (its claim holds it off until then)."""
    candidates = []
    for cluster in clusters:
        for block in _blocks(cluster, position, symbols, riders, limits, period):
            items = [w for w in cluster.items if block.start <= position[w.symbol] <= block.end]
            (first, last), after = block.spans[0], block.spans[1:]
            work = [t for w in items if (t := _trim(w, first, last))]
            later = [t for w in items if after and (t := _trim(w, after[0][0], after[-1][1]))]
            names = {tf for w in work for tf in w.timeframes}
            candidates.append(_Candidate(PlannedRun(
                f"{requester}-{uuid.uuid4().hex[:12]}",
                tuple(symbols[block.start:block.end + 1]), first, last,
                tuple(tf.name for tf in timeframes.ORDERED if tf.name in names),
                _reason(cluster.reason, work, first, last),
                tuple(sorted(work, key=lambda w: position[w.symbol])),
                min(w.order for w in work)), items, later))
    candidates.sort(key=lambda c: (c.run.order, position[c.run.symbols[0]], c.run.first_day))
    return candidates


def _reason(cluster_reason: Reason, work: Sequence[Work], first: date, last: date) -> str:
    """The run's reason tag: the reason, and for late data the days and what changed."""
    if cluster_reason != Reason.LATE_DATA:
        return cluster_reason.tag()
    days = sorted(set().union(*(w.days for w in work)))
    shown = (", ".join(d.isoformat() for d in days) if len(days) <= 3
             else f"{days[0].isoformat()} .. {days[-1].isoformat()} ({len(days)} days)")
    # (what the reconciliation also found is not news beside the late data itself)
    causes = sorted(set().union(*(w.causes for w in work)) - {LATE_ROWS, Reason.RECONCILIATION})
    return Reason.LATE_DATA.tag(f"on {shown}" + (f": {', '.join(causes)}" if causes else ""))


def plan_runs(
    conn: psycopg.Connection,
    work: Sequence[Work],
    *,
    requester: str,
    runs: RunStates,
    symbols: Sequence[str],
    riders: set[str],
    alone: set[str],
    limits: Limits,
    period: Callable[[date], tuple[date, date]],
) -> Plan:
    """The runs to request for `work`, at most `limits.max_runs`, claimed in one transaction.

    Every run covers at most `limits.max_partitions` partitions: a symbol whose work alone
    spans more periods gets a run over its earliest `max_partitions` periods, and the rest
    waits (`waiting`) for a tick after that run has ended, so its cursor moves in order.

    `symbols` is the partitions' order (runs cover blocks of consecutive symbols of it; work
    of other symbols is `unsynced`), `riders` the symbols that may ride along in a block
    without work of their own, `alone` those whose work runs in a run of its own (failing
    tasks), `period` maps a UTC day to its time partition's first and
    last day, `runs` says which claimed plans Dagster has queued, running or finished: a
    claim is live while its run is queued or running, or within CLAIM_GRACE of being made
    when Dagster does not know it as finished. It must be asked for AFTER the work was found
    (and before this call), so that any finished run's effects are in what was found.

    Runs on a connection without an open transaction (the advisory lock and the claims
    commit together); READ COMMITTED, so the claims another planner committed while this
    one waited for the lock are seen.
    """
    if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        raise RuntimeError("plan_runs must begin its own transaction: commit or roll back "
                           "the connection first")
    position = {symbol: i for i, symbol in enumerate(symbols)}
    merged = _merge(work)
    unsynced = [w for w in merged if w.symbol not in position]
    with conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL READ COMMITTED")
        conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (PLAN_LOCK_KEY,))
        released = conn.execute(queries.query("plan_claims_release"), {
            "live": sorted(runs.live), "finished": sorted(runs.finished),
            "grace": CLAIM_GRACE}).rowcount
        claims: dict[tuple[str, str], list[tuple[date, date]]] = {}
        for symbol, timeframe, first, last in conn.execute(queries.query("plan_claims_live")):
            claims.setdefault((symbol, timeframe), []).append((first, last))
        claimed, free = [], []
        for item in merged:
            if item.symbol not in position:
                continue
            first, last = period(item.first_day)[0], period(item.last_day)[1]
            (claimed if _overlaps(item, first, last, claims) else free).append(item)

        clusters = _clusters([w for w in free if w.symbol not in alone], period)
        clusters += [_Cluster(w.reason, period(w.first_day)[0], period(w.last_day)[1], [w])
                     for w in free if w.symbol in alone]
        candidates = _candidates(clusters, position, symbols, riders, limits, period,
                                 requester)
        picked, rest = candidates[:limits.max_runs], candidates[limits.max_runs:]
        chosen = [c.run for c in picked]
        rows = [(run.plan_id, w.symbol, tf, run.first_day, run.last_day, run.reason)
                for run in chosen for w in run.work for tf in w.timeframes]
        if rows:
            conn.execute(queries.query("plan_claims_insert"),
                         dict(zip(("plan_ids", "symbols", "timeframes", "first_days",
                                   "last_days", "reasons"), map(list, zip(*rows, strict=True)),
                                  strict=True)))
    waiting = [w for c in picked for w in c.later] + [w for c in rest for w in c.work]
    return Plan(runs=chosen, claimed=claimed, waiting=waiting, unsynced=unsynced,
                released=released)
