"""Change capture on data_bars (migration 012, SPEC contract 10): updates, deletes and
truncates record their (symbol, timeframe, UTC day) in data_agg_source_changes; inserts
record nothing. Every test runs on the plain table and on a data_bars partitioned by month."""

from __future__ import annotations

import shutil
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta

import psycopg
import pytest
from psycopg import sql

from agg_pipeline import settings
from agg_pipeline.db import connection, migrations
from agg_pipeline.engine import aggregate as engine
from agg_pipeline_tests.helpers import add_symbol, bar, insert_bars, minute_bars, sync, wait_for
from agg_pipeline_tests.test_partitioned_source import (  # noqa: F401 (a fixture)
    empty_tables,
    partitioned_url,
)

MIDNIGHT = datetime(2025, 8, 1, tzinfo=UTC)  # a UTC day boundary and a partition boundary
JUL31, AUG1 = date(2025, 7, 31), date(2025, 8, 1)
MINUTE = timedelta(minutes=1)
CAPTURE_TRIGGERS = {"agg_capture_source_update", "agg_capture_source_delete",
                    "agg_capture_source_truncate"}


@pytest.fixture(params=["plain", "partitioned"])
def shape(request) -> str:
    return request.param


@pytest.fixture
def source_url(shape, request) -> str:
    """The emptied database of this shape (as its owner)."""
    if shape == "plain":
        return request.getfixturevalue("clean_database")
    url = request.getfixturevalue("partitioned_url")
    empty_tables(url)
    return url


@pytest.fixture
def conn(source_url) -> Iterator[psycopg.Connection]:
    """Two hours of EURUSD 1m bars around the midnight of July 31 (owner, autocommit)."""
    with connection.connect(source_url, autocommit=True) as conn:
        add_symbol(conn, "EURUSD")
        insert_bars(conn, "EURUSD", minute_bars(MIDNIGHT - timedelta(hours=1), 120))
        yield conn


def changes(conn: psycopg.Connection) -> dict[tuple[str, str, date], dict]:
    with conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        rows = cur.execute("SELECT * FROM data_agg_source_changes").fetchall()
    return {(r["canonical_symbol"], r["timeframe"], r["day"]): r for r in rows}


def pending(conn: psycopg.Connection) -> set[date]:
    return {k[2] for k, r in changes(conn).items() if r["seq"] > r["consumed_seq"]}


def summary(conn: psycopg.Connection) -> dict[date, tuple]:
    """day -> (kinds, changes, earliest_ts_utc) of EURUSD 1m."""
    return {k[2]: (r["kinds"], r["changes"], r["earliest_ts_utc"])
            for k, r in changes(conn).items()}


def consume_all(conn: psycopg.Connection) -> None:
    conn.execute("UPDATE data_agg_source_changes SET consumed_seq = seq")


# ----------------------------------------------------------------------------------------
# what is recorded


def test_inserts_record_nothing(conn):
    later = MIDNIGHT + timedelta(hours=2)
    insert_bars(conn, "EURUSD", minute_bars(later, 5))  # a multi-row INSERT
    with conn.cursor().copy(
            "COPY data_bars (canonical_symbol, timeframe, ts_utc, open, high, low, close, "
            "is_partial, source, ingested_at, raw) FROM STDIN") as copy:
        ts = later + timedelta(minutes=10)
        copy.write_row(("EURUSD", "1m", ts, 1.1, 1.2, 1.0, 1.1, False, "test", ts, "{}"))
    # an ingester that always upserts: new rows only, so its UPDATE trigger sees no rows
    insert_bars(conn, "EURUSD", minute_bars(later + timedelta(minutes=20), 5), upsert=True)
    assert conn.execute("SELECT count(*) FROM data_bars").fetchone()[0] == 131
    assert changes(conn) == {}


def test_update_in_place_records_its_day_and_bumps_seq(conn):
    ts = MIDNIGHT + timedelta(minutes=7)
    # a correction that leaves ingested_at alone: invisible to the ingested_at path
    conn.execute("UPDATE data_bars SET close = close + 0.0001 WHERE ts_utc = %s", (ts,))
    first = changes(conn)
    assert summary(conn) == {AUG1: (["update"], 1, ts)}
    row = first[("EURUSD", "1m", AUG1)]
    assert row["seq"] > row["consumed_seq"] == 0
    assert row["first_changed_at"] == row["last_changed_at"]

    conn.execute("UPDATE data_bars SET high = high + 0.001 WHERE ts_utc = %s", (ts - MINUTE,))
    again = changes(conn)[("EURUSD", "1m", AUG1)]
    assert again["seq"] > row["seq"]
    assert again["changes"] == 2 and again["earliest_ts_utc"] == ts - MINUTE
    assert again["first_changed_at"] == row["first_changed_at"] < again["last_changed_at"]


