"""Asset checks through Dagster: each fails on a crafted bad state and passes on a healthy one,
with the offenders named in its metadata."""

import asyncio
from datetime import UTC, datetime, timedelta

import dagster as dg
import pytest

from agg_pipeline.definitions import defs
from agg_pipeline.defs.assets import AS_OF_TAG, bars_1m, derived_bars_assets
from agg_pipeline.defs.checks import all_checks
from agg_pipeline.defs.partitions import (
    RANGE_END_TAG,
    RANGE_START_TAG,
    SYMBOLS_PARTITIONS_NAME,
    partition_key,
    range_tags,
)
from agg_pipeline.engine import health
from agg_pipeline_tests.helpers import add_symbol, insert_bars, minute_bars, sync

NOW = datetime.now(UTC).replace(second=0, microsecond=0)
START = (NOW - timedelta(hours=3)).replace(minute=0)
# data ends one minute before a 5-minute boundary that is at least 2 minutes old, so its
# last window is complete and final
END = NOW - timedelta(minutes=2) - timedelta(minutes=(NOW - timedelta(minutes=2)).minute % 5)


def run_checks(instance, timeframe="5m", tags=None) -> dict[str, dg.AssetCheckEvaluation]:
    """Execute the checks of one asset on their own (as the UI's "Execute checks")."""
    result = dg.materialize(
        [bars_1m, *derived_bars_assets, *all_checks], instance=instance,
        selection=dg.AssetSelection.checks_for_assets(f"bars_{timeframe}"),
        resources=defs.resources, tags=tags or {}, raise_on_error=False)
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


def offenders(evaluation: dg.AssetCheckEvaluation) -> list[dict]:
    value = evaluation.metadata.get("offenders")
    return value.value if value else []


def run_rectangle(instance) -> dg.ExecuteInProcessResult:
    """One run over the rectangle DXY..EURUSD x START..NOW, as a UI backfill would launch it."""
    tags = {RANGE_START_TAG: str(partition_key("DXY", START.date())),
            RANGE_END_TAG: str(partition_key("EURUSD", NOW.date()))}
    return defs.resolve_job_def("aggregate_bars").execute_in_process(
        instance=instance, tags=tags,
        asset_selection=[dg.AssetKey("bars_5m"), dg.AssetKey("bars_1h")])


