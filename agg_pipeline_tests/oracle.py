"""An independent pandas oracle of the aggregation contracts (SPEC contracts 1-9).

Written from the contracts, not from the engine's SQL: it shares no code with
`agg_pipeline.engine` and knows nothing of how the engine computes a window. It models

* the roll-up of one (symbol, target timeframe) over a requested range at a moment `now`
  (`derive`), including validity, `is_partial`, the zero-volume filler rule and the
  quality ladders;
* the derived-bar table and the task cursor across successive runs (`OracleStore`): which
  bars a run inserts, updates, soft-deletes or leaves unwritten, and where the cursor goes.

Source rows are plain dicts (`ts_utc`, `open`, `high`, `low`, `close`, `vol`, `vwap`,
`trade_count`, `is_partial`); None is SQL NULL, float('nan') is a stored NaN.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd

ORIGIN = datetime(2000, 1, 1, tzinfo=UTC)  # contract 1: windows aligned to the clock
DELAY = timedelta(seconds=60)  # aggregation_delay_seconds of tasks created by the sync
PRICE_COLUMNS = ("open", "high", "low", "close")
BAR_FIELDS = ("open", "high", "low", "close", "vol", "vwap", "trade_count",
              "source_candles", "expected_candles", "quality_score", "source_timeframe", "raw")


def _ladder(*rungs: tuple[int, int, int]) -> dict[int, int]:
    """{usable source count: quality score} from (lowest count, highest count, score)."""
    return {n: score for low, high, score in rungs for n in range(low, high + 1)}


@dataclass(frozen=True)
class Spec:
    name: str
    minutes: int
    source: str
    source_minutes: int
    quality: dict[int, int]  # usable source bars -> score; a count not listed: no bar

    @property
    def step(self) -> timedelta:
        return timedelta(minutes=self.minutes)

    @property
    def source_step(self) -> timedelta:
        return timedelta(minutes=self.source_minutes)

    @property
    def expected(self) -> int:
        return self.minutes // self.source_minutes


# Contract 4 and the documented ladders of the optional timeframes.
SPECS: dict[str, Spec] = {
    "5m": Spec("5m", 5, "1m", 1, _ladder((5, 5, 2), (4, 4, 1), (3, 3, 0))),
    "1h": Spec("1h", 60, "5m", 5, _ladder((12, 12, 2), (10, 11, 1), (8, 9, 0), (7, 7, -1))),
    "15m": Spec("15m", 15, "5m", 5, _ladder((3, 3, 2), (2, 2, 0))),
    "4h": Spec("4h", 240, "1h", 60, _ladder((4, 4, 2), (3, 3, 0))),
    "1d": Spec("1d", 1440, "1h", 60,
               _ladder((24, 24, 2), (20, 23, 1), (16, 19, 0), (14, 15, -1))),
}


# ---------------------------------------------------------------------------- time


def floor_time(ts: datetime, step: timedelta) -> datetime:
    return ts - (ts - ORIGIN) % step


def ceil_time(ts: datetime, step: timedelta) -> datetime:
    floored = floor_time(ts, step)
    return floored if floored == ts else floored + step


def final_bound(now: datetime, step: timedelta) -> datetime:
    """Windows starting before this are final at `now` by the delay (end + delay <= now)."""
    return floor_time(now - DELAY, step)


def ended_bound(now: datetime, step: timedelta) -> datetime:
    """Windows starting before this have ended at `now`: final once complete (contract 6)."""
    return floor_time(now, step)


US = timedelta(microseconds=1)


def to_us(ts: datetime) -> int:
    """Microseconds since ORIGIN (PostgreSQL's timestamptz resolution)."""
    return (ts - ORIGIN) // US


def from_us(value: int) -> datetime:
    return ORIGIN + int(value) * US


# ---------------------------------------------------------------------------- source rows


def source_frame(rows: Iterable[Mapping], source_minutes: int) -> pd.DataFrame:
    """Source rows in time order with their validity: `valid`, `usable` (valid, not partial).

    `t` is the timestamp in microseconds since ORIGIN; `<column>_null` tells NULL from NaN.
    """
    rows = list(rows)
    data: dict[str, np.ndarray] = {
        "t": np.array([to_us(r["ts_utc"]) for r in rows], dtype=np.int64)}
    for column in (*PRICE_COLUMNS, "vol", "vwap", "trade_count"):
        values = [r.get(column) for r in rows]
        data[f"{column}_null"] = np.array([v is None for v in values], dtype=bool)
        data[column] = np.array([np.nan if v is None else float(v) for v in values],
                                dtype=np.float64)
    data["is_partial"] = np.array([bool(r.get("is_partial", False)) for r in rows], dtype=bool)

    # plausible magnitudes (sql/009): prices and vwap in [1e-12, 1e12], volume 0 or in
    # [1e-12, 1e15 per minute], trade_count in [0, 1e6 per minute]
    valid = np.ones(len(rows), dtype=bool)
    for column in PRICE_COLUMNS:
        values = data[column]
        with np.errstate(invalid="ignore"):
            valid &= ~data[f"{column}_null"] & np.isfinite(values) & (values > 0)
    o, h, lo, c = (data[col] for col in PRICE_COLUMNS)
    vol, vwap, tc = data["vol"], data["vwap"], data["trade_count"]
    with np.errstate(invalid="ignore"):
        valid &= (lo >= 1e-12) & (h <= 1e12)
        valid &= (lo <= o) & (o <= h) & (lo <= c) & (c <= h)
        valid &= data["vol_null"] | (vol == 0) | (
            (vol >= 1e-12) & (vol <= 1e15 * source_minutes))
        valid &= data["vwap_null"] | ((vwap >= 1e-12) & (vwap <= 1e12))
        valid &= data["trade_count_null"] | ((tc >= 0) & (tc <= 1e6 * source_minutes))
    valid &= data["t"] % (source_minutes * 60_000_000) == 0  # on its timeframe's grid
    data["valid"] = valid
    data["usable"] = valid & ~data["is_partial"]
    frame = pd.DataFrame(data)
    return frame.sort_values("t", kind="stable").reset_index(drop=True)


def newest_usable(frame: pd.DataFrame, now: datetime) -> datetime | None:
    """Newest usable source timestamp at or before `now`."""
    candidates = frame.loc[frame["usable"] & (frame["t"] <= to_us(now)), "t"]
    return None if candidates.empty else from_us(candidates.max())


# ---------------------------------------------------------------------------- roll-up


@dataclass
class Derivation:
    """What a run sees: the bars of its final windows in [read_from, final_to), its counters,
    and `hi`, the first window that is not final (its cursor's bound)."""

    read_from: datetime
    hi: datetime
    final_to: datetime
    bars: dict[datetime, dict]
    windows_seen: int
    windows_with_source: int
    windows_skipped: int
    source_rows_read: int
    source_rows_invalid: int
    source_rows_partial: int  # every is_partial row read
    source_rows_partial_valid: int  # is_partial rows that are otherwise valid


def derive(frame: pd.DataFrame, spec: Spec, *, start: datetime, end: datetime,
           now: datetime, agg_start: datetime, skip_zero_volume: bool,
           stored: Iterable[datetime] = ()) -> Derivation:
    """The bars of every final window whose start lies in [start, end), on/after agg_start.

    Contract 6 (amended): a window is final once end + delay <= now, or once it has ended
    with every expected source bar usable, or when a final bar of it is `stored` already."""
    step = spec.step
    lo = ceil_time(start, step)
    delay_final = max(lo, min(ceil_time(end, step), final_bound(now, step)))
    final_to = max(delay_final, min(ceil_time(end, step), ended_bound(now, step)))
    read_from = max(lo, ceil_time(agg_start, step))

    step_us = step // US
    t = frame["t"].to_numpy()
    rows = frame[(t >= to_us(read_from)) & (t < to_us(final_to))]
    window_of = rows["t"].to_numpy() // step_us * step_us
    complete = {from_us(w) for w, n in zip(*np.unique(window_of[rows["usable"].to_numpy()],
                                                      return_counts=True), strict=True)
                if n == spec.expected}
    final = {w for w in complete | set(stored) if delay_final <= w < final_to}
    hi = delay_final
    while hi < final_to and hi in final:
        hi += step
    is_final = np.array([w < to_us(delay_final) or from_us(w) in final for w in window_of],
                        dtype=bool)
    rows, window_of = rows[is_final], window_of[is_final]
    windows_seen = max(0, (hi - read_from) // step)
    windows_with_source = len(np.unique(window_of))

    usable = rows[rows["usable"].to_numpy()]
    bars: dict[datetime, dict] = {}
    if not usable.empty:
        # one group per window (rows are in time order, so windows are contiguous)
        window = window_of[rows["usable"].to_numpy()]
        first = np.flatnonzero(np.r_[True, window[1:] != window[:-1]])
        count = np.diff(np.r_[first, len(window)])
        o, h, lo_, c, vol, vwap, tc = (usable[col].to_numpy() for col in (
            "open", "high", "low", "close", "vol", "vwap", "trade_count"))
        vol_null, tc_null = usable["vol_null"].to_numpy(), usable["trade_count_null"].to_numpy()
        with np.errstate(invalid="ignore"):
            positive = ~vol_null & (vol > 0)
        # filler rule: vol = 0 rows leave OHLC when the window traded (vol > 0 somewhere);
        # a NULL volume is not a zero volume
        traded = np.repeat(np.logical_or.reduceat(positive, first), count)
        ohlc = ~(skip_zero_volume & ~vol_null & (vol == 0) & traded)
        position = np.arange(len(window))
        open_at = np.minimum.reduceat(np.where(ohlc, position, len(window)), first)
        close_at = np.maximum.reduceat(np.where(ohlc, position, -1), first)
        high = np.maximum.reduceat(np.where(ohlc, h, -np.inf), first)
        low = np.minimum.reduceat(np.where(ohlc, lo_, np.inf), first)
        vol_sum = np.add.reduceat(np.where(vol_null, 0.0, vol), first)
        # volume that only some bars carry is unknown (NULL), as is vwap; trade_count alike
        vol_none = np.logical_or.reduceat(vol_null, first)
        tc_sum = np.add.reduceat(np.where(tc_null, 0.0, tc), first)
        tc_none = np.logical_or.reduceat(tc_null, first)
        with_vol = np.add.reduceat((~vol_null).astype(int), first)
        with_tc = np.add.reduceat((~tc_null).astype(int), first)
        weighted = positive & ~usable["vwap_null"].to_numpy()
        pv = np.add.reduceat(np.where(weighted, vwap * vol, 0.0), first)
        pv_vol = np.add.reduceat(np.where(weighted, vol, 0.0), first)
        for g, start_at in enumerate(first):
            quality = spec.quality.get(int(count[g]))
            if quality is None:
                continue
            bars[from_us(window[start_at])] = {
                "open": float(o[open_at[g]]),
                "high": float(high[g]),
                "low": float(low[g]),
                "close": float(c[close_at[g]]),
                "vol": None if vol_none[g] else float(vol_sum[g]),
                "vwap": None if vol_none[g] or pv_vol[g] <= 0 else float(pv[g] / pv_vol[g]),
                "trade_count": None if tc_none[g] else int(tc_sum[g]),
                "source_candles": int(count[g]),
                "expected_candles": spec.expected,
                "quality_score": quality,
                "source_timeframe": spec.source,
                "raw": _partial_volume_note(int(count[g]), int(with_vol[g]), float(vol_sum[g]),
                                            int(with_tc[g]), int(tc_sum[g])),
            }
    return Derivation(
        read_from=read_from,
        hi=hi,
        final_to=final_to,
        bars=bars,
        windows_seen=windows_seen,
        windows_with_source=int(windows_with_source),
        windows_skipped=int(windows_with_source) - len(bars),
        source_rows_read=len(rows),
        source_rows_invalid=int((~rows["valid"]).sum()),
        source_rows_partial=int(rows["is_partial"].sum()),
        source_rows_partial_valid=int((rows["is_partial"] & rows["valid"]).sum()),
    )


def _partial_volume_note(n: int, with_vol: int, vol: float, with_tc: int, tc: int) -> dict:
    """raw of a bar whose usable source bars only partly carry volume or trade counts."""
    if with_vol in (0, n) and with_tc in (0, n):
        return {}
    return {"partial_volume": {"source_candles": n, "with_vol": with_vol,
                               "vol_of_those": vol if with_vol else None,
                               "with_trade_count": with_tc,
                               "trade_count_of_those": tc if with_tc else None}}


# ---------------------------------------------------------------------------- comparison


def close_enough(a: float | None, b: float | None, rel: float = 1e-9) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return math.isclose(a, b, rel_tol=rel, abs_tol=0.0)


def bar_difference(expected: Mapping, actual: Mapping, *, rel: float = 1e-9) -> list[str]:
    """Fields where a stored bar differs from the oracle's (prices exact, vol/vwap relative)."""
    problems = []
    for name in BAR_FIELDS:
        want, got = expected[name], actual[name]
        if name in ("vol", "vwap"):
            same = close_enough(want, got, rel)
        elif name == "raw":
            same = _same_raw(want, got, rel)
        else:
            same = want == got
        if not same:
            problems.append(f"{name}: oracle {want!r}, engine {got!r}")
    return problems


def _same_raw(a: Mapping, b: Mapping, rel: float) -> bool:
    """raw notes: the same keys, counts equal, sums of floats within `rel`."""
    a, b = a.get("partial_volume"), b.get("partial_volume")
    if a is None or b is None:
        return a is None and b is None
    return a.keys() == b.keys() and all(
        close_enough(a[k], b[k], rel) if k == "vol_of_those" else a[k] == b[k] for k in a)


def same_bar(a: Mapping, b: Mapping) -> bool:
    """Whether a recomputed bar equals the stored one (a restatement leaves it unwritten)."""
    return not bar_difference(a, b, rel=1e-12)


# ---------------------------------------------------------------------------- the table


@dataclass
class RunExpectation:
    derivation: Derivation
    inserted: list[datetime]
    updated: list[datetime]
    soft_deleted: list[datetime]
    unchanged: list[datetime]
    poor_quality_written: int
    cursor_before: datetime
    cursor_after: datetime
    # Either value is right when the cursor sits off the grid (at an unaligned agg_start)
    # and the run starts after it but at its window, ceil(cursor): no window lies between
    # them, so moving on is right by contract 7, and so is (conservatively) staying.
    cursor_also_allowed: datetime | None
    newest_source_ts: datetime | None


@dataclass
class OracleStore:
    """The derived-bar table and the cursors of one symbol, as the contracts say they evolve."""

    agg_start: datetime
    skip_zero_volume: bool = False
    source_rows: dict[datetime, dict] = field(default_factory=dict)  # 1m rows by ts
    active: dict[str, dict[datetime, dict]] = field(default_factory=dict)
    deleted: list[tuple[str, datetime, dict]] = field(default_factory=list)
    cursors: dict[str, datetime] = field(default_factory=dict)

    def upsert_rows(self, rows: Iterable[Mapping]) -> None:
        for row in rows:
            self.source_rows[row["ts_utc"]] = dict(row)

    def delete_rows(self, stamps: Iterable[datetime]) -> None:
        for ts in stamps:
            self.source_rows.pop(ts, None)

    def source_of(self, spec: Spec) -> pd.DataFrame:
        if spec.source == "1m":
            rows = self.source_rows.values()
        else:  # active derived bars of the source timeframe, which are never partial
            rows = [{"ts_utc": ts, **bar, "is_partial": False}
                    for ts, bar in self.active.get(spec.source, {}).items()]
        return source_frame(rows, spec.source_minutes)

    def cursor(self, timeframe: str) -> datetime:
        return self.cursors.get(timeframe, self.agg_start)  # contract 5/7: starts at agg_start

    def run(self, timeframe: str, start: datetime, end: datetime, now: datetime) -> RunExpectation:
        spec = SPECS[timeframe]
        frame = self.source_of(spec)
        table = self.active.setdefault(timeframe, {})
        d = derive(frame, spec, start=start, end=end, now=now, agg_start=self.agg_start,
                   skip_zero_volume=self.skip_zero_volume, stored=table)
        in_range = {ts for ts in table if d.read_from <= ts < d.final_to}
        inserted = sorted(set(d.bars) - in_range)
        soft_deleted = sorted(in_range - set(d.bars))
        both = sorted(in_range & set(d.bars))
        updated = [ts for ts in both if not same_bar(d.bars[ts], table[ts])]
        unchanged = [ts for ts in both if same_bar(d.bars[ts], table[ts])]
        for ts in soft_deleted:
            self.deleted.append((timeframe, ts, table.pop(ts)))
        for ts in (*inserted, *updated):
            table[ts] = d.bars[ts]
        poor = sum(1 for ts in (*inserted, *updated) if d.bars[ts]["quality_score"] <= 0)

        # contract 7/8: forward only; at most to the end of the window holding the newest
        # usable source row at or before now; empty windows behind it are passed over; never
        # past the first non-final window (d.hi); never over windows this run did not
        # process (a run processes windows from ceil(start); the next window at the cursor,
        # which may sit off the grid at agg_start, is ceil(cursor)).
        before = self.cursor(timeframe)
        newest = newest_usable(frame, now)
        lo = ceil_time(start, spec.step)
        after = before
        if newest is not None and lo <= ceil_time(before, spec.step):
            frontier_end = floor_time(newest, spec.step) + spec.step
            after = max(before, min(d.hi, frontier_end))
        also = before if before < lo and after != before else None
        self.cursors[timeframe] = after
        return RunExpectation(d, inserted, updated, soft_deleted, unchanged, poor,
                              before, after, also, newest)

    def accept_cursor(self, timeframe: str, expectation: RunExpectation,
                      actual: datetime) -> bool:
        """Whether `actual` is a right cursor after the run; follow it if so."""
        allowed = {expectation.cursor_after, expectation.cursor_also_allowed} - {None}
        if actual in allowed:
            self.cursors[timeframe] = actual
            return True
        return False
