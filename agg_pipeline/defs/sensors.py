"""Sensors: registry sync, source frontier (new complete windows), late data (contract 10).

The frontier and late-data sensors request runs through the live planner (defs/requests.py,
engine/planning.py), as the schedule does: never work a run in flight was requested for.
"""


import json
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import dagster as dg
import psycopg

from agg_pipeline import settings
from agg_pipeline.defs.assets import bars_1m
from agg_pipeline.defs.jobs import AssetJob
from agg_pipeline.defs.partitions import (
    SYMBOLS_PARTITIONS_NAME,
    SYNTHETIC_PARTITIONS_NAME,
    timeframe_partitions_name,
)
from agg_pipeline.defs.requests import (
    LiveRequests,
    database_now,
    next_runs,
    summary,
    synced_symbols,
)
from agg_pipeline.defs.resources import MarketDatabase
from agg_pipeline.defs.tags import LANE_TAG, LIVE_LANE, PLAN_TAG, STAGE_TAG
from agg_pipeline.engine import planning, synthetic, tasks, timeframes
from agg_pipeline.engine.reasons import Reason
from agg_pipeline.listing import capped, summarise

# Rows whose ingestion transaction committed up to this long after its ingested_at stamp
# are still seen by the late-data sensor.
LATE_DATA_LOOKBACK = timedelta(minutes=10)
# bars_1m observations: a rotation over the symbols, at most this many per tick, each
# symbol at most once per cycle and a cycle at most this often, so a tick's events and
# cursor stay the same size whatever the number of symbols (bench/tick_bench.py). 4 a tick
# at the default interval of 5 s (AGG_FRONTIER_INTERVAL_SECONDS) is the 25 every 30 s of
# before: the same events per hour (they are never pruned).
OBSERVATIONS_PER_TICK = 4
OBSERVATION_CYCLE = timedelta(minutes=5)
# consumed days of the change capture are kept this long, then pruned by the late-data sensor
CONSUMED_CHANGES_KEPT = timedelta(days=1)


# the symbols of each optional timeframe: their live (non-retired) tasks; a task disabled by
# failures keeps its partitions (its bars exist), a timeframe the registry drops retires them
OPTIONAL_TASK_SYMBOLS = ("SELECT timeframe, canonical_symbol FROM data_agg_state "
                         "WHERE NOT is_mandatory AND status <> 'retired'")


def wanted_partitions(conn: psycopg.Connection, symbols: list[str]) -> dict[str, set[str]]:
    """Each dynamic symbols partitions' symbols: `symbols` every symbol, `symbols_<tf>` those
    with a live task of optional timeframe tf, `symbols_synthetic` the synthetic series."""
    wanted: dict[str, set[str]] = {SYMBOLS_PARTITIONS_NAME: set(symbols)}
    wanted.update({timeframe_partitions_name(tf.name, False): set()
                   for tf in timeframes.ORDERED if not tf.mandatory})
    for timeframe, symbol in conn.execute(OPTIONAL_TASK_SYMBOLS):
        wanted.setdefault(timeframe_partitions_name(timeframe, False), set()).add(symbol)
    wanted[SYNTHETIC_PARTITIONS_NAME] = synthetic.synthetic_symbols(conn, symbols)
    conn.rollback()
    return wanted


def partition_changes(instance: dg.DagsterInstance, wanted: dict[str, set[str]]
                      ) -> tuple[list, list[str]]:
    """The requests bringing each symbols partitions to `wanted`, and one summary per
    partitions that changed (every symbol's: always)."""
    requests: list = []
    lines: list[str] = []
    for name, symbols in wanted.items():
        existing = set(instance.get_dynamic_partitions(name))
        added, removed = sorted(symbols - existing), sorted(existing - symbols)
        if added:
            requests.append(dg.AddDynamicPartitionsRequest(name, added))
        if removed:
            requests.append(dg.DeleteDynamicPartitionsRequest(name, removed))
        if name == SYMBOLS_PARTITIONS_NAME:
            lines.insert(0, f"partitions added {summarise(added)}, removed {summarise(removed)}")
        elif added or removed:
            lines.append(f"{name} added {summarise(added)}, removed {summarise(removed)}")
    return requests, lines


