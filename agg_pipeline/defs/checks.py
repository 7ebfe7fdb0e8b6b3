"""Asset checks on every derived-bars asset: the seeds' invariants, made loud.

Blocking ERROR checks (cursor_not_ahead, ohlc_sane, matches_source) stop the assets derived
from a failing one in the same run: bars_1h never builds on a bars_5m that failed them.
Checks evaluate the symbols and days of the run they belong to (its partition-range tags),
or everything when launched on their own.
"""

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal

import dagster as dg
import psycopg
from dagster._core.definitions.data_version import extract_data_version_from_entry
from dagster._core.execution.context.data_version_cache import InputAssetVersionInfo

from agg_pipeline.defs.assets import reads_incrementally
from agg_pipeline.defs.config import PipelineConfig
from agg_pipeline.defs.partitions import (
    RANGE_END_TAG,
    RANGE_START_TAG,
    SYMBOLS_PARTITIONS_NAME,
    TimePartitioning,
    timeframe_partitions_name,
)
from agg_pipeline.defs.resources import MarketDatabase
from agg_pipeline.engine import monitoring, timeframes
from agg_pipeline.engine.monitoring import Outcome, Scope
from agg_pipeline.listing import summarise


class CheckSettings(dg.Config):
    """Thresholds (defaults from seed 000's runbook); change them in the launchpad."""

    max_minutes_since_success: float = 60.0
    schedule_period_minutes: float = 5.0
    matches_source_sample_days: int = 2
    # a live run reads and writes only the windows since each cursor: matches_source
    # recomputes this much before the cursor then, not the days above
    matches_source_live_sample_minutes: int = 60
    quality_window_days: int = 7
    max_poor_quality_share: float = 0.2


def run_scope(context: dg.AssetCheckExecutionContext, config: "CheckSettings",
              partitions: TimePartitioning, symbols_name: str = SYMBOLS_PARTITIONS_NAME
              ) -> Scope:
    """The run's symbols and days, from its single-run partition-range tags (within its
    DAYS_TAG when it has one); a live run's recent windows."""
    tags = context.run.tags
    if RANGE_START_TAG not in tags or RANGE_END_TAG not in tags:
        return Scope()
    # the range is a rectangle of the checked asset's own symbols partitions (their order)
    keys = partitions.symbol_time_partitions_of(symbols_name).get_partition_keys_in_range(
        dg.PartitionKeyRange(tags[RANGE_START_TAG], tags[RANGE_END_TAG]),
        dynamic_partitions_store=context.instance,
    )
    live = reads_incrementally(tags)
    recent = timedelta(minutes=config.matches_source_live_sample_minutes) if live else None
    return Scope(partitions.run_day_spans(keys, tags), recent)


def link_to_latest_materialization(context: dg.AssetCheckExecutionContext,
                                   asset: dg.AssetKey) -> None:
    """Give Dagster the asset's latest materialisation, which each check result links to,
    before it looks for it itself.

    Dagster 1.13 finds it through the step's data-version cache, and for a run over a range
    of partitions (no single key) that cache first lists every partition key of the asset: an
    unpartitioned check reads its asset through an all-partitions mapping, and the key list is
    built before Dagster's own 100-partition threshold would skip it. At 10,000 symbols x 526
    days that is 5.3 M keys, 3 min 50 s and 4 GB in each checks step of every run (soak,
    2026-12-08); 1,000 symbols x 525 days, 5.7 s. The link is what Dagster would store: the asset
    record's last materialisation (its storage id, run, time; its data version as the record
    says, as Dagster does past the threshold). No public API sets it, hence the step context."""
    found = context.get_step_execution_context().input_asset_records
    if found is None or asset in found:
        return
    record = next(iter(context.instance.get_asset_records([asset])), None)
    event = record.asset_entry.last_materialization_record if record else None
    entry = event.event_log_entry if event else None
    found[asset] = None if entry is None or entry.dagster_event is None else (  # type: ignore[index]
        InputAssetVersionInfo(event.storage_id, entry.dagster_event.event_type,
                              extract_data_version_from_entry(entry), event.run_id,
                              event.timestamp))


def _plain(value: object) -> object:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, timedelta):
        return str(value)
    if isinstance(value, Decimal):
        return float(value)
    return value


def _result(outcome: Outcome, scope: Scope, check: "CheckDef",
            asset: dg.AssetKey) -> dg.AssetCheckResult:
    offenders = [{k: _plain(v) for k, v in row.items()} for row in outcome.offenders]
    metadata: dict[str, object] = {k: _plain(v) for k, v in outcome.summary.items()}
    metadata["scope"] = ("all symbols, all time" if scope.symbols is None
                         else f"run partitions of {summarise(scope.symbols)}")
    if offenders:
        metadata["offenders"] = dg.MetadataValue.json(json.loads(json.dumps(offenders)))
    return dg.AssetCheckResult(
        passed=outcome.passed, asset_key=asset, check_name=check.name, severity=check.severity,
        metadata=metadata, description=None if outcome.passed else check.failure)


@dataclass(frozen=True)
class CheckDef:
    name: str
    blocking: bool
    severity: dg.AssetCheckSeverity
    description: str
    failure: str  # what a failure means, shown with the result
    evaluate: Callable[[psycopg.Connection, str, Scope, CheckSettings], Outcome]
    roots_only: bool = False  # only on the assets that read data_bars (bars_5m)


