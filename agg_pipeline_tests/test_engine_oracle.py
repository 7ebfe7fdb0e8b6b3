"""Property tests: the aggregation engine against the independent pandas oracle (oracle.py).

1. Random 1m series (gaps, invalid rows of every kind, partial rows, zero-volume rows, late
   and corrected rows, deleted rows), aggregated at moments that leave the tail non-final:
   every stored bar, every counter, the soft-deleted history and the cursor match the
   oracle; an immediate re-run writes nothing.
2. The cursor rules (contract 7/8) under interleaved inserts and aggregations over random
   ranges at random moments.
3. A fuzz test with arbitrary floats and timestamps: no stored bar is ever insane and a
   far-future row never drags a cursor past `now`.

Knob: AGG_ORACLE_SCALE multiplies the number of examples (default: ~60 s for the file).
"""

from __future__ import annotations

import math
import os
import random
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from agg_pipeline.engine.aggregate import aggregate
from agg_pipeline_tests import oracle
from agg_pipeline_tests.helpers import AGG_START, T0, add_symbol, bar, insert_bars, sync
from agg_pipeline_tests.oracle import (
    SPECS,
    OracleStore,
    ceil_time,
    ended_bound,
    final_bound,
    floor_time,
)
from agg_pipeline_tests.reporting import report
from agg_pipeline_tests.stored import assert_active_bars_equal, derived_rows

SYMBOL = "ORCL.T"
OTHER = "OTHER^X"  # a second symbol whose rows must never leak into SYMBOL's bars
TABLES = ("data_agg_source_days, data_agg_state, derived_data_bars, data_bars, "
          "core_asset_registry_all")
MINUTE = timedelta(minutes=1)
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)
NAN, INF = float("nan"), float("inf")

HEALTH = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large]
# AGG_ORACLE_SCALE=10 runs ten times the examples (a deeper search than the ~90 s default).
SCALE = float(os.environ.get("AGG_ORACLE_SCALE", "1"))


def examples(n: int) -> int:
    return max(1, round(n * SCALE))


def reset(conn) -> None:
    conn.execute(f"TRUNCATE {TABLES} RESTART IDENTITY CASCADE")
    conn.commit()


def stored_cursor(conn, symbol: str, timeframe: str) -> datetime:
    return conn.execute(
        "SELECT last_agg_bar_ts_utc FROM data_agg_state WHERE canonical_symbol = %s "
        "AND timeframe = %s", (symbol, timeframe)).fetchone()[0]


def delete_rows(conn, symbol: str, stamps) -> None:
    conn.execute("DELETE FROM data_bars WHERE canonical_symbol = %s AND timeframe = '1m' "
                 "AND ts_utc = ANY(%s)", (symbol, list(stamps)))


def run_engine(conn, symbol, timeframe, start, end, now):
    result = aggregate(conn, symbol, timeframe, start, end, now=now)
    conn.commit()
    return result


# ================================================================== 1. oracle comparison


@dataclass
class Scenario:
    seed: int
    optional: str | None
    skip_zero: bool
    span_start: datetime
    span_minutes: int
    agg_start: datetime
    now1: datetime
    now2: datetime
    now3: datetime
    p_invalid: float
    p_partial: float
    p_zero: float
    p_offgrid: float
    distractors: bool

    def describe(self) -> str:
        return (f"seed={self.seed} opt={self.optional} skip_zero={self.skip_zero} "
                f"span={self.span_start:%Y-%m-%d %H:%M}+{self.span_minutes}m "
                f"agg_start={self.agg_start:%Y-%m-%d %H:%M:%S} now1={self.now1:%d %H:%M:%S} "
                f"now2={self.now2:%d %H:%M:%S} now3={self.now3:%d %H:%M:%S}")


@st.composite
def scenarios(draw) -> Scenario:
    optional = draw(st.sampled_from([None, None, "15m", "4h", "1d"]))
    if optional == "1d":  # 1d needs 14+ good hours of one UTC day: k hours of day T0
        k = draw(st.sampled_from([14, 15, 16, 19, 20, 23, 24]))
        start_hour, hours = 24 - k, k + draw(st.integers(0, 3))
    elif optional == "4h":  # 3+ good hours of an aligned 4h window
        start_hour, hours = 4 * draw(st.integers(0, 11)) + draw(st.integers(0, 1)), draw(
            st.integers(4, 9))
    else:
        start_hour, hours = draw(st.integers(0, 47)), draw(st.integers(1, 4))
    offset = 0 if optional in ("4h", "1d") else draw(st.integers(0, 59))  # a partial first hour
    span_start = T0 + start_hour * HOUR + offset * MINUTE
    span_minutes = hours * 60
    if draw(st.sampled_from([True, True, False])):
        agg_start = AGG_START
    else:  # inside the series, on or off the grids
        agg_start = (span_start + draw(st.integers(0, span_minutes)) * MINUTE
                     + draw(st.sampled_from([0, 0, 1, 30, 59])) * timedelta(seconds=1))
    seconds = timedelta(seconds=draw(st.integers(0, 59)))
    now1 = span_start + draw(st.integers(0, span_minutes + 75)) * MINUTE + seconds
    if optional not in ("4h", "1d") and draw(st.booleans()):  # anywhere later
        now2 = now1 + draw(st.integers(0, span_minutes + 130)) * MINUTE
    else:  # around the end of the series (after it for the long optional timeframes)
        around = st.integers(-30, 150) if optional not in ("4h", "1d") else st.integers(1, 150)
        tail = span_start + (span_minutes + draw(around)) * MINUTE + seconds
        now2 = max(now1, tail)
    now3 = span_start + draw(st.integers(-10, max(-10, int((now2 - span_start) / MINUTE)))) * MINUTE
    short = optional not in ("4h", "1d")
    return Scenario(
        seed=draw(st.integers(0, 2**32 - 1)),
        optional=optional,
        skip_zero=draw(st.booleans()),
        span_start=span_start,
        span_minutes=span_minutes,
        agg_start=agg_start,
        now1=now1,
        now2=now2,
        now3=now3,
        # the long timeframes need long runs of good hours: less noise there
        p_invalid=draw(st.sampled_from([0.0, 0.03, 0.1, 0.25] if short else [0.0, 0.005])),
        p_partial=draw(st.sampled_from([0.0, 0.03, 0.1] if short else [0.0, 0.005])),
        p_zero=draw(st.sampled_from([0.0, 0.1, 0.4, 1.0])),
        p_offgrid=draw(st.sampled_from([0.0, 0.05, 0.2])),
        distractors=draw(st.booleans()),
    )


