"""What ends a run whose worker died, on every launcher (issue 18, item 2).

Dagster 1.13's run monitoring fails a STARTED run whose worker died only through a launcher
that can check its workers (`supports_check_run_worker_health`): K8sRunLauncher asks
Kubernetes about the run's Job, DefaultRunLauncher (`agg-pipeline dev`, compose) cannot. There,
the only thing that notices a dead worker is the code server that started it, from its own
memory (dagster/_grpc/server.py, `_check_for_orphaned_runs`): when the code server dies with its
workers (kill -9 of the process group, the host lost), the one started after it knows nothing
of them, and the run stays STARTED until run_monitoring.max_runtime_seconds (6 hours), the
planner's claims with it. Dagster keeps no heartbeat of run workers, and a run tag cannot be
one (add_run_tags rewrites the whole stored run, racing the worker's own status changes), so:

- `heartbeat_executor`, the project's executor: Dagster's in-process executor, plus a thread
  recording in data_agg_run_heartbeats (migration 020) every AGG_HEARTBEAT_SECONDS that the
  worker is alive, from before the run's first step until after its last;
- `run_liveness_sensor`: a STARTED run whose worker has been silent for
  AGG_HEARTBEAT_TIMEOUT_SECONDS is suspected, and failed at a later tick if it is still silent
  then (so a blind spot of the sensor's own, a database or daemon outage, is not taken for a
  dead worker). run_retries re-runs it; the planner's claims follow the run (requests.py).

A STARTING run whose worker never came up and a CANCELING run whose worker is gone are
Dagster's (run_monitoring's start and cancel timeouts, 180 s, any launcher).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

import dagster as dg
from dagster._core.events import JobFailureData, RunFailureReason

from agg_pipeline import settings
from agg_pipeline.db import connection
from agg_pipeline.defs.resources import MarketDatabase
from agg_pipeline.engine import heartbeats

if TYPE_CHECKING:
    from dagster._core.execution.context.system import PlanOrchestrationContext
    from dagster._core.execution.plan.plan import ExecutionPlan
    from dagster._core.execution.retries import RetryMode
    from dagster._core.execution.step_dependency_config import StepDependencyConfig

DEAD_WORKER_MESSAGE = "run worker silent"  # the start of the failure message, for the UI


class HeartbeatExecutor(dg.Executor):
    """Another executor's steps, with the worker's heartbeat around them."""

    def __init__(self, inner: dg.Executor) -> None:
        self._inner = inner

    @property
    def retries(self) -> RetryMode:
        return self._inner.retries

    @property
    def step_dependency_config(self) -> StepDependencyConfig:
        return self._inner.step_dependency_config

    def execute(self, plan_context: PlanOrchestrationContext,
                execution_plan: ExecutionPlan) -> Iterator[dg.DagsterEvent]:
        run = plan_context.dagster_run
        url = MarketDatabase().url()
        beater = heartbeats.Beater(lambda: connection.connect(url, autocommit=True), run.run_id,
                                   run.job_name, settings.heartbeat_seconds())
        beater.start()
        try:
            yield from self._inner.execute(plan_context, execution_plan)
        finally:
            beater.stop()


@dg.executor(name="in_process_heartbeat",
             config_schema=dg.in_process_executor.config_schema)
def heartbeat_executor(init_context: dg.InitExecutorContext) -> dg.Executor:
    """Dagster's in-process executor (a run's steps are sequential: one process, no process
    start per step), whose worker records a heartbeat (run_liveness_sensor)."""
    return HeartbeatExecutor(dg.in_process_executor.executor_creation_fn(init_context))


@dataclass
class Verdict:
    dead: list[tuple[dg.DagsterRun, heartbeats.Heartbeat]] = field(default_factory=list)
    suspects: dict[str, dict[str, str]] = field(default_factory=dict)  # the next cursor
    forget: list[str] = field(default_factory=list)  # rows of runs no longer in flight


def judge(beats: Sequence[heartbeats.Heartbeat], runs: Mapping[str, dg.DagsterRun],
          suspects: Mapping[str, Mapping[str, str]], *, timeout_s: float,
          heartbeat_s: float) -> Verdict:
    """Which recorded workers are dead. A STARTED run silent for `timeout_s` becomes a suspect
    (remembered with its last beat and since when); it is dead when a later look, at least two
    heartbeats after the first, finds the same last beat. A row whose run ended, or that
    Dagster does not know and is silent, is forgotten."""
    verdict = Verdict()
    for beat in beats:
        run = runs.get(beat.run_id)
        silent = beat.silent_s >= timeout_s
        if run is None or run.is_finished:
            if run is not None or silent:
                verdict.forget.append(beat.run_id)
            continue
        if run.status != dg.DagsterRunStatus.STARTED or not silent:
            continue
        last = beat.beat_at.isoformat()
        seen = suspects.get(beat.run_id, {})
        since = seen["since"] if seen.get("beat_at") == last else beat.checked_at.isoformat()
        if (beat.checked_at - datetime.fromisoformat(since)).total_seconds() >= 2 * heartbeat_s:
            verdict.dead.append((run, beat))
        else:
            verdict.suspects[beat.run_id] = {"beat_at": last, "since": since}
    return verdict


def fail_dead_run(instance: dg.DagsterInstance, run: dg.DagsterRun,
                  beat: heartbeats.Heartbeat) -> bool:
    """Fail the run as Dagster's own monitoring does a crashed worker's (so run_retries re-runs
    it), unless it ended meanwhile."""
    current = instance.get_run_by_id(run.run_id)
    if current is None or current.status != dg.DagsterRunStatus.STARTED:
        return False
    instance.report_run_failed(
        current,
        f"{DEAD_WORKER_MESSAGE}: its worker {beat.worker} last recorded a heartbeat at "
        f"{beat.beat_at.isoformat()}, {beat.silent_s:.0f} s ago (it beats every "
        f"{settings.heartbeat_seconds()} s): taken for dead (killed, or its host lost) and "
        "failed by run_liveness_sensor",
        JobFailureData(error=None, failure_reason=RunFailureReason.UNEXPECTED_TERMINATION))
    return True


RUN_LIVENESS_SENSOR = dict(  # the run_liveness_sensor's definition, but for its interval
    default_status=dg.DefaultSensorStatus.RUNNING,
    description=(
        "Fails a STARTED run whose worker stopped recording its heartbeat "
        f"(data_agg_run_heartbeats) for {settings.HEARTBEAT_TIMEOUT_VAR} (default "
        f"{settings.DEFAULT_HEARTBEAT_TIMEOUT_S} s), seen at two ticks: a worker killed with its "
        "code server, or on a lost host, which Dagster's DefaultRunLauncher cannot see. "
        "run_retries re-runs it; the planner's claims follow the run."
    ),
)


def run_liveness_tick(context: dg.SensorEvaluationContext,
                      market_db: MarketDatabase) -> dg.SkipReason:
    """One run_liveness_sensor evaluation."""
    suspects = json.loads(context.cursor) if context.cursor else {}
    with market_db.connect(autocommit=True) as conn:
        beats = heartbeats.recorded(conn)
        records = context.instance.get_run_records(
            dg.RunsFilter(run_ids=[b.run_id for b in beats])) if beats else []
        verdict = judge(beats, {r.dagster_run.run_id: r.dagster_run for r in records}, suspects,
                        timeout_s=settings.heartbeat_timeout_seconds(),
                        heartbeat_s=settings.heartbeat_seconds())
        failed = []
        for run, beat in verdict.dead:
            if fail_dead_run(context.instance, run, beat):
                context.log.warning(f"run {run.run_id}: worker {beat.worker} silent for "
                                    f"{beat.silent_s:.0f} s, the run is failed")
                failed.append(run.run_id)
        heartbeats.forget(conn, verdict.forget + [run.run_id for run, _ in verdict.dead])
    context.update_cursor(json.dumps(verdict.suspects, sort_keys=True))
    return dg.SkipReason(
        f"{len(beats)} run worker(s) beating or recorded; failed {failed or 'none'}; "
        f"suspected {sorted(verdict.suspects) or 'none'}; forgot {len(verdict.forget)}")


def build_run_liveness_sensor(interval_seconds: int) -> dg.SensorDefinition:
    """run_liveness_sensor, looking every `interval_seconds` (PipelineConfig's
    liveness_check_seconds, AGG_LIVENESS_CHECK_SECONDS)."""

    @dg.sensor(minimum_interval_seconds=interval_seconds, **RUN_LIVENESS_SENSOR)
    def run_liveness_sensor(context: dg.SensorEvaluationContext,
                            market_db: MarketDatabase) -> dg.SkipReason:
        return run_liveness_tick(context, market_db)

    return run_liveness_sensor


def __getattr__(name: str) -> object:
    """run_liveness_sensor: the process's default Definitions' (defs/factory.py)."""
    from agg_pipeline.defs import factory

    return factory.default_part(__name__, name)
