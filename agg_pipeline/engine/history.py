"""A derived bar's restatement history (SPEC contract 9): every version, or the bars as they
stood at a past instant, from derived_bar_revisions and the current bars (migration 014), and
`agg-pipeline history`'s table of them."""

from __future__ import annotations

import math
import textwrap
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

import psycopg
from psycopg.rows import dict_row

from agg_pipeline.db import queries
from agg_pipeline.engine import calendars, timeframes, windows
from agg_pipeline.engine.health import text_table, timestamp

WIDTH = 120  # the default table fits a terminal this wide; --wide prints everything
RUN_ID_CHARS = 8  # a Dagster run id's first 8 characters, as the UI shows it
# Decimals a price needs: the fewest that give it back within NOISE (relative), so a double
# such as 1.0879999999999999 (1.088 plus float noise) needs 3, not 16; never more than
# SIGNIFICANT_DIGITS significant digits (a synthetic index's computed 104.12345678901 prints
# 104.12346). PRICE_SAMPLE: the newest source rows that decide a symbol's precision.
NOISE = 1e-9
SIGNIFICANT_DIGITS = 8
MAX_DECIMALS = 12
PRICE_SAMPLE = 500
PRICES = ("open", "high", "low", "close")


def window_calendar(conn: psycopg.Connection, symbol: str, timeframe: str) -> str | None:
    """The calendar the symbol's `timeframe` windows follow (its task's; None: UTC grid)."""
    row = conn.execute("SELECT window_calendar FROM data_agg_state "
                       "WHERE canonical_symbol = %s AND timeframe = %s",
                       (symbol, timeframe)).fetchone()
    calendar = row[0] if row else None
    return calendar if calendar in timeframes.CALENDARS else None


def bar_window(timeframe: str, instant: datetime,
               calendar: str | None = None) -> tuple[datetime, datetime]:
    """The `timeframe` window holding `instant` (a window start is its own; on a calendar,
    an instant between sessions gives the next window), as (start, end)."""
    grid = timeframes.grid(timeframes.get(timeframe), calendar)
    start = grid.edge(windows.require_utc(instant, "start"))
    if isinstance(grid, calendars.CalendarGrid):
        return start, grid.windows(start, start + calendars.DAY)[0].end
    return start, start + grid.step


def bar_versions(conn: psycopg.Connection, symbol: str, timeframe: str, start: datetime,
                 end: datetime | None = None, *, at: datetime | None = None) -> list[dict]:
    """The versions of the bars starting in [window of start, end) (default: the one bar
    whose window holds `start`), oldest first; with `at`, only those current at that instant."""
    tf = timeframes.get(timeframe)
    start, window_end = bar_window(timeframe, start, window_calendar(conn, symbol, tf.name))
    end = windows.require_utc(end, "end") if end is not None else window_end
    if end <= start:
        raise ValueError(f"END {end.isoformat()} must be after the start of the bar holding "
                         f"START, {start.isoformat()}")
    at = windows.require_utc(at, "at") if at is not None else None
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(queries.query("bar_versions"), {
            "symbol": symbol, "timeframe": tf.name, "start": start, "end": end, "at": at,
        }).fetchall()
    return [windows.utc_values(row) for row in rows]  # UTC whatever the session's zone


def decimals_needed(value: float) -> int:
    """The fewest decimals that print `value` back within NOISE, at most SIGNIFICANT_DIGITS
    significant digits (and MAX_DECIMALS)."""
    if not math.isfinite(value) or value == 0:
        return 0
    cap = SIGNIFICANT_DIGITS - 1 - math.floor(math.log10(abs(value)))
    cap = max(0, min(cap, MAX_DECIMALS))
    for decimals in range(cap):
        if abs(round(value, decimals) - value) <= NOISE * abs(value):
            return decimals
    return cap


def most_decimals(values: Iterable[float | None]) -> int:
    return max((decimals_needed(v) for v in values if v is not None), default=0)