def test_upsert_of_corrections_records_the_updated_days(conn):
    corrections = [bar(MIDNIGHT - timedelta(minutes=2), 1.2), bar(MIDNIGHT + MINUTE, 1.2),
                   bar(MIDNIGHT + timedelta(hours=3), 1.2)]  # the last one is new: an insert
    insert_bars(conn, "EURUSD", corrections, upsert=True)
    assert summary(conn) == {JUL31: (["update"], 1, MIDNIGHT - timedelta(minutes=2)),
                             AUG1: (["update"], 1, MIDNIGHT + MINUTE)}


def test_a_change_across_two_days_records_both(conn):
    conn.execute("UPDATE data_bars SET vol = 3 WHERE ts_utc >= %s AND ts_utc < %s",
                 (MIDNIGHT - timedelta(minutes=3), MIDNIGHT + timedelta(minutes=2)))
    assert summary(conn) == {JUL31: (["update"], 3, MIDNIGHT - timedelta(minutes=3)),
                             AUG1: (["update"], 2, MIDNIGHT)}
    consume_all(conn)

    # a row moved to the next day (on the partitioned table: to the next partition, which
    # PostgreSQL runs as a delete and an insert, but reports to the UPDATE trigger)
    moved_from = MIDNIGHT - timedelta(minutes=30)
    conn.execute("UPDATE data_bars SET ts_utc = ts_utc + interval '1 day' WHERE ts_utc = %s",
                 (moved_from,))
    assert pending(conn) == {JUL31, AUG1}
    assert summary(conn) == {JUL31: (["update"], 1, moved_from),
                             AUG1: (["update"], 1, moved_from + timedelta(days=1))}


def test_delete_records_its_days_and_merges_with_pending_updates(conn):
    conn.execute("UPDATE data_bars SET close = close WHERE ts_utc = %s", (MIDNIGHT,))
    conn.execute("DELETE FROM data_bars WHERE ts_utc >= %s AND ts_utc < %s",
                 (MIDNIGHT - timedelta(minutes=10), MIDNIGHT + timedelta(minutes=5)))
    assert summary(conn) == {JUL31: (["delete"], 10, MIDNIGHT - timedelta(minutes=10)),
                             AUG1: (["update", "delete"], 6, MIDNIGHT)}


def test_a_consumed_day_starts_a_new_batch(conn):
    conn.execute("DELETE FROM data_bars WHERE ts_utc = %s", (MIDNIGHT + MINUTE,))
    consume_all(conn)
    assert pending(conn) == set()
    before = changes(conn)[("EURUSD", "1m", AUG1)]
    conn.execute("UPDATE data_bars SET close = close WHERE ts_utc = %s",
                 (MIDNIGHT + timedelta(minutes=30),))
    after = changes(conn)[("EURUSD", "1m", AUG1)]
    assert after["seq"] > after["consumed_seq"] == before["seq"]
    # kinds, changes, earliest and first_changed_at describe what is pending now
    assert (after["kinds"], after["changes"]) == (["update"], 1)
    assert after["earliest_ts_utc"] == MIDNIGHT + timedelta(minutes=30)
    assert after["first_changed_at"] > before["first_changed_at"]


def test_truncate_records_every_materialised_day_without_reading_data_bars(conn):
    sync(conn)
    # July 31 materialised (its fingerprint recorded); August 1 not yet
    engine.aggregate(conn, "EURUSD", "5m", MIDNIGHT - timedelta(days=1), MIDNIGHT,
                     now=MIDNIGHT + timedelta(days=5))
    conn.execute("UPDATE data_bars SET close = close WHERE ts_utc = %s", (MIDNIGHT - MINUTE,))
    conn.execute("TRUNCATE data_bars")
    assert summary(conn) == {
        JUL31: (["update", "truncate"], 2, MIDNIGHT - timedelta(days=1)),
    }
    assert all(k[1] == "1m" for k in changes(conn))  # the source timeframe, not 5m


# ----------------------------------------------------------------------------------------
# who may do what


