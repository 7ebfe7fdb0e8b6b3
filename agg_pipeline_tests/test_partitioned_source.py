"""A source table that outgrew one heap: `data_bars` range-partitioned by month on ts_utc
(declarative partitioning, the shape a TimescaleDB hypertable takes too), created before the
migrations run. The migrations adopt it unchanged; the engine and the late-data path give
the same answers as on the plain table, bar for bar; a range reads only its partitions."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta

import pandas as pd
import psycopg
import pytest
from psycopg import sql

from agg_pipeline import settings
from agg_pipeline.db import connection, migrations, queries
from agg_pipeline.engine import aggregate as engine
from agg_pipeline.engine import timeframes
from agg_pipeline_tests.conftest import empty_tables
from agg_pipeline_tests.helpers import active_bars, add_symbol, bar, insert_bars, minute_bars, sync

# data_bars as seed 004 (B.1) defines it, partitioned: a primary or unique key of a
# partitioned table must include the partition key, so the primary key becomes (id, ts_utc);
# (canonical_symbol, timeframe, ts_utc) already includes it. The DEFAULT partition catches
# rows outside the months (a bar "in 2099").
PARTITIONED_DATA_BARS = """
CREATE TABLE data_bars (
    id               bigserial,
    canonical_symbol text NOT NULL,
    provider_ticker  text,
    timeframe        text NOT NULL,
    ts_utc           timestamptz NOT NULL,
    open             double precision,
    high             double precision,
    low              double precision,
    close            double precision,
    vol              double precision,
    vwap             double precision,
    trade_count      integer,
    is_partial       boolean NOT NULL,
    source           text NOT NULL,
    ingested_at      timestamptz NOT NULL,
    raw              jsonb NOT NULL,
    CONSTRAINT bars_pkey PRIMARY KEY (id, ts_utc),
    CONSTRAINT data_bars_symbol_tf_ts_unique UNIQUE (canonical_symbol, timeframe, ts_utc),
    CONSTRAINT bars_canonical_symbol_fkey FOREIGN KEY (canonical_symbol)
        REFERENCES core_asset_registry_all (canonical_symbol),
    CONSTRAINT bars_provider_ticker_required_chk
        CHECK (source <> 'massive_api' OR provider_ticker IS NOT NULL),
    CONSTRAINT bars_timeframe_check
        CHECK (timeframe = ANY (ARRAY['1m', '5m', '1h', '4h', '1d', '1w']))
) PARTITION BY RANGE (ts_utc)
"""
MONTHS = [*(datetime(2025, m, 1, tzinfo=UTC) for m in range(6, 13)),
          datetime(2026, 1, 1, tzinfo=UTC)]


def partition_name(month: datetime) -> str:
    return f"data_bars_{month:%Y_%m}"


def create_partitioned_source(url: str) -> None:
    """What a platform database with a partitioned data_bars looks like before
    `agg-pipeline migrate`: the registry (migration 001 creates it only when absent, so
    applying it here is the platform's own table) and data_bars partitioned by month."""
    with connection.connect(url, autocommit=True) as conn:
        conn.execute((settings.sql_dir() / "001_core_asset_registry.sql").read_text())
        conn.execute(PARTITIONED_DATA_BARS)
        for start, end in itertools.pairwise(MONTHS):
            conn.execute(sql.SQL(
                "CREATE TABLE {} PARTITION OF data_bars FOR VALUES FROM ({}) TO ({})").format(
                sql.Identifier(partition_name(start)), sql.Literal(start), sql.Literal(end)))
        conn.execute("CREATE TABLE data_bars_default PARTITION OF data_bars DEFAULT")


def partitions(conn: psycopg.Connection) -> dict[str, tuple]:
    """Each partition of data_bars: (bound, heap file): a rewrite changes the file."""
    return {name: (bound, filenode) for name, bound, filenode in conn.execute(
        "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid), pg_relation_filenode(c.oid) "
        "FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = 'data_bars'::regclass")}


@pytest.fixture(scope="session")
def partitioned_url(make_database, database_url) -> str:
    """A migrated database whose data_bars was partitioned before the migrations ran.
    (database_url: the session's runtime login exists, and may connect here too.)"""
    url = make_database("agg_part")
    create_partitioned_source(url)
    with connection.connect(url) as conn:
        before = partitions(conn)
    migrations.migrate(url)
    with connection.connect(url) as conn:
        relkind = conn.execute("SELECT relkind::text FROM pg_class WHERE oid = "
                               "'data_bars'::regclass").fetchone()[0]
        assert (relkind, partitions(conn)) == ("p", before), "the migrations changed data_bars"
    return url


@pytest.fixture
def part_db(partitioned_url) -> Iterator[psycopg.Connection]:
    """The partitioned database, emptied, as its owner (not autocommit)."""
    empty_tables(partitioned_url)
    conn = connection.connect(partitioned_url)
    yield conn
    conn.close()


# ----------------------------------------------------------------------------------------
# the same source rows in both databases

START = datetime(2025, 7, 30, tzinfo=UTC)  # three days across the July/August boundary
END = datetime(2025, 8, 2, tzinfo=UTC)
NOW = END + timedelta(days=1)  # every window of the data is final
SYMBOLS = {"EURUSD": {"calc_15m": True, "calc_4h": True, "calc_1d": True}, "DXY": {}}
LADDER = [tf.name for tf in timeframes.ORDERED]


def source_rows(symbol: str) -> list[dict]:
    """Three days of 1m bars with gaps, an invalid row, a partial row, and (DXY) no volume."""
    minutes = int((END - START) / timedelta(minutes=1))
    volume = None if symbol == "DXY" else 2.0
    rows = minute_bars(START, minutes, price=1.1 if symbol == "EURUSD" else 104.0,
                       skip=[*range(300, 303), 1441, 2875, 2876, 2877, 2878], vol=volume)
    rows[10] = bar(rows[10]["ts_utc"], 1.2, high=1.0, vol=volume)  # high < low: invalid
    rows[2000] = {**rows[2000], "is_partial": True}
    return rows


def seed(conn: psycopg.Connection) -> None:
    for symbol, flags in SYMBOLS.items():
        add_symbol(conn, symbol, **flags)
        insert_bars(conn, symbol, source_rows(symbol))
    sync(conn)


def build(conn: psycopg.Connection, start: datetime = START, end: datetime = END) -> dict:
    """Every task over [start, end), ladder order; the counts of each call."""
    results = {}
    for symbol in SYMBOLS:
        for tf in LADDER:
            if tf in tasks_of(conn, symbol):
                result = engine.aggregate(conn, symbol, tf, start, end, now=NOW)
                results[(symbol, tf)] = result.counts()
    conn.commit()
    return results


def tasks_of(conn: psycopg.Connection, symbol: str) -> set[str]:
    return {r[0] for r in conn.execute(
        "SELECT timeframe FROM data_agg_state WHERE canonical_symbol = %s", (symbol,))}


def all_bars(conn: psycopg.Connection) -> dict:
    return {(s, tf): active_bars(conn, s, tf) for s in SYMBOLS for tf in LADDER}


def assert_same_bars(plain: psycopg.Connection, part: psycopg.Connection) -> int:
    """Bar for bar; vol and vwap (sums of floats) to 1e-12 relative, as the engine itself
    compares them (agg_same_float): the two servers' plans may sum in another order."""
    expected, got = all_bars(plain), all_bars(part)
    for key, frame in expected.items():
        pd.testing.assert_frame_equal(got[key], frame, check_exact=False, rtol=1e-12, atol=0,
                                      obj=f"{key} on the partitioned table")
    return sum(len(f) for f in expected.values())


def test_engine_and_late_data_equal_the_plain_table(db, part_db):
    for conn in (db, part_db):
        seed(conn)
    assert build(part_db) == build(db)
    bars = assert_same_bars(db, part_db)
    assert bars > 1000  # 5m, 15m, 1h, 4h, 1d of two symbols over three days

    # late data as today's late-data path sees it: a missing row landing late on July 30
    # (its window now has 3 of 5 rows: a new bar) and a correction on August 1, both with a
    # new ingested_at
    late_window = START + timedelta(minutes=300)
    assert late_window not in set(active_bars(db, "EURUSD", "5m").ts_utc)
    landed = NOW + timedelta(hours=1)
    for conn in (db, part_db):
        insert_bars(conn, "EURUSD", [bar(late_window, 1.3, ingested_at=landed)])
        insert_bars(conn, "DXY", [bar(datetime(2025, 8, 1, 12, tzinfo=UTC), 105.0, vol=None,
                                      ingested_at=landed)], upsert=True)
        conn.commit()
    late = {name: late_source_days(conn, landed) for name, conn in (("plain", db),
                                                                     ("partitioned", part_db))}
    assert late["partitioned"] == late["plain"]
    found = {(symbol, day) for symbol, day, *_ in late["plain"]}
    assert found == {("DXY", date(2025, 8, 1)), ("EURUSD", date(2025, 7, 30))}

    # re-materialising those days gives the same bars again, and then no row is late
    for symbol, day in sorted(found):
        for conn in (db, part_db):
            first = datetime.combine(day, datetime.min.time(), UTC)
            for tf in LADDER:
                if tf in tasks_of(conn, symbol):
                    engine.aggregate(conn, symbol, tf, first, first + timedelta(days=1), now=NOW)
            conn.commit()
    assert assert_same_bars(db, part_db) == bars + 1
    assert late_window in set(active_bars(part_db, "EURUSD", "5m").ts_utc)
    after = {name: late_source_days(conn, landed) for name, conn in (("plain", db),
                                                                      ("partitioned", part_db))}
    assert after["partitioned"] == after["plain"]
    # (what the change capture recorded for the upsert stays pending until the engine
    # consumes it; no day is late by its rows any more)
    assert all("late rows" not in kinds for _, _, kinds in after["plain"])


def late_source_days(conn: psycopg.Connection, landed: datetime) -> list[tuple]:
    """What the late-data path's query finds for each timeframe read from data_bars, as the
    planner runs it, for rows landed in the 5 minutes up to `landed`."""
    rows = []
    for tf in timeframes.ORDERED:
        if tf.reads_data_bars:
            rows += conn.execute(queries.query("late_source_days"), {
                "since": landed - timedelta(minutes=5), "as_of": landed + timedelta(minutes=1),
                "timeframe": tf.name}).fetchall()
    conn.rollback()
    return rows


class RecordingCursor(psycopg.Cursor):
    """Remembers what the engine executes, to EXPLAIN its own statement afterwards."""

    executed: list = []

    def execute(self, query, params=None, **kwargs):
        RecordingCursor.executed.append((query, params))
        return super().execute(query, params, **kwargs)


def engine_statement(conn: psycopg.Connection, symbol: str, start: datetime, end: datetime):
    """The range statement the engine ran for 5m over [start, end), with its parameters."""
    RecordingCursor.executed = []
    conn.cursor_factory = RecordingCursor
    try:
        engine.aggregate(conn, symbol, "5m", start, end, now=NOW)
    finally:
        conn.cursor_factory = psycopg.Cursor
    conn.commit()
    statements = [(q, p) for q, p in RecordingCursor.executed
                  if isinstance(q, sql.Composed) and '"data_bars" b' in q.as_string(conn)]
    assert len(statements) == 1
    return statements[0]


def scanned_partitions(conn: psycopg.Connection, statement, params) -> dict[str, int]:
    """data_bars partitions the statement (rolled back) scanned, with the number of times
    each was: partitions pruned at run time, when the symbol's bounds are known, are in the
    plan but never executed."""
    with conn.transaction(force_rollback=True):
        plan = conn.execute(sql.SQL("EXPLAIN (ANALYZE, FORMAT JSON) ") + statement,
                            params).fetchone()[0]
    found: dict[str, int] = {}

    def walk(node: dict) -> None:
        name = node.get("Relation Name", "")
        if name.startswith("data_bars") and node.get("Actual Loops", 0):
            found[name] = found.get(name, 0) + node["Actual Loops"]
        for child in node.get("Plans", []):
            walk(child)

    walk(plan[0]["Plan"])
    return found


@pytest.mark.parametrize(("start", "end", "expected"), [
    (datetime(2025, 7, 30, tzinfo=UTC), datetime(2025, 7, 31, tzinfo=UTC), {"data_bars_2025_07"}),
    (datetime(2025, 7, 31, 12, tzinfo=UTC), datetime(2025, 8, 1, 12, tzinfo=UTC),
     {"data_bars_2025_07", "data_bars_2025_08"}),
], ids=["one month", "across a month boundary"])
def test_a_range_reads_only_its_partitions(part_db, start, end, expected):
    seed(part_db)
    statement, params = engine_statement(part_db, "EURUSD", start, end)
    scanned = scanned_partitions(part_db, statement, params)
    # pruned when each symbol's bounds are known (run-time pruning inside the statement's
    # per-symbol LATERAL): the other months and the DEFAULT partition are never scanned
    assert set(scanned) == expected
    assert all(loops == 1 for loops in scanned.values()), scanned
