"""Bars on the market's own clock (SPEC contract 15, issue 22), against an independent pandas
oracle (calendar_oracle.py) built with zoneinfo time zones.

Three symbols, each on a calendar of a test config (the shipped timeframes.toml plus a 1w
timeframe and a 24x7 calendar on New York's 17:00 day):

- FXPAIR on `fx`: days from 17:00 New York (the Monday session opens Sunday 17:00), weeks
  from Sunday 17:00; 4h (off the UTC grid, so from the session's open), 1d and 1w; minutes of
  the FX week plus stray Saturday minutes, which belong to no session;
- CRYPTO on `ny_24x7`: the same clock every day, every minute: the Sunday sessions of the DST
  switches last 23 and 25 hours and are scored on that length, as are their weeks;
- STOCK on `us_equity`: 09:30-16:00 New York with holidays and early closes; 1h windows
  09:30 ... 15:30-16:00, 4h 09:30-13:30 and 13:30-16:00, 1d, 1w; pre- and post-market
  minutes (which make 5m bars on the UTC grid, but no calendar bar) and a holiday's minutes.

Around both DST switches of 2025 and 2026. The UTC default is held by the other oracle
tests, unchanged.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from agg_pipeline import demo
from agg_pipeline.engine import aggregate as engine
from agg_pipeline.engine import health, history, monitoring, planning, timeframes
from agg_pipeline_tests import calendar_oracle as co
from agg_pipeline_tests import oracle
from agg_pipeline_tests.helpers import config_text, load_config, sync
from agg_pipeline_tests.stored import derived_rows, source_rows

HOUR, DAY = timedelta(hours=1), timedelta(days=1)
SWITCHES = (date(2025, 3, 9), date(2025, 11, 2), date(2026, 3, 8), date(2026, 11, 1))
START = datetime(2025, 2, 1, tzinfo=UTC)  # agg_start_utc of every task
EXTRA = """
[timeframes.1w]
source = "1d"
mandatory = false
ladder_of = "1h"
version = 1

[calendars.ny_24x7]
time_zone = "America/New_York"
session_open = "17:00"
opens_previous_day = true
"""
SYMBOLS = {  # symbol: (calendar, optional timeframes, oracle clock)
    "FXPAIR": ("fx", "{4h,1d,1w}", co.FX),
    "CRYPTO": ("ny_24x7", "{4h,1d,1w}", co.EVERY_DAY_17),
    "STOCK": ("us_equity", "{4h,1d,1w}", co.EQUITY),
}
LADDER = ("5m", "1h", "4h", "1d", "1w")


@pytest.fixture(scope="module")
def test_config(tmp_path_factory) -> timeframes.Config:
    return load_config(Path(tmp_path_factory.mktemp("config")) / "timeframes.toml",
                       config_text(EXTRA))


@pytest.fixture
def calendar_db(db, test_config):
    with timeframes.configured(test_config):
        for symbol, (calendar, optional, _) in SYMBOLS.items():
            db.execute("INSERT INTO core_asset_registry_all (canonical_symbol, active, "
                       "test_active, asset_class, base_timeframe, agg_calendar, agg_timeframes) "
                       "VALUES (%s, true, true, 'fx', '1m', %s, %s)",
                       (symbol, calendar, optional))
        sync(db, agg_start=START)
        yield db


# ----------------------------------------------------------------------------- data


def fx_minutes(ts: pd.DatetimeIndex) -> np.ndarray:
    """The FX week on New York's clock, and Saturday 12:00-12:59 New York (strays)."""
    local = ts.tz_convert(co.NEW_YORK)
    stray = (local.dayofweek == 5) & (local.hour == 12)
    return demo.new_york_fx_mask(ts) | np.asarray(stray)


def equity_minutes(ts: pd.DatetimeIndex) -> np.ndarray:
    """Weekdays 08:00-17:59 New York: the session and its pre- and post-market, holidays too."""
    local = ts.tz_convert(co.NEW_YORK)
    return np.asarray((local.dayofweek < 5) & (local.hour >= 8) & (local.hour < 18))


MASKS = {"FXPAIR": fx_minutes, "CRYPTO": demo.every_minute, "STOCK": equity_minutes}


