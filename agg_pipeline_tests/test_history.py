"""SPEC contract 9: a restated or withdrawn bar's previous version is never lost, and any
bar can be read as it stood at a past instant, with why it changed."""

from __future__ import annotations

from datetime import datetime, timedelta

import psycopg
import pytest
from psycopg.rows import dict_row

from agg_pipeline.db import connection
from agg_pipeline.definitions import defs
from agg_pipeline.defs.assets import AS_OF_TAG
from agg_pipeline.defs.partitions import SYMBOLS_PARTITIONS_NAME, range_tags
from agg_pipeline.engine import aggregate as engine
from agg_pipeline_tests.helpers import T0, add_symbol, bar, insert_bars, minute_bars, sync

AS_OF = T0 + timedelta(days=2)
WINDOW = T0 + timedelta(minutes=5)  # the 5m bar [00:05, 00:10)


def build(conn, **kwargs) -> dict[str, engine.AggregationResult]:
    results = {tf: engine.aggregate(conn, "EURUSD", tf, T0, T0 + timedelta(days=1), now=AS_OF,
                                    **kwargs) for tf in ("5m", "1h")}
    conn.commit()
    return results


def clock(conn) -> datetime:
    """An instant strictly between two engine transactions (the engine stamps versions with
    its transaction's start: this one ends before the next begins)."""
    value = conn.execute("SELECT clock_timestamp()").fetchone()[0]
    conn.commit()
    return value


def as_of(conn, timeframe: str, ts: datetime, at: datetime) -> list[dict]:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute("SELECT * FROM agg_bar_as_of('EURUSD', %s, %s, %s)",
                           (timeframe, ts, at)).fetchall()


def revisions(conn, timeframe: str, start: datetime, end: datetime) -> list[dict]:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute("SELECT * FROM agg_bar_revisions('EURUSD', %s, %s, %s)",
                           (timeframe, start, end)).fetchall()


@pytest.fixture
def eurusd(db):
    add_symbol(db, "EURUSD")
    sync(db)
    insert_bars(db, "EURUSD", minute_bars(T0, 120))
    db.commit()
    return db


def test_a_restated_bar_keeps_its_previous_version_and_why(eurusd):
    build(eurusd)
    first_high = as_of(eurusd, "5m", WINDOW, clock(eurusd))[0]["high"]
    before = clock(eurusd)
    # a correction of 00:07 lands late: the row is updated in place
    insert_bars(eurusd, "EURUSD", [bar(T0 + timedelta(minutes=7), 1.5, ingested_at=AS_OF)],
                upsert=True)
    eurusd.commit()
    results = build(eurusd, reason="late_data", run_id="run-1234")
    after = clock(eurusd)
    assert (results["5m"].bars_updated, results["1h"].bars_updated) == (1, 1)

    # the bar as a signal saw it before the correction, and as it is now
    (old,) = as_of(eurusd, "5m", WINDOW, before)
    (new,) = as_of(eurusd, "5m", WINDOW, after)
    assert (old["high"], new["high"]) == (first_high, 1.501)
    # the 5m bar read the updated row: a correction (the source change was recorded)
    assert (old["change"], old["reason"], old["run_id"]) == ("restated", "correction",
                                                             "run-1234")
    assert new["change"] == "current" and new["valid_to"] is None
    assert old["valid_to"] == new["valid_from"]  # no gap, no overlap
    # the 1h bar above it was restated by the same run
    (hour_then,) = as_of(eurusd, "1h", T0, before)
    (hour_now,) = as_of(eurusd, "1h", T0, after)
    assert hour_then["high"] < 1.5 and hour_now["high"] == 1.501
    # ... and says why as its 5m bars do: a correction, not the run's "late data"
    history = revisions(eurusd, "1h", T0, T0 + timedelta(hours=1))
    assert [(h["change"], h["reason"]) for h in history] == [("restated", "correction"),
                                                             ("current", None)]

    # nothing changed since: a re-run writes no bar and no revision
    count = eurusd.execute("SELECT count(*) FROM derived_bar_revisions").fetchone()[0]
    results = build(eurusd, reason="catch_up")
    assert sum(r.rows_written for r in results.values()) == 0
    assert eurusd.execute("SELECT count(*) FROM derived_bar_revisions").fetchone()[0] == count


