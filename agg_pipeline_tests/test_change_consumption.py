"""The engine consumes recorded source changes (migration 012) in the statement that re-reads
their days (SPEC contract 10): an in-place edit or a deletion is restated with its reason,
and no change is lost when a consumer and an ingester interleave, or a consumer rolls back."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest

from agg_pipeline.db import connection
from agg_pipeline.engine import aggregate as engine
from agg_pipeline_tests.helpers import T0, add_symbol, insert_bars, minute_bars, sync, wait_for

AS_OF = T0 + timedelta(days=2)
DAY = T0.date()


def run(conn, timeframe: str = "5m") -> engine.AggregationResult:
    result = engine.aggregate(conn, "EURUSD", timeframe, T0, T0 + timedelta(days=1), now=AS_OF,
                              reason="late_data")
    conn.commit()
    return result


def pending(conn) -> list[tuple]:
    rows = conn.execute("SELECT day, kinds FROM data_agg_source_changes "
                        "WHERE seq > consumed_seq ORDER BY day").fetchall()
    conn.commit()
    return rows


def newest_reason(conn) -> str:
    return conn.execute("SELECT reason FROM derived_bar_revisions WHERE timeframe = '5m' "
                        "ORDER BY revision_id DESC LIMIT 1").fetchone()[0]


@pytest.fixture
def built(db):
    add_symbol(db, "EURUSD")
    sync(db)
    insert_bars(db, "EURUSD", minute_bars(T0, 120))
    db.commit()
    run(db), run(db, "1h")
    return db


def test_an_in_place_edit_is_consumed_and_restated_as_a_correction(built):
    # ingested_at left as it was: only the change capture sees this
    built.execute("UPDATE data_bars SET high = high + 0.5 WHERE ts_utc = %s",
                  (T0 + timedelta(minutes=7),))
    built.commit()
    assert pending(built) == [(DAY, ["update"])]
    result = run(built)
    assert result.bars_updated == 1
    assert pending(built) == []
    assert newest_reason(built) == "correction"
    # consumed: the same request again finds nothing to do
    assert run(built).rows_written == 0


def test_a_deletion_is_consumed_and_withdraws_as_a_deletion(built):
    built.execute("DELETE FROM data_bars WHERE ts_utc >= %s AND ts_utc < %s",
                  (T0 + timedelta(minutes=5), T0 + timedelta(minutes=8)))
    built.commit()
    assert pending(built) == [(DAY, ["delete"])]
    assert run(built).bars_soft_deleted == 1
    assert pending(built) == [] and newest_reason(built) == "deletion"


def test_a_rolled_back_consumer_leaves_the_change_pending(built):
    built.execute("DELETE FROM data_bars WHERE ts_utc = %s", (T0 + timedelta(minutes=7),))
    built.commit()
    with built.transaction(force_rollback=True):
        engine.aggregate(built, "EURUSD", "5m", T0, T0 + timedelta(days=1), now=AS_OF)
    built.rollback()
    assert pending(built) == [(DAY, ["delete"])]


def test_a_change_committed_while_the_consumer_runs_stays_pending(built, clean_database):
    """The day is pending (an edit at 00:07); an ingester edits 00:12 and holds its
    transaction open; the engine re-reads the day (it cannot see 00:12's edit) and waits to
    mark the day consumed; the ingester commits (a new seq): the engine must not consume the
    change it never read."""
    built.execute("UPDATE data_bars SET high = high + 0.5 WHERE ts_utc = %s",
                  (T0 + timedelta(minutes=7),))
    built.commit()
    ingester = connection.connect(clean_database)
    engine_conn = connection.connect(clean_database)
    try:
        ingester.execute("UPDATE data_bars SET low = low - 0.5 WHERE ts_utc = %s",
                         (T0 + timedelta(minutes=12),))  # not committed yet
        outcome: dict = {}
        consumer = threading.Thread(target=lambda: outcome.setdefault("result", run(engine_conn)))
        consumer.start()
        engine_pid = engine_conn.info.backend_pid

        def engine_waits_on_the_ingester():
            with connection.connect(clean_database, autocommit=True) as watch:
                return watch.execute("SELECT wait_event_type = 'Lock' FROM pg_stat_activity "
                                     "WHERE pid = %s", (engine_pid,)).fetchone()[0]

        wait_for(engine_waits_on_the_ingester, 30, "the engine to wait for the day's row lock")
        ingester.commit()
        consumer.join(timeout=60)
    finally:
        ingester.close()
        engine_conn.close()
    assert outcome["result"].bars_updated == 1  # 00:05 restated; 00:10 not seen yet
    assert pending(built) == [(DAY, ["update"])]  # 00:12's edit still to do
    assert run(built).bars_updated == 1
    assert pending(built) == []
