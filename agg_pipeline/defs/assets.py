"""Assets: the observed 1m source and one derived-bars asset per rung of the timeframe ladder.

Every derived asset is partitioned symbol x time (day, month or year: PipelineConfig) with a
single-run backfill policy; the mandatory timeframes' symbols are every symbol (`symbols`), an
optional timeframe's only those the registry enables it for (`symbols_<timeframe>`), so the
catalog shows no partition that can never hold a bar. A run over any rectangle of partitions
calls the engine once per (symbol, run of consecutive days), and each partition's
materialisation carries its own days' counts (defs/metadata.py), numeric metadata the UI plots.
"""


from collections.abc import Mapping
from datetime import UTC, datetime, timedelta

import dagster as dg
import psycopg

from agg_pipeline import settings
from agg_pipeline.db import queries
from agg_pipeline.defs import metadata
from agg_pipeline.defs.config import PipelineConfig
from agg_pipeline.defs.partitions import (
    TimePartitioning,
    day_bounds,
    symbols_partitions,
    timeframe_partitions_name,
)
from agg_pipeline.defs.resources import MarketDatabase
from agg_pipeline.defs.tags import AS_OF_TAG, BACKFILL_TAG, LANE_TAG, LIVE_LANE, REASON_TAG
from agg_pipeline.engine import aggregate as engine
from agg_pipeline.engine import reasons, tasks
from agg_pipeline.engine.timeframes import Timeframe
from agg_pipeline.listing import summarise

GROUP = "bars"
TRANSIENT_RETRIES = 3
RUN_LOG_SYMBOLS = 10  # a run's log names at most this many symbols per kind of line


def backfill_policy(config: PipelineConfig) -> dg.BackfillPolicy:
    """Single-run (default), or runs of at most N symbol-day partitions.

    Dagster 1.13 cuts a symbol x day asset backfill along its dimension with fewer distinct
    keys, so a single-run backfill is one run per symbol (or per day, when it has fewer days
    than symbols), each calling the engine once per timeframe over its range; the 1.13 dialog
    offers no "Single run" for the whole rectangle. Batches only cut those runs smaller. One
    run for the whole rectangle is the `backfill_bars` launchpad job (defs/backfill_job.py);
    measured in bench/backfill_bench.py and the README.
    """
    batch = config.backfill_max_partitions_per_run
    if batch is None:
        return dg.BackfillPolicy.single_run()
    return dg.BackfillPolicy.multi_run(max_partitions_per_run=batch)


FRESHNESS_LOWER_BOUND = timedelta(minutes=30)


def freshness_policy(tf: Timeframe, cron: str | None) -> dg.FreshnessPolicy | None:
    """Dagster's own freshness for the mandatory timeframes, shown on the asset pages and
    evaluated by the daemon: at every AGG_FRESHNESS_CRON tick the asset must have been
    materialised within the previous 30 minutes.

    Dagster looks at the newest materialisation of any partition, so this says "the pipeline
    is producing bars", not "every symbol is fresh": that is the `freshness` check's job (per
    task, from the tables). Optional timeframes get no policy: a rung no symbol enables
    would never pass.
    """
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


def run_reason(tags: dict[str, str]) -> str:
    """Why this run writes bars, in the words of derived_bar_revisions.reason."""
    return reasons.run_revision(tags.get(REASON_TAG), backfill=BACKFILL_TAG in tags)


def _skip_reasons(conn: psycopg.Connection, timeframe: str,
                  symbols: list[str]) -> dict[str, str]:
    """The symbols whose task does not run, and why."""
    statuses = {symbol: (enabled, status) for symbol, enabled, status in conn.execute(
        queries.query("task_statuses"), {"timeframe": timeframe, "symbols": symbols})}
    conn.rollback()
    skipped: dict[str, str] = {}
    for symbol in symbols:
        if symbol not in statuses:
            skipped[symbol] = ("no task (optional timeframe not enabled for this symbol, or "
                               "registry not synced)")
        elif statuses[symbol][1] == "retired":
            skipped[symbol] = "task retired (symbol or timeframe no longer in the registry)"
        elif not statuses[symbol][0]:
            skipped[symbol] = (f"task disabled ({statuses[symbol][1]}): set "
                               "data_agg_state.enabled = true to resume")
    return skipped


