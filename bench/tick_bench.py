"""Tick benchmark: the live planner's schedule and sensor ticks at 1,000 symbols' tasks, the
registry sync, and each time grain's partitions at 1,000 symbols x 5 years.

The targets (SPEC, Performance and scale; issues 11 and 14): a sensor or schedule tick well
under a second at 1,000 symbols; on the month grain, 1,000 symbols x 5 years stays under
Dagster's ~100,000 partitions per asset, and the asset's partition status is timed. Per
grain, on the configured server (AGG_DATABASE_URL, else the embedded one):

  set-up   scratch market and Dagster databases; N symbols in the registry, AGG_START_UTC
           5 years back; every symbol's last 2 hours of 1m bars (every minute, ingested a
           minute after they closed); the first --reconcile symbols also the 7 days before,
           materialised with the engine (what the reconciliation re-checks).
  sync     registry_sync_sensor's first tick (2N tasks, N new partitions) with the partitions
           added as the daemon would, then a tick with nothing to change.
  status   month grain only: one run of bars_5m over every symbol x month (the first build
           of 5 years, through Dagster, per-partition metadata and checks included), then
           instance.get_status_by_partition over all of the asset's partitions (the asset
           page's status), cold then warm. The day grain's partitions are only counted.
  ticks    cursors 2 hours back (the steady live state: every symbol has new windows): the
           frontier sensor with work for every symbol; again right after (all claimed); the
           schedule (claimed); the schedule with the claims cleared; the late-data sensor
           (its reconciliation on the symbols with history) with nothing landed, then with a
           late row for each of those symbols; the median of --repeat
           evaluations each, claims cleared before each "with work" one. A tick here is the
           sensor function as the daemon's code server evaluates it (its connection, the
           Dagster queries, the planner, building the run requests), not the daemon's own
           run creation.
  events   what reporting the frontier sensor's bars_1m observations costs the daemon: the
           bound of a tick (25) and one per symbol (N, the sensor before the planner).

--storage-runs K measures Dagster's own storage instead (issue 20) and nothing else: day grain,
N symbols' last 2 hours, K live runs of bars_5m over every symbol's today (what a live tick
runs between hours) and then one of bars_5m + bars_1h (the tick completing an hour; each run
re-reads the 2 hours, cursors set back: a live run's partitions, metadata and checks), the
storage's size after each; then every run but the last aged 10 days and
dagster_storage_retention_sensor's pass (apply_retention, 7 / 30 days), and the size after it,
before and after VACUUM FULL of the scratch storage (in production autovacuum makes the space
reusable: the files stop growing rather than shrink).

By default both grains run, one after the other in this process, each with its own
Definitions (build_definitions of a PipelineConfig with that grain).
Everything lives in uniquely named scratch databases, dropped at the end unless --keep. A
report: the exit code is 0 whether or not a target is met. Run from the checkout:

    .venv/bin/python bench/tick_bench.py [--symbols 1000] [--grain day|month|both]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

from agg_pipeline import settings
from agg_pipeline.db import connection, migrations, queries
from bench.common import Scratch, load_note, log, server_url, terminate_on_sigterm

TICK_TARGET_S = 1.0
PARTITIONS_CEILING = 100_000
YEARS = 5
LIVE_HOURS = 2
RECONCILE_DAYS = 7


def timed(function: Callable[[], object]) -> tuple[float, object]:
    started = time.perf_counter()
    result = function()
    return time.perf_counter() - started, result


def median_of(repeat: int, function: Callable[[], object],
              before: Callable[[], None] = lambda: None) -> tuple[float, object]:
    """Median seconds of `repeat` calls (each after `before`), and the last result."""
    times, result = [], None
    for _ in range(repeat):
        before()
        seconds, result = timed(function)
        times.append(seconds)
    return statistics.median(times), result


# ----------------------------------------------------------------------------- set-up


def seed(url: str, symbols: list[str], reconcile: int, now: datetime) -> int:
    """Registry rows, LIVE_HOURS of 1m bars per symbol, RECONCILE_DAYS more for the first
    `reconcile` symbols. Returns the rows written."""
    from agg_pipeline import demo

    migrations.migrate(url)
    end = now.replace(second=0, microsecond=0)
    written = 0
    with connection.connect(url) as conn:
        with conn.transaction():
            demo.ensure_registry(conn, symbols)
        for index, symbol in enumerate(symbols):
            spec = demo.demo_symbol(symbol)
            days = RECONCILE_DAYS if index < reconcile else 0
            start = end - timedelta(days=days, hours=LIVE_HOURS)
            frame = demo.generate_bars(spec, start, end, seed=demo.bar_seed(11, index, start),
                                       missing_fraction=0.0, late_fraction=0.0, now=end,
                                       trading=demo.every_minute)
            with conn.transaction():
                written += demo.write_bars(conn, symbol, frame, spec.has_volume)
        conn.autocommit = True
        conn.execute("VACUUM ANALYZE data_bars")
    return written


def set_cursors(url: str, cursor: datetime) -> None:
    with connection.connect(url) as conn:
        conn.execute("UPDATE data_agg_state SET last_agg_bar_ts_utc = %s", (cursor,))
        conn.commit()


def clear_claims(url: str) -> None:
    with connection.connect(url) as conn:
        conn.execute("DELETE FROM data_agg_plan_claims")
        conn.commit()


def materialise_history(url: str, symbols: list[str], start: datetime) -> float:
    """The reconciliation's symbols brought up to date by the engine (5m, then 1h)."""
    from agg_pipeline.engine import aggregate as engine

    started = time.perf_counter()
    with connection.connect(url) as conn:
        for symbol in symbols:
            for timeframe in ("5m", "1h"):
                engine.aggregate(conn, symbol, timeframe, start, start + timedelta(days=30))
                conn.commit()
    return time.perf_counter() - started