def price_decimals(conn: psycopg.Connection, symbol: str, rows: list[dict],
                   before: datetime) -> int:
    """As many decimals as the symbol's prices need: its newest source rows before `before`
    and the versions' own prices (each a source price: a bar's open, high, low and close are
    picked among its 1m rows'). The registry has no precision column to ask instead."""
    sample = conn.execute(queries.query("recent_source_prices"), {
        "symbol": symbol, "before": before, "limit": PRICE_SAMPLE}).fetchall()
    return most_decimals([*(p for row in sample for p in row),
                          *(row[p] for row in rows for p in PRICES)])


@dataclass(frozen=True)
class BarHistory:
    """What `agg-pipeline history` was asked, and the versions it found."""

    symbol: str
    timeframe: str
    asked: datetime  # START as given, in UTC
    start: datetime  # the start of the window holding it
    end: datetime | None  # END as given; None: the one bar
    at: datetime | None  # --as-of
    rows: list[dict]
    decimals: int  # prices print to this many decimals unless wide
    calendar: str | None = None  # the calendar its windows follow (None: the UTC grid)


def read_history(conn: psycopg.Connection, symbol: str, timeframe: str, start: datetime,
                 end: datetime | None = None, *, at: datetime | None = None) -> BarHistory:
    rows = bar_versions(conn, symbol, timeframe, start, end, at=at)
    calendar = window_calendar(conn, symbol, timeframe)
    window, upper = bar_window(timeframe, start, calendar)
    upper = end if end is not None else upper
    return BarHistory(symbol, timeframes.get(timeframe).name, start.astimezone(UTC),
                      window, end, at, rows, price_decimals(conn, symbol, rows, upper),
                      calendar)


def _fixed(decimals: int) -> Callable[[float | None], str]:
    return lambda value: "-" if value is None else f"{value:.{decimals}f}"


def _exact(value: float | None) -> str:
    return "-" if value is None else repr(value)  # the shortest text giving the double back


def _cell(value: object) -> str:
    return "-" if value is None else str(value)


@dataclass(frozen=True)
class _Clock:
    """How a column of instants prints: the part every value shares (a date, a year) moves
    to the header, so the column holds only what differs."""

    shared: str | None  # "2026-12-07", "2026", or None
    fmt: str

    def __call__(self, value: datetime | None) -> str:
        return "" if value is None else f"{value:{self.fmt}}"


def _clock(values: Iterable[datetime | None], *, seconds: bool, wide: bool) -> _Clock:
    times = [v for v in values if v is not None]
    clock = "%H:%M:%S" if seconds else "%H:%M"
    if not wide and times and len({f"{v:%Y-%m-%d}" for v in times}) == 1:
        return _Clock(f"{times[0]:%Y-%m-%d}", clock)
    if not wide and times and len({v.year for v in times}) == 1:
        return _Clock(f"{times[0]:%Y}", f"%m-%d {clock}")
    return _Clock(None, f"%Y-%m-%d {clock}")


Column = tuple[str, Callable[[dict], str], bool]  # title, a row's cell, right-aligned


def _columns(history: BarHistory, bar: _Clock, valid: _Clock, wide: bool) -> list[Column]:
    """Every column the table may show (--wide adds vwap, trades and expected bars)."""
    price = _exact if wide else _fixed(history.decimals)
    vol = _exact if wide else _fixed(most_decimals(r["vol"] for r in history.rows))
    columns: list[Column] = [("bar", lambda r: bar(r["ts_utc"]), False)]
    columns += [(p, lambda r, p=p: price(r[p]), True) for p in PRICES]
    columns.append(("vol", lambda r: vol(r["vol"]), True))
    if wide:
        columns += [("vwap", lambda r: _exact(r["vwap"]), True),
                    ("trades", lambda r: _cell(r["trade_count"]), True),
                    ("exp", lambda r: _cell(r["expected_candles"]), True)]
    columns += [("n", lambda r: _cell(r["source_candles"]), True),
                ("q", lambda r: _cell(r["quality_score"]), True),
                ("ver", lambda r: _cell(r["derivation_version"]), True),
                ("valid from", lambda r: valid(r["valid_from"]), False),
                ("valid to", lambda r: valid(r["valid_to"]), False),
                ("change", lambda r: r["change"], False),
                ("reason", lambda r: r["reason"] or "", False),
                ("run", lambda r: (r["run_id"] or "")[:None if wide else RUN_ID_CHARS], False)]
    return columns


