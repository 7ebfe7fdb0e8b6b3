"""Ingester benchmark: data_bars insert / update / delete throughput with and without the
change capture of migration 012 (issue 12 item 5).

Targets: inserts unaffected (capture within 5% of plain), updates and deletes within 1.5x.

One scratch database on the configured server (AGG_DATABASE_URL's, else the embedded one),
migrated and seeded with N symbols x D days of 1m bars, measured in two states:

  capture  as migrated: migration 012's statement-level triggers on data_bars;
  plain    those triggers dropped, to be re-created from their catalog definition
           (pg_get_triggerdef, ENABLE ALWAYS as they were). Dropped, not disabled: a
           disabled trigger with transition tables still makes PostgreSQL collect them.

One database, not two alike: the two states then share every page and plan, and each
round's statements put the table back as they found it.

The ingester's statements, each its own transaction (autocommit), on minutes of the day after
the history, in this order every round (each case leaves what the next one needs):

  insert    multi-row INSERT ... VALUES of one minute for every symbol, per statement;
            COPY of one minute for every symbol; the same multi-row INSERT with
            ON CONFLICT DO UPDATE (an ingester that always upserts; every row is new, so the
            UPDATE trigger fires on empty transition tables);
  update    the upsert restating the last 5 minutes of every symbol (corrections);
            UPDATE of one symbol-hour (a vendor restating an hour's volume);
            UPDATE of one bar per statement (the smallest correction);
  delete    DELETE of one symbol's range (what the round inserted for it);
            DELETE of one minute across every symbol.

Every round runs all cases in one state, then all in the other, the order alternating from
round to round; one warm-up round is not counted; data_bars and data_agg_source_changes are
vacuumed (and a CHECKPOINT taken, when the user may) before each state's turn, untimed. The
ratio is taken per round (capture / plain for the same case in the same round), so the
machine's load, which drifts over minutes, mostly cancels out; figures are by wall clock and,
when the server runs on this machine, by the server backend's CPU time, which other work on
a busy machine swells much less. The report gives each state's median rows/s and the
median, min and max of the per-round ratios. Everything is dropped at the end (also on error or
Ctrl-C) unless --keep. It is a report: exit code 0 whether or not a target is met.

    .venv/bin/python bench/ingest_bench.py [--symbols 200] [--days 3] [--rounds 5] [--keep]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import signal
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import psycopg
from psycopg import sql

from agg_pipeline.db import connection, migrations
from bench.common import (
    BackendClock,
    Scratch,
    alternating,
    load_note,
    log,
    server_url,
    terminate_on_sigterm,
)

TARGETS = {"insert": 1.05, "update": 1.5, "delete": 1.5}  # capture time / plain time
DAY0 = datetime(2026, 1, 5, tzinfo=UTC)  # the live day: history ends here
MINUTE = timedelta(minutes=1)
CAPTURE_FUNCTION = "agg_capture_source_changes"

COLUMNS = ("canonical_symbol", "timeframe", "ts_utc", "open", "high", "low", "close", "vol",
           "vwap", "trade_count", "is_partial", "source", "ingested_at", "raw")
COLUMN_LIST = sql.SQL(", ").join(map(sql.Identifier, COLUMNS))
UPSERT = sql.SQL(
    " ON CONFLICT (canonical_symbol, timeframe, ts_utc) DO UPDATE SET open = excluded.open, "
    "high = excluded.high, low = excluded.low, close = excluded.close, vol = excluded.vol, "
    "vwap = excluded.vwap, trade_count = excluded.trade_count, "
    "ingested_at = excluded.ingested_at")

SEED_REGISTRY = """
INSERT INTO core_asset_registry_all (canonical_symbol, active, asset_class, base_timeframe)
SELECT 'ING' || lpad(i::text, 4, '0'), true, 'fx', '1m' FROM generate_series(1, %(symbols)s) i
"""
# D days of 1m bars per symbol, 24x7, consistent OHLC
SEED_BARS = """
INSERT INTO data_bars (canonical_symbol, timeframe, ts_utc, open, high, low, close, vol, vwap,
                       trade_count, is_partial, source, ingested_at, raw)
SELECT 'ING' || lpad(i::text, 4, '0'), '1m', t, p, p + 0.001, p - 0.001, p + 0.0005, 10, p, 3,
       false, 'bench', t + interval '61 seconds', '{}'