def land_late_rows(url: str, symbols: list[str], now: datetime) -> int:
    """A correction of one materialised minute per symbol, ingested now (an upsert: the
    change capture records it too)."""
    with connection.connect(url) as conn:
        count = conn.execute(
            "UPDATE data_bars SET high = high * 1.0001, ingested_at = %s "
            "WHERE canonical_symbol = ANY(%s) AND timeframe = '1m' AND ts_utc = %s",
            (now, symbols, (now - timedelta(hours=1)).replace(second=0, microsecond=0)),
        ).rowcount
        conn.commit()
    return count


# ----------------------------------------------------------------------------- one grain


def run_grain(args: argparse.Namespace, scratch: Scratch, grain: str) -> dict:
    """Everything measured on one time grain, with the Definitions built for it."""
    import dataclasses

    import dagster as dg

    from agg_pipeline.defs.config import PipelineConfig
    from agg_pipeline.defs.factory import build_parts
    from agg_pipeline.defs.partitions import RANGE_END_TAG, RANGE_START_TAG, SYMBOLS_PARTITIONS_NAME
    from agg_pipeline.defs.resources import MarketDatabase
    from agg_pipeline.defs.sensors import OBSERVATIONS_PER_TICK, registry_sync_sensor
    from agg_pipeline.engine import planning
    from agg_pipeline_tests.processes import storage_instance

    parts = build_parts(dataclasses.replace(PipelineConfig.from_env(), time_grain=grain))
    defs, split_key = parts.definitions(), parts.config.partitions.split_key
    catchup_schedule = parts.catchup_schedule
    late_data_sensor, source_frontier_sensor = parts.late_data_sensor, parts.source_frontier_sensor

    figures: dict = {"grain": grain, "symbols": args.symbols}
    market_url = scratch.database("market")
    storage_url = scratch.database("dagster")
    os.environ[settings.DATABASE_URL_VAR] = market_url  # what the sensors' resource reads
    symbols = [f"T{i:04d}" for i in range(args.symbols)]
    now = datetime.now(UTC)
    seconds, rows = timed(lambda: seed(market_url, symbols, args.reconcile, now))
    figures["seed"] = {"rows": rows, "s": round(seconds, 1)}
    log(f"{grain}: seeded {rows:,} 1m bars for {len(symbols)} symbols in {seconds:.0f} s")
    resources = {"market_db": MarketDatabase()}

    def sensor(function, instance, cursor=None):
        with dg.build_sensor_context(instance=instance, resources=resources,
                                     cursor=cursor) as context:
            return function(context)

    def schedule(instance):
        with dg.build_schedule_context(instance=instance, resources=resources,
                                       scheduled_execution_time=datetime.now(UTC)) as context:
            result = catchup_schedule(context)
        return [] if isinstance(result, dg.SkipReason) else result

    with storage_instance(storage_url, scratch.directory("home")) as instance:
        # registry sync: the first tick creates every task and asks for every partition
        seconds, result = timed(lambda: sensor(registry_sync_sensor, instance))
        [added] = result.dynamic_partitions_requests
        applied, _ = timed(lambda: instance.add_dynamic_partitions(
            SYMBOLS_PARTITIONS_NAME, list(added.partition_keys)))
        steady, _ = median_of(args.repeat, lambda: sensor(registry_sync_sensor, instance))
        figures["sync"] = {"first_s": seconds, "partitions_added_s": applied,
                           "steady_s": steady, "tasks": 2 * len(symbols)}

        # partitions per asset, and (month) their status after a first build
        partitions_def = defs.get_assets_def("bars_5m").partitions_def
        keys = partitions_def.get_partition_keys(dynamic_partitions_store=instance)
        figures["partitions_per_asset"] = len(keys)
        if grain == "month":
            figures["status"] = partition_status(instance, keys, partitions_def)

        # the steady live state, and the reconciliation's history
        cursor = (now - timedelta(hours=LIVE_HOURS)).replace(second=0, microsecond=0)
        cursor -= timedelta(minutes=cursor.minute % 5)
        set_cursors(market_url, cursor)
        history = cursor - timedelta(days=RECONCILE_DAYS)
        figures["history_s"] = materialise_history(market_url, symbols[:args.reconcile], history)
        clear_claims(market_url)

        ticks: dict[str, dict] = {}

        def tick(name: str, function, *, clear: bool, requests=lambda r: r.run_requests):
            seconds, result = median_of(args.repeat, function,
                                        (lambda: clear_claims(market_url)) if clear else
                                        (lambda: None))
            runs = requests(result)
            ticks[name] = {"s": seconds, "runs": len(runs),
                           "symbols": sum(len(rectangle_symbols(r, symbols)) for r in runs)}
            log(f"{grain}: {name}: {seconds * 1000:.0f} ms, {len(runs)} runs")
            return result

        def rectangle_symbols(request, order):
            first = split_key(request.tags[RANGE_START_TAG])[0]
            last = split_key(request.tags[RANGE_END_TAG])[0]
            return order[order.index(first):order.index(last) + 1]

        first = tick("frontier sensor, work for every symbol",
                     lambda: sensor(source_frontier_sensor, instance), clear=True)
        figures["observations_per_tick"] = len(first.asset_events)
        figures["cursor_bytes"] = len(first.cursor or "")
        tick("frontier sensor again (all claimed)",
             lambda: sensor(source_frontier_sensor, instance), clear=False)
        tick("schedule (all claimed)", lambda: schedule(instance), clear=False,
             requests=lambda r: r)
        tick("schedule, work for every symbol", lambda: schedule(instance), clear=True,
             requests=lambda r: r)
        clear_claims(market_url)
        # the rotation starts again at the first symbols: those with 7 days of history
        quiet = json.dumps({"since": json.loads(sensor(late_data_sensor, instance).cursor)[
            "since"], "reconcile_after": None})
        tick(f"late-data sensor, nothing landed ({args.reconcile} symbols x "
             f"{RECONCILE_DAYS} days reconciled)",
             lambda: sensor(late_data_sensor, instance, quiet), clear=True)
        landed = land_late_rows(market_url, symbols[:args.reconcile], datetime.now(UTC))
        tick(f"late-data sensor, a late row for each of {landed} symbols",
             lambda: sensor(late_data_sensor, instance, quiet), clear=True)
        figures["ticks"] = ticks
        figures["claims_after"] = count_claims(market_url)

        # the parts of a tick, measured alone
        parts = {}
        with connection.connect(market_url) as conn:
            as_of = conn.execute("SELECT now()").fetchone()[0]
            parts["task_states (plan_tasks.sql)"], found = median_of(
                args.repeat, lambda: planning.task_states(conn, as_of))
            work = planning.catchup_work(found, roots_only=True,
                                         first_day=settings.default_agg_start().date())
            order = list(instance.get_dynamic_partitions(SYMBOLS_PARTITIONS_NAME))
            parts["get_dynamic_partitions"], _ = median_of(
                args.repeat, lambda: instance.get_dynamic_partitions(SYMBOLS_PARTITIONS_NAME))
            parts["plan_runs (lock, claims, batching)"], _ = median_of(
                args.repeat, lambda: planning.plan_runs(
                    conn, work, requester="bench", runs=planning.RunStates(), symbols=order,
                    riders=found.riders(), alone=found.failing(),
                    limits=planning.Limits(settings.max_runs_per_tick(),
                                           settings.max_partitions_per_run()),
                    period=lambda d: (d, d)),
                lambda: clear_claims(market_url))
            parts[f"reconciliation of {args.reconcile} symbols x {RECONCILE_DAYS} days"], rec = \
                median_of(args.repeat, lambda: planning.reconciliation_work(
                    conn, found, after=None, budget=args.reconcile, days=RECONCILE_DAYS,
                    as_of=as_of, first_day=settings.default_agg_start().date()))
            figures["reconciled_windows"] = rec.windows_checked
            window = {"timeframe": "5m", "start": as_of - timedelta(days=RECONCILE_DAYS),
                      "end": as_of}

            def fingerprints():
                rechecked = symbols[:args.reconcile]
                conn.execute(queries.query("recheck_pending_days"), {
                    "timeframe": window["timeframe"], "symbols": rechecked,
                    "starts": [window["start"]] * len(rechecked),
                    "ends": [window["end"]] * len(rechecked)}).fetchall()
                conn.rollback()

            parts["of which the recorded fingerprints alone"], _ = median_of(args.repeat,
                                                                             fingerprints)
        figures["parts"] = parts
        figures["reread"] = reread_cost(market_url, symbols[0], datetime.now(UTC), args.repeat)

        # reporting bars_1m observations, as the daemon does for a sensor's asset events
        events = {}
        for count in (OBSERVATIONS_PER_TICK, len(symbols)):
            observations = [dg.AssetObservation(
                asset_key="bars_1m", partition=symbol,
                metadata={"frontier": dg.MetadataValue.timestamp(now)})
                for symbol in symbols[:count]]
            events[count], _ = timed(lambda obs=observations: [
                instance.report_runless_asset_event(o) for o in obs])
        figures["observation_events_s"] = events
    return figures