@dg.sensor(
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description=(
        "Keeps data_agg_state and the symbols partitions in step with the registry: tasks for "
        "the environment's symbols (5m and 1h always, optional timeframes by calc_* flags), "
        "retired tasks for symbols that left it; `symbols` (every symbol), `symbols_<tf>` "
        "(the symbols an optional timeframe is enabled for) and `symbols_synthetic` (the "
        "synthetic series), in the same tick. Unusable symbols are reported, not synced."
    ),
)
def registry_sync_sensor(context: dg.SensorEvaluationContext,
                         market_db: MarketDatabase) -> dg.SensorResult | dg.SkipReason:
    environment = settings.environment()
    with market_db.connect() as conn:
        result = tasks.sync_tasks(conn, environment, agg_start=settings.default_agg_start())
        wanted = wanted_partitions(conn, result.symbols)
    for symbol, problem in sorted(result.rejected.items()):
        context.log.warning(f"registry symbol {symbol!r} not synced: {problem}")
    requests, changes = partition_changes(context.instance, wanted)
    summary_line = (f"env={environment}: {len(result.symbols)} symbols; tasks "
                    f"created={result.created} updated={result.updated} "
                    f"retired={result.retired}; {'; '.join(changes)}; "
                    f"rejected={len(result.rejected)}")
    context.log.info(summary_line)
    if not requests:
        return dg.SkipReason(summary_line)
    return dg.SensorResult(dynamic_partitions_requests=requests)


def frontier_observations(found: planning.Tasks, symbols: list[str], state: dict,
                          as_of: datetime) -> tuple[list[dg.AssetObservation], dict]:
    """The next slice of the rotation over the symbols (by name): an observation of bars_1m
    for each whose frontier is newer than the start of the previous cycle (it may have moved
    since the symbol's last observation; older, it has not). A new cycle starts when the
    last one is through and OBSERVATION_CYCLE has passed since it began."""
    frontiers = {t.symbol: t.frontier for t in found.states
                 if timeframes.get(t.timeframe).reads_data_bars and t.frontier is not None}
    names = sorted(set(symbols) & frontiers.keys())
    after, cycle, previous = state.get("after"), state.get("cycle"), state.get("previous")
    cycle = cycle or as_of.isoformat()  # the first cycle begins now
    upcoming = [s for s in names if after is None or s > after]
    if not upcoming:
        if as_of - datetime.fromisoformat(cycle) < OBSERVATION_CYCLE:
            return [], state
        upcoming, previous, cycle = names, cycle, as_of.isoformat()
    slice_ = upcoming[:OBSERVATIONS_PER_TICK]
    moved_after = datetime.fromisoformat(previous) if previous else None
    observations = [
        dg.AssetObservation(asset_key=bars_1m.key, partition=symbol,
                            metadata={"frontier": dg.MetadataValue.timestamp(frontiers[symbol])})
        for symbol in slice_ if moved_after is None or frontiers[symbol] > moved_after]
    return observations, {"after": slice_[-1] if slice_ else after, "cycle": cycle,
                          "previous": previous}


SOURCE_FRONTIER_SENSOR = dict(  # the source_frontier_sensor's definition (build_live_sensors;
    # its interval is the config's: a complete window's run waits for the next tick)
    default_status=dg.DefaultSensorStatus.RUNNING,
    description=(
        "When new 1m rows complete windows (every minute landed, or past the confirmation "
        "delay), or move past what a "
        "symbol's forming bar shows (registry agg_forming_bars), requests those days for "
        "bars_5m and everything derived from it, batched: runs over blocks of symbols x "
        "days through the live planner. Nothing new, no run. Observes bars_1m's per-symbol "
        f"frontier on a rotation (at most {OBSERVATIONS_PER_TICK} per tick)."
    ),
)


def live_run_queued(instance: dg.DagsterInstance) -> bool:
    """Whether a run of the live lane waits in Dagster's queue."""
    return bool(instance.get_run_records(
        dg.RunsFilter(statuses=[dg.DagsterRunStatus.QUEUED], tags={LANE_TAG: LIVE_LANE}),
        limit=1))


