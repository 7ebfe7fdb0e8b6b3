"""The production shape end to end (issue 14, item 2): the code location served by its own
code server (`dagster code-server start`, the image's command), `dagster-webserver` and
`dagster-daemon` as separate processes loading deploy/workspace.yaml (a `grpc_server`
entry), Dagster storage and market data on PostgreSQL from URLs in the environment, every
process carrying settings.DAGSTER_PROCESS_ENV (processes.production_env).

The schedule and sensors build a live hour of a seeded symbol; a backfill of two past days
is launched through the webserver's GraphQL; while its run is inside the engine's statement
(held there by an uncommitted bar of the test's, as in test_faults), the code server is
restarted as a deploy does (SIGTERM to its processes, SIGKILL after a grace period, the same
command started again). Nothing may be lost: every run ends succeeded, or failed and retried
with the retry succeeding; no run is left queued or started; the backfill completes; the bars
and cursors equal the oracle's.

Only end results are asserted: the planner (run keys, reasons, how many symbols a run
covers) is not this test's business.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import dagster as dg
import pytest

from agg_pipeline.db import connection
from agg_pipeline.definitions import defs
from agg_pipeline.defs.partitions import SYMBOLS_PARTITIONS_NAME
from agg_pipeline.defs.requests import IN_FLIGHT
from agg_pipeline_tests.helpers import (
    active_bars,
    add_symbol,
    insert_bars,
    minute_bars,
    sync,
    wait_for,
)
from agg_pipeline_tests.processes import (
    DevServer,
    free_port,
    production_env,
    start_code_server,
    start_webserver,
    start_workspace_daemon,
    storage_instance,
)
from agg_pipeline_tests.stored import compare_with_oracle
from agg_pipeline_tests.test_faults import activity, blocked_in_aggregate, held_window

pytestmark = pytest.mark.daemon

SYMBOL = "EURUSD"  # held_window's symbol
HISTORY_HOURS = 4  # of 1m bars on each backfilled day, from 08:00 UTC
BACKFILL_DAYS = 2
DEPLOY_GRACE = 30  # seconds between SIGTERM and SIGKILL (compose's stop_grace_period is longer)
BACKFILL_TERMINAL = {"COMPLETED", "COMPLETED_SUCCESS", "COMPLETED_FAILED", "FAILED", "CANCELED"}

LAUNCH_BACKFILL = """mutation ($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename ... on LaunchBackfillSuccess { backfillId } ... on Error { message } } }"""
BACKFILL_STATUS = """query ($id: String!) { partitionBackfillOrError(backfillId: $id) {
    __typename ... on PartitionBackfill { status numPartitions } ... on Error { message } } }"""


def partition_keys(instance: dg.DagsterInstance, symbol: str, days: list[date]) -> list[str]:
    """The bars assets' partition keys of `symbol` over `days`, whatever the time grain."""
    partitions_def = defs.resolve_assets_def("bars_5m").partitions_def
    dimensions = partitions_def.partitions_defs
    (symbols,) = [d for d in dimensions
                  if isinstance(d.partitions_def, dg.DynamicPartitionsDefinition)]
    (time,) = [d for d in dimensions
               if isinstance(d.partitions_def, dg.TimeWindowPartitionsDefinition)]
    assert symbol in instance.get_dynamic_partitions(symbols.partitions_def.name)
    first = datetime.combine(min(days), datetime.min.time(), tzinfo=UTC)
    end = datetime.combine(max(days) + timedelta(days=1), datetime.min.time(), tzinfo=UTC)
    periods = time.partitions_def.get_partition_keys_in_time_window(dg.TimeWindow(first, end))
    return [str(dg.MultiPartitionKey({symbols.name: symbol, time.name: period}))
            for period in periods]


def launch_backfill(webserver: DevServer, keys: list[str]) -> str:
    params = {"assetSelection": [{"path": ["bars_5m"]}, {"path": ["bars_1h"]}],
              "partitionNames": keys, "fromFailure": False}
    result = webserver.graphql(LAUNCH_BACKFILL, {"params": params})["launchPartitionBackfill"]
    assert result["__typename"] == "LaunchBackfillSuccess", result
    return result["backfillId"]


def backfill_status(webserver: DevServer, backfill_id: str) -> str:
    found = webserver.graphql(BACKFILL_STATUS, {"id": backfill_id})["partitionBackfillOrError"]
    assert found["__typename"] == "PartitionBackfill", found
    return found["status"]


def run_table(instance: dg.DagsterInstance) -> list[tuple]:
    return [(r.dagster_run.run_id[:8], r.dagster_run.status.value,
             r.dagster_run.tags.get("dagster/backfill", ""),
             r.dagster_run.tags.get("dagster/parent_run_id", "")[:8])
            for r in instance.get_run_records()]


