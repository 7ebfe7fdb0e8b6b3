"""An independent pandas oracle of calendar-aligned bars (SPEC contract 15).

Written from the contract and README's rules, sharing no code with agg_pipeline.engine: a
calendar is restated here (`Clock`), its sessions are built with pandas' tz_localize on
America/New_York, windows are assigned with an IntervalIndex, and roll-ups are groupbys.

- a daily window is a session [open, close) (FX: trade date D opens at 17:00 on D-1 and
  closes at 17:00 on D; an equity session 09:30-16:00, earlier on an early close, none on a
  holiday or a day that does not trade);
- a weekly window spans the sessions of the trade dates of one ISO week;
- an intraday window of a timeframe off the UTC grid steps from its session's open and ends
  at the session's close;
- a window's expected count is the number of source windows inside it; its score the first
  rung of its ladder whose share of that count it reaches (rounded up).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from fractions import Fraction

import pandas as pd

NEW_YORK = "America/New_York"
# the documented ladders as shares of the expected count (contract 4, README)
HOURLY_SHARES = ((Fraction(1), 2), (Fraction(5, 6), 1), (Fraction(2, 3), 0),
                 (Fraction(7, 12), -1))
MINUTE = timedelta(minutes=1)


@dataclass(frozen=True)
class Clock:
    open: time
    previous_day: bool = False
    close: time | None = None
    trading: frozenset[int] = frozenset(range(5))  # date.weekday(): Monday = 0
    holidays: frozenset[date] = frozenset()
    early: dict[date, time] = field(default_factory=dict)
    zone: str = NEW_YORK


FX = Clock(time(17), previous_day=True)
EVERY_DAY_17 = Clock(time(17), previous_day=True, trading=frozenset(range(7)))
EQUITY = Clock(time(9, 30), close=time(16), holidays=frozenset({
    date(2025, 11, 27), date(2025, 12, 25), date(2026, 1, 1), date(2026, 11, 26)}),
    early={date(2025, 11, 28): time(13), date(2025, 12, 24): time(13),
           date(2026, 11, 27): time(13)})


def local(day: date, at: time, zone: str) -> pd.Timestamp:
    return pd.Timestamp(datetime.combine(day, at)).tz_localize(zone).tz_convert("UTC")


def sessions(clock: Clock, first: date, last: date) -> list[tuple[date, pd.Timestamp,
                                                                  pd.Timestamp]]:
    """(trade date, open, close) of every session of trade dates first..last, UTC."""
    found = []
    for day in pd.date_range(first, last, freq="D").date:
        if day.weekday() not in clock.trading or day in clock.holidays:
            continue
        open_day = day - timedelta(days=1) if clock.previous_day else day
        close = clock.early.get(day, clock.close)
        end = (local(open_day + timedelta(days=1), clock.open, clock.zone) if close is None
               else local(day, close, clock.zone))
        found.append((day, local(open_day, clock.open, clock.zone), end))
    return found


@dataclass(frozen=True)
class Windows:
    starts: list[pd.Timestamp]
    ends: list[pd.Timestamp]
    expected: list[int]

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame({"start": self.starts, "end": self.ends, "expected": self.expected})


def daily(clock: Clock, first: date, last: date, per_session: callable) -> Windows:
    found = sessions(clock, first, last)
    return Windows([s[1] for s in found], [s[2] for s in found],
                   [per_session(s[1], s[2]) for s in found])


def weekly(clock: Clock, first: date, last: date) -> Windows:
    """Weeks of trade dates (ISO, Monday first); expected: their sessions (a daily source)."""
    by_week: dict[tuple[int, int], list] = {}
    for session in sessions(clock, first, last):
        by_week.setdefault(tuple(session[0].isocalendar())[:2], []).append(session)
    weeks = [by_week[k] for k in sorted(by_week)]
    return Windows([w[0][1] for w in weeks], [w[-1][2] for w in weeks], [len(w) for w in weeks])


def intraday(clock: Clock, first: date, last: date, step: timedelta,
             source_step: timedelta) -> Windows:
    """Windows of `step` from each session's open, cut at its close; expected source windows
    of `source_step` (themselves from the open, cut at the close)."""
    starts, ends, expected = [], [], []
    for _, opens, closes in sessions(clock, first, last):
        start = opens
        while start < closes:
            end = min(start + step, closes)
            starts.append(start)
            ends.append(end)
            expected.append(math.ceil((end - start) / source_step))
            start = end
    return Windows(starts, ends, expected)


def score(count: int, expected: int, shares=HOURLY_SHARES) -> int | None:
    for share, value in shares:
        if count >= math.ceil(expected * share):
            return value
    return None


def roll_up(source: pd.DataFrame, windows: Windows, source_timeframe: str,
            shares=HOURLY_SHARES) -> dict[pd.Timestamp, dict]:
    """Bars of `windows` from `source` bars (columns ts_utc, open, high, low, close, vol,
    vwap, trade_count), by window start."""
    if source.empty or not windows.starts:
        return {}
    index = pd.IntervalIndex.from_arrays(pd.DatetimeIndex(windows.starts),
                                         pd.DatetimeIndex(windows.ends), closed="left")
    source = source.sort_values("ts_utc").reset_index(drop=True)
    position = index.get_indexer(pd.DatetimeIndex(source["ts_utc"]))
    source = source[position >= 0].assign(w=position[position >= 0])
    bars = {}
    for w, group in source.groupby("w", sort=True):
        expected = windows.expected[w]
        quality = score(len(group), expected, shares)
        if quality is None:
            continue
        weighted = group[group["vol"] > 0]
        bars[windows.starts[w]] = {
            "open": float(group["open"].iloc[0]), "high": float(group["high"].max()),
            "low": float(group["low"].min()), "close": float(group["close"].iloc[-1]),
            "vol": float(group["vol"].sum()),
            "vwap": float((weighted["vwap"] * weighted["vol"]).sum() / weighted["vol"].sum()),
            "trade_count": int(group["trade_count"].sum()),
            "source_candles": len(group), "expected_candles": expected,
            "quality_score": quality, "source_timeframe": source_timeframe,
        }
    return bars


def as_frame(bars: dict) -> pd.DataFrame:
    """Bars (by start) as source rows of the next timeframe."""
    rows = [{"ts_utc": pd.Timestamp(ts), **bar} for ts, bar in sorted(bars.items())]
    return pd.DataFrame(rows, columns=["ts_utc", "open", "high", "low", "close", "vol", "vwap",
                                       "trade_count"])


def frontier_end(windows: Windows, newest: pd.Timestamp | None) -> pd.Timestamp | None:
    """The end of the last window starting at or before `newest` (contract 7's bound)."""
    if newest is None:
        return None
    starts = pd.DatetimeIndex(windows.starts)
    at = int(starts.searchsorted(newest, side="right")) - 1
    return windows.ends[at] if at >= 0 else None


def differences(expected: dict, stored: Iterable[dict]) -> list[str]:
    """What differs between the oracle's bars and the stored active ones."""
    stored = {pd.Timestamp(r["ts_utc"]): r for r in stored}
    problems = [f"missing {t}" for t in sorted(set(expected) - set(stored))]
    problems += [f"extra {t}: {stored[t]}" for t in sorted(set(stored) - set(expected))]
    for ts in sorted(set(expected) & set(stored)):
        want, got = expected[ts], stored[ts]
        for name, value in want.items():
            same = (math.isclose(value, got[name], rel_tol=1e-9) if name in ("vol", "vwap")
                    else value == got[name])
            if not same:
                problems.append(f"{ts} {name}: oracle {value!r}, engine {got[name]!r}")
    return problems