STORAGE_TABLES = ("event_logs", "runs", "run_tags", "asset_event_tags",
                  "asset_check_executions")


def storage_size(storage_url: str) -> dict[str, int]:
    with connection.connect(storage_url, autocommit=True) as conn:
        tables = {name: conn.execute("SELECT pg_total_relation_size(%s)", (name,)).fetchone()[0]
                  for name in STORAGE_TABLES}
        tables["database"] = conn.execute(
            "SELECT pg_database_size(current_database())").fetchone()[0]
        tables["event_rows"] = conn.execute("SELECT count(*) FROM event_logs").fetchone()[0]
    return tables


@contextlib.contextmanager
def live_storage(args: argparse.Namespace, scratch: Scratch, now: datetime, reconcile: int
                 ) -> Iterator[tuple]:
    """The storage modes' set-up: a scratch market with N symbols seeded up to `now` (the
    first `reconcile` with RECONCILE_DAYS more), a scratch Dagster storage with their
    partitions. Yields (instance, aggregate_bars, market_url, storage_url, symbols)."""
    import dagster as dg

    from agg_pipeline.definitions import defs
    from agg_pipeline.defs.partitions import SYMBOLS_PARTITIONS_NAME
    from agg_pipeline.defs.resources import MarketDatabase
    from agg_pipeline.defs.sensors import registry_sync_sensor
    from agg_pipeline_tests.processes import storage_instance

    market_url, storage_url = scratch.database("market"), scratch.database("dagster")
    os.environ[settings.DATABASE_URL_VAR] = market_url
    symbols = [f"T{i:04d}" for i in range(args.symbols)]
    seed(market_url, symbols, reconcile, now)
    with storage_instance(storage_url, scratch.directory("home")) as instance:
        with dg.build_sensor_context(instance=instance,
                                     resources={"market_db": MarketDatabase()}) as context:
            [added] = registry_sync_sensor(context).dynamic_partitions_requests
        instance.add_dynamic_partitions(SYMBOLS_PARTITIONS_NAME, list(added.partition_keys))
        yield (instance, defs.resolve_job_def("aggregate_bars"), market_url, storage_url,
               symbols)


