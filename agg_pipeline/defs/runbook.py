"""The operator runbook (seed 000) as jobs launched from the UI's launchpad.

Each job is one op with typed config, runs its change in one transaction, is safe to run
again, and reports what it changed as run metadata.

Every config field has a default, so each launchpad opens prefilled and valid (Dagster fills
it from the defaults): an example where one is harmless (legacy_cleanup's dry run of DXY 1m,
rebuild_range's instants), else an empty value the op refuses, changing nothing, with what to
fill in (restore_agg_state lists the backups). Launched as it opens, no job changes anything
but backup_agg_state (a timestamped backup), reset_cursors (its defaults: every cursor,
validated before commit) and prune_backups (backups older than 2 days, seed 000's rule).
"""

from datetime import datetime

import dagster as dg
from pydantic import Field

from agg_pipeline.defs.resources import MarketDatabase
from agg_pipeline.defs.tags import RUNBOOK_TAG
from agg_pipeline.engine import runbook


def _cell(value: object) -> str:
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M")
    return "-" if value is None else str(value).replace("|", "/")


def md_table(rows: list[dict], columns: list[str] | None = None) -> dg.MetadataValue:
    """A markdown table for the run's metadata panel."""
    if not rows:
        return dg.MetadataValue.md("(none)")
    columns = columns or list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(row.get(c)) for c in columns) + " |" for row in rows]
    return dg.MetadataValue.md("\n".join(lines))


def _refused(exc: runbook.RunbookError) -> dg.Failure:
    return dg.Failure(description=str(exc), allow_retries=False)


@dg.op(description="Seed 000's pre-flight questions: schema objects, cursors against source, "
                   "bars per run, next-window source rows, task statuses. Changes nothing.")
def preflight_report_op(context: dg.OpExecutionContext, market_db: MarketDatabase) -> None:
    with market_db.connect() as conn:
        report = runbook.preflight(conn)
    missing = [r["item"] for r in report["schema"] if not r["present"]]
    ahead = [r for r in report["tasks"] if r["cursor_status"] in ("AHEAD", "NULL", "BAD_CONFIG")]
    context.add_output_metadata({
        "schema": md_table(report["schema"]),
        "tasks": md_table(report["tasks"], [
            "canonical_symbol", "timeframe", "status", "cursor_ts", "source_frontier_ts", "gap",
            "cursor_status", "bars_per_run", "minutes_since_success",
            "source_bars_in_next_window", "hard_fail_streak"]),
        "status_counts": md_table(report["status_counts"]),
        "task_count": len(report["tasks"]),
        "missing_schema_objects": len(missing),
        "tasks_with_bad_cursor": len(ahead),
    })


class BackupConfig(dg.Config):
    name: str | None = Field(
        default=None, description="The backup table's name, data_agg_state_backup_<suffix>; "
        "default: data_agg_state_backup_<UTC timestamp>.")


@dg.op(description="CREATE TABLE data_agg_state_backup_<name> AS SELECT * FROM data_agg_state.")
def backup_agg_state_op(context: dg.OpExecutionContext, market_db: MarketDatabase,
                        config: BackupConfig) -> None:
    try:
        with market_db.connect() as conn:
            result = runbook.backup_agg_state(conn, config.name)
    except runbook.RunbookError as exc:
        raise _refused(exc) from exc
    context.log.info(f"{'created' if result.created else 'already present'}: {result.table}")
    context.add_output_metadata({"backup_table": result.table, "rows": result.rows,
                                 "created": result.created})


class ResetCursorsConfig(dg.Config):
    symbols: list[str] = Field(default=[], description="Symbols, e.g. [EURUSD]; empty: every "
                               "symbol.")
    timeframes: list[str] = Field(default=[], description="Timeframes, e.g. [5m, 1h]; empty: "
                                  "every timeframe.")
    # a launchpad opens prefilled: launched as it opens, it only reports (every cursor!)
    dry_run: bool = Field(default=True, description="true (default): report the changes, "
                          "commit none; false to reset.")


@dg.op(description="Reset cursors of every task or a selection in one transaction; refuses to "
                   "commit if any cursor would be NULL or ahead of its source afterwards.")