D = 1 / 1024  # dyadic price steps: sums of prices and volumes are exact in binary floats

INVALID_KINDS = (
    "null_price", "nan_price", "inf_price", "neg_inf_price", "zero_price", "negative_prices",
    "open_above_high", "open_below_low", "close_above_high", "close_below_low",
    "high_below_low", "neg_vol", "nan_vol", "inf_vol", "zero_vwap", "neg_vwap", "nan_vwap",
    "inf_vwap", "neg_trade_count",
)


class RowMaker:
    def __init__(self, rng: random.Random, sc: Scenario):
        self.rng, self.sc = rng, sc
        self.level = 1 + rng.randrange(0, 1024) * D

    def valid(self, ts: datetime, *, partial: bool | None = None) -> dict:
        rng = self.rng
        self.level = max(64 * D, self.level + rng.randrange(-4, 5) * D)
        values = sorted(self.level + rng.randrange(-8, 9) * D for _ in range(4))
        if rng.random() < 0.1:  # a flat bar
            values = [values[0]] * 4
        vol = None if rng.random() < 0.1 else (
            0.0 if rng.random() < self.sc.p_zero else rng.randrange(1, 400) / 4)
        return {
            "ts_utc": ts,
            "open": rng.choice(values),
            "high": values[3],
            "low": values[0],
            "close": rng.choice(values),
            "vol": vol,
            "vwap": None if rng.random() < 0.15 else rng.choice(values),
            "trade_count": None if rng.random() < 0.1 else rng.randrange(0, 60),
            "is_partial": (rng.random() < self.sc.p_partial) if partial is None else partial,
        }

    def corrupt(self, row: dict, kind: str | None = None) -> dict:
        rng = self.rng
        kind = kind or rng.choice(INVALID_KINDS)
        column = rng.choice(oracle.PRICE_COLUMNS)
        if not all(isinstance(row[c], float) and math.isfinite(row[c]) and row[c] > 0
                   for c in oracle.PRICE_COLUMNS):
            row = self.valid(row["ts_utc"])  # already broken: break a good row instead
        row = dict(row)
        if kind == "null_price":
            row[column] = None
        elif kind == "nan_price":
            row[column] = NAN
        elif kind == "inf_price":
            row[column] = INF
        elif kind == "neg_inf_price":
            row[column] = -INF
        elif kind == "zero_price":
            row["low"] = 0.0
            row[column] = 0.0
        elif kind == "negative_prices":
            for c in oracle.PRICE_COLUMNS:
                row[c] = -row[c]
            row["high"], row["low"] = row["low"], row["high"]  # ordered, only the sign is wrong
        elif kind == "open_above_high":
            row["open"] = row["high"] + D
        elif kind == "open_below_low":
            row["open"] = row["low"] - D
        elif kind == "close_above_high":
            row["close"] = row["high"] + D
        elif kind == "close_below_low":
            row["close"] = row["low"] - D
        elif kind == "high_below_low":
            row["high"], row["low"] = row["low"] - D, row["high"]
        elif kind == "neg_vol":
            row["vol"] = -rng.choice([D, 1.0, 5.0])
        elif kind == "nan_vol":
            row["vol"] = NAN
        elif kind == "inf_vol":
            row["vol"] = INF
        elif kind == "zero_vwap":
            row["vwap"] = 0.0
        elif kind == "neg_vwap":
            row["vwap"] = -1.0
        elif kind == "nan_vwap":
            row["vwap"] = NAN
        elif kind == "inf_vwap":
            row["vwap"] = INF
        elif kind == "neg_trade_count":
            row["trade_count"] = -rng.randrange(1, 5)
        return row

    def maybe_invalid(self, ts: datetime) -> dict:
        row = self.valid(ts)
        return self.corrupt(row) if self.rng.random() < self.sc.p_invalid else row

    def offgrid(self, minute: datetime) -> dict:
        shift = self.rng.choice([timedelta(seconds=self.rng.randrange(1, 60)),
                                 timedelta(microseconds=self.rng.randrange(1, 10**6))])
        return self.valid(minute + shift, partial=False)  # valid but for its timestamp


