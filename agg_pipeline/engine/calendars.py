"""Calendars: a market's trading sessions on its own clock, and the windows of the timeframes
that follow them (SPEC contract 15). Pure Python (zoneinfo), no database.

A calendar (timeframes.toml) gives a time zone, the local time a session opens (on the trade
date, or the day before: FX's Monday opens Sunday 17:00 New York), when it closes (or at the
next day's open), the trading weekdays, holidays and early closes. From it:

- a **daily** window is one session: [open, close) in UTC instants, 23 or 25 hours across a
  DST switch when the session spans it, shorter on an early close, none on a holiday;
- a **weekly** window spans the sessions of trade dates Monday..Sunday of one ISO week:
  [first session's open, last session's close);
- an **intraday** window of a timeframe whose UTC grid some session boundary is not on (a 1h
  from 09:30, a 4h from 17:00 New York) steps from its session's open in real time and ends at
  the session's close (09:30 ... 15:30 -> 16:00); other intraday timeframes keep the UTC grid.

Each window carries its expected number of source bars: the source windows inside it (for a
daily source, its sessions). A boundary at a local time that does not exist or occurs twice
is read as PEP 495's fold=0 does: with the offset in force before the switch.

The engine never asks SQL to do time-zone arithmetic: it computes a calendar request's
windows here and binds them to the statement, so SQL and Python cannot disagree on a window
(PostgreSQL's AT TIME ZONE reads an ambiguous 01:30 as standard time, fold=0 as daylight, and
a local-time date_bin interleaves windows across a repeated hour).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from functools import cached_property, lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from agg_pipeline.engine import windows as utc_windows

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")  # date.weekday() order
UTC_CALENDAR = "utc"
DAY = timedelta(days=1)
WEEK = timedelta(days=7)
# offsets a zone takes are sampled weekly over these years to decide which grids its
# session boundaries are on
OFFSET_YEARS = (1970, 2100)
# the longest a window can be (a week plus a DST hour): how far back a search looks
LONGEST_WINDOW = timedelta(days=8)
SEARCH_SPANS = (timedelta(days=10), timedelta(days=60), timedelta(days=800),
                timedelta(days=20_000))


class CalendarConfigError(ValueError):
    """A calendar entry that cannot be used; the message names it."""


@dataclass(frozen=True)
class Session:
    trade_date: date
    open: datetime  # UTC
    end: datetime  # UTC, exclusive


@dataclass(frozen=True)
class Window:
    start: datetime  # UTC
    end: datetime  # UTC, exclusive
    expected: int  # source bars a complete window holds


@dataclass(frozen=True)
class Calendar:
    name: str
    time_zone: str
    session_open: time
    opens_previous_day: bool = False
    session_close: time | None = None
    trading_days: frozenset[int] = frozenset(range(7))
    holidays: frozenset[date] = frozenset()
    early_closes: tuple[tuple[date, time], ...] = ()

    @cached_property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.time_zone)

    @cached_property
    def _early(self) -> Mapping[date, time]:
        return dict(self.early_closes)

    @property
    def is_utc(self) -> bool:
        return self.name == UTC_CALENDAR

    def _instant(self, day: date, at: time) -> datetime:
        return datetime.combine(day, at, tzinfo=self.zone).astimezone(UTC)

    def session(self, trade_date: date) -> Session | None:
        """The session of `trade_date`, or None on a day without one."""
        return _session(self, trade_date)

    def sessions(self, first: date, last: date) -> list[Session]:
        """Sessions of trade dates first..last (inclusive), in order."""
        found = []
        day = first
        while day <= last:
            if (s := _session(self, day)) is not None:
                found.append(s)
            day += DAY
        return found

    def local_date(self, instant: datetime) -> date:
        return instant.astimezone(self.zone).date()

    @cached_property
    def boundary_minutes(self) -> tuple[int, ...]:
        """Local minutes of the day at which sessions open or close."""
        times = {self.session_open, *(t for _, t in self.early_closes)}
        if self.session_close is not None:
            times.add(self.session_close)
        return tuple(sorted(t.hour * 60 + t.minute for t in times))

    @cached_property
    def offsets(self) -> frozenset[int]:
        """UTC offsets (minutes) the zone takes, sampled weekly over OFFSET_YEARS."""
        if self.is_utc:
            return frozenset({0})
        found = set()
        instant = datetime(OFFSET_YEARS[0], 1, 1, 12, tzinfo=UTC)
        while instant.year < OFFSET_YEARS[1]:
            found.add(int(instant.astimezone(self.zone).utcoffset().total_seconds() // 60))
            instant += WEEK
        return frozenset(found)

    def on_grid(self, step: timedelta) -> bool:
        """Whether every session boundary lies on the UTC grid of `step` (a divisor of a day)."""
        minutes = step // timedelta(minutes=1)
        return all((m - o) % minutes == 0 for m in self.boundary_minutes for o in self.offsets)

    def follows(self, step: timedelta) -> bool:
        """Whether windows of `step` follow this calendar (else: the plain UTC grid)."""
        if self.is_utc:
            return step >= WEEK  # a UTC day is already the grid's; weeks start on Monday
        return step >= DAY or not self.on_grid(step)


@lru_cache(maxsize=65_536)
def _session(calendar: Calendar, trade_date: date) -> Session | None:
    if trade_date.weekday() not in calendar.trading_days or trade_date in calendar.holidays:
        return None
    open_day = trade_date - DAY if calendar.opens_previous_day else trade_date
    opens = calendar._instant(open_day, calendar.session_open)
    close = calendar._early.get(trade_date, calendar.session_close)
    end = (calendar._instant(open_day + DAY, calendar.session_open) if close is None
           else calendar._instant(trade_date, close))
    return Session(trade_date, opens, end) if end > opens else None


# the built-in calendar of symbols that declare none: UTC days, weeks from Monday
UTC_DEFAULT = Calendar(UTC_CALENDAR, "UTC", time(0))


# ----------------------------------------------------------------------------- windows


@dataclass(frozen=True)
class UtcGrid:
    """Windows on the UTC grid anchored at 2000-01-01 (SQL's date_bin): the fast path, for
    every symbol without a calendar and every timeframe a calendar leaves on the grid."""

    step: timedelta
    name = None  # (no calendar)

    def ceil(self, instant: datetime) -> datetime:
        return utc_windows.ceil(instant, self.step)

    def edge(self, instant: datetime) -> datetime:
        return utc_windows.floor(instant, self.step)

    def frontier_end(self, instant: datetime) -> datetime:
        return utc_windows.floor(instant, self.step) + self.step


@dataclass(frozen=True)
class CalendarGrid:
    """The windows of one timeframe (`step`, read from `source_step`) on one calendar."""

    calendar: Calendar
    step: timedelta
    source_step: timedelta

    @property
    def name(self) -> str:
        return self.calendar.name

    def windows(self, lo: datetime, hi: datetime) -> list[Window]:
        """Windows starting in [lo, hi), in order."""
        if hi <= lo:
            return []
        return [w for w in self._around(lo, hi) if lo <= w.start < hi]

    def ceil(self, instant: datetime) -> datetime:
        """The first window start at or after `instant`."""
        for span in SEARCH_SPANS:
            found = self.windows(instant, instant + span)
            if found:
                return found[0].start
        raise CalendarConfigError(f"calendar {self.name!r} has no session after {instant}")

    def edge(self, instant: datetime) -> datetime:
        """The start of the first window ending after `instant`: every window before it has
        ended by then (on the UTC grid: the floor)."""
        for window in self._around(instant - LONGEST_WINDOW, instant + SEARCH_SPANS[0]):
            if window.end > instant:
                return window.start
        return self.ceil(instant)

    def frontier_end(self, instant: datetime) -> datetime:
        """The end of the last window starting at or before `instant` (the window holding it,
        or the last one before the gap it lies in): the cursor never passes it."""
        for span in SEARCH_SPANS:
            found = [w for w in self._around(instant - span, instant) if w.start <= instant]
            if found:
                return found[-1].end
        return self.ceil(instant)

    def _around(self, lo: datetime, hi: datetime) -> Iterator[Window]:
        """Every window of the blocks (trade dates, or ISO weeks) that may overlap [lo, hi]."""
        first = self.calendar.local_date(lo) - DAY
        last = self.calendar.local_date(hi) + 2 * DAY
        if self.step >= WEEK:
            monday = first - timedelta(days=first.weekday())
            while monday <= last:
                yield from _week_windows(self, monday)
                monday += WEEK
            return
        day = first
        while day <= last:
            yield from _day_windows(self, day)
            day += DAY

    def expected(self, sessions: list[Session], start: datetime, end: datetime) -> int:
        """Source windows inside [start, end): a daily source's sessions, else each session's
        part in source steps (rounded up: a source window clipped at a close counts)."""
        if self.source_step >= DAY:
            return len(sessions)
        return sum(math.ceil((min(s.end, end) - max(s.open, start)) / self.source_step)
                   for s in sessions)


@lru_cache(maxsize=65_536)
def _day_windows(grid: CalendarGrid, trade_date: date) -> tuple[Window, ...]:
    session = grid.calendar.session(trade_date)
    if session is None:
        return ()
    if grid.step >= DAY:
        return (Window(session.open, session.end,
                       grid.expected([session], session.open, session.end)),)
    found = []
    start = session.open
    while start < session.end:
        end = min(start + grid.step, session.end)
        found.append(Window(start, end, grid.expected([session], start, end)))
        start = end
    return tuple(found)


@lru_cache(maxsize=8_192)
def _week_windows(grid: CalendarGrid, monday: date) -> tuple[Window, ...]:
    sessions = grid.calendar.sessions(monday, monday + timedelta(days=6))
    if not sessions:
        return ()
    start, end = sessions[0].open, sessions[-1].end
    return (Window(start, end, grid.expected(sessions, start, end)),)


# ----------------------------------------------------------------------------- config


def _clock(value: object, where: str) -> time:
    if isinstance(value, time):
        return value
    try:
        hours, minutes = str(value).split(":")
        return time(int(hours), int(minutes))
    except ValueError:
        raise CalendarConfigError(f"{where}: {value!r} is not a local time HH:MM") from None


def _day(value: object, where: str) -> date:
    if isinstance(value, date) and not isinstance(value, datetime):
        return value
    try:
        return date.fromisoformat(str(value))
    except ValueError:
        raise CalendarConfigError(f"{where}: {value!r} is not a date YYYY-MM-DD") from None


def _zone(name: object, where: str) -> str:
    if not isinstance(name, str) or not name:
        raise CalendarConfigError(f"{where}: time_zone must be an IANA zone name")
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise CalendarConfigError(f"{where}: unknown time zone {name!r}") from None
    return name


KEYS = {"time_zone", "session_open", "opens_previous_day", "session_close", "trading_days",
        "holidays", "early_closes"}


def parse(name: str, entry: Mapping[str, object], where: str) -> Calendar:
    """A calendar from its config table; errors name `where` (file and entry)."""
    if name == UTC_CALENDAR:
        raise CalendarConfigError(f"{where}: {UTC_CALENDAR!r} is built in")
    if unknown := sorted(set(entry) - KEYS):
        raise CalendarConfigError(f"{where}: unknown keys {unknown}; known: {sorted(KEYS)}")
    if "session_open" not in entry:
        raise CalendarConfigError(f"{where}: session_open is required")
    opens = _clock(entry["session_open"], f"{where}.session_open")
    previous = entry.get("opens_previous_day", False)
    if not isinstance(previous, bool):
        raise CalendarConfigError(f"{where}.opens_previous_day must be true or false")
    close = entry.get("session_close")
    close = None if close is None else _clock(close, f"{where}.session_close")
    days = entry.get("trading_days", list(WEEKDAYS))
    if (not isinstance(days, list) or not days
            or any(d not in WEEKDAYS for d in days)):
        raise CalendarConfigError(f"{where}.trading_days must list some of {list(WEEKDAYS)}")
    early = entry.get("early_closes", {})
    if not isinstance(early, Mapping):
        raise CalendarConfigError(f"{where}.early_closes must be a table of date = HH:MM")
    calendar = Calendar(
        name=name, time_zone=_zone(entry.get("time_zone"), where), session_open=opens,
        opens_previous_day=previous, session_close=close,
        trading_days=frozenset(WEEKDAYS.index(d) for d in days),
        holidays=frozenset(_day(d, f"{where}.holidays") for d in entry.get("holidays", [])),
        early_closes=tuple(sorted((_day(d, f"{where}.early_closes"),
                                   _clock(t, f"{where}.early_closes.{d}"))
                                  for d, t in early.items())))
    _check_lengths(calendar, where)
    return calendar


def _check_lengths(calendar: Calendar, where: str) -> None:
    """A session lasts more than nothing and at most a day, closes never after the next
    session opens."""
    opens = calendar.session_open
    closes = [calendar.session_close] if calendar.session_close else []
    closes += [t for _, t in calendar.early_closes]
    for close in closes:
        if calendar.opens_previous_day and close > opens:
            raise CalendarConfigError(
                f"{where}: a session opening at {opens:%H:%M} the day before cannot close at "
                f"{close:%H:%M} (longer than a day)")
        if not calendar.opens_previous_day and close <= opens:
            raise CalendarConfigError(
                f"{where}: close {close:%H:%M} is not after open {opens:%H:%M}; set "
                "opens_previous_day for a session that opens the evening before")


Grid = UtcGrid | CalendarGrid


@lru_cache(maxsize=64)
def utc_grid(step: timedelta) -> UtcGrid:
    return UtcGrid(step)


@lru_cache(maxsize=1024)  # (asked for every request of a run)
def grid(calendar: Calendar, step: timedelta, source_step: timedelta) -> Grid:
    """The windows of a timeframe of `step` (read from `source_step`) for a symbol on
    `calendar`."""
    if calendar.follows(step):
        return CalendarGrid(calendar, step, source_step)
    return utc_grid(step)
