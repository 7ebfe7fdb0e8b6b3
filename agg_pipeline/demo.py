"""Realistic demo 1m bars: FX-style 24x5 sessions, a weekend gap, ~1% missing minutes.

Vectorised with NumPy and loaded with COPY: a year of one symbol takes seconds. Prices are
a random walk with intraday volatility seasonality; every bar is internally consistent
(low <= open, close <= high). `ingested_at` is a minute after the bar, and a few rows land
hours late, as a real feed's corrections do.

XAUUSD shows calendars (SPEC contract 15): its registry row puts it on the `fx` calendar of
timeframes.toml (days from 17:00 New York, weeks from Sunday 17:00) with 4h and 1d bars, and
its minutes follow that clock (Sunday 17:00 to Friday 17:00 New York, DST included).

DXY is synthetic (ingest_class 'B'): when its six components are seeded too and the
database defines it (migration 017), it gets no bars here; the pipeline computes them from
the components (defs/synthetic.py). Seeded without them (a benchmark's symbol list), it is a
random walk like the others.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import psycopg

from agg_pipeline.db import queries


@dataclass(frozen=True)
class DemoSymbol:
    symbol: str
    start_price: float
    sigma_per_minute: float  # log-return standard deviation
    asset_class: str
    ingest_class: str
    provider_ticker: str
    has_volume: bool = True
    calendar: str | None = None  # registry agg_calendar (timeframes.toml)
    timeframes: tuple[str, ...] = ()  # registry agg_timeframes: its optional timeframes


# As in seed 004 part D (XAUUSD's asset_class 'fx' is the registry's own [sic]).
DEMO_SYMBOLS: dict[str, DemoSymbol] = {
    s.symbol: s
    for s in (
        DemoSymbol("EURUSD", 1.0850, 0.00012, "fx", "A", "C:EURUSD"),
        DemoSymbol("USDJPY", 151.20, 0.00014, "fx", "A", "C:USDJPY"),
        DemoSymbol("XAUUSD", 2650.0, 0.00030, "fx", "A", "C:XAUUSD", calendar="fx",
                   timeframes=("4h", "1d")),
        # DXY's other legs (EURUSD and USDJPY above): DXY = 50.14348112 x EURUSD^-0.576 x
        # USDJPY^0.136 x GBPUSD^-0.119 x USDCAD^0.091 x USDSEK^0.042 x USDCHF^0.036
        DemoSymbol("GBPUSD", 1.2700, 0.00013, "fx", "A", "C:GBPUSD"),
        DemoSymbol("USDCAD", 1.3600, 0.00009, "fx", "A", "C:USDCAD"),
        DemoSymbol("USDSEK", 10.500, 0.00016, "fx", "A", "C:USDSEK"),
        DemoSymbol("USDCHF", 0.8800, 0.00012, "fx", "A", "C:USDCHF"),
        # DXY is synthetic (computed from its FX legs): no volume, no vwap, no trades.
        DemoSymbol("DXY", 104.10, 0.00010, "index", "B", "DXY", has_volume=False),
    )
}
DEFAULT_SYMBOLS = tuple(DEMO_SYMBOLS)
MISSING_FRACTION = 0.01
LATE_FRACTION = 0.001
CHUNK = timedelta(days=30)


def demo_symbol(symbol: str) -> DemoSymbol:
    """Settings for a demo symbol; unknown names get FX-like defaults."""
    return DEMO_SYMBOLS.get(symbol) or DemoSymbol(symbol, 1.0, 0.00012, "fx", "A", symbol)


def fx_session_mask(ts: pd.DatetimeIndex) -> np.ndarray:
    """True for minutes when the FX market trades: Sunday 22:00 to Friday 22:00 UTC."""
    dow = ts.dayofweek.to_numpy()  # Monday = 0
    hour = ts.hour.to_numpy()
    closed = (dow == 5) | ((dow == 4) & (hour >= 22)) | ((dow == 6) & (hour < 22))
    return ~closed


def new_york_fx_mask(ts: pd.DatetimeIndex) -> np.ndarray:
    """True for minutes of the FX week on New York's clock: Sunday 17:00 to Friday 17:00
    America/New_York, DST included (the `fx` calendar's sessions)."""
    local = ts.tz_convert("America/New_York")
    dow = local.dayofweek.to_numpy()  # Monday = 0
    hour = local.hour.to_numpy()
    closed = (dow == 5) | ((dow == 4) & (hour >= 17)) | ((dow == 6) & (hour < 17))
    return ~closed


def every_minute(ts: pd.DatetimeIndex) -> np.ndarray:
    """True for every minute: a market that never closes (the live demo feed's week)."""
    return np.ones(len(ts), dtype=bool)


def generate_bars(
    spec: DemoSymbol,
    start: datetime,
    end: datetime,
    *,
    seed: int,
    start_price: float | None = None,
    missing_fraction: float = MISSING_FRACTION,
    late_fraction: float = LATE_FRACTION,
    now: datetime | None = None,
    trading: Callable[[pd.DatetimeIndex], np.ndarray] = fx_session_mask,
) -> pd.DataFrame:
    """1m bars for the `trading` minutes of [start, end), columns as data_bars."""
    rng = np.random.default_rng(seed)
    minutes = pd.date_range(start, end, freq="1min", inclusive="left", tz=UTC)
    minutes = minutes[trading(minutes)]
    n = len(minutes)
    # volatility peaks in the London/New York overlap, is quiet in the Asian late session
    hour = minutes.hour.to_numpy() + minutes.minute.to_numpy() / 60
    season = 0.6 + 0.8 * np.exp(-(((hour - 14.5) / 3.5) ** 2))
    returns = rng.normal(0.0, spec.sigma_per_minute, n) * season
    log_close = np.log(start_price or spec.start_price) + np.cumsum(returns)
    close = np.exp(log_close)
    open_ = np.empty(n)
    open_[:1] = start_price or spec.start_price  # a slice: a range without minutes is empty
    open_[1:] = close[:-1]
    wick = np.abs(rng.normal(0.0, spec.sigma_per_minute * 0.6, (2, n))) * season
    high = np.maximum(open_, close) * np.exp(wick[0])
    low = np.minimum(open_, close) * np.exp(-wick[1])
    frame = pd.DataFrame(
        {"ts_utc": minutes, "open": open_, "high": high, "low": low, "close": close}
    )
    if spec.has_volume:
        ticks = np.maximum(1, rng.poisson(40 * season)).astype(np.int64)
        frame["vol"] = ticks * rng.uniform(0.5, 1.5, n).round(2) * 1000
        frame["vwap"] = np.clip((open_ + high + low + close) / 4, low, high)
        frame["trade_count"] = ticks
    else:
        frame["vol"] = np.nan
        frame["vwap"] = np.nan
        frame["trade_count"] = pd.array([pd.NA] * n, dtype="Int64")
    delay = pd.to_timedelta(60 + rng.uniform(0.0, 5.0, n), unit="s")
    late = rng.random(n) < late_fraction
    delay = delay.where(~late, pd.to_timedelta(rng.uniform(1.0, 48.0, n), unit="h"))
    ingested = frame["ts_utc"] + delay
    if now is not None:
        ingested = ingested.clip(upper=pd.Timestamp(now))
    frame["ingested_at"] = ingested
    keep = rng.random(n) >= missing_fraction
    return frame.loc[keep].reset_index(drop=True)


def ensure_registry(conn: psycopg.Connection, symbols: Sequence[str]) -> None:
    specs = [demo_symbol(s) for s in symbols]
    conn.execute(
        queries.query("demo_registry_upsert"),
        {
            "symbols": [s.symbol for s in specs],
            "tickers": [s.provider_ticker for s in specs],
            "classes": [s.asset_class for s in specs],
            "ingest_classes": [s.ingest_class for s in specs],
            "calendars": [s.calendar for s in specs],
            "timeframes": [",".join(s.timeframes) or None for s in specs],
        },
    )


PG_EPOCH_US = 946_684_800_000_000  # 2000-01-01 UTC in Unix microseconds
COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + (0).to_bytes(4, "big") + (0).to_bytes(4, "big")
COPY_TRAILER = (-1).to_bytes(2, "big", signed=True)
STAGE_COLUMNS = ("ts_utc", "open", "high", "low", "close", "vol", "vwap", "trade_count",
                 "ingested_at")


def _binary_copy(frame: pd.DataFrame, has_volume: bool) -> bytes:
    """The frame in PostgreSQL's binary COPY format, built as one NumPy record array.

    Every field is fixed-width (timestamptz as int64 microseconds since 2000-01-01,
    float8, int4), so no per-row Python runs; a symbol without volume sends NULL
    (length -1, no data) for vol, vwap and trade_count.
    """
    fields: list[tuple[str, str]] = [("count", ">i2")]
    values: dict[str, object] = {"count": len(STAGE_COLUMNS)}
    for name in STAGE_COLUMNS:
        fields.append((f"{name}_len", ">i4"))
        if name in ("vol", "vwap", "trade_count") and not has_volume:
            values[f"{name}_len"] = -1
            continue
        kind = {"ts_utc": ">i8", "ingested_at": ">i8", "trade_count": ">i4"}.get(name, ">f8")
        fields.append((name, kind))
        values[f"{name}_len"] = int(kind[-1])
        column = frame[name]
        if name in ("ts_utc", "ingested_at"):
            values[name] = column.astype("datetime64[us, UTC]").astype("int64") - PG_EPOCH_US
        else:
            values[name] = column.to_numpy()
    records = np.empty(len(frame), dtype=fields)
    for name, value in values.items():
        records[name] = value
    return COPY_HEADER + records.tobytes() + COPY_TRAILER


def write_bars(
    conn: psycopg.Connection, symbol: str, frame: pd.DataFrame, has_volume: bool
) -> int:
    """COPY `frame` (generate_bars' columns) into data_bars as source 'demo'; rows already
    present are kept as they are. Returns the rows inserted."""
    conn.execute(queries.query("demo_bars_stage"))
    with conn.cursor().copy("COPY demo_bars_stage FROM STDIN (FORMAT binary)") as copy:
        copy.write(_binary_copy(frame, has_volume))
    return conn.execute(queries.query("demo_bars_insert"), {"symbol": symbol}).rowcount


def bar_seed(seed: int, index: int, start: datetime) -> int:
    """The random seed of symbol number `index`'s bars from `start`: reproducible, and
    different for every symbol and every starting minute."""
    return seed * 1000 + index * 100_003 + int(start.timestamp() // 60)


def first_minute(conn: psycopg.Connection) -> datetime | None:
    """The earliest demo 1m bar (of the registry's demo symbols) in UTC, or None without demo
    data."""
    first = conn.execute(queries.query("demo_first_minute")).fetchone()[0]
    return None if first is None else first.astimezone(UTC)


def computed_symbols(conn: psycopg.Connection, symbols: Sequence[str]) -> set[str]:
    """The synthetic demo symbols (ingest_class 'B') the database defines as series whose
    components are all among `symbols`: the pipeline computes their bars."""
    with conn.transaction():
        rows = conn.execute(queries.query("demo_computed_symbols"), {
            "symbols": [s for s in symbols if demo_symbol(s).ingest_class == "B"],
            "seeded": list(symbols)}).fetchall()
    return {row[0] for row in rows}


def seed_demo(
    conn: psycopg.Connection,
    symbols: Sequence[str] = DEFAULT_SYMBOLS,
    days: int = 30,
    *,
    end: datetime | None = None,
    seed: int = 7,
    progress: Callable[[int], None] = lambda _: None,
) -> dict[str, int]:
    """Write registry rows and `days` days of 1m bars ending at `end` (default: this minute).

    Calls `progress(minutes_done)` after every chunk. Returns rows inserted per symbol;
    rows already present are left as they are. Synthetic symbols whose components are
    seeded with them get no rows (`computed_symbols`): the pipeline builds them.
    """
    if days <= 0:
        raise ValueError(f"days must be positive, got {days}")
    now = datetime.now(UTC)
    end = (end or now).replace(second=0, microsecond=0)
    start = end - timedelta(days=days)
    inserted: dict[str, int] = {}
    with conn.transaction():
        ensure_registry(conn, symbols)
    computed = computed_symbols(conn, symbols)
    for index, symbol in enumerate(symbols):
        spec = demo_symbol(symbol)
        price = spec.start_price
        inserted[symbol] = 0
        if symbol in computed:
            progress(days * 24 * 60)
            continue
        chunk_start = start
        while chunk_start < end:
            chunk_end = min(chunk_start + CHUNK, end)
            frame = generate_bars(spec, chunk_start, chunk_end,
                                  seed=bar_seed(seed, index, chunk_start), start_price=price,
                                  now=now, trading=(new_york_fx_mask if spec.calendar == "fx"
                                                    else fx_session_mask))
            if len(frame):
                price = float(frame["close"].iloc[-1])
                with conn.transaction():
                    inserted[symbol] += write_bars(conn, symbol, frame, spec.has_volume)
            progress(int((chunk_end - chunk_start).total_seconds() // 60))
            chunk_start = chunk_end
    return inserted