def source_frontier_tick(context: dg.SensorEvaluationContext, market_db: MarketDatabase,
                         live: LiveRequests) -> dg.SensorResult | dg.SkipReason:
    """One source_frontier_sensor evaluation. While a live run waits in the queue it requests
    nothing: the windows that become due meanwhile go into the runs of the first tick after
    it started, so a busy lane gets a few large runs, not a queue of small ones (at 10,000
    symbols a feed's minute lands over seconds, and each 5-second tick found a few more
    symbols due: 74 runs of 1-20 symbols queued within 5 minutes, faster than 2 slots ran
    them)."""
    if live_run_queued(context.instance):
        return dg.SkipReason("a live run is waiting in the queue: what is due now goes into "
                             "the runs requested once it has started")
    first_day: date = live.first_day
    symbols = synced_symbols(context.instance)
    with market_db.connect() as conn:
        as_of = database_now(conn)

        def find_work():
            found = planning.task_states(conn, as_of)
            return found, (planning.catchup_work(found, roots_only=True, first_day=first_day)
                           + planning.forming_work(found, first_day=first_day)
                           + planning.synthetic_work(conn, found, as_of, first_day))

        found, result = live.plan(context.instance, conn, "frontier", symbols, find_work)
    observations, state = frontier_observations(
        found, symbols, json.loads(context.cursor) if context.cursor else {}, as_of)
    cursor = json.dumps(state, sort_keys=True)
    left = summary(result)
    if left:
        context.log.info(left)
    if not result.runs:
        return dg.SensorResult(asset_events=observations, cursor=cursor,
                               skip_reason=None if observations else
                               "no new complete windows" + (f" ({left})" if left else ""))
    return dg.SensorResult(run_requests=live.run_requests(result.runs, context.instance),
                           asset_events=observations, cursor=cursor)


@dataclass(frozen=True)
class LateState:
    since: datetime | None  # rows landed after this (minus the look-back) are looked at
    reconcile_after: str | None  # the reconciliation's rotation resumes after this symbol

    @classmethod
    def parse(cls, cursor: str | None) -> "LateState":
        if not cursor:
            return cls(None, None)
        if not cursor.startswith("{"):  # the cursor before the reconciliation: a timestamp
            return cls(datetime.fromisoformat(cursor), None)
        raw = json.loads(cursor)
        return cls(datetime.fromisoformat(raw["since"]) if raw.get("since") else None,
                   raw.get("reconcile_after"))

    def dump(self) -> str:
        return json.dumps({"since": self.since.isoformat() if self.since else None,
                           "reconcile_after": self.reconcile_after}, sort_keys=True)


LATE_DATA_SENSOR = dict(  # the late_data_sensor's definition (build_live_sensors)
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description=(
        "Every change to the source of days already materialised re-materialises those days "
        "for bars_5m and everything derived (SPEC contract 10), through the live planner: rows "
        "that landed late (by ingested_at), and updates, deletes and truncates the change "
        "capture recorded. The backstop for changes made with the capture bypassed: each tick "
        f"re-checks {settings.RECONCILE_SYMBOLS_VAR} symbols (a rotation) over the last "
        f"{settings.RECONCILE_DAYS_VAR} days against their recorded fingerprints and a "
        "rolled-back re-aggregation (reason: reconciliation)."
    ),
)


def late_data_tick(context: dg.SensorEvaluationContext, market_db: MarketDatabase,
                   live: LiveRequests) -> dg.SensorResult | dg.SkipReason:
    """One late_data_sensor evaluation."""
    first_day: date = live.first_day
    state = LateState.parse(context.cursor)
    symbols = synced_symbols(context.instance)
    checked: list[planning.Reconciliation] = []
    too_early: list = []
    with market_db.connect() as conn:
        as_of = database_now(conn)
        since = state.since or as_of

        def find_work():
            found = planning.task_states(conn, as_of)
            late, early = planning.late_work(conn, found, since - LATE_DATA_LOOKBACK, as_of,
                                             first_day)
            reconciled = planning.reconciliation_work(
                conn, found, after=state.reconcile_after,
                budget=settings.reconcile_symbols_per_tick(), days=settings.reconcile_days(),
                as_of=as_of, first_day=first_day)
            checked.append(reconciled)
            too_early.extend(early)
            return found, late + reconciled.work + planning.synthetic_work(
                conn, found, as_of, first_day, since=since - LATE_DATA_LOOKBACK)

        _, result = live.plan(context.instance, conn, "late", symbols, find_work)
        pruned = planning.prune_consumed_changes(conn, CONSUMED_CHANGES_KEPT)
    [reconciled] = checked
    warnings = capped([f"late rows for {symbol} on {day} cannot be requested: before the "
                       f"first partition ({first_day})" for symbol, day in too_early],
                      "days before the first partition")
    warnings += capped([f"late rows for {work.symbol} on {work.first_day}..{work.last_day} "
                        "cannot be requested (no such partition)" for work in result.unsynced],
                       "symbols without a partition")
    warnings += capped([f"reconciliation of {symbol} failed: {error}"
                        for symbol, error in sorted(reconciled.errors.items())],
                       "failed reconciliations")
    for line in warnings:
        context.log.warning(line)
    shown = ", ".join(reconciled.checked[:5]) + (" ..." if len(reconciled.checked) > 5 else "")
    context.log.info(f"reconciliation: {len(reconciled.checked)} symbols re-checked ({shown}), "
                     f"{reconciled.windows_checked} windows, {len(reconciled.work)} changed "
                     f"spans, {len(reconciled.busy)} busy; {pruned} consumed change days pruned")
    # work not requested now must be found again: the landed rows' window and the rotation
    # hold until it is (a day already handled matches its fingerprint again: no repeat)
    held = result.claimed + result.waiting
    new_state = LateState(
        since if any(w.reason == Reason.LATE_DATA for w in held) else as_of,
        state.reconcile_after if any(Reason.RECONCILIATION in w.causes for w in held)
        else (reconciled.checked[-1] if reconciled.checked else state.reconcile_after))
    left = summary(result)
    if not result.runs:
        return dg.SensorResult(skip_reason="no late source rows" + (f" ({left})" if left else ""),
                               cursor=new_state.dump())
    if left:
        context.log.info(left)
    return dg.SensorResult(run_requests=live.run_requests(result.runs, context.instance),
                           cursor=new_state.dump())


