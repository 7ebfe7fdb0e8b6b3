"""`agg-pipeline backfill`: materialise a rectangle of symbols x days from a terminal, in this
process, with Dagster's own Python API on the project's Dagster instance, so the runs appear
in the UI like the runs of the `backfill_bars` launchpad job (defs/backfill_job.py), which
calls `run_block` too.

It sets up what a raw `dagster asset materialize` leaves to the reader: DAGSTER_HOME (dev's,
$AGG_HOME/dagster_home), DAGSTER_POSTGRES_URL (the embedded server's Dagster database when
AGG_DATABASE_URL is unset too), the product's Dagster variables (settings.DAGSTER_PROCESS_ENV:
without them a year-long range stores one event row per partition and runs ~12x slower) and,
as dev does, AGG_START_UTC from the demo's first day. Dagster's range over a symbol x day
multi-partition is a rectangle of consecutive symbols (in the `symbols` partitions' order):
symbols that are not consecutive there go into one run per block.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path

from agg_pipeline import devserver, settings
from agg_pipeline.db import connection, embedded, migrations
from agg_pipeline.defs.tags import REASON_TAG
from agg_pipeline.engine.reasons import Reason

# Summed per asset from each partition's materialisation metadata (the engine's counts)
COUNTS = (("bars_inserted", "new"), ("bars_updated", "restated"),
          ("bars_soft_deleted", "withdrawn"), ("bars_unchanged", "unchanged"))
# A CLI backfill's run is not re-launched by the daemon's run retries (dagster.yaml): its
# operator is watching it and runs it again when needed.
NO_RETRY_TAGS = {"dagster/max_retries": "0", REASON_TAG: Reason.CLI_BACKFILL.tag()}


class BackfillError(ValueError):
    """The backfill cannot start (bad arguments, an unknown symbol): one line for the CLI."""


def prepare_environment(project_dagster_yaml: Path) -> str:
    """DAGSTER_HOME, DAGSTER_POSTGRES_URL, the Dagster variables and AGG_START_UTC, each only
    when unset (the user's values win); returns the market-data database's URL."""
    settings.validate()
    home = settings.agg_home()
    if settings.configured_database_url():
        if not os.environ.get(settings.DAGSTER_STORAGE_URL_VAR):
            raise BackfillError(
                f"{settings.DATABASE_URL_VAR} is set but {settings.DAGSTER_STORAGE_URL_VAR} is "
                "not: set it to the Dagster storage your webserver and daemon use")
        market_url = connection.market_database_url()
    else:
        server = embedded.ensure_server(home)
        market_url = server.database_url(embedded.MARKET_DATABASE)
        os.environ.setdefault(settings.DAGSTER_STORAGE_URL_VAR,
                              server.database_url(embedded.DAGSTER_DATABASE))
    connection.connect(connection.without_driver(
        os.environ[settings.DAGSTER_STORAGE_URL_VAR])).close()  # a clear error, early
    if "DAGSTER_HOME" not in os.environ:
        dagster_home = home / "dagster_home"
        if not (dagster_home / "dagster.yaml").is_file():  # dev writes it at every start
            devserver.write_instance(dagster_home, project_dagster_yaml)
        os.environ["DAGSTER_HOME"] = str(dagster_home)
    settings.apply_dagster_process_env()
    with connection.connect(market_url) as conn:
        migrations.assert_migrated(conn)
        first = _demo_first_day(conn)
    if first is not None and settings.START_VAR not in os.environ:
        os.environ[settings.START_VAR] = first.isoformat()  # as dev does: the same partitions
    return market_url


def _demo_first_day(conn) -> datetime | None:
    from agg_pipeline import demo

    first = demo.first_minute(conn)
    if first is None:
        return None
    return datetime.combine(first.astimezone(UTC).date(), datetime.min.time(), tzinfo=UTC)


def blocks(symbols: Sequence[str], order: Sequence[str]) -> list[list[str]]:
    """`symbols` cut into runs of consecutive symbols of `order` (the partitions' order)."""
    from agg_pipeline.defs.requests import consecutive_blocks

    return consecutive_blocks(symbols, order)


@dataclass(frozen=True)
class PlannedBlock:
    job_name: str
    symbols: list[str]
    keys: list  # the assets it materialises


def ladder_blocks(instance, symbols: Sequence[str], keys: Sequence) -> list[PlannedBlock]:
    """The runs of a backfill of `keys` over `symbols`, in ladder order: one job per
    partitions definition (defs/jobs.py), each over blocks of the symbols consecutive in its
    own partitions: synthetic_bars over the synthetic series among them, aggregate_bars,
    then each optional timeframe over the symbols enabling it. A job none of whose assets or
    symbols is chosen has no run (no synthetic_bars_1m without a synthetic series)."""
    from agg_pipeline.defs.factory import default_parts

    found = []
    for job in default_parts().live_requests.ladder:
        chosen = [key for key in job.asset_keys if key in keys]
        order = instance.get_dynamic_partitions(job.symbols_name)
        if chosen:
            found += [PlannedBlock(job.job_name, block, chosen)
                      for block in blocks(symbols, order)]
    return found


@dataclass(frozen=True)
class RunSummary:
    run_id: str
    symbols: list[str]
    success: bool
    counts: dict[str, dict[str, int]]  # asset -> count name -> sum
    errors: list[str]


def check_days(first: date, last: date) -> None:
    from agg_pipeline.defs.partitions import FIRST_DAY

    today = datetime.now(UTC).date()
    if last < first:
        raise BackfillError(f"LAST_DAY {last} is before FIRST_DAY {first}")
    if first < FIRST_DAY:
        raise BackfillError(f"FIRST_DAY {first} is before the first day partition, {FIRST_DAY} "
                            f"({settings.START_VAR}): no bar is built before it")
    if last > today:
        raise BackfillError(f"LAST_DAY {last} is after today ({today}, UTC)")


def asset_keys(timeframe_names: Sequence[str]) -> list:
    """The bars assets of the timeframes, and synthetic_bars_1m with 5m (a synthetic index's
    1m rows come first; other symbols cost it one query)."""
    import dagster as dg

    from agg_pipeline.defs.synthetic import ASSET_NAME
    from agg_pipeline.engine import timeframes

    chosen = [timeframes.get(name) for name in timeframe_names]
    keys = [dg.AssetKey(tf.asset_name) for tf in chosen]
    if any(tf.reads_data_bars for tf in chosen):
        keys.insert(0, dg.AssetKey(ASSET_NAME))
    return keys


def run_block(instance, symbols: list[str], first: date, last: date,
              keys: list, extra_tags: dict[str, str] | None = None,
              job_name: str = "aggregate_bars") -> RunSummary:
    """One in-process run of the project's `job_name` job (aggregate_bars by default) over
    symbols x [first, last] (tagged NO_RETRY_TAGS, or `extra_tags` when given)."""
    from agg_pipeline.definitions import defs
    from agg_pipeline.defs.partitions import range_tags

    job = defs.resolve_job_def(job_name)
    tags = {**range_tags(symbols[0], first, last, last_symbol=symbols[-1]),
            **(NO_RETRY_TAGS if extra_tags is None else extra_tags)}
    result = job.execute_in_process(
        instance=instance, tags=tags, asset_selection=keys, raise_on_error=False,
        # the events are stored and shown in the UI; the terminal gets the summary
        run_config={"loggers": {"console": {"config": {"log_level": "ERROR"}}}})
    counts: dict[str, dict[str, int]] = {}
    for event in result.get_asset_materialization_events():
        materialization = event.materialization
        asset = materialization.asset_key.to_user_string()
        sums = counts.setdefault(asset, dict.fromkeys(name for name, _ in COUNTS))
        for name, _ in COUNTS:
            entry = materialization.metadata.get(name)
            sums[name] = (sums[name] or 0) + (entry.value if entry is not None else 0)
    errors = [" ".join(str(e.step_failure_data.error.message).split())
              for e in result.all_events if e.is_step_failure and e.step_failure_data.error]
    return RunSummary(result.run_id, symbols, result.success, counts, errors)


def run_ladder(instance, symbols: list[str], first: date, last: date, keys: list,
               extra_tags: dict[str, str] | None = None) -> list[RunSummary]:
    """The backfill's runs (ladder_blocks), one after the other; a block's later runs (its
    optional timeframes) are not started once one of its runs failed."""
    runs: list[RunSummary] = []
    for planned in ladder_blocks(instance, symbols, keys):
        if any(not run.success for run in runs):
            break
        runs.append(run_block(instance, planned.symbols, first, last, planned.keys,
                              extra_tags=extra_tags, job_name=planned.job_name))
    return runs


def describe(first: date, last: date, runs: list[RunSummary], seconds: float) -> str:
    """One line: what ran, how it ended, what each timeframe's bars did."""
    symbols = [s for run in runs for s in run.symbols]
    days = f"{first}" if first == last else f"{first}..{last}"
    ok = sum(run.success for run in runs)
    ids = ", ".join(run.run_id[:8] for run in runs)
    verdict = "succeeded" if ok == len(runs) else f"{len(runs) - ok} failed"
    parts = [f"backfill {','.join(symbols)} {days}: {len(runs)} run{'s' * (len(runs) > 1)} "
             f"{verdict} in {seconds:.1f} s ({ids})"]
    totals: dict[str, dict[str, int]] = {}
    for run in runs:
        for asset, sums in run.counts.items():
            into = totals.setdefault(asset, {})
            for name, value in sums.items():
                into[name] = into.get(name, 0) + (value or 0)
    for asset, sums in totals.items():
        if asset.startswith("bars_"):
            done = [f"{sums[name]:,} {label}" for name, label in COUNTS if sums.get(name)]
            parts.append(f"{asset.removeprefix('bars_')}: {', '.join(done) or 'no bars'}")
    return "; ".join(parts)


def backfill(symbols: list[str], first: date, last: date, timeframe_names: list[str],
             project_dagster_yaml: Path,
             sync: Callable[[str], list[str]]) -> tuple[str, list[RunSummary]]:
    """Run the rectangle; returns the summary line and the runs. `sync(market_url)` brings the
    registry's tasks and `symbols` partitions up to date first (dev's, returns the symbols)."""
    market_url = prepare_environment(project_dagster_yaml)
    # imported only now: the partitions read AGG_START_UTC (and the Dagster variables) once
    import dagster as dg

    check_days(first, last)
    keys = asset_keys(timeframe_names)
    known = sync(market_url)
    unknown = [s for s in symbols if s not in known]
    if unknown:
        raise BackfillError(
            f"not a symbol of this environment's registry ({settings.ENVIRONMENT_VAR}="
            f"{settings.environment()}): {', '.join(unknown)}")
    started = time.monotonic()
    with dg.DagsterInstance.get() as instance:
        runs = run_ladder(instance, symbols, first, last, keys)
    return describe(first, last, runs, time.monotonic() - started), runs
