"""Assets: the observed 1m source and one derived-bars asset per rung of the timeframe ladder.

Every derived asset is partitioned symbol x time (day or month) with a single-run backfill
policy: a run over any rectangle of partitions calls the engine once per (symbol, run of
consecutive days), and each partition's materialisation carries its own days' counts
(defs/metadata.py), numeric metadata the UI plots.
"""


from datetime import UTC, date, datetime, timedelta

import dagster as dg
import psycopg

from agg_pipeline import settings
from agg_pipeline.db import queries
from agg_pipeline.defs import metadata
from agg_pipeline.defs.partitions import (
    day_bounds,
    run_day_spans,
    split_key,
    symbol_time_partitions,
    symbols_partitions,
)
from agg_pipeline.defs.resources import MarketDatabase
from agg_pipeline.engine import aggregate as engine
from agg_pipeline.engine import tasks, timeframes
from agg_pipeline.engine.timeframes import Timeframe

AS_OF_TAG = "agg/as_of"  # optional run tag: evaluate finality at this instant (ISO 8601)
GROUP = "bars"
TRANSIENT_RETRIES = 3


def backfill_policy() -> dg.BackfillPolicy:
    """Single-run (default), or runs of at most N symbol-day partitions.

    Dagster cuts a symbol x day backfill along its smaller dimension, so a single-run
    backfill is one run per symbol, each calling the engine once per timeframe over the whole
    day range (the launch dialog's "Single run" makes it one run for everything). Batches
    only cut those runs smaller; measured in bench/backfill_bench.py and the README.
    """
    batch = settings.backfill_max_partitions_per_run()
    if batch is None:
        return dg.BackfillPolicy.single_run()
    return dg.BackfillPolicy.multi_run(max_partitions_per_run=batch)


FRESHNESS_LOWER_BOUND = timedelta(minutes=30)


def freshness_policy(tf: Timeframe) -> dg.FreshnessPolicy | None:
    """Dagster's own freshness for the mandatory timeframes, shown on the asset pages and
    evaluated by the daemon: at every AGG_FRESHNESS_CRON tick the asset must have been
    materialised within the previous 30 minutes.

    Dagster looks at the newest materialisation of any partition, so this says "the pipeline
    is producing bars", not "every symbol is fresh": that is the `freshness` check's job (per
    task, from the tables). Optional timeframes get no policy: a rung no symbol enables
    would never pass.
    """
    cron = settings.freshness_cron()
    if cron is None or not tf.mandatory:
        return None
    try:
        return dg.FreshnessPolicy.cron(deadline_cron=cron,
                                       lower_bound_delta=FRESHNESS_LOWER_BOUND, timezone="UTC")
    except Exception as exc:  # Dagster's CheckError: its message names the problem
        raise ValueError(f"{settings.FRESHNESS_CRON_VAR}={cron!r}: {exc}") from None


bars_1m = dg.AssetSpec(
    "bars_1m",
    partitions_def=symbols_partitions,
    group_name=GROUP,
    kinds={"postgres"},
    description=(
        "1-minute source bars in data_bars, written by the platform's ingesters (external to "
        "this project). source_frontier_sensor records each symbol's frontier as observations."
    ),
    metadata={"table": "data_bars", "timeframe": "1m"},
)


def run_as_of(context: dg.AssetExecutionContext) -> datetime:
    """The instant a run judges windows final at: the same for every asset of the run, so a
    1h bar never reads 5m windows the run's own 5m step considered unfinished."""
    tagged = context.run.tags.get(AS_OF_TAG)
    if tagged:
        value = datetime.fromisoformat(tagged)
        if value.tzinfo is None:
            raise dg.Failure(f"run tag {AS_OF_TAG}={tagged!r} needs a time zone")
        return value.astimezone(UTC)
    created = context.instance.get_run_record_by_id(context.run_id).create_timestamp
    return created if created.tzinfo else created.replace(tzinfo=UTC)


REASON_TAG = "agg/reason"  # set by the planner's runs: catch-up, late data on ..., ...
BACKFILL_TAG = "dagster/backfill"


def run_reason(tags: dict[str, str]) -> str:
    """Why this run writes bars, in the words of derived_bar_revisions.reason."""
    reason = tags.get(REASON_TAG, "")
    for prefix, name in (("late data", "late_data"), ("correction", "correction"),
                         ("deletion", "deletion"), ("reconciliation", "reconciliation"),
                         ("catch-up", "catch_up"), ("new complete windows", "catch_up"),
                         ("forming bar", "catch_up")):
        if reason.startswith(prefix):
            return name
    return "backfill" if BACKFILL_TAG in tags else "manual"


def _task_status(conn: psycopg.Connection, symbol: str, timeframe: str) -> tuple | None:
    return conn.execute(queries.query("task_status"),
                        {"symbol": symbol, "timeframe": timeframe}).fetchone()


def _skip_reason(status: tuple | None) -> str | None:
    if status is None:
        return "no task (optional timeframe not enabled for this symbol, or registry not synced)"
    enabled, state = status
    if state == "retired":
        return "task retired (symbol or timeframe no longer in the registry)"
    if not enabled:
        return f"task disabled ({state}): set data_agg_state.enabled = true to resume"
    return None


def _record_failure(market_db: MarketDatabase, context, symbol: str, timeframe: str,
                    exc: BaseException, transient: bool) -> None:
    try:
        with market_db.connect() as conn:
            outcome = tasks.record_failure(conn, symbol, timeframe, transient=transient,
                                           error=f"{type(exc).__name__}: {exc}")
        if outcome is not None:
            context.log.warning(
                f"{symbol} / {timeframe}: {'transient' if transient else 'hard'} failure "
                f"recorded; status={outcome.status} hard_fail_streak={outcome.hard_fail_streak}"
            )
    except Exception as record_error:  # the database may be the thing that failed
        context.log.error(f"could not record the failure of {symbol} / {timeframe}: "
                          f"{type(record_error).__name__}")