def storage_figures(args: argparse.Namespace, scratch: Scratch) -> None:
    """--storage-runs: Dagster's storage per live run, and after the retention sensor's pass."""
    import dagster as dg

    from agg_pipeline.defs.partitions import range_tags
    from agg_pipeline.defs.tags import LANE_TAG, LIVE_LANE

    now = datetime.now(UTC)
    cursor = (now - timedelta(hours=LIVE_HOURS)).replace(second=0, microsecond=0)
    cursor -= timedelta(minutes=cursor.minute % 5)
    with live_storage(args, scratch, now, 0) as (instance, job, market_url, storage_url,
                                                 symbols):
        # (imported once the Definitions are: on its own it imports them through a cycle)
        from agg_pipeline.defs.storage_retention import Policy, apply_retention

        tags = {**range_tags(symbols[0], cursor.date(), cursor.date(), last_symbol=symbols[-1]),
                LANE_TAG: LIVE_LANE}
        sizes = [storage_size(storage_url)]
        run_ids = []
        # (planning.catchup_work: a live run takes bars_1h along when it completes an hour)
        selections = [["bars_5m"]] * args.storage_runs + [["bars_5m", "bars_1h"]]
        for index, assets in enumerate(selections):
            set_cursors(market_url, cursor)
            selection = [dg.AssetKey(a) for a in assets]
            seconds, result = timed(lambda: job.execute_in_process(
                instance=instance, tags=tags, raise_on_error=False,
                asset_selection=selection))  # noqa: B023 (timed calls it at once)
            run_ids.append(result.run_id)
            sizes.append(storage_size(storage_url))
            log(f"run {index + 1} ({' + '.join(assets)}): "
                f"{'ok' if result.success else 'FAILED'} in {seconds:.1f} s, "
                f"storage tables {sum(sizes[-1][t] for t in STORAGE_TABLES) / 1e6:.2f} MB")
        # Dagster has no API to date a run: every run but the last is made 10 days old
        with connection.connect(storage_url, autocommit=True) as conn:
            conn.execute("UPDATE runs SET create_timestamp = create_timestamp - interval "
                         "'10 days', update_timestamp = update_timestamp - interval '10 days' "
                         "WHERE run_id = ANY(%s)", (run_ids[:-1],))
        seconds, outcome = timed(lambda: apply_retention(
            instance, Policy(success_days=7, failed_days=30, max_deletes=50, keep_newest=0),
            datetime.now(UTC)))
        after = storage_size(storage_url)
        with connection.connect(storage_url, autocommit=True) as conn:
            conn.execute("VACUUM FULL")
        after_full = storage_size(storage_url)

    def tables(size: dict[str, int]) -> float:
        return sum(size[t] for t in STORAGE_TABLES) / 1e6

    runs = args.storage_runs
    between = (tables(sizes[runs]) - tables(sizes[1])) / max(runs - 1, 1)
    hourly = tables(sizes[-1]) - tables(sizes[-2])
    print(f"Dagster storage, {args.symbols} symbols x today: {runs} live runs of bars_5m and "
          f"its checks ({args.symbols} materialisations each), then one of bars_5m + bars_1h "
          f"({2 * args.symbols})")
    print(f"  before the runs: tables {tables(sizes[0]):.2f} MB, database "
          f"{sizes[0]['database'] / 1e6:.1f} MB")
    print(f"  after the first run: tables {tables(sizes[1]):.2f} MB; after {runs}: "
          f"{tables(sizes[runs]):.2f} MB ({between:.2f} MB per further bars_5m run); the "
          f"bars_5m + bars_1h run: {hourly:.2f} MB; a live hour's mean (11 + 1): "
          f"{(11 * between + hourly) / 12:.2f} MB per run; {sizes[-1]['event_rows']:,} event "
          f"rows, database {sizes[-1]['database'] / 1e6:.1f} MB")
    print(f"  retention pass: {outcome.summary} ({seconds:.2f} s)")
    print(f"  after it: tables {tables(after):.2f} MB ({after['event_rows']:,} event rows; "
          f"files not shrunk by DELETE); after VACUUM FULL {tables(after_full):.2f} MB, "
          f"database {after_full['database'] / 1e6:.1f} MB")
    for name in STORAGE_TABLES:
        print(f"    {name}: {sizes[-1][name] / 1e6:.2f} MB -> {after_full[name] / 1e6:.2f} MB")