def seed(db, symbol: str, spans: list[tuple[datetime, datetime]]) -> None:
    spec = demo.demo_symbol(symbol)
    for i, (first, last) in enumerate(spans):
        frame = demo.generate_bars(spec, first, last, seed=31 + i, trading=MASKS[symbol],
                                   late_fraction=0.0)
        demo.write_bars(db, symbol, frame, True)
    db.commit()


def around(switch: date, days: int = 10) -> tuple[datetime, datetime]:
    middle = datetime.combine(switch, datetime.min.time(), tzinfo=UTC)
    return middle - days * DAY, middle + days * DAY


# ----------------------------------------------------------------------------- the oracle


def oracle_bars(db, symbol: str, now: datetime) -> dict[str, tuple[dict, co.Windows | None]]:
    """Every timeframe's bars (and calendar windows) from the symbol's 1m rows as they are."""
    clock = SYMBOLS[symbol][2]
    frame = oracle.source_frame(source_rows(db, symbol), 1)
    first, last = START.date() - DAY, now.date() + 8 * DAY
    five = oracle.derive(frame, oracle.SPECS["5m"], start=START, end=now, now=now,
                         agg_start=START, skip_zero_volume=False).bars
    found: dict[str, tuple[dict, co.Windows | None]] = {"5m": (five, None)}
    five_frame = co.as_frame(five)
    if clock is co.EQUITY:  # 09:30 is off the 1h grid: hours from the session's open
        hours = co.intraday(clock, first, last, HOUR, timedelta(minutes=5))
        found["1h"] = (co.roll_up(five_frame, hours, "5m"), hours)
        fours = co.intraday(clock, first, last, 4 * HOUR, HOUR)
        per_session = lambda a, b: int(np.ceil((b - a) / HOUR))  # noqa: E731
    else:  # 17:00 New York is on the UTC hour grid: 1h stays there, 4h does not
        source = oracle.source_frame([{"ts_utc": t, **b, "is_partial": False}
                                      for t, b in sorted(five.items())], 5)
        hourly = oracle.derive(source, oracle.SPECS["1h"], start=START, end=now, now=now,
                               agg_start=START, skip_zero_volume=False).bars
        found["1h"] = (hourly, None)
        fours = co.intraday(clock, first, last, 4 * HOUR, HOUR)
        per_session = lambda a, b: int((b - a) / HOUR)  # noqa: E731
    hour_frame = co.as_frame(found["1h"][0])
    found["4h"] = (co.roll_up(hour_frame, fours, "1h"), fours)
    days = co.daily(clock, first, last, per_session)
    found["1d"] = (co.roll_up(hour_frame, days, "1h"), days)
    weeks = co.weekly(clock, first, last)
    found["1w"] = (co.roll_up(co.as_frame(found["1d"][0]), weeks, "1d"), weeks)
    return found


def build(db, symbols, now: datetime, *, incremental: bool = False) -> None:
    for name in LADDER:
        batch = engine.aggregate_many(db, name, [engine.Span(s, START, now + DAY)
                                                 for s in symbols], now=now,
                                      incremental=incremental)
        assert not batch.failed, batch.failed
    db.commit()


def stored(db, symbol: str, name: str) -> list[dict]:
    return [r for r in derived_rows(db, symbol, name) if r["deleted_at"] is None]


def assert_matches_oracle(db, symbol: str, now: datetime) -> dict[str, int]:
    """Every calendar timeframe's bars and cursor equal the oracle's; returns bar counts."""
    found = oracle_bars(db, symbol, now)
    counts = {}
    for name in ("1h", "4h", "1d", "1w"):
        bars, wins = found[name]
        problems = co.differences(bars, stored(db, symbol, name))
        assert not problems, f"{symbol} {name}: {problems[:10]} ({len(problems)})"
        counts[name] = len(bars)
        if wins is not None:
            source = found[timeframes.get(name).source][0]
            cursor = db.execute("SELECT last_agg_bar_ts_utc FROM data_agg_state WHERE "
                                "canonical_symbol = %s AND timeframe = %s",
                                (symbol, name)).fetchone()[0]
            assert pd.Timestamp(cursor) == co.frontier_end(wins, pd.Timestamp(max(source))), \
                f"{symbol} {name} cursor"
    return counts