def _transient_retry(context: dg.AssetExecutionContext) -> dg.RetryRequested:
    """The whole step runs again after a back-off (5, 10, 20 s): the engine is idempotent."""
    return dg.RetryRequested(max_retries=TRANSIENT_RETRIES,
                             seconds_to_wait=min(60, 5 * 2 ** context.retry_number))


def _aggregate_ranges(
    context: dg.AssetExecutionContext, market_db: MarketDatabase, conn: psycopg.Connection,
    tf: Timeframe, ranges: dict[str, list[tuple[date, date]]], as_of: datetime,
) -> tuple[list[engine.AggregationResult], dict[str, str], dict[str, str]]:
    """One engine call per (symbol, run of consecutive days); each failure is booked on its
    task (contract 11). Returns the results, the skipped and the hard-failed symbols; a
    transient failure raises RetryRequested."""
    results: list[engine.AggregationResult] = []
    skipped: dict[str, str] = {}
    failed: dict[str, str] = {}
    why = run_reason(context.run.tags)
    for symbol, spans in ranges.items():
        reason = _skip_reason(_task_status(conn, symbol, tf.name))
        conn.rollback()
        if reason:
            skipped[symbol] = reason
            context.log.info(f"{symbol} / {tf.name}: skipped, {reason}")
            continue
        for first_day, last_day in spans:
            start, end = day_bounds(first_day, last_day)
            try:
                results.append(engine.aggregate(conn, symbol, tf.name, start, end, now=as_of,
                                                reason=why, run_id=context.run_id))
                conn.commit()
            except Exception as exc:
                transient = tasks.is_transient(exc)
                if not conn.closed:
                    conn.rollback()
                _record_failure(market_db, context, symbol, tf.name, exc, transient)
                if transient:
                    raise _transient_retry(context) from exc
                failed[symbol] = f"{type(exc).__name__}: {exc}"
                break
    return results, skipped, failed


def materialize_timeframe(
    context: dg.AssetExecutionContext, market_db: MarketDatabase, tf: Timeframe
) -> dg.MaterializeResult:
    as_of = run_as_of(context)
    keys = context.partition_keys
    ranges = run_day_spans(keys, context.run.tags)
    try:
        with market_db.connect() as conn:
            results, skipped, failed = _aggregate_ranges(context, market_db, conn, tf, ranges,
                                                         as_of)
    except Exception as exc:
        # an outage outside an engine call (the server down when the step or its retry
        # connects, the connection lost between calls): nothing was written, nothing to
        # book, and retrying is what rides it out
        if not tasks.is_transient(exc):
            raise
        context.log.warning(f"{tf.name}: database unavailable ({type(exc).__name__}: {exc}); "
                            "retrying")
        raise _transient_retry(context) from exc
    context.log.info(metadata.run_totals(tf.name, len(keys), results, skipped))
    by_partition = metadata.partition_metadata(keys, results, skipped, as_of, ranges)
    if failed:
        # the symbols that succeeded are written: their partitions say so, the others do not
        for key, entry in by_partition.items():
            if split_key(key)[0] not in failed:
                context.log_event(dg.AssetMaterialization(
                    asset_key=context.assets_def.key, partition=key, metadata=entry))
        raise dg.Failure(
            description=f"{tf.name} failed for {', '.join(sorted(failed))}",
            metadata={"failures": dg.MetadataValue.json(failed),
                      "succeeded_engine_calls": len(results)},
        )
    metadata.attach_partition_metadata(context, by_partition)
    return dg.MaterializeResult()


def build_bars_asset(tf: Timeframe) -> dg.AssetsDefinition:
    """The asset of one ladder rung (one factory for bars_5m ... bars_1d)."""
    if tf.reads_data_bars:
        dep = dg.AssetDep(
            bars_1m,
            partition_mapping=dg.MultiToSingleDimensionPartitionMapping(
                partition_dimension_name="symbol"),
        )
    else:
        dep = dg.AssetDep(f"bars_{tf.source}")
    ladder = ", ".join(f"{n}+ -> {score}" for n, score in tf.ladder)

    @dg.asset(
        name=tf.asset_name,
        deps=[dep, *([dg.AssetDep("synthetic_bars_1m")] if tf.reads_data_bars else [])],
        partitions_def=symbol_time_partitions,
        backfill_policy=backfill_policy(),
        freshness_policy=freshness_policy(tf),
        group_name=GROUP,
        kinds={"postgres"},
        tags={"timeframe": tf.name, "mandatory": str(tf.mandatory).lower()},
        description=(
            f"{tf.name} bars in derived_data_bars, rolled up from {tf.source} "
            f"({'data_bars' if tf.reads_data_bars else 'active derived bars'}). "
            + ("Mandatory for every symbol." if tf.mandatory else
               f"Optional: registry flag {tf.registry_flag}.")
        ),
        metadata={
            "table": "derived_data_bars",
            "timeframe": tf.name,
            "source_timeframe": tf.source,
            "expected_source_bars": tf.expected_candles,
            "quality_ladder": ladder,
        },
    )
    def bars(context: dg.AssetExecutionContext, market_db: MarketDatabase) -> dg.MaterializeResult:
        return materialize_timeframe(context, market_db, tf)

    return bars


derived_bars_assets: list[dg.AssetsDefinition] = [build_bars_asset(tf) for tf in timeframes.ORDERED]
ASSET_KEY_BY_TIMEFRAME: dict[str, dg.AssetKey] = {
    tf.name: dg.AssetKey(tf.asset_name) for tf in timeframes.ORDERED
}