def first_batch(rng: random.Random, sc: Scenario, maker: RowMaker) -> list[dict]:
    rows = []
    minute = sc.span_start
    end = sc.span_start + sc.span_minutes * MINUTE
    hour_mode = None
    counts = [5, 4, 3, 2, 1, 0]
    while minute < end:
        if minute.minute == 0 or hour_mode is None:
            long_tf = sc.optional in ("4h", "1d")  # their quality is set by the hours covered
            hour_mode = rng.choices(["dense", "thin", "gap"],
                                    weights=[60, 1, 1] if long_tf else [16, 3, 1])[0]
        window_end = min(end, floor_time(minute, 5 * MINUTE) + 5 * MINUTE)
        slots = [minute + i * MINUTE for i in range(int((window_end - minute) / MINUTE))]
        if hour_mode == "gap":
            keep = 0
        elif hour_mode == "dense" and sc.optional in ("4h", "1d"):
            keep = rng.choices(counts, weights=[90, 5, 3, 1, 1, 0])[0]
        elif hour_mode == "dense":
            keep = rng.choices(counts, weights=[60, 15, 10, 6, 5, 4])[0]
        else:
            keep = rng.choices(counts, weights=[20, 10, 10, 10, 10, 40])[0]
        for ts in sorted(rng.sample(slots, min(keep, len(slots)))):
            rows.append(maker.maybe_invalid(ts))
        if slots and rng.random() < sc.p_offgrid:
            rows.append(maker.offgrid(rng.choice(slots)))
        minute = window_end
    return rows


def late_batch(rng: random.Random, sc: Scenario, maker: RowMaker,
               current: dict[datetime, dict]) -> tuple[list[dict], list[datetime]]:
    """Upserted rows (new minutes, corrections, partial rows made final, newer data) and
    stamps of rows to delete."""
    upserts: dict[datetime, dict] = {}
    end = sc.span_start + sc.span_minutes * MINUTE
    minute = sc.span_start
    while minute < end:
        if minute not in current and rng.random() < 0.15:
            upserts[minute] = maker.maybe_invalid(minute)
        minute += MINUTE
    for ts, row in current.items():
        r = rng.random()
        if r < 0.06:
            upserts[ts] = maker.maybe_invalid(ts)  # corrected values
        elif r < 0.09:
            upserts[ts] = maker.corrupt(row)  # a good row goes bad
        elif r < 0.11:
            upserts[ts] = dict(row)  # the same row again
        elif row["is_partial"] and r < 0.6:
            upserts[ts] = {**row, "is_partial": False}  # the bar became final
    for i in range(rng.choice([0, 0, 3, 12, 40])):  # newer data after the series
        ts = end + i * MINUTE
        upserts[ts] = maker.maybe_invalid(ts)
    deletions = [ts for ts in current if ts not in upserts and rng.random() < 0.05]
    return list(upserts.values()), deletions


def distractor_rows(rng: random.Random, sc: Scenario, maker: RowMaker):
    """Rows SYMBOL's bars must never read: data_bars 5m/1h rows, another symbol's 1m rows."""
    base = floor_time(sc.span_start, HOUR)
    crazy = {"open": 500.0, "high": 900.0, "low": 100.0, "close": 600.0, "vol": 1e6,
             "vwap": 777.0, "trade_count": 9999, "is_partial": False}
    five = [{"ts_utc": base + i * 5 * MINUTE, **crazy} for i in range(0, 24, 2)]
    hour = [{"ts_utc": base + i * HOUR, **crazy} for i in range(2)]
    other = [{**maker.valid(sc.span_start + i * MINUTE, partial=False), "high": 950.0}
             for i in range(0, min(sc.span_minutes, 180))]
    return five, hour, other


def timeframes_of(sc: Scenario) -> list[str]:
    # 15m reads 5m, 4h and 1d read 1h: run each after its source
    return ["5m", "1h"] + ([sc.optional] if sc.optional else [])


def range_of(sc: Scenario) -> tuple[datetime, datetime]:
    return floor_time(sc.span_start, DAY) - DAY, sc.span_start + 3 * DAY


def check_table(conn, store: OracleStore, timeframe: str, context: str) -> list[dict]:
    rows = derived_rows(conn, SYMBOL, timeframe)
    assert_active_bars_equal(rows, store.active.get(timeframe, {}), f"{context} {timeframe}")
    deleted = sorted(((r["ts_utc"], r) for r in rows if r["deleted_at"] is not None),
                     key=lambda pair: pair[0])
    expected_deleted = sorted(((ts, b) for tf, ts, b in store.deleted if tf == timeframe),
                              key=lambda pair: pair[0])
    assert [t for t, _ in deleted] == [t for t, _ in expected_deleted], (
        f"{context} {timeframe}: soft-deleted rows {[t.isoformat() for t, _ in deleted]}, "
        f"oracle {[t.isoformat() for t, _ in expected_deleted]}")
    for (ts, got), (_, want) in zip(deleted, expected_deleted, strict=True):
        diff = oracle.bar_difference(want, got)
        assert not diff, f"{context} {timeframe} soft-deleted {ts.isoformat()} changed: {diff}"
    return rows


