"""The schedule that replaces the cron worker."""


import dagster as dg

from agg_pipeline import settings
from agg_pipeline.defs.jobs import aggregate_bars_job
from agg_pipeline.defs.partitions import FIRST_DAY, SYMBOLS_PARTITIONS_NAME
from agg_pipeline.defs.requests import database_now, run_request, symbols_in_flight
from agg_pipeline.defs.resources import MarketDatabase
from agg_pipeline.engine import planning


@dg.schedule(
    job=aggregate_bars_job,
    cron_schedule="*/5 * * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description=(
        "Every 5 minutes, brings every enabled task up to its frontier in the order of SPEC "
        "contract 12 (mandatory, 5m before 1h, task_priority, least recently successful), at "
        f"most {settings.SCHEDULE_MAX_RUNS_VAR} runs per tick, never for a symbol with a run "
        "already in flight."
    ),
)
def catchup_schedule(context: dg.ScheduleEvaluationContext,
                     market_db: MarketDatabase) -> list[dg.RunRequest] | dg.SkipReason:
    with market_db.connect() as conn:
        as_of = database_now(conn)
        plan = planning.plan_catchup(conn, as_of, first_day=FIRST_DAY)
    for (symbol, timeframe), problem in sorted(plan.problems.items()):
        context.log.warning(f"task {symbol!r} / {timeframe!r} not scheduled: {problem}")
    known = set(context.instance.get_dynamic_partitions(SYMBOLS_PARTITIONS_NAME))
    busy = symbols_in_flight(context.instance)
    pending = [w for w in plan.work if w.symbol in known and w.symbol not in busy]
    limit = settings.schedule_max_runs()
    tick = context.scheduled_execution_time.strftime("%Y%m%dT%H%M")
    requests = [
        run_request(w.symbol, w.timeframes, w.first_day, w.last_day,
                    run_key=f"catchup:{w.symbol}:{w.signature}:{tick}", reason="catch-up")
        for w in pending[:limit]
    ]
    if len(pending) > limit:
        context.log.info(f"{len(pending) - limit} symbols left for the next tick")
    if not requests:
        waiting = len(plan.work) - len(pending)
        return dg.SkipReason(f"all tasks at their frontier ({waiting} symbols busy or unsynced)")
    return requests
