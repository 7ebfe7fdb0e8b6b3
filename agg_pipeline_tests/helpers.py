"""Test data helpers: registry rows, source bars, tasks."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import psycopg

from agg_pipeline import settings
from agg_pipeline.engine import tasks, timeframes

T0 = datetime(2025, 7, 7, tzinfo=UTC)  # a Monday, after the default agg_start_utc
AGG_START = datetime(2025, 7, 1, tzinfo=UTC)

BAR_COLUMNS = ("ts_utc", "open", "high", "low", "close", "vol", "vwap", "trade_count",
               "ingested_at", "is_partial")


def add_symbol(
    conn: psycopg.Connection,
    symbol: str,
    *,
    active: bool | None = True,
    test_active: bool | None = True,
    skip_zero_volume: bool = False,
    calc_15m: bool | None = False,
    calc_4h: bool | None = False,
    calc_1d: bool | None = False,
) -> None:
    conn.execute(
        "INSERT INTO core_asset_registry_all (canonical_symbol, active, test_active, calc_15m, "
        "calc_4h, calc_1d, agg_skip_zero_volume_ohlc, asset_class, base_timeframe) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s, 'fx', '1m')",
        (symbol, active, test_active, calc_15m, calc_4h, calc_1d, skip_zero_volume),
    )


def sync(conn: psycopg.Connection, environment: str = "prod",
         agg_start: datetime = AGG_START) -> tasks.SyncResult:
    result = tasks.sync_tasks(conn, environment, agg_start=agg_start)
    conn.commit()
    return result


def cursors_at(conn: psycopg.Connection, at: datetime) -> None:
    """Every task's cursor at `at`, floored to its own timeframe's grid, as the engine leaves
    cursors: an off-grid 1h cursor (19:25) skips the hour it falls in, which the blocking
    matches_source check, re-reading that hour, then finds missing (whether the hour has
    ended yet depends on the clock: the tests that did this failed part of every hour)."""
    conn.execute("UPDATE data_agg_state SET last_agg_bar_ts_utc = date_bin("
                 "make_interval(mins => run_interval_minutes), %s::timestamptz, "
                 "timestamptz '2000-01-01 00:00:00+00')", (at,))


def bar(ts: datetime, price: float, *, vol: float | None = 1.0, spread: float = 0.001,
        ingested_at: datetime | None = None, **overrides: object) -> dict:
    """One consistent source bar: open=price, close=price+spread/2, high/low around them."""
    row = {
        "ts_utc": ts,
        "open": price,
        "high": price + spread,
        "low": price - spread,
        "close": price + spread / 2,
        "vol": vol,
        "vwap": price if vol else None,
        "trade_count": 1 if vol else None,
        "ingested_at": ingested_at or ts + timedelta(seconds=61),
        "is_partial": False,
    }
    row.update(overrides)
    return row


def minute_bars(start: datetime, count: int, *, price: float = 1.1, step: float = 0.0001,
                skip: Iterable[int] = (), **kwargs: object) -> list[dict]:
    """`count` consecutive 1m bars from `start`, leaving out the minute offsets in `skip`."""
    skipped = set(skip)
    return [bar(start + timedelta(minutes=i), price + i * step, **kwargs)
            for i in range(count) if i not in skipped]


def insert_bars(conn: psycopg.Connection, symbol: str, rows: Iterable[Mapping] | pd.DataFrame,
                *, timeframe: str = "1m", upsert: bool = False) -> int:
    """Insert source rows into data_bars (upsert=True replaces rows at the same ts).

    Missing columns are NULL; a float NaN is stored as NaN (an invalid value to test with).
    """
    if isinstance(rows, pd.DataFrame):
        rows = rows.to_dict("records")
    records = []
    for row in rows:
        full = {"vol": None, "vwap": None, "trade_count": None, "is_partial": False, **row}
        if full.get("ingested_at") is None:
            full["ingested_at"] = full["ts_utc"] + timedelta(seconds=61)
        records.append(tuple(full[c] for c in BAR_COLUMNS))  # float NaN is stored as NaN
    conflict = (
        "ON CONFLICT (canonical_symbol, timeframe, ts_utc) DO UPDATE SET open = excluded.open, "
        "high = excluded.high, low = excluded.low, close = excluded.close, vol = excluded.vol, "
        "vwap = excluded.vwap, trade_count = excluded.trade_count, "
        "ingested_at = excluded.ingested_at, is_partial = excluded.is_partial"
        if upsert else ""
    )
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO data_bars (canonical_symbol, timeframe, ts_utc, open, high, low, close, "
            "vol, vwap, trade_count, ingested_at, is_partial, source, raw) "
            f"VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, 'test', '{{}}') {conflict}",
            [(symbol, timeframe, *r) for r in records],
        )
    return len(records)


def active_bars(conn: psycopg.Connection, symbol: str, timeframe: str) -> pd.DataFrame:
    """Active derived bars of one symbol and timeframe, ordered by ts_utc."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT ts_utc, open, high, low, close, vol, vwap, trade_count, source_candles, "
            "expected_candles, quality_score, derivation_version, source_timeframe "
            "FROM derived_data_bars WHERE canonical_symbol = %s AND timeframe = %s "
            "AND deleted_at IS NULL ORDER BY ts_utc", (symbol, timeframe))
        columns = [c.name for c in cur.description]
        return pd.DataFrame(cur.fetchall(), columns=columns)


def wait_for(predicate: Callable[[], object], timeout: float, what: str,
             context: Callable[[], str] = lambda: "", interval: float = 0.2):
    """Poll `predicate` until it returns something truthy (returned); on timeout fail with
    `what` and whatever `context()` tells (logs, runs, pg_stat_activity)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{context()}")


# DXY as ICE publishes it (migration 017 seeds the same; the tests' empty databases lose it)
DXY_CONSTANT = 50.14348112
DXY_EXPONENTS = {"EURUSD": -0.576, "USDJPY": 0.136, "GBPUSD": -0.119, "USDCAD": 0.091,
                 "USDSEK": 0.042, "USDCHF": 0.036}


def define_dxy(conn: psycopg.Connection) -> None:
    """DXY's registry row (ingest_class 'B') and its definition as a synthetic series."""
    conn.execute(
        "INSERT INTO core_asset_registry_all (canonical_symbol, active, test_active, "
        "asset_class, ingest_class, base_timeframe) VALUES ('DXY', true, true, 'index', 'B', "
        "'1m') ON CONFLICT (canonical_symbol) DO UPDATE SET ingest_class = 'B'")
    conn.execute("SELECT agg_define_synthetic('DXY', %s, %s, %s)",
                 (DXY_CONSTANT, list(DXY_EXPONENTS), list(DXY_EXPONENTS.values())))


SHIPPED_TIMEFRAMES = (settings.PACKAGE_DIR / "timeframes.toml").read_text()


def config_text(extra: str = "", asset_classes: str = "") -> str:
    """The shipped timeframes.toml with `extra` tables (timeframes, calendars) and
    [asset_class_calendars] entries added."""
    head, tail = SHIPPED_TIMEFRAMES.split("[asset_class_calendars]")
    return f"{head}{extra}\n[asset_class_calendars]\n{asset_classes}{tail}"


def load_config(path: Path, text: str) -> timeframes.Config:
    path.write_text(text)
    return timeframes.load(path)
