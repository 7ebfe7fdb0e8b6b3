"""The live planner's Dagster side: which claimed plans have runs in flight, and the planned
runs as run requests over rectangles of partitions (the planner itself is engine/planning.py).
"""


from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date, datetime

import dagster as dg
import psycopg

from agg_pipeline import settings
from agg_pipeline.defs.partitions import SYMBOLS_PARTITIONS_NAME, TimePartitioning, days_tag
from agg_pipeline.defs.tags import (
    LANE_TAG,
    LIVE_LANE,
    PARENT_RUN_ID_TAG,
    PLAN_TAG,
    REASON_TAG,
    WILL_RETRY_TAG,
)
from agg_pipeline.engine import planning, windows

IN_FLIGHT = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]


def run_states(instance: dg.DagsterInstance, plan_ids: list[str]) -> planning.RunStates:
    """Which of the claimed plans have a run queued or running (or failed and about to be
    retried: Dagster tags it dagster/will_retry before it creates the retry), and which only
    finished ones (a crashed run's retry carries its plan's tag too, so the plan stays live)."""
    if not plan_ids:
        return planning.RunStates()
    records = instance.get_run_records(dg.RunsFilter(tags={PLAN_TAG: plan_ids}))
    retried = {r.dagster_run.tags.get(PARENT_RUN_ID_TAG) for r in records}
    live = {r.dagster_run.tags[PLAN_TAG] for r in records
            if r.dagster_run.status in IN_FLIGHT
            or (r.dagster_run.status == dg.DagsterRunStatus.FAILURE
                and r.dagster_run.tags.get(WILL_RETRY_TAG) == "true"
                and r.dagster_run.run_id not in retried)}
    done = {r.dagster_run.tags[PLAN_TAG] for r in records} - live
    return planning.RunStates(live=frozenset(live), finished=frozenset(done))


def limits() -> planning.Limits:
    return planning.Limits(max_runs=settings.max_runs_per_tick(),
                           max_partitions=settings.max_partitions_per_run())


def synced_symbols(instance: dg.DagsterInstance) -> list[str]:
    """The `symbols` partitions, in their order (a run's block of symbols is a slice)."""
    return list(instance.get_dynamic_partitions(SYMBOLS_PARTITIONS_NAME))


@dataclass(frozen=True)
class LiveRequests:
    """The planner's runs as run requests of one Definitions: its partitions, and its assets'
    and checks' keys per timeframe (defs/factory.py builds it with them)."""

    partitions: TimePartitioning
    asset_keys: Mapping[str, dg.AssetKey]
    check_keys: Mapping[str, list[dg.AssetCheckKey]]

    @property
    def first_day(self) -> date:
        """The first day partition: no work is requested before it."""
        return self.partitions.first_day

    def period_bounds(self, day: date) -> tuple[date, date]:
        """The first and last UTC day of the time partition holding `day`."""
        first = self.partitions.period_start(day)
        return first, self.partitions.period_last_day(first)

    def plan(self, instance: dg.DagsterInstance, conn: psycopg.Connection, requester: str,
             symbols: list[str],
             find_work: Callable[[], tuple[planning.Tasks, list[planning.Work]]]
             ) -> tuple[planning.Tasks, planning.Plan]:
        """One requester's turn of the planner. Dagster is asked about the claimed plans' runs
        BEFORE `find_work` reads the tasks and finds the work: a run seen finished then has its
        effects in what is found, so releasing its claims cannot let done work be requested."""
        states = run_states(instance, planning.claimed_plans(conn))
        tasks, work = find_work()
        conn.rollback()
        return tasks, planning.plan_runs(conn, work, requester=requester, runs=states,
                                         symbols=symbols, riders=tasks.riders(),
                                         alone=tasks.failing(), limits=limits(),
                                         period=self.period_bounds)

    def run_request(self, run: planning.PlannedRun) -> dg.RunRequest:
        """One run over the rectangle run.symbols x the periods holding its days."""
        tags = self.partitions.range_tags(run.symbols[0], run.first_day, run.last_day,
                                          last_symbol=run.symbols[-1])
        tags.update({LANE_TAG: LIVE_LANE, REASON_TAG: run.reason, PLAN_TAG: run.plan_id})
        # the days the work needs (a month partition's run then re-reads them, not the month)
        tags.update(days_tag(min(w.first_day for w in run.work),
                             max(w.last_day for w in run.work)))
        return dg.RunRequest(
            run_key=run.plan_id,
            asset_selection=[self.asset_keys[tf] for tf in run.timeframes],
            asset_check_keys=[key for tf in run.timeframes for key in self.check_keys[tf]],
            tags=tags,
        )


def summary(found: planning.Plan) -> str:
    """What a tick did not request, and why (its skip reason or log line)."""
    parts = []
    if found.claimed:
        parts.append(f"{len(found.claimed)} symbols' work already requested (runs in flight)")
    if found.waiting:
        parts.append(f"{len(found.waiting)} symbols' work left for the next tick")
    if found.unsynced:
        parts.append(f"{len(found.unsynced)} symbols without a partition yet")
    return "; ".join(parts)


def database_now(conn: psycopg.Connection) -> datetime:
    """Finality is judged on the database clock, as the engine does; in UTC, whatever the
    session's TimeZone (its days and windows are UTC ones)."""
    return windows.utc(conn.execute("SELECT now()").fetchone()[0])


def __getattr__(name: str) -> object:
    """plan, run_request and period_bounds: those of the process's default Definitions'
    LiveRequests (defs/factory.py)."""
    if name in ("plan", "run_request", "period_bounds"):
        from agg_pipeline.defs import factory

        return getattr(factory.default_part(__name__, "live_requests"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