def run_and_compare(conn, store: OracleStore, sc: Scenario, now: datetime, phase: str) -> None:
    start, end = range_of(sc)
    for timeframe in timeframes_of(sc):
        context = f"[{phase} now={now.isoformat()} {sc.describe()}]"
        before = {r["id"]: r["xmin"] for r in derived_rows(conn, SYMBOL, timeframe)}
        result = run_engine(conn, SYMBOL, timeframe, start, end, now)
        want = store.run(timeframe, start, end, now)
        d = want.derivation
        got = {
            "windows_seen": result.windows_seen,
            "windows_with_source": result.windows_with_source,
            "windows_skipped": result.windows_skipped,
            "bars_inserted": result.bars_inserted,
            "bars_updated": result.bars_updated,
            "bars_soft_deleted": result.bars_soft_deleted,
            "bars_unchanged": result.bars_unchanged,
            "bars_poor_quality": result.bars_poor_quality,
            "source_rows_read": result.source_rows_read,
            "source_rows_invalid": result.source_rows_invalid,
            "source_rows_partial": result.source_rows_partial,
            "newest_source_ts": result.newest_source_ts,
            "cursor_before": result.cursor_before,
        }
        expected = {
            "windows_seen": d.windows_seen,
            "windows_with_source": d.windows_with_source,
            "windows_skipped": d.windows_skipped,
            "bars_inserted": len(want.inserted),
            "bars_updated": len(want.updated),
            "bars_soft_deleted": len(want.soft_deleted),
            "bars_unchanged": len(want.unchanged),
            "bars_poor_quality": want.poor_quality_written,
            "source_rows_read": d.source_rows_read,
            "source_rows_invalid": d.source_rows_invalid,
            "source_rows_partial": d.source_rows_partial_valid,
            "newest_source_ts": want.newest_source_ts,
            "cursor_before": want.cursor_before,
        }
        for name in ("bars_inserted", "bars_updated", "bars_soft_deleted", "bars_unchanged",
                     "windows_skipped", "source_rows_invalid", "source_rows_partial"):
            STATS[f"oracle {name}"] += expected[name]
        STATS["oracle cursor moves"] += want.cursor_after != want.cursor_before
        wrong = {k: (expected[k], got[k]) for k in expected if expected[k] != got[k]}
        assert not wrong, f"{context} {timeframe} counters (oracle, engine): {wrong}"
        assert stored_cursor(conn, SYMBOL, timeframe) == result.cursor_after, context
        assert store.accept_cursor(timeframe, want, result.cursor_after), (
            f"{context} {timeframe}: cursor {result.cursor_after}, oracle {want.cursor_after}")
        rows = check_table(conn, store, timeframe, context)
        # bars the oracle says are unchanged (or outside the run) were not written at all
        may_change = set(want.updated) | set(want.soft_deleted)
        rewritten = [r["ts_utc"].isoformat() for r in rows
                     if r["id"] in before and r["xmin"] != before[r["id"]]
                     and r["ts_utc"] not in may_change]
        assert not rewritten, f"{context} {timeframe}: rows written though unchanged: {rewritten}"


def assert_rerun_writes_nothing(conn, sc: Scenario, now: datetime, phase: str) -> None:
    start, end = range_of(sc)
    for timeframe in timeframes_of(sc):
        before = derived_rows(conn, SYMBOL, timeframe)
        cursor = stored_cursor(conn, SYMBOL, timeframe)
        result = run_engine(conn, SYMBOL, timeframe, start, end, now)
        written = (result.bars_inserted, result.bars_updated, result.bars_soft_deleted)
        assert written == (0, 0, 0), f"[{phase} rerun {sc.describe()}] {timeframe}: {written}"
        assert derived_rows(conn, SYMBOL, timeframe) == before, f"[{phase} rerun] {timeframe}"
        assert stored_cursor(conn, SYMBOL, timeframe) == cursor, f"[{phase} rerun] {timeframe}"


# What the examples exercised, shown in pytest's summary (a property test that never reaches
# a case proves nothing about it).
STATS: Counter = Counter()


def landmark(optional: str, start_hour: int, hours: int, *, seed: int = 7,
             skip_zero: bool = True) -> Scenario:
    """A quiet series of whole hours, materialised after its end: every rung of the optional
    timeframes' ladders is reached whatever hypothesis draws."""
    span_start = T0 + start_hour * HOUR
    end = span_start + hours * HOUR
    return Scenario(seed=seed, optional=optional, skip_zero=skip_zero, span_start=span_start,
                    span_minutes=hours * 60, agg_start=AGG_START, now1=span_start + HOUR,
                    now2=end + 2 * MINUTE, now3=end - 3 * HOUR, p_invalid=0.0, p_partial=0.0,
                    p_zero=0.2, p_offgrid=0.05, distractors=True)


