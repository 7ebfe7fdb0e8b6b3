"""Sensors: registry sync, source frontier (new complete windows), late data (contract 10)."""


import json
from datetime import datetime, timedelta

import dagster as dg

from agg_pipeline import settings
from agg_pipeline.defs.assets import bars_1m
from agg_pipeline.defs.jobs import aggregate_bars_job
from agg_pipeline.defs.partitions import FIRST_DAY, SYMBOLS_PARTITIONS_NAME
from agg_pipeline.defs.requests import database_now, run_request, symbols_in_flight
from agg_pipeline.defs.resources import MarketDatabase
from agg_pipeline.engine import planning, tasks, timeframes

# Rows whose ingestion transaction committed up to this long after its ingested_at stamp
# are still seen by the late-data sensor.
LATE_DATA_LOOKBACK = timedelta(minutes=10)


@dg.sensor(
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description=(
        "Keeps data_agg_state and the `symbols` partitions in step with the registry: tasks for "
        "the environment's symbols (5m and 1h always, optional timeframes by calc_* flags), "
        "retired tasks for symbols that left it. Unusable symbols are reported, not synced."
    ),
)
def registry_sync_sensor(context: dg.SensorEvaluationContext,
                         market_db: MarketDatabase) -> dg.SensorResult | dg.SkipReason:
    environment = settings.environment()
    with market_db.connect() as conn:
        result = tasks.sync_tasks(conn, environment, agg_start=settings.default_agg_start())
    for symbol, problem in sorted(result.rejected.items()):
        context.log.warning(f"registry symbol {symbol!r} not synced: {problem}")
    existing = set(context.instance.get_dynamic_partitions(SYMBOLS_PARTITIONS_NAME))
    wanted = set(result.symbols)
    added, removed = sorted(wanted - existing), sorted(existing - wanted)
    requests: list = []
    if added:
        requests.append(dg.AddDynamicPartitionsRequest(SYMBOLS_PARTITIONS_NAME, added))
    if removed:
        requests.append(dg.DeleteDynamicPartitionsRequest(SYMBOLS_PARTITIONS_NAME, removed))
    summary = (f"env={environment}: {len(wanted)} symbols; tasks created={result.created} "
               f"updated={result.updated} retired={result.retired}; partitions added={added} "
               f"removed={removed}; rejected={len(result.rejected)}")
    context.log.info(summary)
    if not requests:
        return dg.SkipReason(summary)
    return dg.SensorResult(dynamic_partitions_requests=requests)


def _frontier_observations(plan: planning.Plan, cursor: dict[str, str],
                           known: set[str]) -> tuple[list[dg.AssetObservation], dict[str, str]]:
    """An observation of bars_1m per symbol whose newest source row moved."""
    observations, seen = [], dict(cursor)
    for task in plan.tasks:
        if not timeframes.get(task.timeframe).reads_data_bars or task.frontier is None:
            continue
        stamp = task.frontier.isoformat()
        if task.symbol in known and cursor.get(task.symbol) != stamp:
            observations.append(dg.AssetObservation(
                asset_key=bars_1m.key, partition=task.symbol,
                metadata={"frontier": dg.MetadataValue.timestamp(task.frontier)}))
        seen[task.symbol] = stamp
    return observations, seen


@dg.sensor(
    job=aggregate_bars_job,
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description=(
        "When new 1m rows complete windows (past the confirmation delay), requests the symbol's "
        "days for bars_5m and everything derived from it. Nothing new, no run."
    ),
)
def source_frontier_sensor(context: dg.SensorEvaluationContext,
                           market_db: MarketDatabase) -> dg.SensorResult | dg.SkipReason:
    with market_db.connect() as conn:
        as_of = database_now(conn)
        plan = planning.plan_catchup(conn, as_of, roots_only=True, first_day=FIRST_DAY)
    known = set(context.instance.get_dynamic_partitions(SYMBOLS_PARTITIONS_NAME))
    busy = symbols_in_flight(context.instance)
    requests = []
    for work in plan.work:
        if work.symbol not in known or work.symbol in busy:
            continue
        requests.append(run_request(
            work.symbol, work.timeframes, work.first_day, work.last_day,
            run_key=f"frontier:{work.symbol}:{work.signature}", reason="new complete windows"))
    observations, frontiers = _frontier_observations(
        plan, json.loads(context.cursor) if context.cursor else {}, known)
    if not requests and not observations:
        return dg.SkipReason("no new complete windows")
    return dg.SensorResult(run_requests=requests, asset_events=observations,
                           cursor=json.dumps(frontiers, sort_keys=True))


@dg.sensor(
    job=aggregate_bars_job,
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description=(
        "Source rows that landed (by ingested_at) in days already materialised, or corrected "
        "there, re-materialise those days for bars_5m and everything derived (SPEC contract 10)."
    ),
)
def late_data_sensor(context: dg.SensorEvaluationContext,
                     market_db: MarketDatabase) -> dg.SensorResult | dg.SkipReason:
    with market_db.connect() as conn:
        as_of = database_now(conn)
        since = (datetime.fromisoformat(context.cursor) if context.cursor else as_of)
        late = planning.late_days(conn, since - LATE_DATA_LOOKBACK, as_of)
        plan = planning.plan_catchup(conn, as_of)
    scheduled: dict[str, set[str]] = {}
    for task in plan.tasks:
        scheduled.setdefault(task.symbol, set()).add(task.timeframe)
    known = set(context.instance.get_dynamic_partitions(SYMBOLS_PARTITIONS_NAME))
    requests = []
    for found in late:
        days = [d for d in found.days if d >= FIRST_DAY]
        if found.symbol not in known or not days:
            context.log.warning(f"late rows for {found.symbol} on {found.days} cannot be "
                                "requested (no such partition)")
            continue
        roots = [tf for tf in timeframes.ORDERED if tf.reads_data_bars]
        selected = {tf.name for root in roots for tf in [root, *timeframes.downstream(root.name)]}
        chosen = [tf.name for tf in timeframes.ORDERED
                  if tf.name in selected & scheduled.get(found.symbol, set())]
        if not chosen:
            continue
        requests.append(run_request(
            found.symbol, chosen, min(days), max(days),
            run_key=f"late:{found.symbol}:{found.fingerprint}",
            reason=f"late data on {', '.join(d.isoformat() for d in days)}"))
    new_cursor = as_of.isoformat()
    if not requests:
        return dg.SensorResult(skip_reason="no late source rows", cursor=new_cursor)
    return dg.SensorResult(run_requests=requests, cursor=new_cursor)