ERROR, WARN = dg.AssetCheckSeverity.ERROR, dg.AssetCheckSeverity.WARN
CHECK_DEFS: tuple[CheckDef, ...] = (
    CheckDef("cursor_not_ahead", True, ERROR,
             "Every task's cursor <= floor(newest source ts, interval) + interval (the "
             "corrected seed rule); a NULL cursor fails.",
             "cursor ahead of its source, or NULL",
             lambda conn, tf, scope, _: monitoring.cursor_not_ahead(conn, tf, scope)),
    CheckDef("ohlc_sane", True, ERROR,
             "high >= max(open, close), low <= min(open, close), prices finite and > 0, for "
             "every active bar in scope.",
             "bars with impossible prices",
             lambda conn, tf, scope, _: monitoring.ohlc_sane(conn, tf, scope)),
    CheckDef("matches_source", True, ERROR,
             "Recomputes recent windows from source (rolled back) and compares them exactly "
             "with the stored bars.",
             "stored bars disagree with their source",
             lambda conn, tf, scope, cfg: monitoring.matches_source(
                 conn, tf, scope, sample=timedelta(days=cfg.matches_source_sample_days))),
    CheckDef("no_bars_before_start", False, ERROR,
             "No active bar earlier than its task's agg_start_utc.",
             "bars before agg_start_utc",
             lambda conn, tf, scope, _: monitoring.bars_before_start(conn, tf, scope)),
    CheckDef("no_failed_tasks", False, ERROR,
             "No task hard_failed, no mandatory task disabled.",
             "tasks in a failure state",
             lambda conn, tf, _scope, _cfg: monitoring.failed_tasks(conn, tf)),
    CheckDef("freshness", False, WARN,
             "Per task: lag behind the source frontier within one window + delay + schedule "
             "period, and a recent success whenever work is pending. A closed market is not "
             "stale.",
             "tasks behind their frontier",
             lambda conn, tf, scope, cfg: monitoring.freshness(
                 conn, tf, scope, max_minutes_since_success=cfg.max_minutes_since_success,
                 schedule_period_minutes=cfg.schedule_period_minutes)),
    CheckDef("quality", False, WARN,
             "Share of poor-quality bars (quality_score <= 0) per symbol over recent days, "
             "against a threshold.",
             "symbols with many poor-quality bars",
             lambda conn, tf, scope, cfg: monitoring.poor_quality(
                 conn, tf, scope, days=cfg.quality_window_days,
                 max_share=cfg.max_poor_quality_share)),
    CheckDef("no_stray_source_rows", False, WARN,
             "No rows in data_bars that the pipeline never reads (a timeframe other than 1m), "
             "per symbol in scope.",
             "source rows of timeframes the ladder does not read",
             lambda conn, _tf, scope, _cfg: monitoring.stray_source_rows(conn, scope),
             roots_only=True),
)


def checks_for(tf: timeframes.Timeframe) -> tuple[CheckDef, ...]:
    return tuple(d for d in CHECK_DEFS if tf.reads_data_bars or not d.roots_only)


def build_checks(tf: timeframes.Timeframe,
                 partitions: TimePartitioning) -> dg.AssetChecksDefinition:
    """The checks of one timeframe's asset, evaluated in one step on one connection (one
    factory for every rung of the ladder); any subset can be launched on its own."""
    asset = dg.AssetKey(tf.asset_name)
    defs = checks_for(tf)
    specs = [dg.AssetCheckSpec(d.name, asset=asset, blocking=d.blocking,
                               description=d.description) for d in defs]

    @dg.multi_asset_check(name=f"{tf.asset_name}_checks", specs=specs, can_subset=True)
    def bars_checks(context: dg.AssetCheckExecutionContext, market_db: MarketDatabase,
                    config: CheckSettings) -> Iterator[dg.AssetCheckResult]:
        scope = run_scope(context, config, partitions,
                          timeframe_partitions_name(tf.name, tf.mandatory))
        selected = {key.name for key in context.selected_asset_check_keys}
        link_to_latest_materialization(context, asset)
        with market_db.connect() as conn:
            for check in defs:
                if check.name not in selected:
                    continue
                outcome = check.evaluate(conn, tf.name, scope, config)
                conn.rollback()
                yield _result(outcome, scope, check, asset)

    return bars_checks


def build_all_checks(config: PipelineConfig) -> list[dg.AssetChecksDefinition]:
    """The checks of every rung of the config's ladder, in its order."""
    return [build_checks(tf, config.partitions) for tf in config.ladder]


def check_keys_by_timeframe(config: PipelineConfig, checks: list[dg.AssetChecksDefinition]
                            ) -> dict[str, list[dg.AssetCheckKey]]:
    return {tf.name: list(defs.check_keys) for tf, defs in zip(config.ladder, checks,
                                                                strict=True)}


def __getattr__(name: str) -> object:
    """all_checks and CHECK_KEYS_BY_TIMEFRAME: the process's default Definitions'
    (defs/factory.py)."""
    from agg_pipeline.defs import factory

    return factory.default_part(__name__, name)