# ladder_sensor looks at chained runs that succeeded this recently (a run's next one is
# launched at the first tick after it ends; the look-back only bounds the query)
CHAIN_LOOKBACK = timedelta(hours=6)
CHAINED_RUNS_PER_TICK = 500


def ladder_tick(context: dg.SensorEvaluationContext,
                live: LiveRequests) -> dg.SensorResult | dg.SkipReason:
    """One ladder_sensor evaluation: the next run of every chain whose run succeeded and
    whose next run does not exist yet (its run key is also unique: never launched twice)."""
    since = datetime.now(UTC) - CHAIN_LOOKBACK
    records = context.instance.get_run_records(
        dg.RunsFilter(statuses=[dg.DagsterRunStatus.SUCCESS], updated_after=since,
                      tags={LANE_TAG: LIVE_LANE}),
        limit=CHAINED_RUNS_PER_TICK)
    finished = [r.dagster_run for r in records if next_runs(r.dagster_run.tags)]
    plans = sorted({run.tags[PLAN_TAG] for run in finished})
    launched = {(r.dagster_run.tags.get(PLAN_TAG), r.dagster_run.tags.get(STAGE_TAG))
                for r in (context.instance.get_run_records(
                    dg.RunsFilter(tags={PLAN_TAG: plans})) if plans else [])}
    requests = []
    for run in finished:
        following = live.next_request(run)
        if following is not None and (run.tags[PLAN_TAG],
                                      following.tags[STAGE_TAG]) not in launched:
            requests.append(following)
    if not requests:
        return dg.SkipReason("no chained run waiting for its predecessor")
    context.log.info(f"{len(requests)} chained runs: "
                     + ", ".join(f"{r.job_name} ({r.run_key})" for r in requests[:10]))
    return dg.SensorResult(run_requests=requests)


def build_live_sensors(jobs: list[AssetJob], live: LiveRequests,
                       frontier_interval_seconds: int) -> list[dg.SensorDefinition]:
    """source_frontier_sensor (every `frontier_interval_seconds`), late_data_sensor and
    ladder_sensor, launching the ladder's `jobs` with `live`'s requests."""

    @dg.sensor(jobs=jobs, minimum_interval_seconds=frontier_interval_seconds,
               **SOURCE_FRONTIER_SENSOR)
    def source_frontier_sensor(context: dg.SensorEvaluationContext,
                               market_db: MarketDatabase) -> dg.SensorResult | dg.SkipReason:
        return source_frontier_tick(context, market_db, live)

    @dg.sensor(jobs=jobs, **LATE_DATA_SENSOR)
    def late_data_sensor(context: dg.SensorEvaluationContext,
                         market_db: MarketDatabase) -> dg.SensorResult | dg.SkipReason:
        return late_data_tick(context, market_db, live)

    @dg.sensor(jobs=jobs, minimum_interval_seconds=10,
               default_status=dg.DefaultSensorStatus.RUNNING,
               description=(
                   "Launches the next run of a live chain when its run succeeds: a block's "
                   "synthetic series' 1m (synthetic_bars), then its mandatory timeframes "
                   "(aggregate_bars), then each optional timeframe over the symbols enabling "
                   "it (aggregate_bars_<tf>): one job per partitions definition, in ladder "
                   "order (defs/requests.py)."))
    def ladder_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult | dg.SkipReason:
        return ladder_tick(context, live)

    return [source_frontier_sensor, late_data_sensor, ladder_sensor]


def __getattr__(name: str) -> object:
    """source_frontier_sensor, late_data_sensor and ladder_sensor: the process's default
    Definitions' (defs/factory.py)."""
    from agg_pipeline.defs import factory

    return factory.default_part(__name__, name)