@pytest.fixture
def ingester_url(source_url) -> Iterator[str]:
    """A login role as an ingester has it: writes on data_bars (SELECT too, for WHERE and
    ON CONFLICT) and its id sequence, nothing on its partitions (statements through
    data_bars need none) and nothing on the pipeline's tables."""
    name, password = f"agg_ingest_{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    with connection.connect(source_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
            sql.Identifier(name), sql.Literal(password)))
        conn.execute(sql.SQL(
            "GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON data_bars TO {}").format(
            sql.Identifier(name)))
        conn.execute(sql.SQL("GRANT USAGE ON SEQUENCE data_bars_id_seq TO {}").format(
            sql.Identifier(name)))
    params = connection.parse_url(source_url)
    params.update(user=name, password=password)
    yield connection.build_url(params)
    with connection.connect(source_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(name)))
        conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


def test_an_ingester_without_grants_on_the_change_table_is_captured(conn, ingester_url):
    with connection.connect(ingester_url, autocommit=True) as ingester:
        insert_bars(ingester, "EURUSD", minute_bars(MIDNIGHT + timedelta(hours=2), 3))
        insert_bars(ingester, "EURUSD", [bar(MIDNIGHT - MINUTE, 1.3)], upsert=True)
        ingester.execute("UPDATE data_bars SET vol = 5 WHERE ts_utc = %s", (MIDNIGHT,))
        ingester.execute("DELETE FROM data_bars WHERE ts_utc = %s", (MIDNIGHT + MINUTE,))
        assert summary(conn) == {JUL31: (["update"], 1, MIDNIGHT - MINUTE),
                                 AUG1: (["update", "delete"], 2, MIDNIGHT)}
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            ingester.execute("SELECT * FROM data_agg_source_changes")
        consume_all(conn)
        sync(conn)
        engine.aggregate(conn, "EURUSD", "5m", MIDNIGHT, MIDNIGHT + timedelta(days=1),
                         now=MIDNIGHT + timedelta(days=2))
        ingester.execute("TRUNCATE data_bars")
    assert pending(conn) == {AUG1}
    assert changes(conn)[("EURUSD", "1m", AUG1)]["kinds"] == ["truncate"]


@pytest.fixture
def runtime(source_url, runtime_url) -> Iterator[psycopg.Connection]:
    """The pipeline's least-privilege login on this database."""
    dbname = connection.parse_url(source_url)["dbname"]
    with connection.connect(connection.with_database(runtime_url, dbname),
                            autocommit=True) as conn:
        yield conn


RUNTIME_FORBIDDEN = [
    "UPDATE data_bars SET close = 1",
    "DELETE FROM data_bars",
    "TRUNCATE data_bars",
    "DELETE FROM data_agg_source_changes",
    "TRUNCATE data_agg_source_changes",
    "UPDATE data_agg_source_changes SET seq = seq + 1",
    "UPDATE data_agg_source_changes SET kinds = '{update}'",
    "INSERT INTO data_agg_source_changes (canonical_symbol, timeframe, day, first_changed_at, "
    "last_changed_at, changes, kinds, earliest_ts_utc, seq) "
    "VALUES ('EURUSD', '1m', '2025-07-01', now(), now(), 1, '{update}', now(), 1)",
    "SELECT nextval('data_agg_source_change_seq')",
    "ALTER TABLE data_bars DISABLE TRIGGER agg_capture_source_update",
]


def test_the_runtime_role_reads_and_consumes_and_nothing_more(conn, runtime):
    conn.execute("DELETE FROM data_bars WHERE ts_utc = %s", (MIDNIGHT,))
    for statement in RUNTIME_FORBIDDEN:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            runtime.execute(statement)
    # it may consume what was recorded, and not beyond
    with pytest.raises(psycopg.errors.CheckViolation):
        runtime.execute("UPDATE data_agg_source_changes SET consumed_seq = seq + 1")
    assert runtime.execute("UPDATE data_agg_source_changes SET consumed_seq = seq "
                           "WHERE seq > consumed_seq").rowcount == 1
    assert pending(conn) == set()
    assert runtime.execute("SELECT agg_prune_source_changes(interval '0')").fetchone()[0] == 1


def test_capture_functions_are_definer_functions_with_a_fixed_search_path(conn):
    rows = conn.execute(
        "SELECT p.proname, p.prosecdef, p.proconfig, t.tgname, t.tgenabled "
        "FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid "
        "WHERE t.tgrelid = 'data_bars'::regclass AND NOT t.tgisinternal").fetchall()
    assert {r[3] for r in rows} == CAPTURE_TRIGGERS
    for name, definer, config, trigger, enabled in rows:
        assert definer, name
        assert any(c.startswith("search_path=") and c.endswith("pg_temp") for c in config), name
        assert enabled == "A", f"{trigger} must fire in replica mode too (ENABLE ALWAYS)"


# ----------------------------------------------------------------------------------------
# the consumer's protocol under concurrency (two real sessions)