@settings(max_examples=examples(90), deadline=None, suppress_health_check=HEALTH)
@given(sc=scenarios())
@example(landmark("1d", 0, 25))  # 1d: 24 hours
@example(landmark("1d", 2, 23))  # 22 hours
@example(landmark("1d", 6, 19))  # 18 hours
@example(landmark("1d", 9, 15))  # 15 hours
@example(landmark("4h", 4, 7))  # 4h: 4 hours, then 3
@example(landmark("15m", 1, 2, skip_zero=False))
def test_engine_matches_pandas_oracle(db, sc: Scenario):
    reset(db)
    rng = random.Random(sc.seed)
    maker = RowMaker(rng, sc)
    add_symbol(db, SYMBOL, skip_zero_volume=sc.skip_zero, calc_15m=sc.optional == "15m",
               calc_4h=sc.optional == "4h", calc_1d=sc.optional == "1d")
    add_symbol(db, OTHER)
    sync(db, agg_start=sc.agg_start)
    store = OracleStore(agg_start=sc.agg_start, skip_zero_volume=sc.skip_zero)
    for timeframe in timeframes_of(sc):
        assert stored_cursor(db, SYMBOL, timeframe) == sc.agg_start  # cursor starts there

    batch = first_batch(rng, sc, maker)
    insert_bars(db, SYMBOL, batch)
    store.upsert_rows(batch)
    if sc.distractors:
        five, hour, other = distractor_rows(rng, sc, maker)
        insert_bars(db, SYMBOL, five, timeframe="5m")
        insert_bars(db, SYMBOL, hour, timeframe="1h")
        insert_bars(db, OTHER, other)
        start, end = range_of(sc)
        run_engine(db, OTHER, "5m", start, end, sc.now2)  # OTHER's derived 5m bars exist too
    db.commit()

    # phase 1: the first materialisation, the tail not final yet
    run_and_compare(db, store, sc, sc.now1, "first")

    # phase 2: late, corrected and deleted rows; later moment
    upserts, deletions = late_batch(rng, sc, maker, store.source_rows)
    insert_bars(db, SYMBOL, upserts, upsert=True)
    delete_rows(db, SYMBOL, deletions)
    db.commit()
    store.upsert_rows(upserts)
    store.delete_rows(deletions)
    run_and_compare(db, store, sc, sc.now2, "late")
    assert_rerun_writes_nothing(db, sc, sc.now2, "late")

    # phase 3: more corrections, materialised at an earlier moment: windows not final then
    # are left alone (not written, not deleted), the cursor does not move back
    upserts, deletions = late_batch(rng, sc, maker, store.source_rows)
    insert_bars(db, SYMBOL, upserts, upsert=True)
    delete_rows(db, SYMBOL, deletions)
    db.commit()
    store.upsert_rows(upserts)
    store.delete_rows(deletions)
    run_and_compare(db, store, sc, sc.now3, "rewind")
    assert_rerun_writes_nothing(db, sc, sc.now3, "rewind")

    STATS["oracle scenarios"] += 1
    for timeframe, bars in store.active.items():
        STATS[f"oracle {timeframe} bars"] += len(bars)
        if timeframe not in ("5m", "1h"):
            for bar_ in bars.values():
                STATS[f"oracle {timeframe} quality {bar_['quality_score']}"] += 1
    STATS["oracle soft-deleted"] += len(store.deleted)


# ================================================================== 2. cursor rules


ROW_KINDS = ["usable", "usable", "usable", "invalid", "partial", "offgrid", "future"]
FAR_FUTURE = [datetime(2099, 1, 1, tzinfo=UTC), datetime(2099, 12, 31, 23, 59, tzinfo=UTC),
              T0 + 40 * DAY]

insert_ops = st.tuples(
    st.just("insert"),
    # runs of consecutive minutes: (first minute from T0, how many, kind)
    st.lists(st.tuples(st.integers(-90, 420), st.integers(1, 40), st.sampled_from(ROW_KINDS)),
             min_size=1, max_size=6),
)
aggregate_ops = st.tuples(
    st.just("aggregate"),
    st.sampled_from(["5m", "1h", "5m then 1h"]),
    st.sampled_from(["cursor", "cursor window", "before cursor", "T0+"]),  # the range start
    st.integers(-200, 480),  # minutes: before the cursor, or from T0
    st.integers(1, 900).map(lambda m: m if m < 600 else m * 60),  # range length, minutes
    st.integers(-30, 540),  # now, minutes from T0
    st.integers(0, 59),  # now, seconds
)


def cursor_row(minute: int, kind: str) -> dict:
    ts = T0 + minute * MINUTE
    price = 1 + (minute % 97) * D
    if kind == "invalid":
        return bar(ts, price, high=price / 2)
    if kind == "partial":
        return bar(ts, price, is_partial=True)
    if kind == "offgrid":
        return bar(ts + timedelta(seconds=17), price)
    if kind == "future":
        return bar(FAR_FUTURE[minute % len(FAR_FUTURE)] + minute * timedelta(seconds=60), price)
    return bar(ts, price)