def test_a_withdrawn_bar_is_readable_as_it_stood(eurusd):
    build(eurusd)
    (standing,) = as_of(eurusd, "5m", WINDOW, clock(eurusd))
    before = clock(eurusd)
    # 3 of the window's 5 source rows are deleted: 2 left, below the ladder (no bar)
    eurusd.execute("DELETE FROM data_bars WHERE ts_utc >= %s AND ts_utc < %s",
                   (WINDOW, WINDOW + timedelta(minutes=3)))
    eurusd.commit()
    results = build(eurusd, reason="deletion")
    assert results["5m"].bars_soft_deleted == 1
    assert as_of(eurusd, "5m", WINDOW, clock(eurusd)) == []
    (then,) = as_of(eurusd, "5m", WINDOW, before)
    assert (then["open"], then["close"], then["source_candles"]) == (
        standing["open"], standing["close"], 5)
    assert (then["change"], then["reason"]) == ("withdrawn", "deletion")


def test_rebuild_keeps_the_replaced_versions(eurusd):
    build(eurusd)
    before = clock(eurusd)
    result = engine.rebuild_range(eurusd, "EURUSD", "5m", T0, T0 + timedelta(hours=1),
                                  now=AS_OF, run_id="rebuild-run")
    eurusd.commit()
    assert result.bars_soft_deleted == result.bars_inserted == 12
    (then,) = as_of(eurusd, "5m", WINDOW, before)
    (now,) = as_of(eurusd, "5m", WINDOW, clock(eurusd))
    assert (then["change"], then["reason"], then["run_id"]) == ("rebuilt", "rebuild",
                                                                "rebuild-run")
    assert (then["derivation_version"], now["derivation_version"]) == (1, 2)
    assert then["valid_to"] == now["valid_from"]


def test_reasons_are_checked(eurusd):
    with pytest.raises(ValueError, match="reason='because' is not one of"):
        engine.aggregate(eurusd, "EURUSD", "5m", T0, T0 + timedelta(hours=1), reason="because")


def test_a_late_data_run_labels_the_versions_it_replaced(eurusd, instance, runtime_url):
    instance.add_dynamic_partitions(SYMBOLS_PARTITIONS_NAME, ["EURUSD"])
    job = defs.resolve_job_def("aggregate_bars")
    tags = {**range_tags("EURUSD", T0.date(), T0.date()), AS_OF_TAG: AS_OF.isoformat()}
    late_minute = T0 + timedelta(minutes=7)
    eurusd.execute("DELETE FROM data_bars WHERE ts_utc = %s", (late_minute,))
    eurusd.commit()
    assert job.execute_in_process(instance=instance, tags=tags).success
    # the missing minute arrives late (a new row, seen by its ingested_at)
    insert_bars(eurusd, "EURUSD", [bar(late_minute, 1.5, ingested_at=AS_OF)])
    eurusd.commit()
    late = job.execute_in_process(
        instance=instance, tags={**tags, "agg/reason": f"late data on {T0.date()}"})
    assert late.success
    history = revisions(eurusd, "5m", WINDOW, WINDOW + timedelta(minutes=5))
    assert [(h["change"], h["reason"], h["run_id"]) for h in history] == [
        ("restated", "late_data", late.run_id), ("current", None, None)]
    # the pipeline's role reads the history but cannot rewrite it
    with connection.connect(runtime_url) as conn:
        assert len(revisions(conn, "5m", T0, T0 + timedelta(hours=2))) == 24 + 1
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("UPDATE derived_bar_revisions SET reason = 'manual'")
        conn.rollback()
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("DELETE FROM derived_bar_revisions")


def test_the_history_command_prints_every_version_and_a_past_instant(eurusd, database_url):
    from agg_pipeline_tests.test_cli import run_cli

    build(eurusd)
    before = clock(eurusd)
    insert_bars(eurusd, "EURUSD", [bar(T0 + timedelta(minutes=7), 1.5, ingested_at=AS_OF)],
                upsert=True)
    eurusd.commit()
    build(eurusd, reason="late_data", run_id="run-1234")
    env = {"AGG_DATABASE_URL": database_url}
    every = run_cli("history", "EURUSD", "5m", WINDOW.isoformat(), env=env)
    assert every.returncode == 0, every.stderr
    header, _, *lines = every.stdout.splitlines()
    assert header.split()[:6] == ["bar", "open", "high", "low", "close", "vol"]
    assert len(lines) == 2
    assert "restated" in lines[0] and "correction" in lines[0] and "run-1234" in lines[0]
    assert "current" in lines[1] and "1.501" in lines[1]
    then = run_cli("history", "EURUSD", "5m", T0.isoformat(), (T0 + timedelta(hours=1)).isoformat(),
                   "--as-of", before.isoformat(), env=env)
    assert then.returncode == 0, then.stderr
    rows = then.stdout.splitlines()[2:]
    assert len(rows) == 12 and not any("1.501" in row for row in rows)
    bad = run_cli("history", "EURUSD", "7m", T0.isoformat(), env=env)
    assert bad.returncode == 1 and "unknown target timeframe '7m'" in bad.stderr
