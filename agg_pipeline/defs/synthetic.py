"""The synthetic-series asset: an index's 1m bars (DXY from its six FX legs) written into
data_bars from its components, upstream of bars_5m (engine/synthetic.py, migration 017).

Partitioned synthetic symbol x time: its symbols are the synthetic series the pipeline builds
(the `symbols_synthetic` partitions, synced by registry_sync_sensor), so the catalog shows no
partition of a symbol that has no index to build. A live run over a block of symbols x days
builds its synthetic symbols' days in a run of its own (the `synthetic_bars` job) before the
block's bars_5m run reads them (defs/requests.py chains the runs). A synthetic symbol's days
that nothing changed cost one statement that writes nothing.
"""

from datetime import timedelta

import dagster as dg

from agg_pipeline.defs import metadata
from agg_pipeline.defs.assets import (
    GROUP,
    _transient_retry,
    backfill_policy,
    bars_1m,
    run_as_of,
)
from agg_pipeline.defs.config import PipelineConfig
from agg_pipeline.defs.partitions import SYNTHETIC_PARTITIONS_NAME, TimePartitioning, day_bounds
from agg_pipeline.defs.resources import MarketDatabase
from agg_pipeline.engine import synthetic, tasks
from agg_pipeline.engine.synthetic import SyntheticDay

ASSET_NAME = "synthetic_bars_1m"
NOT_SYNTHETIC = "nothing to build: not a synthetic series the pipeline builds"


def partition_metadata(keys: list[str], results: list[synthetic.SyntheticResult],
                       defined: set[str], partitions: TimePartitioning
                       ) -> dict[str, dict[str, object]]:
    """Each partition's own days' counts (SPEC contract 14)."""
    by_day = {(r.symbol, day): counts for r in results for day, counts in r.days.items()}
    entries: dict[str, dict[str, object]] = {}
    for key in keys:
        symbol, period = partitions.split_key(key)
        if symbol not in defined:
            entries[str(key)] = {"partition_note": NOT_SYNTHETIC}
            continue
        counts, day = SyntheticDay(), period
        while day <= partitions.period_last_day(period):
            counts = counts + by_day.get((symbol, day), SyntheticDay())
            day += timedelta(days=1)
        entries[str(key)] = dict(counts.counts())
    return entries


def build_synthetic_asset(config: PipelineConfig) -> dg.AssetsDefinition:
    """synthetic_bars_1m, partitioned as `config` says."""
    partitions = config.partitions

    @dg.asset(
        name=ASSET_NAME,
        deps=[dg.AssetDep(bars_1m, partition_mapping=dg.AllPartitionMapping())],
        partitions_def=partitions.symbol_time_partitions_of(SYNTHETIC_PARTITIONS_NAME),
        backfill_policy=backfill_policy(config),
        group_name=GROUP,
        kinds={"postgres"},
        tags={"timeframe": "1m"},
        description=(
            "1m bars of synthetic series (data_agg_synthetic_series, e.g. DXY) in data_bars "
            "(source synthetic:<symbol>), computed from their components' aligned 1m bars: a "
            "missing component minute takes the leg's last close for at most max_fill_minutes "
            "(2); high/low are max/min(open, close), the envelope is in raw. Partitions: the "
            "synthetic series only."
        ),
        metadata={"table": "data_bars", "timeframe": "1m",
                  "formula": "constant x product(component ^ exponent)"},
    )
    def synthetic_bars_1m(context: dg.AssetExecutionContext,
                          market_db: MarketDatabase) -> dg.MaterializeResult:
        return materialize_synthetic(context, market_db, partitions)

    return synthetic_bars_1m


def materialize_synthetic(context: dg.AssetExecutionContext, market_db: MarketDatabase,
                          partitions: TimePartitioning) -> dg.MaterializeResult:
    as_of = run_as_of(context)
    keys = context.partition_keys
    ranges = partitions.run_day_spans(keys, context.run.tags)
    results: list[synthetic.SyntheticResult] = []
    failed: dict[str, str] = {}
    try:
        with market_db.connect() as conn:
            defined = synthetic.synthetic_symbols(conn, ranges)
            conn.rollback()
            for symbol in sorted(defined):
                for first_day, last_day in ranges[symbol]:
                    start, end = day_bounds(first_day, last_day)
                    try:
                        results.append(synthetic.build(conn, symbol, start, end, now=as_of))
                        conn.commit()
                    except Exception as exc:
                        if not conn.closed:
                            conn.rollback()
                        if tasks.is_transient(exc):
                            raise
                        failed[symbol] = f"{type(exc).__name__}: {exc}"
                        break
    except Exception as exc:
        if not tasks.is_transient(exc):
            raise
        context.log.warning(f"synthetic bars: database unavailable ({type(exc).__name__}: "
                            f"{exc}); retrying")
        raise _transient_retry(context) from exc
    for result in results:
        totals = result.totals
        context.log.info(
            f"{result.symbol} 1m {result.start:%Y-%m-%d}..{result.end:%Y-%m-%d}: "
            f"{totals.index_minutes} index minutes ({totals.minutes_filled} with a filled leg, "
            f"{totals.minutes_incomplete} left out: a leg missing beyond the bound); inserted "
            f"{totals.rows_inserted}, updated {totals.rows_updated}, deleted "
            f"{totals.rows_deleted}, unchanged {totals.rows_unchanged}, slots held by another "
            f"source {totals.slots_taken}")
    if failed:
        raise dg.Failure(description=f"synthetic bars failed for {', '.join(sorted(failed))}",
                         metadata={"failures": dg.MetadataValue.json(failed)})
    metadata.attach_partition_metadata(context,
                                       partition_metadata(keys, results, defined, partitions))
    return dg.MaterializeResult(data_version=metadata.run_data_version(context.run_id))


def __getattr__(name: str) -> object:
    """synthetic_bars_1m: the process's default Definitions' (defs/factory.py)."""
    from agg_pipeline.defs import factory

    return factory.default_part(__name__, name)