def check_cursor_run(db, store: OracleStore, timeframe: str, start_mode: str, start_min: int,
                     length: int, now: datetime, agg_start: datetime) -> None:
    spec = SPECS[timeframe]
    step = spec.step
    if start_mode == "cursor":
        start = stored_cursor(db, SYMBOL, timeframe)
    elif start_mode == "cursor window":
        start = floor_time(stored_cursor(db, SYMBOL, timeframe), step)
    elif start_mode == "before cursor":
        start = stored_cursor(db, SYMBOL, timeframe) - abs(start_min) * MINUTE
    else:
        start = T0 + start_min * MINUTE
    end = start + length * MINUTE
    before = stored_cursor(db, SYMBOL, timeframe)
    result = run_engine(db, SYMBOL, timeframe, start, end, now)
    after = stored_cursor(db, SYMBOL, timeframe)
    want = store.run(timeframe, start, end, now)
    context = (f"{timeframe} range [{start:%m-%d %H:%M:%S}, {end:%m-%d %H:%M}) "
               f"now {now:%m-%d %H:%M:%S}, cursor {before:%m-%d %H:%M:%S}")

    assert result.cursor_before == before == want.cursor_before, context
    assert result.cursor_after == after, context
    assert result.newest_source_ts == want.newest_source_ts, context
    # the rules, stated one by one
    assert after >= before, f"{context}: cursor moved back to {after}"
    if after != before:
        newest = want.newest_source_ts
        assert newest is not None and newest <= now, f"{context}: moved without data"
        assert after <= floor_time(newest, step) + step, (
            f"{context}: cursor {after} beyond the window of the newest source row {newest}")
        assert after <= want.derivation.hi, (
            f"{context}: cursor {after} beyond the first non-final window")
        assert after <= ceil_time(end, step), f"{context}: cursor {after} beyond the range"
        assert ceil_time(start, step) <= ceil_time(before, step), (
            f"{context}: cursor {after} jumped over windows this run did not process")
    if ceil_time(start, step) <= before and want.newest_source_ts is not None:
        reach = min(want.derivation.hi, floor_time(want.newest_source_ts, step) + step)
        assert after >= reach, (
            f"{context}: cursor {after} stalled before {reach} (empty windows behind newer "
            "data must be passed over)")
    assert store.accept_cursor(timeframe, want, after), (
        f"{context}: cursor {after}, oracle {want.cursor_after}")
    STATS[f"cursor {timeframe} runs"] += 1
    STATS[f"cursor {timeframe} moves"] += after != before
    STATS["cursor runs where an off-grid cursor may stay"] += (
        want.cursor_also_allowed is not None)
    STATS["cursor stopped by the frontier"] += (
        after != before and want.newest_source_ts is not None
        and after == floor_time(want.newest_source_ts, step) + step
        and after < want.derivation.hi)
    STATS["cursor stopped at the first non-final window"] += (
        after != before and after == want.derivation.hi)
    STATS["cursor past the delay's bound (complete windows)"] += after > final_bound(now, step)
    # the 1h frontier reads the 5m table: keep the oracle's 5m table honest
    if timeframe == "5m":
        active = {r["ts_utc"] for r in derived_rows(db, SYMBOL, "5m") if r["deleted_at"] is None}
        assert active == set(store.active.get("5m", {})), context


@settings(max_examples=examples(60), deadline=None, suppress_health_check=HEALTH)
@given(
    agg_start_offset=st.one_of(st.none(), st.integers(-60, 300), st.integers(-60, 120)),
    agg_start_seconds=st.sampled_from([0, 0, 29]),
    first_insert=insert_ops,
    more_ops=st.lists(st.one_of(insert_ops, aggregate_ops, aggregate_ops), min_size=2,
                      max_size=10),
)
# The rules' landmark cases, always run: ("aggregate", timeframes, range start mode, minutes,
# range length in minutes, now in minutes from T0, now's seconds)
@example(  # a gap behind newer data is passed over (5m, then 1h over the 5m bars)
    0, 0, ("insert", [(0, 10, "usable"), (100, 5, "usable")]),
    [("aggregate", "5m then 1h", "cursor", 0, 300, 200, 0)] * 2)
@example(  # invalid, partial and far-future rows after the last usable one do not count
    0, 0, ("insert", [(0, 21, "usable"), (21, 10, "invalid"), (31, 5, "partial"),
                      (36, 3, "offgrid"), (40, 3, "future")]),
    [("aggregate", "5m then 1h", "cursor", 0, 600, 300, 0)] * 2)
@example(  # the first non-final window stops it; later moments move it on
    0, 0, ("insert", [(0, 125, "usable")]),
    [("aggregate", "5m then 1h", "cursor", 0, 600, 62, 30),
     ("aggregate", "5m then 1h", "cursor", 0, 600, 121, 0),
     ("aggregate", "5m then 1h", "cursor", 0, 600, 400, 0)])
@example(  # a range after the cursor leaves it alone; one from before it moves it
    0, 0, ("insert", [(0, 90, "usable")]),
    [("aggregate", "5m", "T0+", 30, 60, 200, 0),
     ("aggregate", "5m", "before cursor", 30, 600, 200, 0)])
@example(  # agg_start off every grid
    7, 29, ("insert", [(0, 130, "usable")]),
    [("aggregate", "5m then 1h", "cursor window", 0, 600, 200, 0),
     ("aggregate", "5m then 1h", "cursor", 0, 600, 300, 0)])
@example(  # an off-grid cursor does not pass a window that is not final yet
    1, 0, ("insert", [(0, 1, "usable")]),
    [("aggregate", "5m", "cursor", 0, 1, 0, 0)] * 2)
@example(  # the default agg_start, days before the data
    None, 0, ("insert", [(0, 60, "usable")]),
    [("aggregate", "5m then 1h", "cursor", 0, 600 * 60, 100, 0)])
