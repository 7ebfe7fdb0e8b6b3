"""Run requests for the schedule and sensors: one run per symbol over a range of days."""


from collections.abc import Iterable
from datetime import date

import dagster as dg
import psycopg

from agg_pipeline.defs.assets import ASSET_KEY_BY_TIMEFRAME
from agg_pipeline.defs.checks import CHECK_KEYS_BY_TIMEFRAME
from agg_pipeline.defs.partitions import SYMBOL_TAG, range_tags

IN_FLIGHT = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
]


def symbols_in_flight(instance: dg.DagsterInstance) -> set[str]:
    """Symbols with a run queued or running: requesting another would duplicate it."""
    records = instance.get_run_records(dg.RunsFilter(statuses=IN_FLIGHT), limit=1000)
    return {r.dagster_run.tags[SYMBOL_TAG] for r in records if SYMBOL_TAG in r.dagster_run.tags}


def run_request(symbol: str, timeframes: Iterable[str], first_day: date, last_day: date,
                *, run_key: str, reason: str) -> dg.RunRequest:
    timeframes = list(timeframes)
    return dg.RunRequest(
        run_key=run_key,
        asset_selection=[ASSET_KEY_BY_TIMEFRAME[tf] for tf in timeframes],
        asset_check_keys=[key for tf in timeframes for key in CHECK_KEYS_BY_TIMEFRAME[tf]],
        tags={**range_tags(symbol, first_day, last_day), "agg/reason": reason},
    )


def database_now(conn: psycopg.Connection):
    """Finality is judged on the database clock, as the engine does."""
    return conn.execute("SELECT now()").fetchone()[0]