def _record_failures(market_db: MarketDatabase, context, timeframe: str,
                     errors: Mapping[str, BaseException], *, transient: bool) -> None:
    """Book the failures on their tasks (contract 11), in one statement."""
    try:
        with market_db.connect() as conn:
            outcomes = tasks.record_failures(
                conn, timeframe, {s: f"{type(e).__name__}: {e}" for s, e in errors.items()},
                transient=transient)
        kind = "transient" if transient else "hard"
        for symbol, outcome in sorted(outcomes.items())[:RUN_LOG_SYMBOLS]:
            context.log.warning(f"{symbol} / {timeframe}: {kind} failure recorded; status="
                                f"{outcome.status} hard_fail_streak={outcome.hard_fail_streak}")
        if len(outcomes) > RUN_LOG_SYMBOLS:
            context.log.warning(f"... and {len(outcomes) - RUN_LOG_SYMBOLS} more {kind} "
                                f"failures of {timeframe} recorded")
    except Exception as record_error:  # the database may be the thing that failed
        context.log.error(f"could not record the failures of {timeframe}: "
                          f"{type(record_error).__name__}")


def _transient_retry(context: dg.AssetExecutionContext) -> dg.RetryRequested:
    """The whole step runs again after a back-off (5, 10, 20 s): the engine is idempotent."""
    return dg.RetryRequested(max_retries=TRANSIENT_RETRIES,
                             seconds_to_wait=min(60, 5 * 2 ** context.retry_number))


def reads_incrementally(tags: Mapping[str, str]) -> bool:
    """A live run bringing tasks up to their frontier (catch-up, new windows, forming bar)
    reads each symbol from its cursor; late data, reconciliation, backfills and manual runs
    re-read their whole days."""
    return tags.get(LANE_TAG) == LIVE_LANE and run_reason(tags) is reasons.Revision.CATCH_UP


def _engine_call(context: dg.AssetExecutionContext, conn: psycopg.Connection, tf: Timeframe,
                 spans: list[engine.Span], as_of: datetime) -> engine.Batch:
    batch = engine.aggregate_many(conn, tf.name, spans, now=as_of,
                                  reason=run_reason(context.run.tags), run_id=context.run_id,
                                  incremental=reads_incrementally(context.run.tags))
    conn.commit()
    return batch


def _aggregate_spans(
    context: dg.AssetExecutionContext, market_db: MarketDatabase, conn: psycopg.Connection,
    tf: Timeframe, spans: list[engine.Span], as_of: datetime,
) -> engine.Batch:
    """One engine call for every symbol of the run. When it fails hard, each symbol is
    tried alone, so one symbol's bad data fails only that symbol, booked on its task
    (contract 11). A transient failure raises RetryRequested."""
    try:
        batch = _engine_call(context, conn, tf, spans, as_of)
        groups = []
    except Exception as exc:
        if not conn.closed:
            conn.rollback()
        symbols = sorted({s.symbol for s in spans})
        if tasks.is_transient(exc):
            context.log.warning(f"{tf.name}: transient failure ({type(exc).__name__}); retrying")
            _record_failures(market_db, context, tf.name, dict.fromkeys(symbols, exc),
                             transient=True)
            raise _transient_retry(context) from exc
        if len(symbols) == 1:
            _record_failures(market_db, context, tf.name, {symbols[0]: exc}, transient=False)
            return engine.Batch([], {symbols[0]: exc})
        context.log.warning(f"{tf.name}: the run's engine call failed ({type(exc).__name__}); "
                            f"each of its {len(symbols)} symbols on its own")
        batch = engine.Batch([], {})
        groups = [[s for s in spans if s.symbol == symbol] for symbol in symbols]
    results, failed, idle = list(batch.results), dict(batch.failed), dict(batch.idle)
    for group in groups:
        try:
            alone = _engine_call(context, conn, tf, group, as_of)
        except Exception as exc:
            if not conn.closed:
                conn.rollback()
            if tasks.is_transient(exc):
                _record_failures(market_db, context, tf.name, {group[0].symbol: exc},
                                 transient=True)
                raise _transient_retry(context) from exc
            failed[group[0].symbol] = exc
            continue
        results += alone.results
        failed.update(alone.failed)
        idle.update(alone.idle)
    if failed:
        _record_failures(market_db, context, tf.name, failed, transient=False)
    return engine.Batch(results, failed, idle)