def test_cursor_rules(db, agg_start_offset, agg_start_seconds, first_insert, more_ops):
    reset(db)
    agg_start = AGG_START if agg_start_offset is None else (
        T0 + agg_start_offset * MINUTE + agg_start_seconds * timedelta(seconds=1))
    add_symbol(db, SYMBOL)
    sync(db, agg_start=agg_start)
    store = OracleStore(agg_start=agg_start)
    for timeframe in ("5m", "1h"):
        assert stored_cursor(db, SYMBOL, timeframe) == agg_start  # where a cursor starts
    for op in [first_insert, *more_ops]:
        if op[0] == "insert":
            rows = {}
            for first, count, kind in op[1]:
                for minute in range(first, first + count):
                    row = cursor_row(minute, kind)
                    rows[row["ts_utc"]] = row
            insert_bars(db, SYMBOL, list(rows.values()), upsert=True)
            db.commit()
            store.upsert_rows(rows.values())
            continue
        _, which, start_mode, start_min, length, now_min, now_sec = op
        now = T0 + now_min * MINUTE + now_sec * timedelta(seconds=1)
        for timeframe in ("5m", "1h") if which == "5m then 1h" else (which,):
            check_cursor_run(db, store, timeframe, start_mode, start_min, length, now, agg_start)


# ================================================================== 3. fuzz: sane bars


MAX = 1.7976931348623157e308
EXTREMES = [0.0, -0.0, 5e-324, 2.2e-308, 1e-300, 1e-12, 1.0, 1e12, 1e300, MAX, -1.0, NAN, INF,
            -INF]
any_float = st.one_of(st.none(), st.sampled_from(EXTREMES),
                      st.floats(allow_nan=True, allow_infinity=True))
positive_float = st.one_of(st.sampled_from([5e-324, 1e-300, 1e-12, 1.0, 1.5, 1e12, 1e300, MAX]),
                           st.floats(min_value=5e-324, max_value=MAX))
# magnitudes of every kind: implausible ones (sql/009) must be set aside as invalid rows
vol_float = st.one_of(st.sampled_from([0.0, 5e-324, 1e-300, 1e-12, 1.0, 1e15, 1e300, MAX]),
                      st.floats(min_value=0.0, max_value=MAX))
vwap_float = positive_float
count_int = st.one_of(st.integers(0, 1000), st.integers(0, 2**31 - 1))
any_vol, any_vwap = st.one_of(any_float, vol_float), st.one_of(any_float, vwap_float)
any_count = st.one_of(st.none(), st.integers(-(2**31), 2**31 - 1), count_int)
fuzz_ts = st.one_of(
    st.integers(0, 89).map(lambda m: T0 + m * MINUTE),  # on the grid
    st.datetimes(min_value=datetime(2025, 7, 6, 23), max_value=datetime(2025, 7, 7, 5),
                 timezones=st.just(UTC)),  # anywhere, to the microsecond
    st.datetimes(min_value=datetime(2090, 1, 1), max_value=datetime(2099, 12, 31),
                 timezones=st.just(UTC)),  # far future
    st.datetimes(min_value=datetime(2025, 6, 29), max_value=datetime(2025, 7, 1, 1),
                 timezones=st.just(UTC)),  # around agg_start
)


@st.composite
def fuzz_row(draw) -> dict:
    """One row with a timestamp anywhere and values of any kind."""
    return {
        "ts_utc": draw(fuzz_ts),
        **{c: draw(any_float) for c in oracle.PRICE_COLUMNS},
        "vol": draw(any_vol),
        "vwap": draw(any_vwap),
        "trade_count": draw(any_count),
        "is_partial": draw(st.booleans()),
    }


@st.composite
def fuzz_batches(draw) -> list[dict]:
    """A block of consecutive minutes (so that windows fill up and bars appear) made from a few
    hypothesis-chosen extreme values, plus rows anywhere (off the grid, far future, around
    agg_start) with values of any kind."""
    prices = draw(st.lists(positive_float, min_size=1, max_size=6))
    weird = draw(st.lists(any_float, min_size=1, max_size=6))
    vols = [None, 0.0, *draw(st.lists(vol_float, min_size=1, max_size=4))]
    vwaps = [None, *draw(st.lists(vwap_float, min_size=1, max_size=4))]
    counts = [None, *draw(st.lists(count_int, min_size=1, max_size=3))]
    rng = random.Random(draw(st.integers(0, 2**32 - 1)))
    first = T0 + draw(st.integers(0, 60)) * MINUTE
    block = []
    for i in range(draw(st.integers(0, 270))):
        if rng.random() < 0.8:  # ordered positive prices: a valid row of extreme magnitudes
            values = sorted(rng.choice(prices) for _ in range(4))
            row = {"low": values[0], "open": rng.choice(values), "close": rng.choice(values),
                   "high": values[3], "vol": rng.choice(vols), "vwap": rng.choice(vwaps),
                   "trade_count": rng.choice(counts)}
        else:  # anything
            pool = weird + prices
            junk = pool
            row = {**{c: rng.choice(pool) for c in oracle.PRICE_COLUMNS},
                   "vol": rng.choice(junk + vols), "vwap": rng.choice([*junk, 0.0, *vwaps]),
                   "trade_count": rng.choice([*counts, -1, -(2**31)])}
        block.append({"ts_utc": first + i * MINUTE, **row, "is_partial": rng.random() < 0.12})
    return block + draw(st.lists(fuzz_row(), max_size=10))


FUZZ_TIMEFRAMES = ("5m", "15m", "1h", "4h", "1d")


