"""The live planner's Dagster side: which claimed plans have runs in flight, and the planned
runs as run requests over rectangles of partitions (the planner itself is engine/planning.py).

A planned run (a block of consecutive `symbols` x days, some timeframes) becomes a chain of
runs, one per job of the ladder it needs (defs/jobs.py: one job per partitions definition):
`synthetic_bars` over the block's synthetic series (when it builds 5m), `aggregate_bars` over
the block, then `aggregate_bars_<timeframe>` over the block's symbols enabling each optional
timeframe (cut into blocks consecutive in that timeframe's own partitions). The tick requests
the first; each run carries the rest in NEXT_RUNS_TAG and ladder_sensor launches the next when
it succeeds, under the same plan: the plan's claims hold until the chain's last run ends.
"""


import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime

import dagster as dg
import psycopg

from agg_pipeline import settings
from agg_pipeline.defs.jobs import LadderJob
from agg_pipeline.defs.partitions import SYMBOLS_PARTITIONS_NAME, TimePartitioning, days_tag
from agg_pipeline.defs.tags import (
    DAYS_TAG,
    LANE_TAG,
    LIVE_LANE,
    NEXT_RUNS_TAG,
    PARENT_RUN_ID_TAG,
    PLAN_TAG,
    RANGE_END_TAG,
    RANGE_START_TAG,
    REASON_TAG,
    STAGE_TAG,
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
    live |= chains_pending([r.dagster_run for r in records])
    done = {r.dagster_run.tags[PLAN_TAG] for r in records} - live
    return planning.RunStates(live=frozenset(live), finished=frozenset(done))


def next_runs(tags: Mapping[str, str]) -> list[tuple[str, str, str, list[str]]]:
    """The runs still to launch after this one of its chain: (job, first symbol, last
    symbol, timeframes) each."""
    return [tuple(entry) for entry in json.loads(tags.get(NEXT_RUNS_TAG) or "[]")]


def chains_pending(runs: Sequence[dg.DagsterRun]) -> set[str]:
    """The plans with a run that succeeded whose chain's next run does not exist yet: live
    (ladder_sensor launches it), so their claims hold."""
    stages = {(r.tags.get(PLAN_TAG), r.tags.get(STAGE_TAG)) for r in runs}
    return {r.tags[PLAN_TAG] for r in runs
            if r.status == dg.DagsterRunStatus.SUCCESS and next_runs(r.tags)
            and (r.tags[PLAN_TAG], str(int(r.tags.get(STAGE_TAG, "0")) + 1)) not in stages}


def limits() -> planning.Limits:
    return planning.Limits(max_runs=settings.max_runs_per_tick(),
                           max_partitions=settings.max_partitions_per_run())


def synced_symbols(instance: dg.DagsterInstance,
                   name: str = SYMBOLS_PARTITIONS_NAME) -> list[str]:
    """The `symbols` partitions (or those named `name`), in their order (a run's block of
    symbols is a slice)."""
    return list(instance.get_dynamic_partitions(name))


def consecutive_blocks(symbols: Sequence[str], order: Sequence[str]) -> list[list[str]]:
    """`symbols` cut into runs of consecutive symbols of `order` (the partitions' order)."""
    wanted, found, current = set(symbols), [], []
    for symbol in order:
        if symbol in wanted:
            current.append(symbol)
        elif current:
            found.append(current)
            current = []
    return [*found, current] if current else found


ChainRun = tuple[str, str, str, list[str]]  # (job, first symbol, last symbol, timeframes)


@dataclass(frozen=True)
class LiveRequests:
    """The planner's runs as run requests of one Definitions: its partitions, its ladder's
    jobs (defs/jobs.py), and its assets' and checks' keys per timeframe (defs/factory.py
    builds it with them)."""

    partitions: TimePartitioning
    asset_keys: Mapping[str, dg.AssetKey]
    check_keys: Mapping[str, list[dg.AssetCheckKey]]
    ladder: tuple[LadderJob, ...] = ()

    @property
    def first_day(self) -> date:
        """The first day partition: no work is requested before it."""
        return self.partitions.first_day

    @property
    def job_names(self) -> list[str]:
        return [job.job_name for job in self.ladder]

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

    def chain(self, run: planning.PlannedRun, instance: dg.DagsterInstance, *,
              synthetic: bool = True) -> list[ChainRun]:
        """The runs of `run`, in ladder order: its block's synthetic series (when it builds
        5m and `synthetic`), the block's mandatory timeframes, then each optional timeframe
        over the block's symbols enabling it. Without `synthetic` (the schedule, whose runs
        are aggregate_bars ones) the mandatory run always comes first."""
        runs: list[ChainRun] = []
        for job in self.ladder:
            if job.synthetic:
                if not synthetic or "5m" not in run.timeframes:
                    continue
                timeframes: list[str] = []
            else:
                timeframes = [tf for tf in job.timeframes if tf in run.timeframes]
                if not timeframes and not (job.mandatory and not synthetic):
                    continue
                timeframes = timeframes or list(job.timeframes)  # the schedule's lead run
            symbols = (list(run.symbols) if job.mandatory else
                       consecutive_blocks(run.symbols, synced_symbols(instance, job.symbols_name)))
            for block in ([symbols] if job.mandatory else symbols):
                runs.append((job.job_name, block[0], block[-1], timeframes))
        return runs

    def run_request(self, run: planning.PlannedRun,
                    chain: Sequence[ChainRun] | None = None) -> dg.RunRequest:
        """The first run of `run`'s chain (default: the aggregate_bars run over its block
        alone): a run over the rectangle of a block of symbols x the periods holding its days,
        carrying the rest of the chain (NEXT_RUNS_TAG)."""
        if chain is None:
            chain = [(self.ladder[1].job_name if self.ladder else "", run.symbols[0],
                      run.symbols[-1], list(run.timeframes))]
        tags = {LANE_TAG: LIVE_LANE, REASON_TAG: run.reason, PLAN_TAG: run.plan_id}
        # the days the work needs (a month partition's run then re-reads them, not the month)
        tags.update(days_tag(min(w.first_day for w in run.work),
                             max(w.last_day for w in run.work)))
        return self.chain_request(chain, 0, tags, (run.first_day, run.last_day))

    def run_requests(self, runs: Sequence[planning.PlannedRun], instance: dg.DagsterInstance,
                     *, synthetic: bool = True) -> list[dg.RunRequest]:
        """The first run of each planned run's chain (chain()); a run whose chain is empty
        (its optional timeframes' symbols not synced yet) requests nothing: its claims lapse
        after planning.CLAIM_GRACE and the work is found again."""
        found = []
        for run in runs:
            chain = self.chain(run, instance, synthetic=synthetic)
            if chain:
                found.append(self.run_request(run, chain))
        return found

    def chain_request(self, chain: Sequence[ChainRun], stage: int,
                      plan_tags: Mapping[str, str], days: tuple[date, date]) -> dg.RunRequest:
        """The request of the chain's `stage`-th run (0: the tick's) over its block x the
        periods holding `days`, with `plan_tags` (lane, reason, plan, days) and the rest of
        the chain."""
        job_name, first_symbol, last_symbol, timeframes = chain[0]
        tags = self.partitions.range_tags(first_symbol, *days, last_symbol=last_symbol)
        tags.update(plan_tags)
        if len(chain) > 1 or stage:
            tags[STAGE_TAG] = str(stage)
        if len(chain) > 1:
            tags[NEXT_RUNS_TAG] = json.dumps([list(entry) for entry in chain[1:]])
        job = next((j for j in self.ladder if j.job_name == job_name), None)
        plan = plan_tags[PLAN_TAG]
        return dg.RunRequest(
            run_key=plan if not stage else f"{plan}/{stage}",
            job_name=job_name or None,
            asset_selection=(list(job.asset_keys) if job is not None and job.synthetic else
                             [self.asset_keys[tf] for tf in timeframes]),
            asset_check_keys=[key for tf in timeframes for key in self.check_keys[tf]],
            tags=tags,
        )

    def next_request(self, finished: dg.DagsterRun) -> dg.RunRequest | None:
        """The run to launch after `finished` (a run of a chain that succeeded), or None."""
        chain = next_runs(finished.tags)
        if not chain:
            return None
        plan_tags = {key: finished.tags[key] for key in (LANE_TAG, REASON_TAG, PLAN_TAG,
                                                         DAYS_TAG) if key in finished.tags}
        days = (self.partitions.split_key(finished.tags[RANGE_START_TAG])[1],
                self.partitions.split_key(finished.tags[RANGE_END_TAG])[1])
        return self.chain_request(chain, int(finished.tags.get(STAGE_TAG, "0")) + 1, plan_tags,
                                  days)


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