def storage_week(args: argparse.Namespace, scratch: Scratch) -> None:
    """--storage-week R: a week of live runs fast-forwarded, with retention on. N symbols with
    7 days of 1m bars; simulated day k has R live runs of bars_5m over every symbol's day k
    (cursors set back to its last 2 hours, as --storage-runs), the last of them with bars_1h
    too; at the end of each day every run is made a day older and
    dagster_storage_retention_sensor's pass runs (apply_retention with a 1-day window and no
    newest runs kept: with R well below the 288 live ticks of a real day, keeping the newest
    200 would hold several simulated days), then a plain VACUUM, as autovacuum would, so the
    space of deleted rows is reused. Printed: the storage after each day's pass, and the last
    day's against the first's."""
    import dagster as dg

    from agg_pipeline.defs.partitions import range_tags
    from agg_pipeline.defs.tags import LANE_TAG, LIVE_LANE

    now = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    sizes = []
    # every symbol with 7 days and 2 hours of bars up to today's midnight
    with live_storage(args, scratch, now, args.symbols) as (instance, job, market_url,
                                                            storage_url, symbols):
        from agg_pipeline.defs.storage_retention import Policy, apply_retention  # (as above)

        policy = Policy(success_days=1, failed_days=30, max_deletes=100_000, keep_newest=0)
        for day in range(RECONCILE_DAYS):
            midnight = now - timedelta(days=RECONCILE_DAYS - day)
            tags = {**range_tags(symbols[0], midnight.date(), midnight.date(),
                                 last_symbol=symbols[-1]), LANE_TAG: LIVE_LANE}
            for run in range(args.storage_week):
                set_cursors(market_url, midnight + timedelta(hours=24 - LIVE_HOURS))
                assets = ["bars_5m", "bars_1h"] if run == args.storage_week - 1 else ["bars_5m"]
                job.execute_in_process(instance=instance, tags=tags, raise_on_error=False,
                                       asset_selection=[dg.AssetKey(a) for a in assets])
            with connection.connect(storage_url, autocommit=True) as conn:
                conn.execute("UPDATE runs SET create_timestamp = create_timestamp - interval "
                             "'1 day', update_timestamp = update_timestamp - interval '1 day'")
            outcome = apply_retention(instance, policy, datetime.now(UTC))
            with connection.connect(storage_url, autocommit=True) as conn:
                conn.execute("VACUUM")
            sizes.append(storage_size(storage_url))
            log(f"day {day + 1}: {args.storage_week} runs; {outcome.summary}; storage tables "
                f"{sum(sizes[-1][t] for t in STORAGE_TABLES) / 1e6:.2f} MB")
    first, last = (sum(size[t] for t in STORAGE_TABLES) / 1e6 for size in (sizes[0], sizes[-1]))
    print(f"Dagster storage over a simulated week, {args.symbols} symbols, {args.storage_week} "
          f"live runs a day, retention 1 day: after the first day's pass {first:.2f} MB, after "
          f"the seventh {last:.2f} MB: {last / first:.2f}x (target 1.5x)")
    for name in STORAGE_TABLES:
        print(f"    {name}: {sizes[0][name] / 1e6:.2f} MB -> {sizes[-1][name] / 1e6:.2f} MB")


