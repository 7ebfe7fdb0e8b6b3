"""The operator-facing task table `data_agg_state`: registry sync and failure bookkeeping."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

import psycopg
from psycopg.rows import dict_row

from agg_pipeline.db import connection, queries
from agg_pipeline.engine import timeframes, windows

HARD_FAILURE_THRESHOLD = 3  # contract 11
ERROR_TEXT_LIMIT = 2000

# Symbols become Dagster partition keys, run tags and log fields: letters, digits and a few
# punctuation marks that none of those give a meaning to ("|", ",", "[", "]" do).
SYMBOL_PATTERN = re.compile(r"[A-Za-z0-9^][A-Za-z0-9._:^=+-]{0,31}")


def symbol_problem(symbol: object) -> str | None:
    """Why `symbol` cannot be aggregated, or None when it can."""
    if not isinstance(symbol, str) or not symbol:
        return "empty symbol"
    if not SYMBOL_PATTERN.fullmatch(symbol):  # not match(): `$` accepts a trailing newline
        return (
            "symbols must be 1-32 characters: letters, digits and . _ : ^ = + - "
            "(starting with a letter, digit or ^)"
        )
    return None


@dataclass(frozen=True)
class SyncResult:
    symbols: list[str]  # symbols with live (non-retired) tasks
    created: int
    updated: int
    retired: int
    rejected: dict[str, str] = field(default_factory=dict)  # registry symbol -> reason


def sync_tasks(
    conn: psycopg.Connection,
    environment: str,
    *,
    agg_start: datetime,
    delay_seconds: int = timeframes.DEFAULT_DELAY_SECONDS,
) -> SyncResult:
    """Create/update the tasks of the environment's registry symbols, retire the others.

    Mandatory 5m and 1h for every symbol; optional timeframes where the registry flag is on.
    Registry symbols that cannot be used safely are rejected (reported, given no task).
    """
    agg_start = windows.require_utc(agg_start, "agg_start")
    with conn.transaction():
        with conn.cursor(row_factory=dict_row) as cur:
            registry = cur.execute(
                queries.query("registry_symbols"), {"environment": environment}
            ).fetchall()
        rejected: dict[str, str] = {}
        wanted: list[tuple[str, timeframes.Timeframe]] = []
        for row in registry:
            symbol = row["canonical_symbol"]
            problem = symbol_problem(symbol)
            if problem:
                rejected[symbol] = problem
                continue
            for tf in timeframes.ORDERED:
                if tf.mandatory or row[tf.registry_flag]:
                    wanted.append((symbol, tf))
        counts = conn.execute(
            queries.query("sync_tasks"),
            {
                "symbols": [s for s, _ in wanted],
                "timeframes": [tf.name for _, tf in wanted],
                "sources": [tf.source for _, tf in wanted],
                "minutes": [tf.minutes for _, tf in wanted],
                "mandatory": [tf.mandatory for _, tf in wanted],
                "delay_seconds": delay_seconds,
                "agg_start": agg_start,
            },
        ).fetchone()
    return SyncResult(
        symbols=sorted({s for s, _ in wanted}),
        created=counts[0],
        updated=counts[1],
        retired=counts[2],
        rejected=rejected,
    )


# SQLSTATE classes and codes of failures that go away by themselves: connection problems,
# serialization/deadlock rollbacks, admin shutdown/termination, resource shortage, lock and
# statement timeouts.
TRANSIENT_SQLSTATE_CLASSES = ("08", "40", "53")
TRANSIENT_SQLSTATES = {"57P01", "57P02", "57P03", "57014", "55P03", "55006"}


def is_transient(exc: BaseException) -> bool:
    """Contract 11: transient failures are retried and do not count toward the fail streak."""
    if isinstance(exc, connection.DatabaseUnavailableError):
        return True
    if isinstance(exc, psycopg.Error):
        state = exc.sqlstate
        if state is None:
            # no SQLSTATE: the connection itself broke (server gone, socket closed)
            return isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError)
        return state[:2] in TRANSIENT_SQLSTATE_CLASSES or state in TRANSIENT_SQLSTATES
    return isinstance(exc, ConnectionError | TimeoutError)


@dataclass(frozen=True)
class FailureOutcome:
    status: str
    hard_fail_streak: int
    enabled: bool


def record_failures(conn: psycopg.Connection, timeframe: str, errors: Mapping[str, str], *,
                    transient: bool) -> dict[str, FailureOutcome]:
    """Book a failed attempt on each symbol's task (its error text); the outcome of each
    that exists."""
    with conn.transaction():
        rows = conn.execute(queries.query("tasks_record_failure"), {
            "timeframe": timeframe, "hard": not transient, "threshold": HARD_FAILURE_THRESHOLD,
            "errors": json.dumps([{"symbol": symbol, "error": error[:ERROR_TEXT_LIMIT]}
                                  for symbol, error in errors.items()]),
        }).fetchall()
    return {symbol: FailureOutcome(*outcome) for symbol, *outcome in rows}


def record_failure(conn: psycopg.Connection, symbol: str, timeframe: str, *, transient: bool,
                   error: str) -> FailureOutcome | None:
    """Book a failed attempt on one task; None if the task does not exist."""
    return record_failures(conn, timeframe, {symbol: error}, transient=transient).get(symbol)