def reset_cursors_op(context: dg.OpExecutionContext, market_db: MarketDatabase,
                     config: ResetCursorsConfig) -> None:
    try:
        with market_db.connect() as conn:
            result = runbook.reset_cursors(conn, symbols=config.symbols,
                                           timeframes_=config.timeframes, dry_run=config.dry_run)
    except runbook.RunbookError as exc:
        raise _refused(exc) from exc
    context.add_output_metadata({"cursors_changed": len(result.changed),
                                 "dry_run": result.dry_run, "changes": md_table(result.changed)})


class RestoreConfig(dg.Config):
    backup_table: str = Field(
        default="", description="A backup_agg_state table, e.g. data_agg_state_backup_pre; "
        "empty: refused, listing the backups.")


@dg.op(description="Roll data_agg_state back to a backup table, exactly (updated_at included).")
def restore_agg_state_op(context: dg.OpExecutionContext, market_db: MarketDatabase,
                         config: RestoreConfig) -> None:
    try:
        with market_db.connect() as conn:
            counts = runbook.restore_agg_state(conn, config.backup_table)
    except runbook.RunbookError as exc:
        raise _refused(exc) from exc
    context.add_output_metadata({"backup_table": config.backup_table, **counts})


class RebuildConfig(dg.Config):
    symbols: list[str] = Field(default=[], description="Symbols to rebuild, e.g. [EURUSD]; "
                               "empty: refused.")
    # (no seconds in the examples: a YAML 1.1 reader takes 00:00:00Z for a timestamp)
    start: str = Field(default="2026-01-05T00:00Z",
                       description="First instant, ISO 8601 with a time zone (an example).")
    end: str = Field(default="2026-01-06T00:00Z",
                     description="End instant, exclusive, ISO 8601 with a time zone (an example).")
    timeframes: list[str] = Field(default=[], description="e.g. [5m, 1h]; empty: every "
                                  "timeframe the symbol has, in ladder order.")


