"""alerts_sensor: failed checks, failed runs and hard_failed tasks become notifications,
one per incident until it clears, then a recovery notice."""

import json
from collections.abc import Mapping, Sequence

import dagster as dg
from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus

from agg_pipeline import settings
from agg_pipeline.defs.partitions import SYMBOLS_PARTITIONS_NAME, TimePartitioning
from agg_pipeline.defs.requests import database_now
from agg_pipeline.defs.resources import MarketDatabase
from agg_pipeline.defs.tags import REASON_TAG
from agg_pipeline.engine import alerts
from agg_pipeline.engine.alerts import Incident

RECENT_RUNS = 200


COMPLETED = {AssetCheckExecutionRecordStatus.SUCCEEDED, AssetCheckExecutionRecordStatus.FAILED}


def failed_checks(instance: dg.DagsterInstance,
                  check_keys: Sequence[dg.AssetCheckKey]) -> list[Incident]:
    """Checks (of `check_keys`) whose latest completed evaluation failed (a planned evaluation
    that never ran, because its asset failed first, neither opens nor clears anything)."""
    keys = sorted(check_keys, key=lambda key: key.to_user_string())
    incidents = []
    for key in keys:
        history = instance.event_log_storage.get_asset_check_execution_history(
            key, limit=1, status=COMPLETED)
        record = history[0] if history else None
        if record is None or record.status != AssetCheckExecutionRecordStatus.FAILED:
            continue
        evaluation = record.event.dagster_event.asset_check_evaluation_data
        summary = {k: v.value for k, v in evaluation.metadata.items()
                   if isinstance(v.value, int | float | str) and k != "offenders"}
        incidents.append(Incident(
            key=f"check:{key.to_user_string()}", kind="check",
            summary=(f"{evaluation.severity.value} check {key.name} failed on "
                     f"{key.asset_key.to_user_string()}"),
            details={"run_id": record.run_id, **summary}))
    return incidents


def failed_runs(instance: dg.DagsterInstance, partitions: TimePartitioning,
                symbols_sets: Mapping[str, str] | None = None) -> list[Incident]:
    """Each symbol whose latest finished run failed (a run covering many symbols counts for
    each of them, so a later run of other symbols does not clear it), and each job whose
    latest finished run without partitions failed. `symbols_sets`: each ladder job's symbols
    partitions (a run's block lies in its own job's order); a run of another job than
    aggregate_bars (an optional rung, the synthetic index) is its symbol's subject with the
    job's name, so the symbol's next 5m/1h run does not clear it."""
    records = instance.get_run_records(
        dg.RunsFilter(statuses=[dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE]),
        limit=RECENT_RUNS)
    sets = dict(symbols_sets or {})
    orders: dict[str, Sequence[str]] = {}
    latest: dict[str, tuple[dg.DagsterRun, int]] = {}
    for record in records:  # newest first
        run = record.dagster_run
        name = sets.get(run.job_name, SYMBOLS_PARTITIONS_NAME)
        if name not in orders:
            orders[name] = instance.get_dynamic_partitions(name)
        symbols = partitions.run_symbols(run.tags, orders[name])
        suffix = "" if name == SYMBOLS_PARTITIONS_NAME else f" ({run.job_name})"
        subjects = [f"{symbol}{suffix}" for symbol in symbols] or [run.job_name]
        for subject in subjects:
            latest.setdefault(subject, (run, len(subjects)))
    return [
        Incident(key=f"run:{subject}", kind="run",
                 summary=f"run {run.run_id[:8]} of {run.job_name} for {subject} failed"
                         + (f" (one of the run's {covered} symbols)" if covered > 1 else ""),
                 details={"run_id": run.run_id, "job": run.job_name,
                          "reason": run.tags.get(REASON_TAG, "")})
        for subject, (run, covered) in sorted(latest.items())
        if run.status == dg.DagsterRunStatus.FAILURE
    ]


