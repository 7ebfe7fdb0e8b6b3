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


def history_cli(*args: str, url: str) -> list[str]:
    from agg_pipeline_tests.test_cli import run_cli

    result = run_cli("history", *args, env={"AGG_DATABASE_URL": url})
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def table(lines: list[str]) -> tuple[list[str], list[str]]:
    """(the header lines above the table, the table's rows), split at the rule line."""
    rule = next(i for i, line in enumerate(lines) if set(line) <= {"-", " "} and line)
    return lines[:rule - 1], lines[rule + 1:]


def test_the_history_command_prints_every_version_and_a_past_instant(eurusd, database_url):
    from agg_pipeline_tests.test_cli import run_cli

    build(eurusd)
    before = clock(eurusd)
    insert_bars(eurusd, "EURUSD", [bar(T0 + timedelta(minutes=7), 1.5, ingested_at=AS_OF)],
                upsert=True)
    eurusd.commit()
    build(eurusd, reason="late_data", run_id="run-1234-5678-9abc")
    every = history_cli("EURUSD", "5m", WINDOW.isoformat(), url=database_url)
    header, lines = table(every)
    assert header[0] == "EURUSD 5m bar 2025-07-07 00:05: 2 versions, oldest first"
    assert every[len(header)].split()[:6] == ["bar", "open", "high", "low", "close", "vol"]
    assert len(lines) == 2
    assert "restated" in lines[0] and "correction" in lines[0] and "run-1234" in lines[0]
    assert "run-1234-" not in lines[0]  # run ids cut to 8 characters
    assert "current" in lines[1] and "1.5010" in lines[1]
    then = history_cli("EURUSD", "5m", T0.isoformat(), (T0 + timedelta(hours=1)).isoformat(),
                       "--as-of", before.isoformat(), url=database_url)
    header, rows = table(then)
    assert header[0].startswith("EURUSD 5m bars starting in [2025-07-07 00:00, 2025-07-07 01:00)"
                                f", as of {before:%Y-%m-%d %H:%M:%S}: 12 versions of 12 bars")
    assert len(rows) == 12 and not any("1.501" in row for row in rows)
    bad = run_cli("history", "EURUSD", "7m", T0.isoformat(), env={"AGG_DATABASE_URL": database_url})
    assert bad.returncode == 1 and "unknown target timeframe '7m'" in bad.stderr


def test_history_takes_any_instant_inside_a_bar_and_says_which_bar(eurusd, database_url):
    build(eurusd)
    inside = WINDOW + timedelta(minutes=2, seconds=30)  # 00:07:30, in the bar 00:05
    lines = history_cli("EURUSD", "5m", inside.isoformat(), url=database_url)
    assert lines[0] == ("EURUSD 5m bar containing 00:07:30 is 2025-07-07 00:05: 1 version, "
                        "oldest first")
    assert table(lines)[1][0].startswith("00:05 ")
    ranged = history_cli("EURUSD", "1h", (T0 + timedelta(minutes=59)).isoformat(),
                         (T0 + timedelta(hours=2)).isoformat(), url=database_url)
    assert ranged[0].startswith("EURUSD 1h bars starting in [2025-07-07 00:00, 2025-07-07 02:00) "
                                "(START 00:59 is in bar 00:00): 2 versions of 2 bars")


def test_history_fits_120_columns_and_wide_prints_everything(eurusd, database_url):
    """Prices to the symbol's precision (its source rows have 4 decimals; a double such as
    1.1030000000000002 is 1.103 plus float noise), run ids of 8 characters; --wide: the
    stored doubles, full run ids, vwap and the other columns."""
    build(eurusd)
    run_id = "3f2a9c1e-5b7d-4e21-9a0c-1d2e3f4a5b6c"  # a Dagster run id: 36 characters
    noisy = 1.1 + 0.003  # 1.1030000000000002, the window's high
    insert_bars(eurusd, "EURUSD", [bar(WINDOW + timedelta(minutes=2), 1.1007, high=noisy,
                                       ingested_at=AS_OF)], upsert=True)
    eurusd.commit()
    build(eurusd, reason="correction", run_id=run_id)
    # two days of bars, versions written on two days: the widest default table
    eurusd.execute("UPDATE derived_bar_revisions SET valid_from = valid_from - interval '400 days'")
    eurusd.commit()
    args = ("EURUSD", "5m", (T0 - timedelta(days=1)).isoformat(),
            (T0 + timedelta(days=1)).isoformat())
    default = history_cli(*args, url=database_url)
    assert max(len(line) for line in default) <= 120
    header, rows = table(default)
    assert "prices to 4 decimals" in " ".join(header)
    assert "1.1030 " in "\n".join(rows) and "1.1030000000000002" not in "\n".join(default)
    assert run_id[:9] not in "\n".join(default)  # run ids cut to 8 characters, or left out
    assert run_id[:8] in "\n".join(rows) or "run not shown" in " ".join(header)
    wide = history_cli(*args, "--wide", url=database_url)
    assert max(len(line) for line in wide) > 120
    wide_text = "\n".join(wide)
    assert "1.1030000000000002" in wide_text and run_id in wide_text
    assert table(wide)[0][0].endswith("(times UTC)")
    assert wide[1].split()[:8] == ["bar", "open", "high", "low", "close", "vol", "vwap",
                                   "trades"]
    assert "2025-07-07 00:05" in wide_text  # full timestamps


def test_price_decimals_ignore_float_noise_and_stop_at_8_significant_digits():
    from agg_pipeline.engine.history import decimals_needed, most_decimals

    assert decimals_needed(1.085 + 0.003) == 3  # 1.0879999999999999
    assert decimals_needed(1.1 + 0.003) == 3  # 1.1030000000000002
    assert decimals_needed(1.08751) == 5
    assert decimals_needed(150.123) == 3
    assert decimals_needed(2345.0) == 0
    assert decimals_needed(104.12345678901) == 5  # a computed index: 8 significant digits
    assert decimals_needed(0.000012345) == 9
    assert most_decimals([1.1, None, 1.12345, 1.123]) == 5
