"""Bounded Dagster storage (issue 20): a retention of Dagster's run and event storage.

Dagster 1.13 prunes only sensor and schedule ticks (dagster.yaml `retention:`); runs and their
events are kept for ever (event-log retention is dagster-io/dagster issue #33785, PR #33863,
not released). A live run at 1,000 symbols stores ~9 MB, so `dagster_storage_retention_sensor`
deletes old finished runs of the live lane (`agg/lane=live`) with Dagster's own
`instance.delete_run` (the run, its tags, its events and their asset-event tags):

- a successful run older than AGG_DAGSTER_RETENTION_DAYS (7), a failed or canceled one older
  than AGG_DAGSTER_RETENTION_FAILED_DAYS (30); 0 or `off` disables either;
- never a run that holds the latest materialisation or observation of any asset partition (or
  of an unpartitioned asset), nor the latest evaluation of any asset check: each partition
  keeps its latest materialisation and the counts on it (SPEC contract 14), so the UI's
  partition status, a partition's page and the asset's latest values are unchanged;
- never one of the newest `alerts.RECENT_RUNS` finished runs (whatever their age): alerts_sensor
  decides from them which symbols' latest run failed, and a quiet deployment keeps its recent
  history;
- runs outside the live lane are left alone: runbook runs (`agg/runbook`, the record of what
  an operator changed), UI and CLI backfills (`dagster/backfill`, or launched by hand) are
  few and an operator's to delete.

Work per tick is bounded: at most AGG_DAGSTER_RETENTION_RUNS_PER_TICK deletions, and the
examination stops after EXAMINE_BUDGET_SECONDS, so a tick stays well inside Dagster's 60 s
sensor limit. The cursor is two run ids (one per age class): the last run examined and kept,
so runs kept for ever (the last run to materialise a day no run has touched since) are not
re-examined every tick; when a class's candidates run out, its next tick starts again from the
oldest (a kept run is superseded later, then deleted).

What stays at a steady state: the last D days of live runs, plus one run per set of partitions
no later run re-materialised (typically each day's last live run, or fewer with month
partitions): storage grows with partitions, not with runs.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import dagster as dg
from dagster._core.events import DagsterEventType

from agg_pipeline import settings
from agg_pipeline.defs.alerts import RECENT_RUNS
from agg_pipeline.defs.tags import LANE_TAG, LIVE_LANE

INTERVAL_SECONDS = 300
EXAMINE_BUDGET_SECONDS = 20.0  # examining candidates; deleting them then stops at:
DELETE_BUDGET_SECONDS = 40.0  # elapsed since the tick began (Dagster's limit is 60 s)
PAGE = 100  # run records fetched at once
OWNERSHIP_CHUNK = 50  # materialisation records read at once to learn their run
OBSERVATIONS_LIMIT = 1000  # a run with more observations is kept without looking (none here)
KEEP_NEWEST = RECENT_RUNS  # the newest finished runs, kept whatever their age

SUCCEEDED = (dg.DagsterRunStatus.SUCCESS,)
ENDED_BADLY = (dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED)
LATEST = "latest"  # a kept run's reason starts with it when it holds the latest of something


@dataclass(frozen=True)
class Policy:
    success_days: int | None  # None: never deleted
    failed_days: int | None
    max_deletes: int
    keep_newest: int = KEEP_NEWEST

    @classmethod
    def from_settings(cls) -> Policy:
        return cls(success_days=settings.dagster_retention_days(),
                   failed_days=settings.dagster_retention_failed_days(),
                   max_deletes=settings.dagster_retention_runs_per_tick(),
                   keep_newest=KEEP_NEWEST)

    @property
    def off(self) -> bool:
        return self.success_days is None and self.failed_days is None

    def days(self, failed: bool) -> int | None:
        return self.failed_days if failed else self.success_days

    def cutoff(self, failed: bool, now: datetime) -> datetime | None:
        """Runs of the class that ended before this instant are due; None: the class is off."""
        days = self.days(failed)
        return None if days is None else now - timedelta(days=days)


@dataclass(frozen=True)
class RunInfo:
    run_id: str
    failed: bool  # FAILURE or CANCELED
    ended_at: datetime  # the run's last update (its end, for a finished run)


@dataclass
class Decision:
    delete: list[str] = field(default_factory=list)
    kept: dict[str, str] = field(default_factory=dict)  # run id -> why
    last_kept: str | None = None  # the cursor: the last run examined and kept
    exhausted: bool = False  # every candidate was examined
    stopped: str | None = None  # "bound" or "time" when it stopped before that


def decide(runs: Iterable[RunInfo], policy: Policy, now: datetime,
           holds: Callable[[str], str | None], *, room: int,
           out_of_time: Callable[[], bool] = lambda: False) -> Decision:
    """Which of `runs` (oldest first, one age class) to delete: those past their class's age
    whose `holds(run_id)` is None (holding nothing latest), at most `room`. Examination stops
    when `room` deletions are found or `out_of_time()`; a run kept for its age or what it
    holds moves the cursor."""
    decision = Decision()
    iterator = iter(runs)
    while True:
        if len(decision.delete) >= room:
            decision.stopped = "bound"
            return decision
        if out_of_time():
            decision.stopped = "time"
            return decision
        run = next(iterator, None)
        if run is None:
            decision.exhausted = True
            return decision
        cutoff = policy.cutoff(run.failed, now)
        if cutoff is None or run.ended_at >= cutoff:
            why = "young" if cutoff is not None else "its class is never deleted"
        else:
            why = holds(run.run_id)
        if why is None:
            decision.delete.append(run.run_id)
        else:
            decision.kept[run.run_id] = why
            decision.last_kept = run.run_id


class LatestHolders:
    """Which runs hold the latest of something, read from Dagster's storage with its own
    methods (no SQL on Dagster's tables)."""

    def __init__(self, instance: dg.DagsterInstance, check_keys: Sequence[dg.AssetCheckKey],
                 keep_newest: int) -> None:
        self.instance = instance
        self.fixed: dict[str, str] = {}
        if keep_newest:
            for run_id in instance.get_run_ids(
                    dg.RunsFilter(statuses=[dg.DagsterRunStatus.SUCCESS,
                                            dg.DagsterRunStatus.FAILURE]), limit=keep_newest):
                self.fixed[run_id] = f"one of the newest {keep_newest} finished runs"
        records = instance.get_asset_records()
        self.asset_keys = [r.asset_entry.asset_key for r in records]
        for record in records:  # an unpartitioned asset's latest, and every asset's newest
            entry = record.asset_entry
            name = entry.asset_key.to_user_string()
            if entry.last_materialization_record is not None:
                self.fixed[entry.last_materialization_record.run_id] = (
                    f"{LATEST} materialisation of {name}")
            if entry.last_observation_record is not None:
                self.fixed[entry.last_observation_record.run_id] = (
                    f"{LATEST} observation of {name}")
        latest_checks = instance.event_log_storage.get_latest_asset_check_execution_by_key(
            list(check_keys))
        for key, execution in latest_checks.items():
            self.fixed.setdefault(execution.run_id,
                                  f"{LATEST} evaluation of check {key.to_user_string()}")

    def __call__(self, run: dg.DagsterRun) -> str | None:
        """Why `run` must be kept, or None."""
        if run.run_id in self.fixed:
            return self.fixed[run.run_id]
        return self._materialisations(run) or self._observations(run)

    def _materialisations(self, run: dg.DagsterRun) -> str | None:
        """Whether the run wrote the latest materialisation of some partition. Its
        materialisations lie between its first and last one's storage ids: each partition
        materialised in that span (by this run, or a run interleaved with it) whose latest
        materialisation is inside the span is looked up to see whose it is."""
        mat = DagsterEventType.ASSET_MATERIALIZATION
        first = self.instance.get_records_for_run(run.run_id, of_type=mat, limit=1).records
        if not first:
            return None
        last = self.instance.get_records_for_run(run.run_id, of_type=mat, limit=1,
                                                 ascending=False).records
        low, high = first[0].storage_id, last[0].storage_id
        for key in sorted(run.asset_selection or self.asset_keys, key=lambda k: k.path):
            partitions = self.instance.get_materialized_partitions(
                key, after_cursor=low - 1, before_cursor=high + 1)
            if not partitions:  # (an empty set would mean every partition below)
                continue
            latest = self.instance.get_latest_storage_id_by_partition(
                key, mat, partitions=set(partitions))
            inside = sorted(i for i in latest.values() if low <= i <= high)
            for start in range(0, len(inside), OWNERSHIP_CHUNK):
                chunk = inside[start:start + OWNERSHIP_CHUNK]
                found = self.instance.fetch_materializations(
                    dg.AssetRecordsFilter(asset_key=key, storage_ids=chunk), limit=len(chunk))
                for record in found.records:
                    if record.run_id == run.run_id:
                        return (f"{LATEST} materialisation of {key.to_user_string()} "
                                f"{record.partition_key}")
        return None

    def _observations(self, run: dg.DagsterRun) -> str | None:
        """Whether the run wrote the latest observation of some partition (the project's
        observations are the frontier sensor's, outside any run: this is for completeness)."""
        obs = DagsterEventType.ASSET_OBSERVATION
        records = self.instance.get_records_for_run(run.run_id, of_type=obs,
                                                    limit=OBSERVATIONS_LIMIT + 1).records
        if len(records) > OBSERVATIONS_LIMIT:
            return f"more than {OBSERVATIONS_LIMIT} observations, not examined"
        mine: dict[dg.AssetKey, dict[str, int]] = {}
        for record in records:
            if record.asset_key is not None and record.partition_key is not None:
                by_partition = mine.setdefault(record.asset_key, {})
                by_partition[record.partition_key] = max(
                    record.storage_id, by_partition.get(record.partition_key, 0))
        for key, by_partition in mine.items():
            latest = self.instance.get_latest_storage_id_by_partition(
                key, obs, partitions=set(by_partition))
            for partition, storage_id in by_partition.items():
                if latest.get(partition) == storage_id:
                    return f"{LATEST} observation of {key.to_user_string()} {partition}"
        return None


def candidates(instance: dg.DagsterInstance, failed: bool, cutoff: datetime,
               cursor: str | None) -> Iterator[tuple[RunInfo, dg.DagsterRun]]:
    """Finished live-lane runs of one age class that ended before `cutoff`, oldest first,
    after the run `cursor`, fetched a page at a time."""
    filters = dg.RunsFilter(tags={LANE_TAG: LIVE_LANE},
                            statuses=list(ENDED_BADLY if failed else SUCCEEDED),
                            created_before=cutoff, updated_before=cutoff)
    while True:
        page = instance.get_run_records(filters, limit=PAGE, ascending=True, cursor=cursor)
        for record in page:
            yield (RunInfo(record.dagster_run.run_id, failed,
                           _aware(record.update_timestamp)), record.dagster_run)
        if len(page) < PAGE:
            return
        cursor = page[-1].dagster_run.run_id


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def check_keys(checks: Sequence[dg.AssetChecksDefinition] | None = None
               ) -> list[dg.AssetCheckKey]:
    """The keys of `checks` (default: the process's default Definitions' checks), sorted."""
    if checks is None:
        from agg_pipeline.defs import factory

        checks = factory.default_part("agg_pipeline.defs.checks", "all_checks")
    return sorted({key for defs in checks for key in defs.check_keys},
                  key=lambda k: (k.asset_key.path, k.name))


@dataclass
class Outcome:
    deleted: list[str]
    kept: dict[str, str]
    cursor: dict[str, str | None]
    stopped: list[str]
    policy: Policy

    @property
    def kept_latest(self) -> int:
        return sum(why.startswith(LATEST) for why in self.kept.values())

    @property
    def summary(self) -> str:
        policy = self.policy
        ages = (f"{_days(policy.success_days)} (successful) / {_days(policy.failed_days)} "
                "(failed or canceled)")
        text = (f"deleted {len(self.deleted)} runs older than {ages}; kept {self.kept_latest} "
                "holding a partition's latest materialisation (or an asset's latest "
                "observation or check evaluation)")
        newest = sum(why.startswith("one of the newest") for why in self.kept.values())
        if newest:
            text += f", {newest} among the newest {policy.keep_newest} finished runs"
        if self.stopped:
            text += f"; stopped at the tick's {' and '.join(sorted(set(self.stopped)))} bound, "
            text += "the rest next tick"
        return text


def _days(days: int | None) -> str:
    return "never" if days is None else f"{days} days"


def apply_retention(instance: dg.DagsterInstance, policy: Policy, now: datetime,
                    cursor: dict[str, str | None] | None = None, *,
                    clock: Callable[[], float] = time.monotonic,
                    checks: Sequence[dg.AssetCheckKey] | None = None) -> Outcome:
    """One pass: decide, then delete. `now` is the instant ages are measured from; `checks`
    are the Definitions' check keys (default: check_keys())."""
    began = clock()
    cursor = dict(cursor or {})
    if policy.off:
        return Outcome([], {}, cursor, [], policy)
    holders = LatestHolders(instance, check_keys() if checks is None else list(checks),
                            policy.keep_newest)
    runs: dict[str, dg.DagsterRun] = {}
    deleted_plan: list[str] = []
    kept: dict[str, str] = {}
    stopped: list[str] = []
    for failed, name in ((False, "success"), (True, "failed")):
        cutoff = policy.cutoff(failed, now)
        if cutoff is None:
            cursor[name] = None
            continue
        if len(deleted_plan) >= policy.max_deletes:
            break  # this class waits for the next tick, from its cursor

        def examined(pairs: Iterator[tuple[RunInfo, dg.DagsterRun]]) -> Iterator[RunInfo]:
            for info, run in pairs:
                runs[info.run_id] = run
                yield info

        decision = decide(
            examined(candidates(instance, failed, cutoff, cursor.get(name))), policy, now,
            lambda run_id: holders(runs[run_id]), room=policy.max_deletes - len(deleted_plan),
            out_of_time=lambda: clock() - began > EXAMINE_BUDGET_SECONDS)
        deleted_plan += decision.delete
        kept.update(decision.kept)
        if decision.stopped:
            stopped.append(decision.stopped)
        cursor[name] = None if decision.exhausted else (decision.last_kept or cursor.get(name))
    deleted = []
    for run_id in deleted_plan:
        if clock() - began > DELETE_BUDGET_SECONDS:
            stopped.append("time")
            break
        delete_run(instance, run_id)
        deleted.append(run_id)
    return Outcome(deleted, kept, cursor, stopped, policy)


def delete_run(instance: dg.DagsterInstance, run_id: str) -> None:
    """Dagster's delete_run (the run, its tags, its events and their asset-event tags), then
    the run's rows of asset_check_executions, which delete_run leaves behind in 1.13.27
    (SqlEventLogStorage.delete_events_for_run deletes event_logs and asset_event_tags only;
    no public method deletes one run's check executions: `wipe_asset` deletes an asset's all).
    They are deleted through the storage's own connection and SQLAlchemy table, and only for
    a run being deleted, never one holding a check's latest evaluation."""
    instance.delete_run(run_id)
    from dagster._core.storage.event_log.schema import AssetCheckExecutionsTable
    from dagster._core.storage.event_log.sql_event_log import SqlEventLogStorage

    storage = instance.event_log_storage
    if isinstance(storage, SqlEventLogStorage) and storage.has_table("asset_check_executions"):
        with storage.index_connection() as conn:
            conn.execute(AssetCheckExecutionsTable.delete().where(
                AssetCheckExecutionsTable.c.run_id == run_id))


STORAGE_RETENTION_SENSOR = dict(  # its definition (build_storage_retention_sensor)
    minimum_interval_seconds=INTERVAL_SECONDS,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description=(
        "Bounds Dagster's run/event storage: deletes finished live-lane runs (agg/lane=live) "
        f"older than {settings.DAGSTER_RETENTION_DAYS_VAR} (default "
        f"{settings.DEFAULT_DAGSTER_RETENTION_DAYS} days; failed or canceled ones "
        f"{settings.DAGSTER_RETENTION_FAILED_DAYS_VAR}, default "
        f"{settings.DEFAULT_DAGSTER_RETENTION_FAILED_DAYS}) with their events, never one holding "
        "a partition's latest materialisation, an asset's latest observation or a check's "
        f"latest evaluation, nor one of the newest {KEEP_NEWEST} finished runs; at most "
        f"{settings.DAGSTER_RETENTION_RUNS_PER_TICK_VAR} (default "
        f"{settings.DEFAULT_DAGSTER_RETENTION_RUNS_PER_TICK}) per tick. 0 or 'off' disables."
    ),
)


def build_storage_retention_sensor(checks: Sequence[dg.AssetChecksDefinition]
                                   ) -> dg.SensorDefinition:
    """dagster_storage_retention_sensor, keeping the runs holding the latest evaluation of
    any of `checks`."""
    keys = check_keys(checks)

    @dg.sensor(**STORAGE_RETENTION_SENSOR)
    def dagster_storage_retention_sensor(context: dg.SensorEvaluationContext) -> dg.SkipReason:
        return retention_tick(context, keys)

    return dagster_storage_retention_sensor


def retention_tick(context: dg.SensorEvaluationContext,
                   keys: Sequence[dg.AssetCheckKey]) -> dg.SkipReason:
    """One dagster_storage_retention_sensor evaluation."""
    policy = Policy.from_settings()
    if policy.off:
        return dg.SkipReason("Dagster storage retention is off "
                             f"({settings.DAGSTER_RETENTION_DAYS_VAR} and "
                             f"{settings.DAGSTER_RETENTION_FAILED_DAYS_VAR})")
    outcome = apply_retention(context.instance, policy, datetime.now(UTC),
                              json.loads(context.cursor) if context.cursor else None,
                              checks=keys)
    context.update_cursor(json.dumps(outcome.cursor, sort_keys=True))
    context.log.info(outcome.summary)
    return dg.SkipReason(outcome.summary)


def __getattr__(name: str) -> object:
    """dagster_storage_retention_sensor: the process's default Definitions'
    (defs/factory.py)."""
    from agg_pipeline.defs import factory

    return factory.default_part(__name__, name)