def _instant(value: str, name: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise dg.Failure(f"{name}={value!r} is not an ISO 8601 timestamp",
                         allow_retries=False) from None
    if parsed.tzinfo is None:
        raise dg.Failure(f"{name}={value!r} needs a time zone (e.g. Z)", allow_retries=False)
    return parsed


@dg.op(description="Soft-delete and recompute a range under a new derivation_version "
                   "(history rows stay), each timeframe after its source.")
def rebuild_range_op(context: dg.OpExecutionContext, market_db: MarketDatabase,
                     config: RebuildConfig) -> None:
    start, end = _instant(config.start, "start"), _instant(config.end, "end")
    try:
        start, end = runbook.rebuild_bounds(start, end)
        with market_db.connect() as conn:
            results = runbook.rebuild_range(conn, config.symbols, start, end,
                                            config.timeframes or None, run_id=context.run_id)
    except runbook.RunbookError as exc:
        raise _refused(exc) from exc
    rows = [{"symbol": r.symbol, "timeframe": r.timeframe, "version": r.derivation_version,
             "soft_deleted": r.bars_soft_deleted, "inserted": r.bars_inserted} for r in results]
    context.add_output_metadata({"start_utc": start.isoformat(), "end_utc": end.isoformat(),
                                 "rebuilt": md_table(rows),
                                 "bars_inserted": sum(r.bars_inserted for r in results),
                                 "bars_soft_deleted": sum(r.bars_soft_deleted for r in results)})


class PruneConfig(dg.Config):
    # seed 000: drop backups 48 hours after a good deployment; 0 to MAX_PRUNE_DAYS
    older_than_days: float = Field(
        default=2.0, description=f"Drop backups older than this many days (0 to "
        f"{runbook.MAX_PRUNE_DAYS}); seed 000: 2 days after a good deployment.")


@dg.op(description="Drop timestamped data_agg_state backups older than N days "
                   f"(0 to {runbook.MAX_PRUNE_DAYS}).")
def prune_backups_op(context: dg.OpExecutionContext, market_db: MarketDatabase,
                     config: PruneConfig) -> None:
    try:
        older_than = runbook.backup_age(config.older_than_days)
        with market_db.connect() as conn:
            dropped = runbook.prune_backups(conn, older_than)
    except runbook.RunbookError as exc:
        raise _refused(exc) from exc
    context.add_output_metadata({"dropped": len(dropped),
                                 "tables": md_table([{"table": t} for t in dropped])})


class LegacyCleanupConfig(dg.Config):
    symbol: str = Field(default="DXY", description="The symbol with legacy bars (seed 004: "
                        "DXY).")
    timeframe: str = Field(default="1m", description="A timeframe no rung of the ladder "
                           "produces (refused otherwise).")
    dry_run: bool = Field(default=True, description="Count first; run again with false to "
                          "withdraw.")


@dg.op(description="Soft-delete a symbol's legacy bars of a timeframe no rung of the ladder "
                   "produces (seed 004: DXY 1m in derived_data_bars). Dry run by default; "
                   "each withdrawn version is kept in derived_bar_revisions under this run's "
                   "id, which legacy_cleanup_undo restores.")
def legacy_cleanup_op(context: dg.OpExecutionContext, market_db: MarketDatabase,
                      config: LegacyCleanupConfig) -> None:
    try:
        with market_db.connect() as conn:
            result = runbook.withdraw_legacy_bars(conn, config.symbol, config.timeframe,
                                                  run_id=context.run_id, dry_run=config.dry_run)
    except runbook.RunbookError as exc:
        raise _refused(exc) from exc
    verb = "would withdraw" if result.dry_run else "withdrew"
    context.log.info(f"{verb} {result.bars} {result.symbol} {result.timeframe} bars"
                     + ("" if result.dry_run else f"; undo with cleanup_run_id={context.run_id}"))
    context.add_output_metadata({
        "dry_run": result.dry_run,
        "bars_withdrawn": 0 if result.dry_run else result.bars,
        "bars_to_withdraw": result.bars,
        "by_source": md_table(result.by_source),
        "undo_with_cleanup_run_id": "-" if result.dry_run else context.run_id,
    })


REFUSED_SHOWN = 50  # slots listed in the undo's metadata (all are counted)


class LegacyRestoreConfig(dg.Config):
    cleanup_run_id: str = Field(
        default="", description="The run id of the legacy_cleanup run to undo (its metadata's "
        "undo_with_cleanup_run_id); empty: refused.")
    dry_run: bool = Field(default=True, description="Count first; run again with false to "
                          "restore.")


@dg.op(description="Undo a legacy_cleanup run: restore the bars it withdrew, refusing each "
                   "slot an active bar occupies now. Dry run by default.")
def legacy_cleanup_undo_op(context: dg.OpExecutionContext, market_db: MarketDatabase,
                           config: LegacyRestoreConfig) -> None:
    try:
        with market_db.connect() as conn:
            result = runbook.restore_legacy_bars(conn, config.cleanup_run_id,
                                                 dry_run=config.dry_run)
    except runbook.RunbookError as exc:
        raise _refused(exc) from exc
    context.add_output_metadata({
        "dry_run": result.dry_run,
        "bars_restored": 0 if result.dry_run else result.restored,
        "bars_to_restore": result.restored,
        "refused_slots": len(result.refused),
        "refused": md_table(result.refused[:REFUSED_SHOWN]),
    })


def _job(name: str, op: dg.OpDefinition, description: str) -> dg.JobDefinition:
    @dg.job(name=name, description=description, tags={RUNBOOK_TAG: name})
    def runbook_job() -> None:
        op()

    return runbook_job


runbook_jobs = [
    _job("preflight_report", preflight_report_op, "Answer the runbook's pre-flight questions."),
    _job("backup_agg_state", backup_agg_state_op, "Back up data_agg_state to a table."),
    _job("reset_cursors", reset_cursors_op, "Reset cursors, validated before commit."),
    _job("restore_agg_state", restore_agg_state_op, "Restore data_agg_state from a backup."),
    _job("rebuild_range", rebuild_range_op, "Rebuild a range with a new derivation_version."),
    _job("prune_backups", prune_backups_op, "Drop old data_agg_state backups."),
    _job("legacy_cleanup", legacy_cleanup_op,
         "Soft-delete a symbol's legacy bars of a timeframe the ladder does not produce."),
    _job("legacy_cleanup_undo", legacy_cleanup_undo_op, "Restore what a legacy_cleanup withdrew."),
]
