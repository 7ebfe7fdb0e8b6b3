"""The seeds' DXY clean-up as a runbook job (issue 13 item 3, seed 004 "Phase 9"): legacy
DXY 1m rows in derived_data_bars soft-deleted, dry run first, counts reported, the history
keeping every withdrawn version, and an undo. Real Dagster runs as the runtime role."""

from __future__ import annotations

from datetime import timedelta

import dagster as dg
import pytest

from agg_pipeline.definitions import defs
from agg_pipeline_tests.helpers import T0, add_symbol

LEGACY = 300  # DXY 1m rows from the old worker (source 'dxy')
BEFORE = T0 - timedelta(days=30)  # when the legacy rows were written


def insert_derived(conn, symbol: str, timeframe: str, start, count: int, *, source: str,
                   step: timedelta = timedelta(minutes=1), deleted: bool = False) -> None:
    conn.execute(
        "INSERT INTO derived_data_bars (canonical_symbol, timeframe, ts_utc, open, high, low, "
        "close, is_partial, source, ingested_at, created_at, updated_at, deleted_at, raw) "
        "SELECT %s, %s, %s + g * %s, 104 + g * 0.001, 104.01 + g * 0.001, 103.99 + g * 0.001, "
        "104.005 + g * 0.001, false, %s, %s, %s, %s, CASE WHEN %s THEN %s END, '{}' "
        "FROM generate_series(0, %s - 1) g",
        (symbol, timeframe, start, step, source, BEFORE, BEFORE, BEFORE, deleted, BEFORE, count))


@pytest.fixture
def legacy(db, runtime_url):
    for symbol in ("DXY", "EURUSD"):
        add_symbol(db, symbol)
    insert_derived(db, "DXY", "1m", T0, LEGACY, source="dxy")
    insert_derived(db, "DXY", "1m", T0 - timedelta(days=1), 5, source="dxy", deleted=True)
    insert_derived(db, "DXY", "5m", T0, 2, source="agg", step=timedelta(minutes=5))
    insert_derived(db, "EURUSD", "1m", T0, 10, source="eurusd")
    db.commit()
    return db


def state(conn) -> tuple:
    """Everything the job may touch, row by row."""
    state = conn.execute(
        "SELECT (SELECT md5(string_agg(d::text, '|' ORDER BY d.id)) FROM derived_data_bars d), "
        "(SELECT count(*) FROM derived_bar_revisions)").fetchone()
    conn.rollback()
    return state


def launch(instance, job: str, **config) -> dg.ExecuteInProcessResult:
    op = f"{job}_op"
    return defs.resolve_job_def(job).execute_in_process(
        instance=instance, run_config={"ops": {op: {"config": config}}}, raise_on_error=False)


def output_metadata(result: dg.ExecuteInProcessResult, job: str) -> dict:
    [event] = [e for e in result.events_for_node(f"{job}_op") if e.is_successful_output]
    return {k: v.value for k, v in event.step_output_data.metadata.items()}


def active(conn, symbol: str, timeframe: str) -> int:
    count = conn.execute("SELECT count(*) FROM derived_data_bars WHERE canonical_symbol = %s "
                         "AND timeframe = %s AND deleted_at IS NULL",
                         (symbol, timeframe)).fetchone()[0]
    conn.rollback()
    return count


def test_dry_run_changes_nothing_and_counts_the_legacy_rows(legacy, instance):
    before = state(legacy)
    result = launch(instance, "legacy_cleanup", symbol="DXY")  # dry_run is the default
    assert result.success
    meta = output_metadata(result, "legacy_cleanup")
    assert meta["dry_run"] is True
    assert (meta["bars_to_withdraw"], meta["bars_withdrawn"]) == (LEGACY, 0)
    assert "| dxy | 300 |" in meta["by_source"]
    assert state(legacy) == before


def test_the_real_run_soft_deletes_exactly_the_legacy_rows_and_history_keeps_them(legacy,
                                                                                   instance):
    expected = legacy.execute(
        "SELECT id, ts_utc, open, high, low, close FROM derived_data_bars WHERE "
        "canonical_symbol = 'DXY' AND timeframe = '1m' AND deleted_at IS NULL ORDER BY id"
    ).fetchall()
    untouched = legacy.execute(
        "SELECT md5(string_agg(d::text, '|' ORDER BY d.id)) FROM derived_data_bars d WHERE NOT "
        "(canonical_symbol = 'DXY' AND timeframe = '1m' AND deleted_at IS NULL)").fetchone()
    legacy.rollback()
    result = launch(instance, "legacy_cleanup", symbol="DXY", timeframe="1m", dry_run=False)
    assert result.success
    meta = output_metadata(result, "legacy_cleanup")
    assert (meta["bars_withdrawn"], meta["undo_with_cleanup_run_id"]) == (LEGACY, result.run_id)

    withdrawn = legacy.execute(
        "SELECT id, ts_utc, open, high, low, close FROM derived_data_bars WHERE "
        "canonical_symbol = 'DXY' AND timeframe = '1m' AND deleted_at > %s ORDER BY id",
        (BEFORE,)).fetchall()
    assert withdrawn == expected  # exactly those, values kept
    assert active(legacy, "DXY", "1m") == 0
    assert legacy.execute(
        "SELECT md5(string_agg(d::text, '|' ORDER BY d.id)) FROM derived_data_bars d WHERE id "
        "<> ALL(%s)", ([r[0] for r in expected],)).fetchone() == untouched
    # every withdrawn version in the history, under this run, readable as it stood before
    revisions = legacy.execute(
        "SELECT bar_id, ts_utc, open, high, low, close FROM derived_bar_revisions WHERE "
        "reason = 'legacy_cleanup' AND run_id = %s AND change = 'withdrawn' ORDER BY bar_id",
        (result.run_id,)).fetchall()
    assert revisions == expected
    as_of = legacy.execute("SELECT close, valid_from FROM agg_bar_as_of('DXY', '1m', %s, %s)",
                           (T0, BEFORE + timedelta(days=1))).fetchone()
    assert as_of == (expected[0][5], BEFORE)
    assert legacy.execute("SELECT count(*) FROM agg_bar_as_of('DXY', '1m', %s, now())",
                          (T0,)).fetchone()[0] == 0
    # run again: nothing left to withdraw
    again = launch(instance, "legacy_cleanup", symbol="DXY", dry_run=False)
    assert output_metadata(again, "legacy_cleanup")["bars_withdrawn"] == 0