def materialize_timeframe(
    context: dg.AssetExecutionContext, market_db: MarketDatabase, tf: Timeframe,
    partitions: TimePartitioning,
) -> dg.MaterializeResult:
    as_of = run_as_of(context)
    run_reason(context.run.tags)  # an unknown agg/reason fails here, before any task is booked
    keys = context.partition_keys
    ranges = partitions.run_day_spans(keys, context.run.tags)
    try:
        with market_db.connect() as conn:
            skipped = _skip_reasons(conn, tf.name, sorted(ranges))
            spans = [engine.Span(symbol, *day_bounds(first, last))
                     for symbol, found in ranges.items() if symbol not in skipped
                     for first, last in found]
            batch = (_aggregate_spans(context, market_db, conn, tf, spans, as_of)
                     if spans else engine.Batch([], {}))
    except Exception as exc:
        # an outage outside an engine call (the server down when the step or its retry
        # connects): nothing was written, nothing to book, and retrying is what rides it out
        if not tasks.is_transient(exc):
            raise
        context.log.warning(f"{tf.name}: database unavailable ({type(exc).__name__}: {exc}); "
                            "retrying")
        raise _transient_retry(context) from exc
    context.log.info(metadata.run_totals(tf.name, len(keys), batch, skipped, as_of))
    by_partition = metadata.partition_metadata(keys, batch, skipped, ranges, partitions)
    failed = {s: f"{type(e).__name__}: {e}" for s, e in batch.failed.items()}
    if failed:
        # the symbols that succeeded are written: their partitions say so, the others do not
        for key, entry in by_partition.items():
            if partitions.split_key(key)[0] not in failed:
                context.log_event(dg.AssetMaterialization(
                    asset_key=context.assets_def.key, partition=key, metadata=entry))
        raise dg.Failure(
            description=f"{tf.name} failed for {summarise(sorted(failed))}",
            metadata={"failures": dg.MetadataValue.json(failed),
                      "succeeded_requests": len(batch.results)},
        )
    metadata.attach_partition_metadata(context, by_partition)
    return dg.MaterializeResult(data_version=metadata.run_data_version(context.run_id))


def build_bars_asset(tf: Timeframe, config: PipelineConfig) -> dg.AssetsDefinition:
    """The asset of one ladder rung (one factory for bars_5m ... bars_1d), partitioned as
    `config` says."""
    partitions = config.partitions
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
        # synthetic_bars_1m has partitions for the synthetic series only: an identity mapping
        # would make every other symbol's 5m partition depend on one that does not exist
        # (an asset backfill refuses that); lineage, not a per-partition requirement
        deps=[dep, *([dg.AssetDep("synthetic_bars_1m",
                                  partition_mapping=dg.AllPartitionMapping())]
                     if tf.reads_data_bars else [])],
        partitions_def=partitions.symbol_time_partitions_of(
            timeframe_partitions_name(tf.name, tf.mandatory)),
        backfill_policy=backfill_policy(config),
        freshness_policy=freshness_policy(tf, config.freshness_cron),
        group_name=GROUP,
        kinds={"postgres"},
        tags={"timeframe": tf.name, "mandatory": str(tf.mandatory).lower()},
        description=(
            f"{tf.name} bars in derived_data_bars, rolled up from {tf.source} "
            f"({'data_bars' if tf.reads_data_bars else 'active derived bars'}). "
            + ("Mandatory for every symbol." if tf.mandatory else
               f"Optional: symbols listing {tf.name} in the registry's agg_timeframes"
               + (f" (or setting {tf.registry_flag})." if tf.registry_flag else "."))
            + " Windows on the UTC grid, or on the symbol's calendar (timeframes.toml)."
        ),
        metadata={
            "table": "derived_data_bars",
            "timeframe": tf.name,
            "source_timeframe": tf.source,
            "expected_source_bars": tf.expected_candles,
            "quality_ladder": ladder,
            "derivation_version": tf.version,
        },
    )
    def bars(context: dg.AssetExecutionContext, market_db: MarketDatabase) -> dg.MaterializeResult:
        return materialize_timeframe(context, market_db, tf, partitions)

    return bars


def build_bars_assets(config: PipelineConfig) -> list[dg.AssetsDefinition]:
    """One asset per rung of the config's ladder, shortest first."""
    return [build_bars_asset(tf, config) for tf in config.ladder]


def asset_keys_by_timeframe(config: PipelineConfig) -> dict[str, dg.AssetKey]:
    return {tf.name: dg.AssetKey(tf.asset_name) for tf in config.ladder}


def __getattr__(name: str) -> object:
    """derived_bars_assets and ASSET_KEY_BY_TIMEFRAME: the process's default Definitions'
    (built on first use; defs/factory.py)."""
    if name.startswith("__"):  # dunder look-ups (import machinery): not ours, import nothing
        raise AttributeError(name)
    from agg_pipeline.defs import factory

    return factory.default_part(__name__, name)