# The consumer's shape (the engine's, in one statement): read the pending day and its source
# rows in one snapshot, and mark it consumed only if its seq is still the one it read.
CONSUME = """
WITH seen AS (
    SELECT canonical_symbol, timeframe, day, seq FROM data_agg_source_changes
    WHERE canonical_symbol = %(symbol)s AND timeframe = '1m' AND day = %(day)s
      AND seq > consumed_seq
),
source AS (
    SELECT count(*) AS n FROM data_bars
    WHERE canonical_symbol = %(symbol)s AND timeframe = '1m'
      AND ts_utc >= %(day)s::timestamp AT TIME ZONE 'UTC'
      AND ts_utc < (%(day)s::date + 1)::timestamp AT TIME ZONE 'UTC'
),
consumed AS (
    UPDATE data_agg_source_changes c SET consumed_seq = seen.seq
    FROM seen
    WHERE c.canonical_symbol = seen.canonical_symbol AND c.timeframe = seen.timeframe
      AND c.day = seen.day AND c.seq = seen.seq
    RETURNING c.seq
)
SELECT (SELECT n FROM source), (SELECT count(*) FROM consumed)
"""


def consume(runtime: psycopg.Connection, day: date) -> tuple[int, int]:
    """(source rows read, days consumed)."""
    return runtime.execute(CONSUME, {"symbol": "EURUSD", "day": day}).fetchone()


def test_a_change_committed_between_read_and_consume_stays_pending(conn, runtime):
    conn.execute("DELETE FROM data_bars WHERE ts_utc = %s", (MIDNIGHT,))
    seen = runtime.execute("SELECT seq FROM data_agg_source_changes").fetchone()[0]
    conn.execute("DELETE FROM data_bars WHERE ts_utc = %s", (MIDNIGHT + MINUTE,))  # committed
    assert runtime.execute(
        "UPDATE data_agg_source_changes SET consumed_seq = %(seen)s WHERE seq = %(seen)s",
        {"seen": seen}).rowcount == 0
    assert pending(conn) == {AUG1}
    assert consume(runtime, AUG1) == (58, 1)  # the rows as they are now
    assert pending(conn) == set()


def test_a_change_in_flight_while_the_consumer_reads_stays_pending(conn, runtime, source_url):
    conn.execute("DELETE FROM data_bars WHERE ts_utc = %s", (MIDNIGHT,))
    runtime_pid = runtime.info.backend_pid
    with connection.connect(source_url) as ingester:  # a transaction, held open
        ingester.execute("DELETE FROM data_bars WHERE ts_utc = %s", (MIDNIGHT + MINUTE,))
        result: list = []
        consumer = threading.Thread(target=lambda: result.append(consume(runtime, AUG1)))
        consumer.start()
        # the consumer read the day (seq before the delete) and 59 rows, and now waits for the
        # ingester's lock on the change row
        wait_for(lambda: conn.execute(
            "SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = %s",
            (runtime_pid,)).fetchone()[0], 10, "the consumer to wait for the ingester's lock")
        ingester.commit()
        consumer.join(10)
    assert result == [(59, 0)]  # re-checked on the committed row: a new seq, not consumed
    assert pending(conn) == {AUG1}
    assert consume(runtime, AUG1) == (58, 1)
    assert pending(conn) == set()


def test_prune_removes_old_consumed_days_only(conn, runtime):
    conn.execute("DELETE FROM data_bars WHERE ts_utc IN (%s, %s)",
                 (MIDNIGHT - MINUTE, MIDNIGHT))
    conn.execute("UPDATE data_agg_source_changes SET consumed_seq = seq, "
                 "last_changed_at = now() - interval '40 days' WHERE day = %s", (JUL31,))
    conn.execute("UPDATE data_agg_source_changes SET last_changed_at = now() - "
                 "interval '40 days' WHERE day = %s", (AUG1,))  # old but still pending
    assert runtime.execute("SELECT agg_prune_source_changes(interval '30 days')"
                           ).fetchone()[0] == 1
    assert set(summary(conn)) == {AUG1}
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="p_older_than"):
        runtime.execute("SELECT agg_prune_source_changes(interval '-1 day')")


# ----------------------------------------------------------------------------------------
# replica mode and the documented bypasses


