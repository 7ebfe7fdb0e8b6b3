"""The frontier-health view (v_aggregation_frontier_health) for people and checks."""

from __future__ import annotations

from datetime import datetime, timedelta

import psycopg
from psycopg.rows import dict_row

from agg_pipeline.db import queries
from agg_pipeline.engine import timeframes, windows


def _ladder_rank(timeframe: str) -> int:
    known = [tf.name for tf in timeframes.ORDERED]
    return known.index(timeframe) if timeframe in known else len(known)


def frontier_health(conn: psycopg.Connection) -> list[dict]:
    """One dict per task, by symbol and then in ladder order (5m, 15m, 1h, 4h, 1d)."""
    with conn.cursor(row_factory=dict_row) as cur:
        rows = [windows.utc_values(row) for row in cur.execute(queries.query("frontier_health"))]
    return sorted(rows, key=lambda r: (r["canonical_symbol"], _ladder_rank(r["timeframe"])))


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, datetime):
        if value.tzinfo is not None:  # the session's zone otherwise: every time shown is UTC
            value = windows.utc(value)
        return value.strftime("%Y-%m-%d %H:%M" if value.second == value.microsecond == 0
                              else "%Y-%m-%d %H:%M:%S")
    if isinstance(value, timedelta):
        minutes = int(value.total_seconds() // 60)
        sign = "-" if minutes < 0 else ""
        hours, minutes = divmod(abs(minutes), 60)
        days, hours = divmod(hours, 24)
        if days:
            return f"{sign}{days}d{hours:02d}h"
        return f"{sign}{hours}h{minutes:02d}m" if hours else f"{sign}{minutes}m"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


COLUMNS = (
    ("canonical_symbol", "symbol"),
    ("timeframe", "tf"),
    ("cursor_ts", "cursor"),
    ("source_frontier_ts", "frontier"),
    ("gap", "gap"),
    ("cursor_status", "cursor_status"),
    ("status", "status"),
    ("enabled", "enabled"),
    ("minutes_since_success", "min_since_ok"),
    ("hard_fail_streak", "streak"),
    ("stray_source_rows", "stray_rows"),  # data_bars rows no rung reads (on the 5m task)
)


def format_table(rows: list[dict]) -> str:
    """A plain-text table (gap = end of the frontier window minus the cursor: work pending)."""
    return text_table(COLUMNS, rows)


def text_table(columns: tuple[tuple[str, str], ...], rows: list[dict]) -> str:
    """`rows` as a plain-text table of `columns` ((key, title) pairs)."""
    header = [title for _, title in columns]
    body = [[_cell(row[key]) for key, _ in columns] for row in rows]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    lines = ["  ".join(text.ljust(width) for text, width in zip(line, widths, strict=True))
             for line in [header, *body]]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(line.rstrip() for line in lines)
