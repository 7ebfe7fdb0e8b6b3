"""What the tables hold, read back for tests, and its comparison with the pandas oracle
(oracle.py) computed from the source rows as they are now."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from datetime import datetime, timedelta

import psycopg

from agg_pipeline_tests import oracle
from agg_pipeline_tests.helpers import AGG_START
from agg_pipeline_tests.oracle import SPECS, floor_time

DAY = timedelta(days=1)
TIMEFRAMES = ("5m", "1h")


def source_rows(conn: psycopg.Connection, symbol: str) -> list[dict]:
    with conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        return cur.execute(
            "SELECT ts_utc, open, high, low, close, vol, vwap, trade_count, is_partial "
            "FROM data_bars WHERE canonical_symbol = %s AND timeframe = '1m' ORDER BY ts_utc",
            (symbol,)).fetchall()


def derived_rows(conn: psycopg.Connection, symbol: str, timeframe: str) -> list[dict]:
    """Every derived row (active and soft-deleted) of one task, in window order; `xmin`
    tells whether a row was rewritten."""
    with conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        return cur.execute(
            "SELECT id, ts_utc, open, high, low, close, vol, vwap, trade_count, source_candles, "
            "expected_candles, quality_score, source_timeframe, raw, is_partial, deleted_at, "
            "created_at, updated_at, xmin::text AS xmin FROM derived_data_bars "
            "WHERE canonical_symbol = %s AND timeframe = %s ORDER BY ts_utc, id",
            (symbol, timeframe)).fetchall()


def task_rows(conn: psycopg.Connection) -> dict[tuple[str, str], dict]:
    with conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        rows = cur.execute(
            "SELECT canonical_symbol, timeframe, last_agg_bar_ts_utc AS cursor, status, "
            "hard_fail_streak, last_error, total_runs, total_bars_created "
            "FROM data_agg_state").fetchall()
    return {(r["canonical_symbol"], r["timeframe"]): r for r in rows}


def oracle_state(conn: psycopg.Connection, symbol: str, now: datetime,
                 agg_start: datetime = AGG_START) -> dict[str, dict]:
    """What the contracts say the tables hold once every final window at `now` has been
    materialised from the current source rows: the bars and the cursor of each task."""
    frame = oracle.source_frame(source_rows(conn, symbol), 1)
    five = oracle.derive(frame, SPECS["5m"], start=agg_start, end=now + DAY, now=now,
                         agg_start=agg_start, skip_zero_volume=False)
    five_rows = [{"ts_utc": ts, **values, "is_partial": False}
                 for ts, values in sorted(five.bars.items())]
    five_frame = oracle.source_frame(five_rows, 5)
    hourly = oracle.derive(five_frame, SPECS["1h"], start=agg_start, end=now + DAY, now=now,
                           agg_start=agg_start, skip_zero_volume=False)
    state = {}
    for name, frame_, derivation in (("5m", frame, five), ("1h", five_frame, hourly)):
        step = SPECS[name].step
        newest = oracle.newest_usable(frame_, now)
        cursor = (None if newest is None
                  else min(derivation.hi, floor_time(newest, step) + step))
        state[name] = {"bars": derivation.bars, "cursor": cursor}
    return state


def assert_active_bars_equal(rows: list[dict], expected: dict[datetime, dict],
                             context: str) -> dict[datetime, dict]:
    """The active rows among `rows` (derived_rows of one task) are exactly the `expected`
    bars: one active row per window, none missing, none extra, every column equal, none
    partial. Returns them by window."""
    active = [r for r in rows if r["deleted_at"] is None]
    per_window = Counter(r["ts_utc"] for r in active)
    doubled = sorted(ts.isoformat() for ts, n in per_window.items() if n > 1)
    assert not doubled, f"{context}: several active bars at {doubled}"
    stored = {r["ts_utc"]: r for r in active}
    missing = sorted(set(expected) - set(stored))
    extra = sorted(set(stored) - set(expected))
    assert not missing and not extra, (
        f"{context}: lost (oracle only) {[t.isoformat() for t in missing][:20]} "
        f"({len(missing)}); extra (stored only) "
        f"{[(t.isoformat(), stored[t]) for t in extra][:20]} ({len(extra)})")
    wrong = {ts.isoformat(): diff for ts, want in expected.items()
             if (diff := oracle.bar_difference(want, stored[ts]))}
    assert not wrong, f"{context}: bars differ from the oracle: {wrong}"
    assert not any(r["is_partial"] for r in active), f"{context}: partial bar"
    return stored


def compare_with_oracle(conn: psycopg.Connection, symbols: Iterable[str],
                        now: datetime) -> dict[str, int]:
    """Every active bar of every symbol's 5m and 1h equals the oracle's over the current
    source rows, for every window final at `now` (assert_active_bars_equal), and so does
    every cursor; soft-deleted history is allowed. Returns counts for the report."""
    figures: Counter = Counter()
    tasks = task_rows(conn)
    for symbol in symbols:
        state = oracle_state(conn, symbol, now)
        for timeframe in TIMEFRAMES:
            rows = derived_rows(conn, symbol, timeframe)
            expected = state[timeframe]["bars"]
            active = assert_active_bars_equal(rows, expected,
                                              f"{symbol} {timeframe} at {now.isoformat()}")
            got = tasks[(symbol, timeframe)]["cursor"]
            want = state[timeframe]["cursor"]
            assert got == want, (f"{symbol} {timeframe}: cursor {got}, oracle {want} "
                                 f"(at {now.isoformat()})")
            figures[f"{timeframe} bars"] += len(expected)
            figures[f"{timeframe} soft-deleted rows"] += len(rows) - len(active)
    return dict(figures)