def count_claims(url: str) -> int:
    with connection.connect(url) as conn:
        return conn.execute("SELECT count(*) FROM data_agg_plan_claims").fetchone()[0]


def partition_status(instance, keys, partitions_def) -> dict:
    """Every partition of bars_5m materialised, then the asset's status (the asset page's
    partition bar), cold (Dagster computes and caches it) and warm (from its cache).

    The materialisations are stored as a run worker stores them with
    DAGSTER_EVENT_BATCH_SIZE (batches of 1,000 events), without running the engine: a first
    build of 1,000 symbols x 5 years is a backfill's job (bench/backfill_bench.py), here
    only the status query over that many partitions is measured."""
    import uuid

    import dagster as dg
    from dagster._core.events import (
        DagsterEvent,
        DagsterEventBatchMetadata,
        DagsterEventType,
        StepMaterializationData,
    )
    from dagster._core.instance.utils import RUNLESS_JOB_NAME, RUNLESS_RUN_ID

    def store() -> None:
        batch = uuid.uuid4().hex
        for i, key in enumerate(keys):
            event = DagsterEvent(
                event_type_value=DagsterEventType.ASSET_MATERIALIZATION.value,
                job_name=RUNLESS_JOB_NAME,
                event_specific_data=StepMaterializationData(dg.AssetMaterialization(
                    asset_key="bars_5m", partition=key, metadata={"bars_inserted": 0})))
            instance.report_dagster_event(event, run_id=RUNLESS_RUN_ID,
                                          batch_metadata=DagsterEventBatchMetadata(
                                              batch, is_end=i == len(keys) - 1))

    log(f"month: storing {len(keys):,} materialisations of bars_5m")
    stored, _ = timed(store)
    cold, status = timed(lambda: instance.get_status_by_partition(
        dg.AssetKey("bars_5m"), partition_keys=keys, partitions_def=partitions_def))
    warm, _ = timed(lambda: instance.get_status_by_partition(
        dg.AssetKey("bars_5m"), partition_keys=keys, partitions_def=partitions_def))
    materialised = sum(1 for s in (status or {}).values()
                       if s == dg.AssetPartitionStatus.MATERIALIZED)
    return {"store_s": stored, "materialised": materialised, "cold_s": cold, "warm_s": warm}