@pytest.mark.parametrize("timeframe", ["5m", "1h", "15m", "4h", "1d"])
def test_timeframes_the_ladder_produces_are_refused(legacy, instance, timeframe):
    before = state(legacy)
    result = launch(instance, "legacy_cleanup", symbol="DXY", timeframe=timeframe,
                    dry_run=False)
    assert not result.success
    [failure] = [e for e in result.all_events if e.is_step_failure]
    assert "produced by the ladder" in failure.step_failure_data.error.message
    assert state(legacy) == before


def test_the_undo_brings_the_rows_back_but_never_over_an_active_bar(legacy, instance):
    cleanup = launch(instance, "legacy_cleanup", symbol="DXY", dry_run=False)
    run_id = cleanup.run_id
    # the pipeline's synthetic DXY now holds one of the slots (an active bar of that slot)
    taken = T0 + timedelta(minutes=7)
    insert_derived(legacy, "DXY", "1m", taken, 1, source="synthetic")
    legacy.commit()
    before = state(legacy)
    dry = launch(instance, "legacy_cleanup_undo", cleanup_run_id=run_id)
    meta = output_metadata(dry, "legacy_cleanup_undo")
    assert (meta["bars_to_restore"], meta["bars_restored"], meta["refused_slots"]) == (
        LEGACY - 1, 0, 1)
    assert state(legacy) == before

    undo = launch(instance, "legacy_cleanup_undo", cleanup_run_id=run_id, dry_run=False)
    meta = output_metadata(undo, "legacy_cleanup_undo")
    assert (meta["bars_restored"], meta["refused_slots"]) == (LEGACY - 1, 1)
    assert taken.strftime("%Y-%m-%d %H:%M") in meta["refused"]
    assert active(legacy, "DXY", "1m") == LEGACY  # 299 restored + the synthetic bar
    assert legacy.execute("SELECT source FROM derived_data_bars WHERE canonical_symbol = 'DXY' "
                          "AND timeframe = '1m' AND ts_utc = %s AND deleted_at IS NULL",
                          (taken,)).fetchone() == ("synthetic",)
    # the bars withdrawn before (not by this run) stay withdrawn; an undo twice restores nothing
    assert legacy.execute("SELECT count(*) FROM derived_data_bars WHERE canonical_symbol = "
                          "'DXY' AND ts_utc < %s AND deleted_at IS NULL", (T0,)).fetchone()[0] == 0
    twice = launch(instance, "legacy_cleanup_undo", cleanup_run_id=run_id, dry_run=False)
    assert output_metadata(twice, "legacy_cleanup_undo")["bars_restored"] == 0


def refusal(result: dg.ExecuteInProcessResult) -> str:
    assert not result.success
    [failure] = [e for e in result.all_events if e.is_step_failure]
    return failure.step_failure_data.error.message


@pytest.mark.parametrize(("config", "expected"), [
    ({"symbol": "NOSUCH"}, "unknown symbol 'NOSUCH': not in the registry"),
    ({"symbol": "dxy", "dry_run": False}, "unknown symbol 'dxy': not in the registry"),
    ({"symbol": "DXY", "timeframe": "7m"}, "DXY has no '7m' bars in derived_data_bars"),
    ({"symbol": "EURUSD", "timeframe": "1M", "dry_run": False},
     "EURUSD has no '1M' bars in derived_data_bars"),
])
def test_unknown_symbols_and_timeframes_are_refused_not_counted_as_nothing(
        legacy, instance, config, expected):
    """Protects the clean-up from a typo reading as "0 bars to withdraw" (green): a symbol
    not in the registry, or a timeframe of which the symbol never had a bar, is refused by
    name, and nothing changes. A clean-up run again (only withdrawn bars left) stays a
    green 0, as the test above shows."""
    before = state(legacy)
    message = refusal(launch(instance, "legacy_cleanup", **config))
    assert expected in message and "nothing changed" in message
    assert state(legacy) == before


def test_the_undo_of_a_run_that_withdrew_nothing_is_refused(legacy, instance):
    """Protects the undo from a wrong run id reading as "0 restored" (green): a dry run's id
    or an unknown one is refused by name; an undo done twice stays a green 0 (above)."""
    dry = launch(instance, "legacy_cleanup", symbol="DXY")
    assert dry.success
    before = state(legacy)
    for run_id in (dry.run_id, "no-such-run"):
        message = refusal(launch(instance, "legacy_cleanup_undo", cleanup_run_id=run_id,
                                 dry_run=False))
        assert f"run '{run_id}' withdrew no legacy bars" in message
    assert state(legacy) == before