def test_changes_applied_in_replica_mode_are_captured(conn):
    """Logical replication applies changes with session_replication_role = replica; the
    triggers are ENABLE ALWAYS, so a replicated correction reaches the pipeline."""
    conn.execute("SET session_replication_role = replica")
    conn.execute("UPDATE data_bars SET close = close WHERE ts_utc = %s", (MIDNIGHT,))
    conn.execute("DELETE FROM data_bars WHERE ts_utc = %s", (MIDNIGHT - MINUTE,))
    conn.execute("RESET session_replication_role")
    assert summary(conn) == {JUL31: (["delete"], 1, MIDNIGHT - MINUTE),
                             AUG1: (["update"], 1, MIDNIGHT)}


def test_documented_bypasses_are_not_captured(conn, shape):
    """What migration 012 lists as bypasses (the reconciliation backstop's scope) really are:
    disabled triggers, and on a partitioned table, statements naming a partition."""
    conn.execute("ALTER TABLE data_bars DISABLE TRIGGER agg_capture_source_update")
    try:
        conn.execute("UPDATE data_bars SET close = close WHERE ts_utc = %s", (MIDNIGHT,))
    finally:  # the session's database is shared with the other tests
        conn.execute("ALTER TABLE data_bars ENABLE ALWAYS TRIGGER agg_capture_source_update")
    if shape == "partitioned":
        conn.execute("UPDATE data_bars_2025_08 SET close = close WHERE ts_utc = %s",
                     (MIDNIGHT,))
        conn.execute("DELETE FROM data_bars_2025_07 WHERE ts_utc = %s", (MIDNIGHT - MINUTE,))
        conn.execute("TRUNCATE data_bars_2025_07")
    assert changes(conn) == {}
    conn.execute("UPDATE data_bars SET close = close WHERE ts_utc = %s", (MIDNIGHT,))
    assert pending(conn) == {AUG1}


# ----------------------------------------------------------------------------------------
# adoption of an existing data_bars


def migrations_up_to(tmp_path, last: str, name: str):
    """A copy of sql/ holding the migrations numbered up to `last` (an installation of an
    older release, or this release up to 012)."""
    folder = tmp_path / name
    folder.mkdir()
    for path in settings.sql_dir().glob("*.sql"):
        if path.name[:3] <= last:
            shutil.copy(path, folder / path.name)
    return folder


CAPTURE = "012_source_change_capture.sql"


def test_migration_adopts_data_bars_without_rewriting_it(make_database, tmp_path):
    url = make_database("agg_adopt")
    migrations.migrate(url, sql_dir=migrations_up_to(tmp_path, "011", "before"))
    with connection.connect(url) as conn:
        add_symbol(conn, "EURUSD")
        insert_bars(conn, "EURUSD", minute_bars(MIDNIGHT, 30))
        conn.commit()
        files = dict(conn.execute(
            "SELECT c.relname, pg_relation_filenode(c.oid) FROM pg_class c "
            "WHERE c.oid = 'data_bars'::regclass OR c.oid IN "
            "(SELECT indexrelid FROM pg_index WHERE indrelid = 'data_bars'::regclass)"))
        assert len(files) == 4  # the heap and its three indexes

        # inside 012's transaction: the locks it holds on data_bars until it commits
        conn.execute((settings.sql_dir() / CAPTURE).read_text())
        held = {r[0] for r in conn.execute(
            "SELECT mode FROM pg_locks WHERE pid = pg_backend_pid() AND relation = "
            "'data_bars'::regclass")}
        conn.rollback()
    assert "ShareRowExclusiveLock" in held
    assert not held & {"ExclusiveLock", "AccessExclusiveLock"}, held

    assert migrations.migrate(url, sql_dir=migrations_up_to(tmp_path, "012", "with")) == [
        CAPTURE]
    with connection.connect(url) as conn:
        assert dict(conn.execute(
            "SELECT c.relname, pg_relation_filenode(c.oid) FROM pg_class c "
            "WHERE c.relname = ANY(%s)", (list(files),))) == files
        assert conn.execute("SELECT count(*) FROM data_agg_source_changes").fetchone()[0] == 0


def test_migration_gives_up_on_a_busy_data_bars_with_a_clear_error(make_database, tmp_path):
    url = make_database("agg_busy")
    migrations.migrate(url, sql_dir=migrations_up_to(tmp_path, "011", "before"))
    with_capture = migrations_up_to(tmp_path, "012", "with")
    with connection.connect(url) as ingester:
        add_symbol(ingester, "EURUSD")
        insert_bars(ingester, "EURUSD", minute_bars(MIDNIGHT, 1))  # uncommitted: a lock held
        with pytest.raises(migrations.MigrationError, match="run migrate again"):
            migrations.migrate(url, sql_dir=with_capture)
        ingester.rollback()
    assert migrations.migrate(url, sql_dir=with_capture) == [CAPTURE]
