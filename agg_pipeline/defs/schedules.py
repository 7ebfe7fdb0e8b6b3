"""The schedule that replaces the cron worker."""


import dagster as dg

from agg_pipeline import settings
from agg_pipeline.defs.jobs import AssetJob
from agg_pipeline.defs.partitions import SYNTHETIC_PARTITIONS_NAME
from agg_pipeline.defs.requests import LiveRequests, database_now, summary, synced_symbols
from agg_pipeline.defs.resources import MarketDatabase
from agg_pipeline.engine import planning
from agg_pipeline.listing import capped


def build_catchup_schedule(job: AssetJob,
                           live: LiveRequests) -> dg.ScheduleDefinition:
    """catchup_schedule, launching `job` with `live`'s run requests."""

    @dg.schedule(
        job=job,
        cron_schedule="*/5 * * * *",
        execution_timezone="UTC",
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description=(
            "Every 5 minutes, brings every enabled task up to its frontier through the live "
            "planner: runs over blocks of symbols x days, in the order of SPEC contract 12 "
            "(mandatory, 5m before 1h, task_priority, least recently successful), at most "
            f"{settings.MAX_RUNS_PER_TICK_VAR} per tick, never for work a run in flight was "
            "requested for (by this schedule or a sensor). Its runs are aggregate_bars ones; "
            "a block's optional timeframes follow them (ladder_sensor); a synthetic series' "
            "new minutes are source_frontier_sensor's (its index is built before its 5m)."
        ),
    )
    def catchup_schedule(context: dg.ScheduleEvaluationContext,
                         market_db: MarketDatabase) -> list[dg.RunRequest] | dg.SkipReason:
        return catchup_tick(context, market_db, live)

    return catchup_schedule


def catchup_tick(context: dg.ScheduleEvaluationContext, market_db: MarketDatabase,
                 live: LiveRequests) -> list[dg.RunRequest] | dg.SkipReason:
    """One catchup_schedule evaluation."""
    first_day = live.first_day
    # a schedule launches one job: a synthetic series' 5m work, whose run follows its index's
    # (synthetic_bars), is left to source_frontier_sensor, which finds the same work
    synthetics = set(synced_symbols(context.instance, SYNTHETIC_PARTITIONS_NAME))
    with market_db.connect() as conn:
        as_of = database_now(conn)

        def find_work():
            tasks = planning.task_states(conn, as_of)
            found = planning.catchup_work(tasks, roots_only=False, first_day=first_day)
            return tasks, [w for w in found
                           if w.symbol not in synthetics or "5m" not in w.timeframes]

        tasks, found = live.plan(context.instance, conn, "catchup",
                                 synced_symbols(context.instance), find_work)
    for line in capped([f"task {symbol!r} / {timeframe!r} not scheduled: {problem}"
                        for (symbol, timeframe), problem in sorted(tasks.problems.items())],
                       "tasks not scheduled"):
        context.log.warning(line)
    left = summary(found)
    if not found.runs:
        return dg.SkipReason("all tasks at their frontier" + (f" ({left})" if left else ""))
    if left:
        context.log.info(left)
    return live.run_requests(found.runs, context.instance, synthetic=False)


def __getattr__(name: str) -> object:
    """catchup_schedule: the process's default Definitions' (defs/factory.py)."""
    from agg_pipeline.defs import factory

    return factory.default_part(__name__, name)
