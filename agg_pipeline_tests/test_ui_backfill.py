"""Backfills an operator starts from the UI, on a real instance and a real database (issue 21).

- `backfill_bars` (Jobs > backfill_bars > Launchpad, the README's path): one run whose op runs
  one aggregate_bars run over the whole symbol x day rectangle, every partition materialised
  with its own counts. The UI hands the launchpad's config to the run queue; here the same job
  runs with the same config in process.
- Dagster's asset backfill ("Materialize…" > "Launch backfill"), created as the UI's
  launchPartitionBackfill does (PartitionBackfill.from_asset_partitions, add_backfill) and
  driven by the backfill daemon's own iteration over the project's code location: its runs
  follow the backfill policy per key range, and Dagster 1.13 cuts a symbol x day selection
  along the dimension with fewer distinct keys (here 2 days < 3 symbols: one run per day).
"""

import logging
import time
from datetime import timedelta

import dagster as dg
import pytest
from dagster._core.execution.backfill import BulkActionStatus, PartitionBackfill
from dagster._core.test_utils import create_test_daemon_workspace_context
from dagster._core.workspace.load_target import ModuleTarget
from dagster._daemon.backfill import execute_backfill_iteration
from dagster._daemon.run_coordinator.queued_run_coordinator_daemon import (
    QueuedRunCoordinatorDaemon,
)

from agg_pipeline.definitions import defs
from agg_pipeline.defs.backfill_job import JOB_NAME, OP_NAME
from agg_pipeline.defs.partitions import SYMBOLS_PARTITIONS_NAME, partition_key
from agg_pipeline.defs.requests import IN_FLIGHT
from agg_pipeline.defs.tags import LAUNCHED_BY_TAG, RANGE_END_TAG, RANGE_START_TAG, REASON_TAG
from agg_pipeline.engine.reasons import Reason
from agg_pipeline_tests.helpers import T0, add_symbol, insert_bars, minute_bars, sync, wait_for

SYMBOLS = ("EURUSD", "GBPUSD", "USDJPY")
DAYS = (T0.date(), T0.date() + timedelta(days=1))
ASSETS = ("bars_5m", "bars_1h")
BARS_PER_DAY = {"bars_5m": 288, "bars_1h": 24}


@pytest.fixture
def three_symbols(db, instance):
    for symbol in SYMBOLS:
        add_symbol(db, symbol)
    sync(db)
    for symbol in SYMBOLS:
        insert_bars(db, symbol, minute_bars(T0, 2 * 24 * 60))
    db.commit()
    instance.add_dynamic_partitions(SYMBOLS_PARTITIONS_NAME, list(SYMBOLS))
    return db


def launchpad(instance, **config):
    """The launchpad's `ops: backfill_bars_op: config: ...`, launched."""
    return defs.resolve_job_def(JOB_NAME).execute_in_process(
        instance=instance, run_config={"ops": {OP_NAME: {"config": config}}},
        raise_on_error=False)


def partition_counts(instance, asset: str) -> dict[str, int]:
    """Each partition's newest materialisation's bars_inserted."""
    events = instance.fetch_materializations(dg.AssetKey(asset), limit=1000).records
    newest: dict[str, int] = {}
    for record in sorted(events, key=lambda r: r.storage_id):
        m = record.asset_materialization
        newest[m.partition] = m.metadata["bars_inserted"].value
    return newest


def all_keys() -> set[str]:
    return {str(partition_key(s, d)) for s in SYMBOLS for d in DAYS}


def active_counts(db) -> dict[tuple[str, str], int]:
    rows = db.execute("SELECT canonical_symbol, timeframe, count(*) FROM derived_data_bars "
                      "WHERE deleted_at IS NULL GROUP BY 1, 2").fetchall()
    db.commit()
    return {(symbol, tf): n for symbol, tf, n in rows}