FROM generate_series(1, %(symbols)s) i,
     generate_series(%(start)s::timestamptz, %(end)s::timestamptz - interval '1 minute',
                     interval '1 minute') t,
     LATERAL (SELECT 1 + i / 1000.0 + extract(epoch FROM t) %% 3600 / 1e6 AS p) price
"""
NO_AUTOVACUUM = ("data_bars", "data_agg_source_changes")


@dataclass
class Case:
    name: str
    kind: str  # insert / update / delete: which target applies
    run: Callable[[psycopg.Connection, random.Random], int]  # returns rows written
    statements: int
    rows_per_statement: str
    # per side, one figure per measured round: wall seconds, the backend's CPU seconds and
    # its seconds waiting for a CPU (None when the server's processes are not visible)
    wall: dict[str, list[float]] = field(default_factory=lambda: {"plain": [], "capture": []})
    cpu: dict[str, list[float]] = field(default_factory=lambda: {"plain": [], "capture": []})
    waited: dict[str, list[float]] = field(default_factory=lambda: {"plain": [], "capture": []})
    in_trigger: list[float] = field(default_factory=list)  # capture: ms inside the function
    rows: int = 0

    def ratios(self, figures: dict[str, list[float]]) -> list[float]:
        """capture / plain, per round."""
        return [c / p for p, c in zip(figures["plain"], figures["capture"], strict=True)]

    def rows_per_second(self, side: str) -> float:
        return self.rows / statistics.median(self.wall[side])

    def added_cpu_ms_per_statement(self) -> float:
        """The backend CPU the capture adds to one statement (median over rounds)."""
        return statistics.median(c - p for p, c in zip(
            self.cpu["plain"], self.cpu["capture"], strict=True)) * 1000 / self.statements


class Workload:
    """The ingester's statements over the minutes [DAY0, DAY0 + 3 * minutes)."""

    def __init__(self, symbols: int, minutes: int, single_updates: int) -> None:
        self.symbols = [f"ING{i:04d}" for i in range(1, symbols + 1)]
        self.minutes = minutes
        self.single_updates = single_updates
        placeholders = sql.SQL("({})").format(sql.SQL(", ").join(sql.Placeholder() * len(COLUMNS)))
        values = sql.SQL(", ").join([placeholders] * symbols)
        self.insert = sql.SQL("INSERT INTO data_bars ({}) VALUES {}").format(COLUMN_LIST, values)
        self.upsert_minute = self.insert + UPSERT
        self.upsert_5 = (sql.SQL("INSERT INTO data_bars ({}) VALUES {}").format(
            COLUMN_LIST, sql.SQL(", ").join([placeholders] * (5 * symbols))) + UPSERT)

    def minute(self, m: int) -> datetime:
        return DAY0 + m * MINUTE

    def rows(self, minutes: range, rng: random.Random) -> list[tuple]:
        out = []
        for m in minutes:
            ts = self.minute(m)
            for i, symbol in enumerate(self.symbols):
                price = 1 + i / 1000 + rng.random() / 1000
                out.append((symbol, "1m", ts, price, price + 0.001, price - 0.001,
                            price + 0.0005, rng.uniform(1, 20), price, 3, False, "bench",
                            ts + timedelta(seconds=61), "{}"))
        return out

    def cases(self) -> list[Case]:
        n, m = len(self.symbols), self.minutes
        return [
            Case(f"insert: multi-row INSERT, 1 minute x {n} symbols", "insert",
                 lambda c, r: self.each_minute(c, r, range(0, m), self.insert), m, str(n)),
            Case(f"insert: COPY, 1 minute x {n} symbols", "insert",
                 lambda c, r: self.copy(c, r, range(m, 2 * m)), m, str(n)),
            Case(f"insert: upsert of new rows, 1 minute x {n}", "insert",
                 lambda c, r: self.each_minute(c, r, range(2 * m, 3 * m), self.upsert_minute),
                 m, str(n)),
            Case(f"update: upsert restating 5 minutes x {n}", "update",
                 lambda c, r: self.restate(c, r), 3 * m // 5, str(5 * n)),
            Case("update: UPDATE of one symbol-hour", "update",
                 lambda c, r: self.update_hours(c), n, "60"),
            Case("update: UPDATE of one bar", "update",
                 lambda c, r: self.update_bars(c, r), self.single_updates, "1"),
            Case("delete: DELETE of one symbol's range", "delete",
                 lambda c, r: self.delete_ranges(c), n, str(2 * m)),
            Case(f"delete: DELETE of one minute x {n} symbols", "delete",
                 lambda c, r: self.delete_minutes(c), m, str(n)),
        ]

    def each_minute(self, conn, rng, minutes: range, statement) -> int:
        rows = 0
        for m in minutes:
            batch = self.rows(range(m, m + 1), rng)
            conn.execute(statement, [v for row in batch for v in row])
            rows += len(batch)
        return rows

    def copy(self, conn, rng, minutes: range) -> int:
        rows = 0
        for m in minutes:
            with conn.cursor().copy(sql.SQL("COPY data_bars ({}) FROM STDIN").format(
                    COLUMN_LIST)) as copy:
                for row in self.rows(range(m, m + 1), rng):
                    copy.write_row(row)
                    rows += 1
        return rows

    def restate(self, conn, rng) -> int:
        rows = 0
        for first in range(0, 3 * self.minutes - 4, 5):
            batch = self.rows(range(first, first + 5), rng)
            rows += conn.execute(self.upsert_5, [v for row in batch for v in row]).rowcount
        return rows

    def update_hours(self, conn) -> int:
        return sum(conn.execute(
            "UPDATE data_bars SET vol = vol * 1.01, ingested_at = ingested_at + interval '1 s' "
            "WHERE canonical_symbol = %s AND timeframe = '1m' AND ts_utc >= %s AND ts_utc < %s",
            (symbol, self.minute(0), self.minute(60))).rowcount for symbol in self.symbols)

    def update_bars(self, conn, rng) -> int:
        return sum(conn.execute(
            "UPDATE data_bars SET close = close + 0.00001, ingested_at = now() "
            "WHERE canonical_symbol = %s AND timeframe = '1m' AND ts_utc = %s",
            (rng.choice(self.symbols), self.minute(rng.randrange(3 * self.minutes)))).rowcount
            for _ in range(self.single_updates))

    def delete_ranges(self, conn) -> int:
        return sum(conn.execute(
            "DELETE FROM data_bars WHERE canonical_symbol = %s AND timeframe = '1m' "
            "AND ts_utc >= %s AND ts_utc < %s",
            (symbol, self.minute(0), self.minute(2 * self.minutes))).rowcount
            for symbol in self.symbols)

    def delete_minutes(self, conn) -> int:
        return sum(conn.execute(
            "DELETE FROM data_bars WHERE canonical_symbol = ANY(%s) AND timeframe = '1m' "
            "AND ts_utc = %s", (self.symbols, self.minute(m))).rowcount
            for m in range(2 * self.minutes, 3 * self.minutes))


def prepare(url: str, symbols: int, days: int) -> list[sql.Composable]:
    """Migrate and seed; returns the statements that re-create the capture triggers."""
    migrations.migrate(url)
    with connection.connect(url, autocommit=True) as conn:
        conn.execute(SEED_REGISTRY, {"symbols": symbols})
        conn.execute(SEED_BARS, {"symbols": symbols, "start": DAY0 - timedelta(days=days),
                                 "end": DAY0})
        for table in NO_AUTOVACUUM:
            conn.execute(sql.SQL("ALTER TABLE {} SET (autovacuum_enabled = off)").format(
                sql.Identifier(table)))
        conn.execute("VACUUM ANALYZE data_bars")
        triggers = conn.execute(
            "SELECT t.tgname, pg_get_triggerdef(t.oid), t.tgenabled::text FROM pg_trigger t "
            "JOIN pg_proc p ON p.oid = t.tgfoid "
            "WHERE t.tgrelid = 'data_bars'::regclass AND p.proname = %s", (CAPTURE_FUNCTION,)
        ).fetchall()
    if len(triggers) != 3:
        raise SystemExit(f"expected migration 012's 3 capture triggers, found {triggers}")
    create: list[sql.Composable] = []
    for name, definition, enabled in triggers:
        create.append(sql.SQL(definition))
        if enabled == "A":
            create.append(sql.SQL("ALTER TABLE data_bars ENABLE ALWAYS TRIGGER {}").format(
                sql.Identifier(name)))
    return create


def set_capture(conn: psycopg.Connection, create: list[sql.Composable], on: bool) -> None:
    names = [r[0] for r in conn.execute(
        "SELECT t.tgname FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid "
        "WHERE t.tgrelid = 'data_bars'::regclass AND p.proname = %s", (CAPTURE_FUNCTION,))]
    for name in names:
        conn.execute(sql.SQL("DROP TRIGGER {} ON data_bars").format(sql.Identifier(name)))
    if on:
        for statement in create:
            conn.execute(statement)


def settle(conn: psycopg.Connection) -> None:
    """Untimed, before each state's turn: vacuum what the last one changed; a CHECKPOINT when
    allowed, so writing back one turn's pages does not land in the next."""
    for table in NO_AUTOVACUUM:
        conn.execute(sql.SQL("VACUUM {}").format(sql.Identifier(table)))
    with contextlib.suppress(psycopg.errors.InsufficientPrivilege):
        conn.execute("CHECKPOINT")


class TriggerClock:
    """Milliseconds spent inside the capture function so far (pg_stat_user_functions, with
    track_functions = 'pl'), or None when this user may not turn that on."""

    def __init__(self, conn: psycopg.Connection) -> None:
        self.conn = conn
        try:
            conn.execute("SET track_functions = 'pl'")
            self.enabled = True
        except psycopg.errors.InsufficientPrivilege:
            self.enabled = False

    def read(self) -> float | None:
        if not self.enabled:
            return None
        # the backend's pending counts reach the shared statistics at its next idle moment
        self.conn.execute("SELECT pg_stat_force_next_flush()")
        self.conn.execute("SELECT pg_stat_clear_snapshot()")
        row = self.conn.execute("SELECT total_time FROM pg_stat_user_functions "
                                "WHERE funcname = %s", (CAPTURE_FUNCTION,)).fetchone()
        return row[0] if row else 0.0


def measure(url: str, create: list[sql.Composable], workload: Workload, rounds: int,
            seed: int) -> list[Case]:
    cases = workload.cases()
    with connection.connect(url, autocommit=True) as conn:
        clock = BackendClock(conn.info.backend_pid, connection.parse_url(url)["dbname"])
        in_trigger = TriggerClock(conn)
        for number, order in alternating(rounds + 1, ["plain", "capture"]):
            warmup = number == 0
            log(f"round {number}{' (warm-up)' if warmup else ''}: {' then '.join(order)}")
            for side in order:
                set_capture(conn, create, on=side == "capture")
                settle(conn)
                for case in cases:
                    rng = random.Random(f"{seed}/{number}/{case.name}")  # same rows both sides
                    trigger_before = in_trigger.read()
                    before = clock.read()
                    started = time.perf_counter()
                    rows = case.run(conn, rng)
                    elapsed = time.perf_counter() - started
                    after = clock.read()
                    trigger_after = in_trigger.read()
                    if warmup:
                        continue
                    case.wall[side].append(elapsed)
                    if before is not None and after is not None:
                        case.cpu[side].append(after[0] - before[0])
                        case.waited[side].append(after[1] - before[1])
                    if side == "capture" and trigger_before is not None:
                        case.in_trigger.append(trigger_after - trigger_before)
                    case.rows = rows
        set_capture(conn, create, on=True)
    return cases


def capture_check(url: str) -> str:
    """What the capture side recorded, as a sanity check of the setup."""
    with connection.connect(url) as conn:
        days, kinds = conn.execute(
            "SELECT count(DISTINCT (canonical_symbol, day)), array_agg(DISTINCT k ORDER BY k) "
            "FROM data_agg_source_changes, unnest(kinds) k").fetchone()
        draws = conn.execute("SELECT last_value FROM data_agg_source_change_seq").fetchone()[0]
    return (f"capture: {days} symbol-days in data_agg_source_changes, kinds {kinds}, "
            f"{draws:,} sequence numbers drawn")


def verdict(ratios: list[float], target: float) -> str:
    median = statistics.median(ratios)
    return (f"{median:.3f} ({min(ratios):.2f}-{max(ratios):.2f}) "
            f"{'PASS' if median <= target else 'FAIL'}")


def report(cases: list[Case], header: list[str], notes: list[str]) -> None:
    for line in header:
        print(line)
    print()
    with_cpu = all(case.cpu["plain"] for case in cases)
    columns = ["case", "stmts", "rows/stmt", "plain rows/s", "capture rows/s", "target",
               "wall: capture/plain"]
    if with_cpu:
        columns += ["CPU: capture/plain", "+CPU ms/stmt"]
    with_trigger = all(case.in_trigger for case in cases)
    if with_trigger:
        columns += ["in trigger ms/stmt"]
    rows = []
    for case in cases:
        target = TARGETS[case.kind]
        row = [case.name, str(case.statements), case.rows_per_statement,
               f"{case.rows_per_second('plain'):,.0f}", f"{case.rows_per_second('capture'):,.0f}",
               f"<= {target:.2f}", verdict(case.ratios(case.wall), target)]
        if with_cpu:
            row += [verdict(case.ratios(case.cpu), target),
                    f"{case.added_cpu_ms_per_statement():+.3f}"]
        if with_trigger:
            row += [f"{statistics.median(case.in_trigger) / case.statements:.3f}"]
        rows.append(row)
    widths = [max(len(r[i]) for r in [columns, *rows]) for i in range(len(columns))]
    for row in [columns, ["-" * w for w in widths], *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    print()
    print("Ratios: median over rounds (min-max); PASS when the median is within the target.")
    if with_cpu:
        wall = sum(sum(c.wall["plain"]) + sum(c.wall["capture"]) for c in cases)
        waited = sum(sum(c.waited["plain"]) + sum(c.waited["capture"]) for c in cases)
        print(f"CPU: the server backend's own time on a CPU (/proc/<pid>/schedstat); it waited "
              f"{waited / wall:.0%} of the measured wall time for a CPU (other work on the "
              "machine), which swells wall-clock figures but not CPU ones.")
    else:
        print("CPU: not measured (the server's processes are not visible from here).")
    if with_trigger:
        print("In trigger: time inside the capture function per statement, capture side, median "
              "(pg_stat_user_functions; wall time, so it swells with the load too); collecting "
              "the transition tables happens outside it.")
    for note in notes:
        print(note)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--symbols", type=int, default=200, help="symbols written per minute")
    parser.add_argument("--days", type=int, default=3, help="days of history in data_bars")
    parser.add_argument("--minutes", type=int, default=30,
                        help="minutes per insert case (a multiple of 5, at least 20)")
    parser.add_argument("--single-updates", type=int, default=300,
                        help="one-bar UPDATE statements per round")
    parser.add_argument("--rounds", type=int, default=5, help="measured rounds (+1 warm-up)")
    parser.add_argument("--seed", type=int, default=12)
    parser.add_argument("--keep", action="store_true", help="keep the scratch database")
    args = parser.parse_args()
    if args.minutes % 5 or args.minutes < 20:
        parser.error("--minutes must be a multiple of 5, at least 20 (a symbol-hour is updated)")
    if args.symbols < 1 or args.days < 1 or args.rounds < 1 or args.single_updates < 1:
        parser.error("--symbols, --days, --rounds and --single-updates must be positive")

    signal.signal(signal.SIGTERM, terminate_on_sigterm)
    scratch = Scratch(server_url(), args.keep, prefix="agg_ingest")
    try:
        url = scratch.database("market")
        log(f"{connection.describe_url(url)}: migrating, seeding {args.symbols} symbols x "
            f"{args.days} days")
        create = prepare(url, args.symbols, args.days)
        with connection.connect(url) as conn:
            version = conn.execute("SHOW server_version").fetchone()[0]
            history = conn.execute("SELECT count(*) FROM data_bars").fetchone()[0]
            commit = conn.execute("SHOW synchronous_commit").fetchone()[0]
        load_before = os.getloadavg()
        cases = measure(url, create, Workload(args.symbols, args.minutes, args.single_updates),
                        args.rounds, args.seed)
        header = [
            f"Ingester benchmark: data_bars with and without migration 012's change capture, "
            f"PostgreSQL {version} at {connection.describe_url(url).rsplit('/', 1)[0]}",
            f"  {args.symbols} symbols, {history:,} rows of history ({args.days} days); every "
            f"statement its own transaction (synchronous_commit {commit})",
            f"  {args.rounds} rounds (+1 warm-up), sides alternating; rows/s: by wall clock, "
            "median over rounds; ratios: capture / plain per round, by wall clock and by the "
            "server backend's CPU time",
        ]
        report(cases, header, [capture_check(url), load_note(load_before)])
    finally:
        scratch.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