def _owed(current: dict[str, Incident], notified: dict[str, dict]
          ) -> list[tuple[str, str, Incident]]:
    """(key, status, incident) of every alert this tick owes: `firing` for each open incident
    not yet told, `resolved` for each told one that has cleared."""
    owed = [(key, "firing", incident) for key, incident in current.items()
            if key not in notified]
    owed += [(key, "resolved", Incident(key=key, kind=told["kind"],
                                        summary=f"cleared: {told['summary']}"))
             for key, told in notified.items() if key not in current]
    return owed


def _outcome(open_incidents: int, sent: list[str], failed: list[str]) -> str:
    """The tick's skip reason: what was delivered, and how many were not (never the URL)."""
    if failed:
        return (f"{len(failed)} alerts not delivered, will be retried next tick; "
                f"{len(sent)} delivered; {open_incidents} open incidents")
    if sent:
        return f"{len(sent)} alerts delivered; {open_incidents} open incidents"
    return f"{open_incidents} open incidents, nothing new"


ALERTS_SENSOR = dict(  # the alerts_sensor's definition (build_alerts_sensor)
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description=(
        "Failed asset checks, failed runs and hard_failed tasks become alerts: a structured "
        f"log line, and a JSON POST to {settings.ALERT_WEBHOOK_VAR} when set. One alert per "
        "incident until it clears, then a recovery notice. Deliveries run concurrently within "
        f"{alerts.DELIVERY_BUDGET_SECONDS:.0f} s a tick; what did not get through is retried "
        "on the next tick."
    ),
)


def build_alerts_sensor(check_keys: Sequence[dg.AssetCheckKey],
                        partitions: TimePartitioning,
                        symbols_sets: Mapping[str, str]) -> dg.SensorDefinition:
    """alerts_sensor over the Definitions' checks, partitions and ladder jobs' symbols
    partitions (job name -> partitions name)."""
    keys = list(check_keys)
    sets = dict(symbols_sets)

    @dg.sensor(**ALERTS_SENSOR)
    def alerts_sensor(context: dg.SensorEvaluationContext,
                      market_db: MarketDatabase) -> dg.SensorResult:
        return alerts_tick(context, market_db, keys, partitions, sets)

    return alerts_sensor


def alerts_tick(context: dg.SensorEvaluationContext, market_db: MarketDatabase,
                check_keys: Sequence[dg.AssetCheckKey], partitions: TimePartitioning,
                symbols_sets: Mapping[str, str]) -> dg.SensorResult:
    """One alerts_sensor evaluation."""
    with market_db.connect() as conn:
        now = database_now(conn)
        current = alerts.hard_failed_tasks(conn)
    current += (failed_checks(context.instance, check_keys)
                + failed_runs(context.instance, partitions, symbols_sets))
    by_key = {incident.key: incident for incident in current}
    notified: dict[str, dict] = json.loads(context.cursor) if context.cursor else {}

    owed = _owed(by_key, notified)
    # within the tick's delivery budget, whatever the webhook does: the cursor below is
    # always returned, so what was delivered is never sent again
    errors = alerts.deliver_all([alerts.payload(incident, status, now)
                                 for _, status, incident in owed])
    sent, failed = [], []
    for (key, status, incident), error in zip(owed, errors, strict=True):
        if error:
            failed.append(f"{status} {key}: {error}")
            continue  # not recorded: retried next tick
        if status == "firing":
            notified[key] = {"summary": incident.summary, "kind": incident.kind}
        else:
            del notified[key]
        sent.append(f"{status} {key}")
    for line in sent:
        context.log.info(line)
    if failed:
        context.log.error(f"{len(failed)} of {len(owed)} alerts not delivered, will be retried "
                          "next tick: " + "; ".join(failed))
    return dg.SensorResult(cursor=json.dumps(notified, sort_keys=True),
                           skip_reason=_outcome(len(by_key), sent, failed))


def __getattr__(name: str) -> object:
    """alerts_sensor: the process's default Definitions' (defs/factory.py)."""
    from agg_pipeline.defs import factory

    return factory.default_part(__name__, name)