def assert_sane(conn, symbol: str, now: datetime, agg_start: datetime) -> None:
    for timeframe in FUZZ_TIMEFRAMES:
        step = SPECS[timeframe].step
        for r in derived_rows(conn, symbol, timeframe):
            where = f"{timeframe} bar {r['ts_utc'].isoformat()}: {r}"
            prices = [r[c] for c in oracle.PRICE_COLUMNS]
            assert all(p is not None and math.isfinite(p) and p > 0 for p in prices), where
            assert r["high"] >= max(r["open"], r["close"]), where
            assert r["low"] <= min(r["open"], r["close"]), where
            assert r["vol"] is None or (math.isfinite(r["vol"]) and r["vol"] >= 0), where
            assert r["vwap"] is None or (math.isfinite(r["vwap"]) and r["vwap"] > 0), where
            assert r["trade_count"] is None or r["trade_count"] >= 0, where
            assert r["ts_utc"] >= agg_start, f"bar before agg_start: {where}"
            assert r["ts_utc"] + step + oracle.DELAY <= now, f"non-final window: {where}"
        cursor = stored_cursor(conn, symbol, timeframe)
        assert agg_start <= cursor <= now, f"{timeframe} cursor {cursor} (now {now})"


@settings(max_examples=examples(150), deadline=None, suppress_health_check=HEALTH)
@given(
    batches=st.lists(fuzz_batches(), min_size=1, max_size=2),
    now_minutes=st.integers(-60, 2 * 24 * 60),
    skip_zero=st.booleans(),
)
# Rows whose volume/vwap/trade_count sums or products would leave float8/int4 once made a
# whole range fail; they are implausible (sql/009) and must be set aside as invalid.
@example([[bar(T0, 1.1, vol=1e300, vwap=1e10)]], 120, False)
@example([[bar(T0, 1.1, vol=1e-200, vwap=1e-200)]], 120, False)
@example([[bar(T0 + i * MINUTE, 1.1, vol=1e308) for i in range(2)]], 120, False)
@example([[bar(T0 + i * MINUTE, 1.1, trade_count=2**31 - 1) for i in range(3)]], 120, False)
def test_fuzz_no_insane_bar(db, batches, now_minutes, skip_zero):
    """Arbitrary rows never produce an insane bar, a bar before agg_start or of a non-final
    window, nor a cursor past now; prices, counts and the cursor also match the oracle.

    Rows whose magnitudes would make sums overflow (or vwap * vol underflow) are invalid:
    they are counted and set aside, and never fail the aggregation.
    """
    reset(db)
    add_symbol(db, SYMBOL, skip_zero_volume=skip_zero, calc_15m=True, calc_4h=True,
               calc_1d=True)
    sync(db)
    store = OracleStore(agg_start=AGG_START, skip_zero_volume=skip_zero)
    now = T0 + now_minutes * MINUTE
    start, end = AGG_START - DAY, datetime(2100, 1, 1, tzinfo=UTC)
    # the newest usable row seen so far, per timeframe: a later batch may invalidate rows
    # (the frontier then falls back) but the cursor, which only moves forward, may not
    newest_seen: dict[str, datetime] = {}
    for batch in batches:
        rows = {r["ts_utc"]: r for r in batch}
        insert_bars(db, SYMBOL, list(rows.values()), upsert=True)
        db.commit()
        store.upsert_rows(rows.values())
        for timeframe in FUZZ_TIMEFRAMES:
            result = run_engine(db, SYMBOL, timeframe, start, end, now)
            want = store.run(timeframe, start, end, now)
            # prices and counts are exact even for extreme floats
            assert result.source_rows_invalid == want.derivation.source_rows_invalid, timeframe
            active = {r["ts_utc"]: r for r in derived_rows(db, SYMBOL, timeframe)
                      if r["deleted_at"] is None}
            assert set(active) == set(store.active[timeframe]), timeframe
            for ts, expected in store.active[timeframe].items():
                got = active[ts]
                for name in (*oracle.PRICE_COLUMNS, "source_candles", "quality_score",
                             "trade_count"):
                    assert got[name] == expected[name], f"{timeframe} {ts} {name}: {got}"
                for name in ("vol", "vwap"):
                    assert oracle.close_enough(expected[name], got[name]), (
                        f"{timeframe} {ts} {name}: oracle {expected[name]!r}, engine {got}")
            cursor = stored_cursor(db, SYMBOL, timeframe)
            assert result.cursor_after == cursor
            assert store.accept_cursor(timeframe, want, cursor), (
                f"{timeframe}: cursor {cursor}, oracle {want.cursor_after}")
            # a far-future row (2090-2099) never moves a cursor beyond now, nor beyond the
            # window of the newest usable row at or before now
            step = SPECS[timeframe].step
            assert cursor <= ended_bound(now, step) or cursor == AGG_START, timeframe
            newest = want.newest_source_ts
            assert newest is None or newest <= now, f"{timeframe}: frontier {newest} after now"
            if newest is not None:
                newest_seen[timeframe] = max(newest, newest_seen.get(timeframe, newest))
            bound = newest_seen.get(timeframe)
            assert cursor == AGG_START or (
                bound is not None and cursor <= floor_time(bound, step) + step), timeframe
        assert_sane(db, SYMBOL, now, AGG_START)
        STATS["fuzz examples"] += 1
        for timeframe in FUZZ_TIMEFRAMES:
            STATS[f"fuzz {timeframe} bars"] += len(store.active[timeframe])


@pytest.fixture(scope="module", autouse=True)
def _figures():
    started = time.monotonic()
    yield
    if STATS:
        figures = ", ".join(f"{name} {count}" for name, count in sorted(STATS.items()))
        report(f"engine vs pandas oracle ({time.monotonic() - started:.0f} s): {figures}")