def test_code_server_deploy_mid_run_loses_nothing(db, database_url, runtime_url, make_database,
                                                  tmp_path):
    now = datetime.now(UTC)
    live_hour = (now - timedelta(minutes=2)).replace(minute=0, second=0, microsecond=0) \
        - timedelta(hours=1)
    days = [live_hour.date() - timedelta(days=9 - i) for i in range(BACKFILL_DAYS)]
    add_symbol(db, SYMBOL)
    sync(db)
    # the live path starts at the live hour; the days before it are the backfill's
    db.execute("UPDATE data_agg_state SET last_agg_bar_ts_utc = %s", (live_hour,))
    for day in days:
        morning = datetime.combine(day, datetime.min.time(), tzinfo=UTC) + timedelta(hours=8)
        insert_bars(db, SYMBOL, minute_bars(morning, HISTORY_HOURS * 60, skip=(7, 61, 62)))
    insert_bars(db, SYMBOL, minute_bars(live_hour, 60, price=1.2))
    db.commit()
    held = datetime.combine(days[0], datetime.min.time(), tzinfo=UTC) + timedelta(hours=10)

    storage_url = make_database("agg_prod_dagster")
    with storage_instance(storage_url, tmp_path / "setup") as setup:
        setup.add_dynamic_partitions(SYMBOLS_PARTITIONS_NAME, [SYMBOL])
        keys = partition_keys(setup, SYMBOL, days)
    # the market-data URL goes to the code server only: the webserver and the daemon never
    # touch market data (sensors, schedule and runs execute in the code server)
    env = production_env(tmp_path, storage_url=storage_url, code_server_port=free_port())
    code_home = tmp_path / "code"
    code_server = start_code_server(code_home, env, market_url=runtime_url)
    webserver = daemon = None
    figures: dict[str, float] = {}
    with storage_instance(storage_url, tmp_path / "watch") as watch, \
            connection.connect(database_url, autocommit=True) as admin:
        def context() -> str:
            return (f"runs: {run_table(watch)}\n{activity(admin)}\n-- daemon\n"
                    f"{daemon.log()[-5000:] if daemon else ''}\n-- code server\n"
                    f"{code_server.log()[-3000:]}")

        try:
            code_server.wait_until_serving()
            webserver = start_webserver(tmp_path, env)
            daemon = start_workspace_daemon(tmp_path, env)
            webserver.wait_until_loaded()

            # 1. the schedule and sensors build the live hour
            def live_bars():
                with connection.connect(database_url) as conn:
                    five, hourly = active_bars(conn, SYMBOL, "5m"), active_bars(conn, SYMBOL, "1h")
                return len(five[five.ts_utc >= live_hour]) == 12 and len(hourly) >= 1
            wait_for(live_bars, 180, "the live hour's 5m and 1h bars", context, interval=1)
            wait_for(lambda: not watch.get_run_records(dg.RunsFilter(statuses=IN_FLIGHT)), 120,
                     "the live runs to finish", context, interval=1)

            # 2. a backfill through GraphQL; its run is held inside the engine's statement
            with held_window(database_url, held) as blocker:
                backfill_id = launch_backfill(webserver, keys)
                wait_for(lambda: blocked_in_aggregate(admin, blocker.info.backend_pid), 180,
                         "the backfill's run to wait inside its aggregate statement", context,
                         interval=1)
                in_flight = watch.get_run_records(dg.RunsFilter(
                    statuses=IN_FLIGHT, tags={"dagster/backfill": backfill_id}))
                assert len(in_flight) == 1, context()
                interrupted = in_flight[0].dagster_run.run_id

                # 3. a deploy (deploy/README.md): the daemon stops, the code server is stopped
                # mid-run (its run worker fails the run), started again, then the daemon
                daemon.stop()
                figures["code server stop s"] = code_server.deploy_stop(grace=DEPLOY_GRACE)
            assert watch.get_run_by_id(interrupted).status == dg.DagsterRunStatus.FAILURE, \
                context()
            code_server = start_code_server(code_home, env, market_url=runtime_url)
            code_server.wait_until_serving()
            daemon = start_workspace_daemon(tmp_path, env)

            # 4. the backfill completes; nothing stays queued or started
            status = wait_for(lambda: (s := backfill_status(webserver, backfill_id))
                              in BACKFILL_TERMINAL and s, 300, "the backfill to complete",
                              context, interval=2)
            wait_for(lambda: not watch.get_run_records(dg.RunsFilter(statuses=IN_FLIGHT)), 240,
                     "every run to finish", context, interval=1)
        finally:
            for process in (daemon, webserver):
                if process is not None:
                    process.stop()
            code_server.deploy_stop()

        records = {r.dagster_run.run_id: r.dagster_run for r in watch.get_run_records()}
        table = run_table(watch)
    assert status == "COMPLETED_SUCCESS", table
    retried_by = {run.tags["dagster/parent_run_id"]: run for run in records.values()
                  if "dagster/parent_run_id" in run.tags}
    for run in records.values():
        assert run.status in (dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE), table
        if run.status == dg.DagsterRunStatus.FAILURE:
            retry = retried_by.get(run.run_id)
            assert retry is not None, f"run {run.run_id} failed and was not retried: {table}"
    # every run group (a run and its retries) ends in a success
    roots = {run.root_run_id or run.run_id for run in records.values()}
    for root in roots:
        group = [r for r in records.values() if (r.root_run_id or r.run_id) == root]
        assert any(r.status == dg.DagsterRunStatus.SUCCESS for r in group), table
    # the deploy cost the interrupted run one retry, which succeeded
    (retry,) = [r for r in records.values() if r.parent_run_id == interrupted]
    assert retry.status == dg.DagsterRunStatus.SUCCESS, table
    with connection.connect(database_url) as conn:
        counts = compare_with_oracle(conn, [SYMBOL], datetime.now(UTC))
    assert counts["5m bars"] == 12 + BACKFILL_DAYS * (HISTORY_HOURS * 12), counts
    print(f"production shape: {len(records)} runs {table}; code server stopped in "
          f"{figures['code server stop s']:.1f} s; bars {counts}")