# Left out of the default table while it is wider than WIDTH (a range over several days whose
# versions span days too): first those with one value on every line (the header gives it),
# then in this order. --wide shows them.
DROPPABLE = ("ver", "vol", "run")


def _render(columns: list[Column], rows: list[dict]) -> str:
    return text_table([title for title, _, _ in columns],
                      [[cell(row) for _, cell, _ in columns] for row in rows],
                      right=[i for i, (_, _, right) in enumerate(columns) if right])


def _fit(columns: list[Column], rows: list[dict],
         width: int | None) -> tuple[str, list[str], list[str]]:
    """The table, the titles of the columns left out to fit `width` (None: no limit), and
    how the header names them (`ver 1 on every line`, `vol`)."""
    values = {title: {cell(row) for row in rows} for title, cell, _ in columns}
    order = sorted(DROPPABLE, key=lambda title: len(values[title]) > 1)  # constant ones first
    left_out: list[str] = []
    while True:
        shown = [c for c in columns if c[0] not in left_out]
        table = _render(shown, rows)
        if width is None or max(map(len, table.splitlines())) <= width or not order:
            notes = [f"{title} is {next(iter(values[title]))} throughout (not shown)"
                     if len(values[title]) == 1 else f"{title} not shown" for title in left_out]
            return table, left_out, notes
        left_out.append(order.pop(0))


def _what(history: BarHistory) -> str:
    """The header's first line: which bars, as of when, how many versions."""
    tf, day = history.timeframe, f"{history.start:%Y-%m-%d}"
    asked = timestamp(history.asked)
    if history.asked.date() == history.start.date():
        asked = asked.removeprefix(f"{day} ")
    inside = history.asked != history.start
    if history.end is None:
        what = f"{history.symbol} {tf} bar " + (
            f"containing {asked} is {timestamp(history.start)}" if inside
            else timestamp(history.start))
    else:
        what = (f"{history.symbol} {tf} bars starting in [{timestamp(history.start)}, "
                f"{timestamp(history.end)})")
        if inside:
            what += f" (START {asked} is in bar {history.start:%H:%M})"
    if history.calendar is not None:
        what += f" ({history.calendar} calendar)"
    if history.at is not None:
        what += f", as of {timestamp(history.at, seconds=True)}"
    versions, bars = len(history.rows), len({row["ts_utc"] for row in history.rows})
    count = f"{versions} version{'s' * (versions != 1)}"
    if history.end is not None:
        count += f" of {bars} bar{'s' * (bars != 1)}"
    return f"{what}: {count}, oldest first" if versions else f"{what}: no version"


def format_history(history: BarHistory, *, wide: bool = False) -> str:
    """The header, then the table: at most WIDTH columns unless `wide`."""
    if not history.rows:
        return f"{_what(history)} (times UTC)"
    rows = history.rows
    bar = _clock((r["ts_utc"] for r in rows), seconds=False, wide=wide)
    valid = _clock([r["valid_from"] for r in rows] + [r["valid_to"] for r in rows],
                   seconds=True, wide=wide)
    table, left_out, missing = _fit(_columns(history, bar, valid, wide), rows,
                                    None if wide else WIDTH)
    if wide:
        return "\n".join([f"{_what(history)} (times UTC)", table])
    notes = ["UTC", f"prices to {history.decimals} decimals"]
    if bar.shared and history.end is not None:
        notes.append(f"bars {'on' if len(bar.shared) > 4 else 'in'} {bar.shared}")
    if valid.shared:
        notes.append(f"valid from/to {'on' if len(valid.shared) > 4 else 'in'} {valid.shared}")
    if "run" not in left_out:
        notes.append(f"run ids cut to {RUN_ID_CHARS}")
    header = [_what(history), "; ".join([*notes, *missing, "--wide: all"])]
    lines = [part for line in header
             for part in textwrap.wrap(line, WIDTH, subsequent_indent="  ")]
    return "\n".join([*lines, table])
