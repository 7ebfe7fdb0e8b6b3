"""A derived bar's restatement history (SPEC contract 9): every version, or the bars as they
stood at a past instant, from derived_bar_revisions and the current bars (migration 014)."""

from __future__ import annotations

from datetime import datetime

import psycopg
from psycopg.rows import dict_row

from agg_pipeline.db import queries
from agg_pipeline.engine import timeframes, windows
from agg_pipeline.engine.health import text_table


def bar_versions(conn: psycopg.Connection, symbol: str, timeframe: str, start: datetime,
                 end: datetime | None = None, *, at: datetime | None = None) -> list[dict]:
    """The versions of the bars starting in [start, end) (default: the one bar at `start`),
    oldest first; with `at`, only those that were current at that instant."""
    tf = timeframes.get(timeframe)
    start = windows.require_utc(start, "start")
    end = windows.require_utc(end, "end") if end is not None else start + tf.step
    if end <= start:
        raise ValueError(f"end {end.isoformat()} must be after start {start.isoformat()}")
    at = windows.require_utc(at, "at") if at is not None else None
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(queries.query("bar_versions"), {
            "symbol": symbol, "timeframe": tf.name, "start": start, "end": end, "at": at,
        }).fetchall()
    return [windows.utc_values(row) for row in rows]  # UTC whatever the session's zone


COLUMNS = (
    ("ts_utc", "bar"), ("open", "open"), ("high", "high"), ("low", "low"), ("close", "close"),
    ("vol", "vol"), ("source_candles", "n"), ("quality_score", "q"),
    ("derivation_version", "ver"), ("valid_from", "valid from"), ("valid_to", "valid to"),
    ("change", "change"), ("reason", "reason"), ("run_id", "run"),
)


def format_versions(rows: list[dict]) -> str:
    """A plain-text table; `valid to` is empty for the current version."""
    return text_table(COLUMNS, rows)
