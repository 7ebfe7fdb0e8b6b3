"""Synthetic series (migration 017): an index such as DXY built from its components' 1m bars.

A series is data (`data_agg_synthetic_series` / `_components`: constant, components,
exponents, forward-fill bound). `build` asks the database to write the index's 1m bars of a
range of UTC days into `data_bars` (`agg_build_synthetic_bars`, a SECURITY DEFINER function:
the pipeline's role can only have an index recomputed, never write a value). From there the
index is an ordinary symbol: its 5m and everything above derive from its 1m rows, and its
own inserts, updates and deletes reach the late-data path like any ingester's.

The planner finds the index days to rebuild (`frontier_days`, `late_days`) from what each
built day read (`data_agg_synthetic_inputs`): new component minutes past what was built,
component rows that landed late, and component changes recorded by the change capture
(compared by seq, read-only: the components' own 5m runs consume those records).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, fields
from datetime import date, datetime

import psycopg
from psycopg.rows import dict_row

from agg_pipeline.db import queries
from agg_pipeline.engine import windows


@dataclass(frozen=True)
class SyntheticDay:
    """What one build did in one UTC day of the index."""

    index_minutes: int = 0  # minutes of the index computable from its components
    minutes_filled: int = 0  # ... of which with at least one leg's last close carried forward
    minutes_incomplete: int = 0  # some legs had a bar, another none within the fill bound
    rows_inserted: int = 0
    rows_updated: int = 0
    rows_deleted: int = 0  # index minutes no longer computable (a component row removed)
    rows_unchanged: int = 0
    slots_taken: int = 0  # minutes held by a row of another source: left alone
    component_rows_read: int = 0
    component_rows_unusable: int = 0  # invalid or partial component rows, not used

    def __add__(self, other: SyntheticDay) -> SyntheticDay:
        return SyntheticDay(**{f.name: getattr(self, f.name) + getattr(other, f.name)
                               for f in fields(self)})

    def counts(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @property
    def rows_written(self) -> int:
        return self.rows_inserted + self.rows_updated + self.rows_deleted


@dataclass(frozen=True)
class SyntheticResult:
    symbol: str
    start: datetime
    end: datetime
    as_of: datetime
    days: dict[date, SyntheticDay]

    @property
    def totals(self) -> SyntheticDay:
        return sum(self.days.values(), SyntheticDay())


def synthetic_symbols(conn: psycopg.Connection,
                      symbols: Iterable[str] | None = None) -> set[str]:
    """The synthetic series the pipeline builds (of `symbols`, or all): defined, registry
    ingest_class 'B', every component in the registry, a live 5m task. Read-only."""
    wanted = None if symbols is None else sorted(set(symbols))
    rows = conn.execute(queries.query("synthetic_symbols"), {"symbols": wanted}).fetchall()
    return {row[0] for row in rows}


def build(conn: psycopg.Connection, symbol: str, start: datetime, end: datetime, *,
          now: datetime | None = None) -> SyntheticResult:
    """Write the index's 1m bars of the UTC days [start, end) from its components, as of
    `now` (default: the database clock): minutes final by the symbol's confirmation delay.
    Unchanged minutes are not written. One transaction (a savepoint inside the caller's)."""
    start = windows.require_utc(start, "start")
    end = windows.require_utc(end, "end")
    with conn.transaction():
        as_of = windows.require_utc(now, "now") if now is not None else windows.utc(
            conn.execute("SELECT now()").fetchone()[0])
        with conn.cursor(row_factory=dict_row) as cur:
            rows = cur.execute("SELECT * FROM agg_build_synthetic_bars(%s, %s, %s, %s)",
                               (symbol, start, end, as_of)).fetchall()
    days = {row.pop("day"): SyntheticDay(**row) for row in rows}
    return SyntheticResult(symbol, start, end, as_of, days)


def frontier_days(conn: psycopg.Connection, as_of: datetime) -> dict[str, set[date]]:
    """Per synthetic symbol, the UTC days to build because its components have usable bars
    past what the index was built through and a new 5m window of the index is final at
    `as_of` (or the index was never built). Read-only, a few index probes per series."""
    found: dict[str, set[date]] = {}
    for symbol, day in conn.execute(queries.query("synthetic_frontier_days"), {"as_of": as_of}):
        found.setdefault(symbol, set()).add(day)
    return found


def reading_days(conn: psycopg.Connection,
                 changed: dict[str, Iterable[date]]) -> dict[str, set[date]]:
    """Per synthetic symbol, its built days that read any of the `changed` component days
    (component -> UTC days): the same day, and the next through the forward fill. Read-only."""
    pairs = [(component, day) for component, days in sorted(changed.items()) for day in days]
    found: dict[str, set[date]] = {}
    if not pairs:
        return found
    components, days = map(list, zip(*pairs, strict=True))
    rows = conn.execute(queries.query("synthetic_reading_days"),
                        {"components": components, "days": days})
    for symbol, day in rows:
        found.setdefault(symbol, set()).add(day)
    return found


def late_days(conn: psycopg.Connection, since: datetime,
              as_of: datetime) -> dict[str, dict[date, set[str]]]:
    """Per synthetic symbol, its built days whose components changed: rows landed after
    `since` that change a day's recorded fingerprint ('late rows'), and changes the capture
    recorded after the day was built ('update', 'delete', 'truncate'). Read-only; reads only
    recently landed rows and the changes table, never the whole source."""
    found: dict[str, dict[date, set[str]]] = {}
    rows = conn.execute(queries.query("synthetic_late_days"), {"since": since, "as_of": as_of})
    for symbol, day, kinds in rows:
        found.setdefault(symbol, {}).setdefault(day, set()).update(kinds)
    return found