@pytest.fixture
def healthy(db, instance):
    """EURUSD and DXY with three hours of live data, built by a real run (checks included)."""
    for symbol in ("EURUSD", "DXY"):
        add_symbol(db, symbol)
        insert_bars(db, symbol, minute_bars(START, int((END - START).total_seconds() // 60)))
    sync(db)
    db.execute("UPDATE data_agg_state SET last_agg_bar_ts_utc = %s", (START,))
    db.commit()
    instance.add_dynamic_partitions(SYMBOLS_PARTITIONS_NAME, ["DXY", "EURUSD"])
    result = run_rectangle(instance)
    assert result.success
    checks = result.get_asset_check_evaluations()
    assert len(checks) == 8 + 7 and all(e.passed for e in checks), checks
    return db


def test_every_check_passes_on_a_healthy_state(healthy, instance):
    for timeframe, count in (("5m", 8), ("1h", 7)):  # no_stray_source_rows: on bars_5m only
        results = run_checks(instance, timeframe)
        assert len(results) == count
        failing = {name: e.metadata for name, e in results.items() if not e.passed}
        assert failing == {}


def test_cursor_at_end_of_newest_window_is_healthy_but_ahead_or_null_fails(healthy, instance):
    # the cursor sits at the END of the window holding the newest row: the seed's view
    # called this AHEAD; it is the healthy steady state
    newest, cursor = healthy.execute(
        "SELECT max(ts_utc), (SELECT last_agg_bar_ts_utc FROM data_agg_state WHERE "
        "canonical_symbol = 'EURUSD' AND timeframe = '5m') FROM data_bars "
        "WHERE canonical_symbol = 'EURUSD'").fetchone()
    assert newest == END - timedelta(minutes=1) and cursor == END
    assert run_checks(instance)["cursor_not_ahead"].passed

    healthy.execute("UPDATE data_agg_state SET last_agg_bar_ts_utc = last_agg_bar_ts_utc + "
                    "interval '10 minutes' WHERE canonical_symbol = 'EURUSD' AND timeframe = '5m'")
    healthy.execute("UPDATE data_agg_state SET last_agg_bar_ts_utc = NULL "
                    "WHERE canonical_symbol = 'DXY' AND timeframe = '5m'")
    healthy.commit()
    evaluation = run_checks(instance)["cursor_not_ahead"]
    assert not evaluation.passed and evaluation.severity == dg.AssetCheckSeverity.ERROR
    assert {(o["canonical_symbol"], o["cursor_status"]) for o in offenders(evaluation)} == {
        ("EURUSD", "AHEAD"), ("DXY", "NULL")}


def test_ohlc_sane_names_impossible_bars(healthy, instance):
    healthy.execute("UPDATE derived_data_bars SET high = open - 0.01 WHERE canonical_symbol = "
                    "'DXY' AND timeframe = '5m' AND ts_utc = %s", (START + timedelta(minutes=10),))
    healthy.execute("UPDATE derived_data_bars SET low = 'NaN' WHERE canonical_symbol = "
                    "'EURUSD' AND timeframe = '5m' AND ts_utc = %s", (START,))
    healthy.commit()
    evaluation = run_checks(instance)["ohlc_sane"]
    assert not evaluation.passed
    assert evaluation.metadata["violations"].value == 2
    assert {o["canonical_symbol"] for o in offenders(evaluation)} == {"DXY", "EURUSD"}


def test_matches_source_lists_tampered_and_missing_windows(healthy, instance):
    tampered = START + timedelta(minutes=20)
    healthy.execute("UPDATE derived_data_bars SET close = close + 1 WHERE canonical_symbol = "
                    "'EURUSD' AND timeframe = '5m' AND ts_utc = %s", (tampered,))
    healthy.execute("DELETE FROM derived_data_bars WHERE canonical_symbol = 'DXY' "
                    "AND timeframe = '5m' AND ts_utc = %s", (START,))
    healthy.commit()
    evaluation = run_checks(instance)["matches_source"]
    assert not evaluation.passed and evaluation.metadata["mismatched_windows"].value == 2
    found = {(o["symbol"], o["ts_utc"][:16], o["problem"]) for o in offenders(evaluation)}
    assert found == {("EURUSD", tampered.isoformat()[:16], "differs"),
                     ("DXY", START.isoformat()[:16], "missing")}
    # the recomputation was rolled back: the bad bar is still there, nothing was written
    still_missing = healthy.execute(
        "SELECT count(*) FROM derived_data_bars WHERE canonical_symbol = 'DXY' "
        "AND timeframe = '5m' AND ts_utc = %s", (START,)).fetchone()[0]
    assert still_missing == 0


def test_matches_source_counts_late_data_as_pending_and_silent_edits_as_mismatches(
        healthy, instance):
    """Protects matches_source under a live feed: a correction that landed after the run
    (a new ingested_at changes its day's fingerprint), or one the change capture recorded
    (a live run reads from its cursor and leaves it to the late-data sensor), is late data
    that sensor will re-materialise, so the blocking check passes and counts it; the same
    edit made without touching ingested_at and with the capture bypassed is a mismatch and
    fails."""
    corrected = START + timedelta(minutes=42)
    healthy.execute("UPDATE data_bars SET high = high + 1, ingested_at = now() "
                    "WHERE canonical_symbol = 'EURUSD' AND ts_utc = %s", (corrected,))
    healthy.commit()
    evaluation = run_checks(instance)["matches_source"]
    assert evaluation.passed, offenders(evaluation)
    assert evaluation.metadata["pending_late_data_windows"].value == 1

    silent = START + timedelta(minutes=61)
    healthy.execute("ALTER TABLE data_bars DISABLE TRIGGER agg_capture_source_update")
    healthy.execute("UPDATE data_bars SET low = low - 0.5 WHERE canonical_symbol = 'DXY' "
                    "AND ts_utc = %s", (silent,))
    healthy.execute("ALTER TABLE data_bars ENABLE ALWAYS TRIGGER agg_capture_source_update")
    healthy.commit()
    evaluation = run_checks(instance)["matches_source"]
    assert not evaluation.passed
    assert [(o["symbol"], o["ts_utc"][:16], o["problem"]) for o in offenders(evaluation)] == [
        ("DXY", (START + timedelta(minutes=60)).isoformat()[:16], "differs")]
    assert evaluation.metadata["pending_late_data_windows"].value == 1


def test_no_bars_before_start(healthy, instance):
    healthy.execute("UPDATE data_agg_state SET agg_start_utc = %s WHERE canonical_symbol = "
                    "'EURUSD'", (START + timedelta(hours=1),))
    healthy.commit()
    evaluation = run_checks(instance)["no_bars_before_start"]
    assert not evaluation.passed
    assert [(o["canonical_symbol"], o["bars"]) for o in offenders(evaluation)] == [("EURUSD", 12)]


def test_stray_source_rows_are_counted_shown_and_warned(healthy, instance):
    """Rows of a timeframe the ladder never reads (an ingester writing 5m rows into
    data_bars) are not aggregated and not lost: the WARN check names them, the health view
    counts them on the task that reads data_bars."""
    rows = minute_bars(START, 3, vol=2.0)
    for i, row in enumerate(rows):
        row["ts_utc"] = START + timedelta(minutes=5 * i)
    insert_bars(healthy, "DXY", rows, timeframe="5m")
    healthy.commit()
    evaluation = run_checks(instance, "5m")["no_stray_source_rows"]
    assert not evaluation.passed and evaluation.severity == dg.AssetCheckSeverity.WARN
    assert evaluation.metadata["stray_rows"].value == 3
    assert [(o["canonical_symbol"], o["timeframe"], o["rows"]) for o in offenders(evaluation)
            ] == [("DXY", "5m", 3)]
    stray = {(r["canonical_symbol"], r["timeframe"]): r["stray_source_rows"]
             for r in health.frontier_health(healthy)}
    assert stray == {("DXY", "5m"): 3, ("DXY", "1h"): None, ("EURUSD", "5m"): 0,
                     ("EURUSD", "1h"): None}
    # and the bars are still exactly what the 1m rows give
    assert run_checks(instance, "5m")["matches_source"].passed


def test_no_failed_tasks(healthy, instance):
    healthy.execute("UPDATE data_agg_state SET status = 'hard_failed', hard_fail_streak = 3 "
                    "WHERE canonical_symbol = 'DXY' AND timeframe = '1h'")
    healthy.commit()
    assert run_checks(instance, "5m")["no_failed_tasks"].passed
    evaluation = run_checks(instance, "1h")["no_failed_tasks"]
    assert not evaluation.passed
    assert [o["canonical_symbol"] for o in offenders(evaluation)] == ["DXY"]


def test_freshness_flags_pending_work_not_a_closed_market(healthy, instance):
    # nothing pending, last success long ago: a closed market, not stale
    healthy.execute("UPDATE data_agg_state SET last_successful_at_utc = now() - interval '5 hours'")
    healthy.commit()
    assert run_checks(instance)["freshness"].passed
    # pending work for EURUSD: its cursor is an hour behind
    healthy.execute("UPDATE data_agg_state SET last_agg_bar_ts_utc = last_agg_bar_ts_utc - "
                    "interval '1 hour' WHERE canonical_symbol = 'EURUSD' AND timeframe = '5m'")
    healthy.commit()
    evaluation = run_checks(instance)["freshness"]
    assert not evaluation.passed and evaluation.severity == dg.AssetCheckSeverity.WARN
    assert [o["canonical_symbol"] for o in offenders(evaluation)] == ["EURUSD"]
    assert "lag" in offenders(evaluation)[0]["why"]


def test_quality_warns_on_many_poor_bars(healthy, instance):
    healthy.execute("UPDATE derived_data_bars SET quality_score = 0 WHERE canonical_symbol = "
                    "'DXY' AND timeframe = '5m' AND extract(minute FROM ts_utc) < 30")
    healthy.commit()
    evaluation = run_checks(instance)["quality"]
    assert not evaluation.passed and evaluation.severity == dg.AssetCheckSeverity.WARN
    assert [o["canonical_symbol"] for o in offenders(evaluation)] == ["DXY"]


def test_failed_blocking_check_stops_downstream_timeframes(healthy, instance):
    """bars_1h must not build on a bars_5m that failed an ERROR check."""
    healthy.execute("UPDATE data_agg_state SET last_agg_bar_ts_utc = %s WHERE timeframe = '5m' "
                    "AND canonical_symbol = 'EURUSD'", (NOW + timedelta(days=1),))
    healthy.commit()
    job = defs.resolve_job_def("aggregate_bars")
    result = job.execute_in_process(
        instance=instance, raise_on_error=False,
        asset_selection=[dg.AssetKey("bars_5m"), dg.AssetKey("bars_1h")],
        tags={**range_tags("EURUSD", START.date(), NOW.date()), AS_OF_TAG: NOW.isoformat()})
    assert not result.success
    failed = [e for e in result.get_asset_check_evaluations() if not e.passed]
    assert [(e.asset_key.to_user_string(), e.check_name) for e in failed] == [
        ("bars_5m", "cursor_not_ahead")]
    started = {e.step_key for e in result.all_events if e.event_type_value == "STEP_START"}
    assert "bars_5m" in started and "bars_1h" not in started
    assert result.get_step_failure_events()[0].step_key == "bars_5m_checks"


def freshness_states(instance, at: datetime) -> dict[str, str]:
    """One evaluation of Dagster's freshness daemon at the instant `at` (the daemon of
    `dagster-daemon run`, one iteration, on a code server loading the project), and the state
    it records per asset."""
    from dagster._core.test_utils import create_test_daemon_workspace_context, freeze_time
    from dagster._core.workspace.load_target import ModuleTarget
    from dagster._daemon.freshness import FreshnessDaemon

    target = ModuleTarget(module_name="agg_pipeline.definitions", attribute=None,
                          working_directory=None, location_name="agg_pipeline")
    with create_test_daemon_workspace_context(target, instance) as context, freeze_time(at):
        asyncio.run(FreshnessDaemon()._evaluate_assets(context))
    keys = [dg.AssetKey(a.key.path) for a in (bars_1m, *derived_bars_assets)]
    return {key.to_user_string(): record.freshness_state.value
            for key, record in instance.get_freshness_state_records(keys).items()}


def test_native_freshness_policy_passes_after_a_run_and_fails_on_a_missed_deadline(
        healthy, instance):
    """Protects the Dagster-native freshness (FreshnessPolicy.cron on bars_5m and bars_1h,
    AGG_FRESHNESS_CRON): right after a run both are PASS; at a weekday deadline with no
    materialisation in the 30 minutes before it, FAIL (what the UI shows on the asset page).
    Optional timeframes have no policy."""
    materialized = instance.get_latest_materialization_event(dg.AssetKey("bars_5m")).timestamp
    at = datetime.fromtimestamp(materialized, UTC)
    assert freshness_states(instance, at + timedelta(minutes=1)) == {
        "bars_5m": "PASS", "bars_1h": "PASS", "bars_1m": "NOT_APPLICABLE",
        "bars_15m": "NOT_APPLICABLE", "bars_4h": "NOT_APPLICABLE", "bars_1d": "NOT_APPLICABLE"}
    # a Wednesday 10:05 UTC more than a week later: the 10:00 deadline wanted a
    # materialisation after 09:30
    wednesday = (at + timedelta(days=7 + (2 - at.weekday()) % 7)).replace(
        hour=10, minute=5, second=0, microsecond=0)
    states = freshness_states(instance, wednesday)
    assert (states["bars_5m"], states["bars_1h"]) == ("FAIL", "FAIL")


def test_a_range_runs_checks_link_its_materialisation_without_listing_every_partition(
        healthy, instance, monkeypatch):
    """Each check result of a run over a range links the asset's latest materialisation (this
    run's), and finding it does not list every partition key of the asset (Dagster's own path
    does: 5.3 M keys at 10,000 symbols x 526 days; checks.link_to_latest_materialization)."""
    from dagster._core.definitions.partitions.subset.all import AllPartitionsSubset

    listed = []
    every_key = AllPartitionsSubset.get_partition_keys

    def recording(self, *args, **kwargs):
        listed.append(self.partitions_def)
        return every_key(self, *args, **kwargs)

    monkeypatch.setattr(AllPartitionsSubset, "get_partition_keys", recording)
    result = run_rectangle(instance)  # the healthy state's run again
    assert result.success
    evaluations = result.get_asset_check_evaluations()
    assert len(evaluations) == 8 + 7
    assert {e.target_materialization_data.run_id for e in evaluations} == {result.run_id}
    checked = {defs.resolve_assets_def(name).partitions_def for name in ("bars_5m", "bars_1h")}
    assert not [p for p in listed if p in checked]
