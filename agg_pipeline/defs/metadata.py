"""What a bars asset's materialisations say: each partition its own counts (SPEC contract 14).

The engine counts per UTC day in the same statement that writes the bars; a partition (a
symbol's day, or month) carries the sum of its days, so the asset's Plots tab and a
partition's detail describe that partition. What the whole run did is logged once, as the
run's totals.

A live run writes one such materialisation per partition every few minutes, so each is kept
to what describes the partition (issue 20, README "Dagster's own storage"): what is the same
for every partition of a run (the instant it judged windows final at) is said once, in the
run-totals log line; the anomaly counters (`ZERO_OMITTED`) appear only when not zero, absent
meaning 0; the counts an operator reads on every partition's page (`ALWAYS_SHOWN`) are always
there, zeros included; a note only says what no other entry does.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import date, datetime, timedelta

import dagster as dg
from dagster._core.execution.context.metadata_logging import (
    AssetMetadataHandle,
    OutputMetadataAccumulator,
)

from agg_pipeline.defs.partitions import TimePartitioning
from agg_pipeline.engine import windows
from agg_pipeline.engine.aggregate import Batch, DayCounts
from agg_pipeline.listing import summarise

NO_SOURCE = "no source rows in this partition"
RUN_TOTALS_SYMBOL_LINES = 10  # the run-totals log line details at most this many symbols
# a partition's counts (DayCounts.counts()): these always, zeros included ...
ALWAYS_SHOWN = ("windows_seen", "windows_with_source", "bars_inserted", "bars_updated",
                "bars_soft_deleted", "bars_unchanged", "source_rows_read")
# ... these only when not zero: absent means 0 (a zero written is ~150 bytes of Dagster's JSON
# in every partition's event of every live run)
ZERO_OMITTED = ("windows_skipped", "bars_kept_source_gone", "bars_poor_quality",
                "source_rows_invalid", "source_rows_partial")


def shown_counts(counts: DayCounts) -> dict[str, int]:
    """The counts a partition's materialisation carries: ALWAYS_SHOWN, and ZERO_OMITTED
    when not zero."""
    return {label: value for label, value in counts.counts().items()
            if value or label not in ZERO_OMITTED}


def partition_metadata(
    partition_keys: Iterable[str], batch: Batch, skipped: Mapping[str, str],
    spans: Mapping[str, list[tuple[date, date]]], partitions: TimePartitioning,
) -> dict[str, dict[str, object]]:
    """Each partition key's metadata: the sum of its own days' counts (shown_counts). `spans`
    are the days the run read per symbol: a partition it read only partly (a live run's days
    of a month) says which days, and its counts are theirs; a live run's incremental read says
    where it began, and a symbol it found nothing new for says so. The run's instant is not
    repeated here (run_totals logs it)."""
    by_day: dict[tuple[str, date], DayCounts] = {}
    final_through: dict[str, datetime] = dict(batch.idle)
    read_from: dict[str, datetime] = {}
    for result in batch.results:
        final_through[result.symbol] = max(result.final_through,
                                           final_through.get(result.symbol, result.final_through))
        read_from[result.symbol] = min(result.read_from,
                                       read_from.get(result.symbol, result.read_from))
        for day, counts in result.days.items():
            key = (result.symbol, day)
            by_day[key] = by_day[key] + counts if key in by_day else counts
    metadata: dict[str, dict[str, object]] = {}
    for key in partition_keys:
        symbol, period = partitions.split_key(key)
        counts = DayCounts()
        day = period
        while day <= partitions.period_last_day(period):
            counts = counts + by_day.get((symbol, day), DayCounts())
            day += timedelta(days=1)
        entry: dict[str, object] = dict(shown_counts(counts))
        if counts.newest_source_ts is not None:
            entry["newest_source_ts"] = dg.MetadataValue.timestamp(counts.newest_source_ts)
        last = partitions.period_last_day(period)
        read = [(max(a, period), min(b, last)) for a, b in spans.get(symbol, ())
                if a <= last and period <= b]
        if read and read != [(period, last)]:
            entry["days_read"] = ", ".join(a.isoformat() if a == b else f"{a}..{b}"
                                           for a, b in read)
        end = windows.day_instant(partitions.period_last_day(period) + timedelta(days=1))
        began = read_from.get(symbol)
        if began is not None and windows.day_instant(period) < began < end:
            # a live run's incremental read: the windows since the cursor, not the whole day
            entry["read_from"] = dg.MetadataValue.timestamp(began)
        through = final_through.get(symbol)
        if symbol in skipped:
            entry["partition_note"] = f"skipped: {skipped[symbol]}"
        elif symbol in batch.idle:
            entry["partition_note"] = (f"nothing new since {batch.idle[symbol]:%Y-%m-%d %H:%M} "
                                       "UTC")
        elif counts.source_rows_read == 0:
            entry["partition_note"] = NO_SOURCE
        if through is not None and through < end:
            # a partition still forming (today): its windows are final through this instant
            # (no note repeating it in words: every partition of a live run has one)
            entry["final_through"] = dg.MetadataValue.timestamp(through)
        metadata[str(key)] = entry
    return metadata


def attach_partition_metadata(context: dg.AssetExecutionContext,
                              metadata: Mapping[str, Mapping[str, object]]) -> None:
    """Give each partition of the asset's output its own metadata, in one step.

    Dagster's public `context.add_asset_metadata(..., partition_key=k)` does the same for one
    partition, but each call re-derives every partition key of the run and copies its whole
    accumulator: 10 ms per call at 730 partitions, quadratic beyond (measured on 1.13.27).
    The accumulator it fills is built here at once instead; Dagster then writes each
    partition's materialisation with its own entry, batched (DAGSTER_EVENT_BATCH_SIZE). The
    partition-metadata tests fail if a Dagster upgrade changes this internal.
    """
    step = context.op_execution_context._step_execution_context
    asset_key = context.assets_def.key
    step._metadata_accumulator = OutputMetadataAccumulator(
        per_output_metadata={
            **step._metadata_accumulator.per_output_metadata,
            **{AssetMetadataHandle(asset_key=asset_key, partition_key=key): dict(entry)
               for key, entry in metadata.items()},
        })


def run_data_version(run_id: str) -> dg.DataVersion:
    """The data version of every partition a run materialises: the run's short id (the 8
    characters the UI shows for a run).

    Without one, Dagster computes a "logical" version: the SHA-256 of the asset's code version
    (these assets declare none, so the run id) and of its inputs' versions. It is new in every
    run, as this one is, and says nothing more, but it is 64 characters in every partition's
    event and in an `asset_event_tags` row and index entry per partition (issue 20). Staleness
    reads the same: a downstream asset is unsynced when its upstream has a newer version."""
    return dg.DataVersion(run_id[:8])


def run_totals(timeframe: str, partitions: int, batch: Batch,
               skipped: Mapping[str, str], as_of: datetime) -> str:
    """One log line: what the whole run did for one timeframe, labelled as the run's, and
    the instant it judged windows final at (the same for every partition of the run)."""
    results = batch.results
    totals = sum((counts for r in results for counts in r.days.values()), DayCounts())
    symbols = sorted({r.symbol for r in results})
    lines = [
        f"run totals, bars_{timeframe}, {partitions} partitions of {len(symbols)} symbols "
        f"({len(results)} ranges), windows final as of {windows.utc(as_of):%Y-%m-%d %H:%M:%S}"
        f" UTC: inserted {totals.bars_inserted}, updated "
        f"{totals.bars_updated}, soft-deleted {totals.bars_soft_deleted}, unchanged "
        f"{totals.bars_unchanged}, skipped windows {totals.windows_skipped}; source rows "
        f"{totals.source_rows_read} ({totals.source_rows_invalid} invalid)"
    ]
    for result in results[:RUN_TOTALS_SYMBOL_LINES]:
        lines.append(
            f"  {result.symbol}: cursor {_minute(result.cursor_before)} -> "
            f"{_minute(result.cursor_after)}, source frontier {_minute(result.newest_source_ts)}"
            f", inserted {result.bars_inserted}, updated {result.bars_updated}, soft-deleted "
            f"{result.bars_soft_deleted}, invalid rows {result.source_rows_invalid}")
    if len(results) > RUN_TOTALS_SYMBOL_LINES:
        lines.append(f"  ... and {len(results) - RUN_TOTALS_SYMBOL_LINES} more ranges")
    if batch.idle:
        lines.append(f"  nothing new: {summarise(sorted(batch.idle))}")
    for reason in sorted(set(skipped.values())):
        lines.append(f"  skipped, {reason}: "
                     f"{summarise(sorted(s for s, r in skipped.items() if r == reason))}")
    return "\n".join(lines)


def _minute(value: datetime | None) -> str:
    # cursors come back in the session's zone: shown in UTC
    return "-" if value is None else f"{windows.utc(value):%Y-%m-%d %H:%M}"
