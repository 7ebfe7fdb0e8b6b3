"""Retention is not a correction (SPEC contract 16), on a data_bars partitioned by month:
dropping, detaching or truncating a partition, or a declared retention delete, never
withdraws or restates derived bars, whatever re-reads those days later (a late row, the
late-data path, the reconciliation, a rebuild); a delete through data_bars that is not
behind the declared horizon is a correction and withdraws as contract 9 says."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta

import psycopg
import pytest

from agg_pipeline.db import connection, migrations, queries
from agg_pipeline.engine import aggregate as engine
from agg_pipeline.engine import monitoring, runbook
from agg_pipeline_tests.helpers import add_symbol, bar, insert_bars, minute_bars, sync
from agg_pipeline_tests.test_partitioned_source import create_partitioned_source

SYMBOL = "EURUSD"
START = datetime(2025, 7, 29, tzinfo=UTC)  # Tuesday; five days across July/August
END = datetime(2025, 8, 3, tzinfo=UTC)
NOW = END + timedelta(days=1)
JULY = [date(2025, 7, 29), date(2025, 7, 30), date(2025, 7, 31)]
AUGUST = [date(2025, 8, 1), date(2025, 8, 2)]


@pytest.fixture
def part(make_database) -> Iterator[psycopg.Connection]:
    """A fresh database whose data_bars is partitioned by month (this test drops some),
    migrated, with EURUSD's five days of 1m bars materialised (5m and 1h)."""
    url = make_database("agg_retention")
    create_partitioned_source(url)
    migrations.migrate(url)
    conn = connection.connect(url)
    add_symbol(conn, SYMBOL)
    insert_bars(conn, SYMBOL, minute_bars(START, int((END - START) / timedelta(minutes=1)),
                                          skip=[17, 900]))
    sync(conn, agg_start=START)
    build(conn)
    yield conn
    conn.close()


def build(conn: psycopg.Connection, start: datetime = START, end: datetime = END,
          reason: str = "manual") -> dict[str, engine.AggregationResult]:
    run_id = f"run-{reason}-{start:%d%H}"  # (1h's revisions say why as this run's 5m ones)
    results = {tf: engine.aggregate(conn, SYMBOL, tf, start, end, now=NOW, reason=reason,
                                    run_id=run_id) for tf in ("5m", "1h")}
    conn.commit()
    return results


def day_start(day: date) -> datetime:
    return datetime.combine(day, datetime.min.time(), UTC)


def bars(conn: psycopg.Connection, days: list[date]) -> dict:
    """Active bars (5m and 1h) of `days`, every column that a restatement changes."""
    rows = conn.execute(
        "SELECT timeframe, ts_utc, id, open, high, low, close, vol, source_candles, "
        "quality_score, derivation_version FROM derived_data_bars WHERE canonical_symbol = %s "
        "AND deleted_at IS NULL AND ts_utc >= %s AND ts_utc < %s",
        (SYMBOL, day_start(min(days)), day_start(max(days)) + timedelta(days=1))).fetchall()
    conn.rollback()
    return {(r[0], r[1]): r[2:] for r in rows}


def revisions(conn: psycopg.Connection) -> list[tuple]:
    rows = conn.execute("SELECT timeframe, ts_utc, change, reason FROM derived_bar_revisions "
                        "ORDER BY 1, 2").fetchall()
    conn.rollback()
    return rows


def removed_days(conn: psycopg.Connection) -> set[date]:
    days = {r[0] for r in conn.execute(
        "SELECT day FROM data_agg_source_days WHERE canonical_symbol = %s AND timeframe = '5m' "
        "AND source_removed", (SYMBOL,))}
    conn.rollback()
    return days


def late_days(conn: psycopg.Connection, since: datetime) -> set[tuple]:
    """What the late-data path finds (late rows, captured changes) of days materialised."""
    found = {(r[0], r[1]) for r in conn.execute(queries.query("late_source_days"), {
        "since": since, "as_of": NOW + timedelta(hours=2), "timeframe": "5m"})}
    conn.rollback()
    return found