# ----------------------------------------------------------------------------- tests


def test_calendar_windows_match_the_oracle_across_dst_switches(calendar_db):
    db = calendar_db
    spans = [around(s) for s in SWITCHES]
    thanksgiving = (datetime(2025, 11, 20, tzinfo=UTC), datetime(2025, 12, 2, tzinfo=UTC))
    for symbol in SYMBOLS:
        seed(db, symbol, spans + ([thanksgiving] if symbol == "STOCK" else []))
    now = spans[-1][1] + 9 * DAY
    build(db, list(SYMBOLS), now)
    counts = {symbol: assert_matches_oracle(db, symbol, now) for symbol in SYMBOLS}
    assert counts["FXPAIR"]["1d"] >= 40 and counts["FXPAIR"]["1w"] >= 8, counts
    # the labels follow New York: 21:00 UTC in summer, 22:00 in winter (FX), 13:30 / 14:30
    # (equities); the 23- and 25-hour Sundays are whole days of their own length
    daily = {s: {r["ts_utc"]: r for r in stored(db, s, "1d")} for s in SYMBOLS}
    assert {t.hour for t in daily["FXPAIR"]} == {21, 22}
    assert {(t.hour, t.minute) for t in daily["STOCK"]} == {(13, 30), (14, 30)}
    spring = daily["CRYPTO"][datetime(2025, 3, 8, 22, tzinfo=UTC)]  # Sat 17:00 EST -> Sun EDT
    fall = daily["CRYPTO"][datetime(2025, 11, 1, 21, tzinfo=UTC)]  # Sat 17:00 EDT -> Sun EST
    assert (spring["expected_candles"], fall["expected_candles"]) == (23, 25)
    assert all(r["expected_candles"] == 24 for r in daily["FXPAIR"].values())
    # STOCK: no bar on Thanksgiving, a 3.5-hour day after it, a 4-session week
    assert datetime(2025, 11, 27, 14, 30, tzinfo=UTC) not in daily["STOCK"]
    assert daily["STOCK"][datetime(2025, 11, 28, 14, 30, tzinfo=UTC)]["expected_candles"] == 4
    hours = {r["ts_utc"]: r for r in stored(db, "STOCK", "1h")}
    last_hour = hours[datetime(2025, 11, 3, 20, 30, tzinfo=UTC)]  # 15:30-16:00 EST
    assert (last_hour["expected_candles"], last_hour["quality_score"]) == (6, 2)
    assert not [t for t in hours if t.minute != 30]  # pre/post-market 5m bars make none
    # running it again writes nothing
    before = db.execute("SELECT count(*), max(updated_at) FROM derived_data_bars").fetchone()
    build(db, list(SYMBOLS), now)
    assert db.execute("SELECT count(*), max(updated_at) FROM derived_data_bars").fetchone() \
        == before


def ticks(switch: date) -> list[datetime]:
    """Every 5 hours across the switch, and around its repeated or skipped hour and the
    session boundaries (20:59-22:01 UTC)."""
    first, last = around(switch, 4)
    found = {first + timedelta(hours=h) for h in range(3, int((last - first) / HOUR), 5)}
    middle = datetime.combine(switch, datetime.min.time(), tzinfo=UTC)
    found |= {middle + timedelta(hours=5, minutes=m) for m in (30, 90, 107)}
    found |= {middle + timedelta(hours=h, minutes=m) for h in (20, 21, 22) for m in (-1, 0, 1)}
    return sorted(found)