def reread_cost(url: str, symbol: str, as_of: datetime, repeat: int) -> dict:
    """What a live run's engine call costs per symbol and timeframe when everything is up to
    date: the asset re-reads every day of the partitions the run covers, so a day partition
    re-reads today, a month partition the month so far (here: RECONCILE_DAYS days)."""
    from agg_pipeline.engine import aggregate as engine
    from agg_pipeline.engine import windows

    today = windows.day_start(as_of)
    costs = {}
    with connection.connect(url) as conn:
        for label, start in (("1 day", today), (f"{RECONCILE_DAYS} days",
                                                today - timedelta(days=RECONCILE_DAYS))):
            def call(start=start):
                for timeframe in ("5m", "1h"):
                    engine.aggregate(conn, symbol, timeframe, start, today + windows.DAY,
                                     now=as_of)
                    conn.commit()
            costs[label], _ = median_of(repeat, call)
    return costs


# ----------------------------------------------------------------------------- report


def report(results: list[dict], load_before: tuple[float, float, float]) -> None:
    print()
    print("Tick benchmark: the live planner at scale (median of the repeats; a tick = the "
          "sensor or schedule function as the code server evaluates it)")
    for figures in results:
        grain, n = figures["grain"], figures["symbols"]
        print()
        print(f"Grain: {grain}; {n:,} symbols ({2 * n:,} tasks), AGG_START_UTC {YEARS} years "
              f"back; {figures['seed']['rows']:,} 1m bars seeded")
        sync = figures["sync"]
        print(f"  registry sync: first tick {sync['first_s'] * 1000:.0f} ms ({sync['tasks']:,} "
              f"tasks created), adding the {n:,} partitions {sync['partitions_added_s'] * 1000:.0f}"
              f" ms, a tick with nothing to change {sync['steady_s'] * 1000:.0f} ms")
        partitions = figures["partitions_per_asset"]
        verdict = "PASS" if partitions < PARTITIONS_CEILING else "over"
        print(f"  partitions per asset: {partitions:,} ({verdict} against Dagster's "
              f"~{PARTITIONS_CEILING:,})")
        if "status" in figures:
            status = figures["status"]
            print(f"  {status['materialised']:,} partitions of bars_5m materialised (events "
                  f"stored in batches of 1,000 in {status['store_s']:.0f} s); partition status "
                  f"of the asset (instance.get_status_by_partition, every partition): cold "
                  f"{status['cold_s']:.2f} s, warm {status['warm_s']:.2f} s")
        print("  ticks:")
        for name, tick in figures["ticks"].items():
            verdict = "PASS" if tick["s"] < TICK_TARGET_S else "FAIL"
            print(f"    {verdict}  {name}: {tick['s'] * 1000:.0f} ms; {tick['runs']} runs "
                  f"covering {tick['symbols']:,} symbols")
        print(f"  claims left after the ticks: {figures['claims_after']:,}; bars_1m "
              f"observations per tick {figures['observations_per_tick']}, frontier sensor "
              f"cursor {figures['cursor_bytes']} bytes")
        print("  parts of a tick, alone:")
        for name, seconds in figures["parts"].items():
            print(f"    {name}: {seconds * 1000:.0f} ms")
        print(f"    (the reconciliation re-aggregated {figures['reconciled_windows']:,} windows)")
        reread = ", ".join(f"{span} {seconds * 1000:.0f} ms"
                           for span, seconds in figures["reread"].items())
        print(f"  a live run's engine calls per symbol (5m + 1h, all up to date), re-reading "
              f"{reread}: a month partition re-reads the month so far")
        events = figures["observation_events_s"]
        print("  reporting bars_1m observations (the daemon, per tick): "
              + ", ".join(f"{count:,} events {seconds * 1000:.0f} ms"
                          for count, seconds in events.items()))
    print()
    print(f"Machine: {load_note(load_before)}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--symbols", type=int, default=1000)
    parser.add_argument("--grain", choices=("day", "month", "year", "both"),
                        default="both")
    parser.add_argument("--repeat", type=int, default=3, help="evaluations per tick (median)")
    parser.add_argument("--reconcile", type=int, default=settings.DEFAULT_RECONCILE_SYMBOLS,
                        help="symbols with 7 days of history (the reconciliation's budget)")
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--storage-runs", type=int, default=0,
                        help="measure Dagster's storage over K live runs and the retention")
    parser.add_argument("--storage-week", type=int, default=0, metavar="R",
                        help="a fast-forwarded week of R live runs a day with retention on")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, terminate_on_sigterm)
    start = (datetime.now(UTC) - timedelta(days=365 * YEARS + 1)).replace(
        hour=0, minute=0, second=0, microsecond=0)
    if args.storage_runs or args.storage_week:
        first = start + timedelta(days=365 * YEARS - (9 if args.storage_week else 2))
        os.environ.update({**settings.DAGSTER_PROCESS_ENV, settings.TIME_PARTITION_VAR: "day",
                           settings.START_VAR: first.isoformat()})
        scratch = Scratch(server_url(), args.keep, prefix="agg_tick")
        try:
            (storage_week if args.storage_week else storage_figures)(args, scratch)
            return 0
        finally:
            scratch.close()
    load_before = os.getloadavg()
    # the registry sync reads AGG_START_UTC at each tick; the Definitions take theirs from it
    os.environ.update({**settings.DAGSTER_PROCESS_ENV, settings.START_VAR: start.isoformat()})
    results = []
    server = server_url()  # (each grain points AGG_DATABASE_URL at its own scratch market)
    for grain in (("day", "month") if args.grain == "both" else (args.grain,)):
        log(f"{grain}: --symbols {args.symbols} --repeat {args.repeat} "
            f"--reconcile {args.reconcile}")
        scratch = Scratch(server, args.keep, prefix="agg_tick")
        try:
            results.append(run_grain(args, scratch, grain))
        except Exception as exc:
            print(f"the {grain} grain failed ({type(exc).__name__}: {exc})", file=sys.stderr)
            return 1
        finally:
            scratch.close()
    report(results, load_before)
    return 0


if __name__ == "__main__":
    sys.exit(main())