def test_launchpad_backfill_is_one_run_over_every_symbol_and_day(three_symbols, instance):
    result = launchpad(instance, first_day=str(DAYS[0]), last_day=str(DAYS[1]))
    assert result.success

    # one aggregate_bars run over the whole rectangle, linked to the launchpad's run
    runs = instance.get_runs(dg.RunsFilter(tags={LAUNCHED_BY_TAG: result.run_id}))
    assert [(r.job_name, r.status) for r in runs] == [("aggregate_bars",
                                                       dg.DagsterRunStatus.SUCCESS)]
    [run] = runs
    assert Reason.from_tag(run.tags[REASON_TAG]) is Reason.UI_BACKFILL
    assert run.tags[RANGE_START_TAG] == str(partition_key(SYMBOLS[0], DAYS[0]))
    assert run.tags[RANGE_END_TAG] == str(partition_key(SYMBOLS[-1], DAYS[1]))
    assert len(instance.get_runs()) == 2  # the launchpad's run and that one

    # every partition of both assets has its own day's counts
    for asset in ASSETS:
        assert partition_counts(instance, asset) == dict.fromkeys(all_keys(),
                                                                   BARS_PER_DAY[asset])
    assert active_counts(three_symbols) == {
        (s, tf): 2 * n for s in SYMBOLS for tf, n in (("5m", 288), ("1h", 24))}

    [output] = [e for e in result.all_node_events if e.event_type_value == "STEP_OUTPUT"]
    text = output.step_output_data.metadata["summary"].value
    assert text.startswith(f"backfill {','.join(SYMBOLS)} {DAYS[0]}..{DAYS[1]}: 1 run succeeded")
    assert text.endswith("5m: 1,728 new; 1h: 144 new"), text

    # again: nothing changes, one more run
    again = launchpad(instance, first_day=str(DAYS[1]), symbols=["GBPUSD"], timeframes=["5m"])
    assert again.success
    [output] = [e for e in again.all_node_events if e.event_type_value == "STEP_OUTPUT"]
    assert output.step_output_data.metadata["summary"].value.endswith("5m: 288 unchanged")


def test_launchpad_backfill_refuses_what_it_cannot_do(three_symbols, instance):
    for config, words in (
        ({"first_day": str(DAYS[0]), "symbols": ["NOPE"]}, "not in the `symbols` partitions"),
        ({"first_day": "2025-07-08", "last_day": "2025-07-07"}, "is before FIRST_DAY"),
        ({"first_day": "07/07/2025"}, "YYYY-MM-DD expected"),
        ({}, "YYYY-MM-DD expected, e.g. first_day"),  # the launchpad as it opens
        ({"first_day": str(DAYS[0]), "timeframes": ["7m"]}, "unknown target timeframe '7m'"),
    ):
        result = launchpad(instance, **config)
        assert not result.success
        [failure] = [e for e in result.all_node_events if e.is_step_failure]
        assert words in failure.step_failure_data.user_failure_data.description, config
    assert [r.job_name for r in instance.get_runs()] == [JOB_NAME] * 5  # no aggregate_bars run


def test_asset_backfill_through_the_daemon_runs_per_key_range(three_symbols, instance):
    keys = sorted(all_keys())
    with create_test_daemon_workspace_context(
        ModuleTarget(module_name="agg_pipeline.definitions", attribute="defs",
                     working_directory=None, location_name="agg_pipeline"),
        instance,
    ) as workspace_context:
        asset_graph = workspace_context.create_request_context().asset_graph
        backfill = PartitionBackfill.from_asset_partitions(
            backfill_id="uibackfill", asset_graph=asset_graph, partition_names=keys,
            asset_selection=[dg.AssetKey(a) for a in ASSETS], backfill_timestamp=time.time(),
            tags={"dagster/from_ui": "true"}, dynamic_partitions_store=instance,
            all_partitions=False, title=None, description=None, run_config=None)
        instance.add_backfill(backfill)
        logger = logging.getLogger("test_ui_backfill")
        queue = QueuedRunCoordinatorDaemon(interval_seconds=1)
        deadline = time.monotonic() + 180
        # the daemons' loops: the backfill's iteration requests the runs, the run queue's
        # launches them (each in its own process), a later backfill iteration sees them done
        while (instance.get_backfill("uibackfill").status == BulkActionStatus.REQUESTED
               and time.monotonic() < deadline):
            list(execute_backfill_iteration(workspace_context, logger))
            list(queue.run_iteration(workspace_context))
            wait_for(lambda: not instance.get_runs(dg.RunsFilter(statuses=IN_FLIGHT)), 120,
                     "the backfill's runs to end")
    assert instance.get_backfill("uibackfill").status == BulkActionStatus.COMPLETED_SUCCESS
    runs = instance.get_runs(dg.RunsFilter(tags={"dagster/backfill": "uibackfill"}))
    # 3 symbols x 2 days: one run per day, each over the three symbols (a range along the
    # dimension with fewer keys); 3 symbols x 5 days would be one run per symbol
    assert sorted((r.tags[RANGE_START_TAG], r.tags[RANGE_END_TAG]) for r in runs) == [
        (str(partition_key(SYMBOLS[0], d)), str(partition_key(SYMBOLS[-1], d))) for d in DAYS]
    assert {r.status for r in runs} == {dg.DagsterRunStatus.SUCCESS}
    for asset in ASSETS:
        assert partition_counts(instance, asset) == dict.fromkeys(all_keys(),
                                                                   BARS_PER_DAY[asset])