@pytest.mark.parametrize("switch", [SWITCHES[0], SWITCHES[1]])
def test_live_ticks_across_a_switch_never_restate_and_end_at_the_oracle(calendar_db, switch):
    db = calendar_db
    first, last = around(switch, 4)
    for symbol in SYMBOLS:
        seed(db, symbol, [(first, last)])
    for i, tick in enumerate(ticks(switch)):
        # every other tick as live runs read (each symbol from its cursor; a task with no
        # source row in an ended window is left alone, so it may stay behind the planner's
        # target across empty windows), else in full
        build(db, list(SYMBOLS), tick, incremental=i % 2 == 1)
        tasks = planning.task_states(db, tick)
        assert not tasks.problems, tasks.problems
        late = [(s.symbol, s.timeframe, s.cursor, s.target) for s in tasks.states
                if s.ahead or (s.behind and i % 2 == 0)]
        assert not late, f"at {tick}: {late}"  # the planner agrees with the engine
    assert db.execute("SELECT count(*) FROM derived_bar_revisions").fetchone()[0] == 0
    now = last + 9 * DAY
    build(db, list(SYMBOLS), now)
    for symbol in SYMBOLS:
        assert_matches_oracle(db, symbol, now)
    rows = [r for r in health.frontier_health(db, now=now) if r["window_calendar"]]
    assert rows and all(r["cursor_status"] == "OK" for r in rows), rows
    for name in ("4h", "1d", "1w"):
        outcome = monitoring.cursor_not_ahead(db, name, monitoring.Scope())
        assert outcome.passed, outcome.offenders
        found = monitoring.matches_source(db, name, monitoring.Scope(), sample=20 * DAY)
        assert found.passed, found.offenders


def test_a_corrected_row_restates_the_session_bar_of_the_evening_before(calendar_db):
    """A correction at 03:00 UTC of 2025-11-04 lies in Tuesday's FX session, which opened at
    22:00 UTC on 2025-11-03 (partition 2025-11-03): a run over 2025-11-04 alone, as the
    late-data path runs, restates it."""
    db = calendar_db
    seed(db, "FXPAIR", [around(SWITCHES[1], 5)])
    now = around(SWITCHES[1], 5)[1] + 9 * DAY
    build(db, ["FXPAIR"], now)
    at = datetime(2025, 11, 4, 3, tzinfo=UTC)
    db.execute("UPDATE data_bars SET high = high * 1.01, ingested_at = now() "
               "WHERE canonical_symbol = 'FXPAIR' AND ts_utc = %s", (at,))
    db.commit()
    day = datetime(2025, 11, 4, tzinfo=UTC)
    for name in LADDER:
        batch = engine.aggregate_many(db, name, [engine.Span("FXPAIR", day, day + DAY)],
                                      now=now, reason="correction")
        assert not batch.failed, batch.failed
    db.commit()
    assert_matches_oracle(db, "FXPAIR", now)
    [revised] = db.execute("SELECT ts_utc, reason FROM derived_bar_revisions "
                           "WHERE timeframe = '1d'").fetchall()
    assert revised == (datetime(2025, 11, 3, 22, tzinfo=UTC), "correction")


def test_history_finds_the_session_bar(calendar_db):
    db = calendar_db
    seed(db, "FXPAIR", [around(SWITCHES[1], 5)])
    now = around(SWITCHES[1], 5)[1] + 9 * DAY
    build(db, ["FXPAIR"], now)
    # Tuesday 2025-11-04 03:00 UTC lies in Tuesday's FX session: Monday 17:00 EST onwards
    [row] = history.bar_versions(db, "FXPAIR", "1d", datetime(2025, 11, 4, 3, tzinfo=UTC))
    assert row["ts_utc"] == datetime(2025, 11, 3, 22, tzinfo=UTC)
    assert row["change"] == "current"
    shown = history.format_history(history.read_history(
        db, "FXPAIR", "1d", datetime(2025, 11, 4, 3, tzinfo=UTC)))
    assert shown.splitlines()[0] == ("FXPAIR 1d bar containing 2025-11-04 03:00 is 2025-11-03 "
                                     "22:00 (fx calendar): 1 version, oldest first")


def test_the_grid_keeps_utc_symbols_and_on_grid_timeframes_on_the_fast_path(test_config):
    with timeframes.configured(test_config):
        on_grid = {(c, tf.name): timeframes.window_calendar(tf, c)
                   for c in ("utc", "fx", "us_equity") for tf in timeframes.ORDERED}
    assert {k for k, v in on_grid.items() if v} == {
        ("utc", "1w"), ("fx", "4h"), ("fx", "1d"), ("fx", "1w"),
        ("us_equity", "1h"), ("us_equity", "4h"), ("us_equity", "1d"), ("us_equity", "1w")}