def test_a_dropped_partition_keeps_its_days_bars_whatever_reads_them_later(part):
    july = bars(part, JULY)
    assert len([k for k in july if k[0] == "5m"]) > 800
    part.execute("ALTER TABLE data_bars DETACH PARTITION data_bars_2025_07")
    part.execute("DROP TABLE data_bars_2025_07")
    # a row for July 30 lands late: with its month gone it goes to the DEFAULT partition
    landed = NOW + timedelta(hours=1)
    insert_bars(part, SYMBOL, [bar(day_start(JULY[1]) + timedelta(hours=12, minutes=7), 1.5,
                                   ingested_at=landed)], upsert=True)
    part.commit()
    assert (SYMBOL, JULY[1]) in late_days(part, landed - timedelta(minutes=5))

    # the late-data run re-reads July 30: every bar kept, the late row's window too (its
    # other rows are gone: it cannot be recomputed), nothing restated or withdrawn
    results = build(part, day_start(JULY[1]), day_start(JULY[2]), reason="late_data")
    assert results["5m"].bars_kept_source_gone == len(
        [k for k in july if k[0] == "5m" and k[1].date() == JULY[1]])
    assert results["5m"].rows_written == 0 and results["1h"].rows_written == 0
    assert bars(part, JULY) == july and revisions(part) == []
    assert removed_days(part) == {JULY[1]}
    assert late_days(part, landed - timedelta(minutes=5)) == set()

    # the reconciliation's recheck and the matches_source check find nothing to do
    span = [engine.Span(SYMBOL, START, END)]
    found = monitoring.recheck(part, "5m", span, as_of=NOW)
    assert found.changed == {} and set(found.pending_days.get(SYMBOL, ())) <= set(JULY)
    build(part, reason="reconciliation")  # the whole range, as its run would
    assert bars(part, JULY) == july and revisions(part) == []
    assert removed_days(part) == set(JULY)
    assert monitoring.recheck(part, "5m", span, as_of=NOW).pending_days == {}
    assert monitoring.matches_source(
        part, "5m", monitoring.Scope({SYMBOL: [(JULY[0], AUGUST[-1])]}),
        sample=timedelta(days=7)).passed

    # a rebuild rewrites August (its source is there) and keeps July's 5m bars as they were;
    # July's 1h bars are rebuilt from those 5m bars, their source, to the same values
    august = bars(part, AUGUST)
    runbook.rebuild_range(part, [SYMBOL], START, END, ["5m", "1h"])
    rebuilt = bars(part, JULY)
    assert {k: v for k, v in rebuilt.items() if k[0] == "5m"} == {
        k: v for k, v in july.items() if k[0] == "5m"}
    assert {k: v[1:-1] for k, v in rebuilt.items()} == {k: v[1:-1] for k, v in july.items()}
    after = bars(part, AUGUST)
    assert after.keys() == august.keys()
    assert all(after[k][-1] == august[k][-1] + 1 for k in after)  # derivation_version bumped
    assert {r[3] for r in revisions(part)} == {"rebuild"}
    assert not [ts for tf, ts, _, _ in revisions(part) if tf == "5m" and ts.date() in JULY]


def test_a_truncated_partition_is_retention_a_delete_through_data_bars_a_correction(part):
    august = bars(part, AUGUST)
    part.execute("TRUNCATE data_bars_2025_08")  # no trigger sees it
    # ... and three rows of July 30 10:00 deleted through data_bars: captured, a correction
    window = day_start(JULY[1]) + timedelta(hours=10)
    part.execute("DELETE FROM data_bars WHERE canonical_symbol = %s AND ts_utc >= %s "
                 "AND ts_utc < %s", (SYMBOL, window, window + timedelta(minutes=3)))
    part.commit()
    before = bars(part, JULY)

    results = build(part, reason="late_data")
    assert bars(part, AUGUST) == august
    assert removed_days(part) == set(AUGUST)
    assert results["5m"].bars_kept_source_gone == len([k for k in august if k[0] == "5m"])
    # the corrected window (2 of 5 rows left) is withdrawn, its hour restated, both saying why
    assert results["5m"].bars_soft_deleted == 1 and results["1h"].bars_updated == 1
    assert revisions(part) == [("1h", window, "restated", "deletion"),
                               ("5m", window, "withdrawn", "deletion")]
    after = bars(part, JULY)
    assert ("5m", window) not in after
    assert {k: v for k, v in before.items() if k[1] != window} == {
        k: v for k, v in after.items() if k[1] != window}


def test_a_declared_retention_delete_keeps_the_bars_before_the_horizon(part):
    july = bars(part, JULY[:2])
    horizon = part.execute("SELECT agg_declare_source_retention(%s)",
                           (day_start(JULY[2]) + timedelta(hours=15),)).fetchone()[0]
    assert horizon == day_start(JULY[2])  # its UTC day
    # an earlier declaration never moves it back
    assert part.execute("SELECT agg_declare_source_retention(%s)",
                        (START,)).fetchone()[0] == horizon
    since = part.execute("SELECT now()").fetchone()[0]
    part.execute("DELETE FROM data_bars WHERE ts_utc < %s", (horizon,))
    part.commit()
    # not a correction: nothing captured, nothing found late
    pending = part.execute("SELECT count(*) FROM data_agg_source_changes "
                           "WHERE seq > consumed_seq").fetchone()[0]
    part.rollback()
    assert pending == 0 and late_days(part, since) == set()

    # a backfill over everything keeps the days before the horizon as they were
    results = build(part, reason="backfill")
    assert bars(part, JULY[:2]) == july and revisions(part) == []
    assert results["5m"].rows_written == results["1h"].rows_written == 0
    assert monitoring.recheck(part, "5m", [engine.Span(SYMBOL, START, END)],
                              as_of=NOW).pending_days == {}
    # rows deleted after the horizon are corrections again
    part.execute("DELETE FROM data_bars WHERE ts_utc >= %s AND ts_utc < %s",
                 (horizon, horizon + timedelta(minutes=5)))
    part.commit()
    assert late_days(part, since) == {(SYMBOL, JULY[2])}
    assert build(part, reason="late_data")["5m"].bars_soft_deleted == 1
