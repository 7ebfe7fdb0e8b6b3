"""The operator-facing task table `data_agg_state`: registry sync and failure bookkeeping."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from agg_pipeline.db import connection, queries
from agg_pipeline.engine import timeframes, windows

log = logging.getLogger(__name__)

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
    # registry symbol -> optional timeframes it asks for that the config does not define
    unknown_timeframes: dict[str, list[str]] = field(default_factory=dict)


class TimeframeVersionError(ValueError):
    """A timeframe's definition changed without a new version (timeframes.toml)."""


def check_versions(conn: psycopg.Connection) -> None:
    """Record each configured (timeframe, version)'s definition the first time it is seen;
    refuse a definition changed under a version already recorded (its bars would carry a
    derivation_version that no longer names their rules)."""
    ladder = timeframes.ORDERED
    rows = conn.execute(queries.query("timeframe_versions"), {
        "timeframes": [tf.name for tf in ladder], "versions": [tf.version for tf in ladder],
        "definitions": [Jsonb(tf.definition()) for tf in ladder]}).fetchall()
    for name, version, recorded in rows:
        if recorded != timeframes.get(name).definition():
            raise TimeframeVersionError(
                f"{timeframes.CONFIG.path}: timeframes.{name} changed (recorded for version "
                f"{version}: {recorded}; now {timeframes.get(name).definition()}); raise its "
                "version, then rebuild its bars (rebuild_range) where they should follow")


def _wanted(row: dict) -> tuple[list[timeframes.Timeframe], str | None, list[str]]:
    """A registry row's timeframes, its calendar, and the optional timeframes it asks for
    that the config lacks; the calendar is None (and the reason in the last item) when the
    row names one the config does not define."""
    optional = set(row["optional_timeframes"])
    unknown = sorted(optional - timeframes.TIMEFRAMES.keys())
    calendar = timeframes.calendar_of(row["agg_calendar"], row["asset_class"])
    if calendar not in timeframes.CALENDARS:
        return [], None, [f"unknown calendar {calendar!r}; known: "
                          f"{', '.join(sorted(timeframes.CALENDARS))}"]
    chosen = [tf for tf in timeframes.ORDERED if tf.mandatory or tf.name in optional]
    return chosen, calendar, unknown


def sync_tasks(
    conn: psycopg.Connection,
    environment: str,
    *,
    agg_start: datetime,
    delay_seconds: int = timeframes.DEFAULT_DELAY_SECONDS,
) -> SyncResult:
    """Create/update the tasks of the environment's registry symbols, retire the others.

    The config's mandatory timeframes for every symbol; optional ones where the registry asks
    (agg_timeframes, calc_15m / calc_4h / calc_1d); each task with the calendar its windows
    follow. Registry symbols that cannot be used safely are rejected (reported, given no task).
    """
    agg_start = windows.require_utc(agg_start, "agg_start")
    with conn.transaction():
        check_versions(conn)
        with conn.cursor(row_factory=dict_row) as cur:
            registry = cur.execute(
                queries.query("registry_symbols"), {"environment": environment}
            ).fetchall()
        rejected: dict[str, str] = {}
        unknown: dict[str, list[str]] = {}
        wanted: list[tuple[str, timeframes.Timeframe, str | None]] = []
        for row in registry:
            symbol = row["canonical_symbol"]
            chosen, calendar, missing = _wanted(row)
            problem = symbol_problem(symbol) or (None if calendar else missing[0])
            if problem:
                rejected[symbol] = problem
                continue
            if missing:
                unknown[symbol] = missing
                log.warning("registry symbol %s asks for timeframes %s, which %s does not "
                            "define", symbol, ", ".join(missing), timeframes.CONFIG.path.name)
            wanted += [(symbol, tf, timeframes.window_calendar(tf, calendar)) for tf in chosen]
        counts = conn.execute(
            queries.query("sync_tasks"),
            {
                "symbols": [s for s, _, _ in wanted],
                "timeframes": [tf.name for _, tf, _ in wanted],
                "sources": [tf.source for _, tf, _ in wanted],
                "minutes": [tf.minutes for _, tf, _ in wanted],
                "mandatory": [tf.mandatory for _, tf, _ in wanted],
                "calendars": [c for _, _, c in wanted],
                "versions": [tf.version for _, tf, _ in wanted],
                "delay_seconds": delay_seconds,
                "agg_start": agg_start,
            },
        ).fetchone()
    return SyncResult(
        symbols=sorted({s for s, _, _ in wanted}),
        created=counts[0],
        updated=counts[1],
        retired=counts[2],
        rejected=rejected,
        unknown_timeframes=unknown,
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
