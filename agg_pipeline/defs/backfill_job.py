"""`backfill_bars`: the UI's backfill of a symbol x day rectangle, one run that starts in seconds.

Dagster 1.13's asset backfill ("Materialize…", "Launch backfill") cannot do that for a symbol x
day multi-partition, whatever the backfill policy or partition layout:
- its runs come from the backfill policy applied to each key *range* of the selection, and a
  multi-partition subset's ranges are cut along the dimension with fewer distinct keys
  (DefaultPartitionsSubset.get_partition_key_ranges): one range, so one run under
  single_run(), per symbol (or per day when there are fewer days than symbols); multi_run(N)
  only cuts each range smaller. A 2-D rectangle is never one run;
- the backfill daemon's loop sleeps DEFAULT_DAEMON_INTERVAL_SECONDS (30 s, a constant): the
  runs are created at its next iteration and the backfill is marked done at an iteration after
  its last run ended (2 symbols x 5 days: 47 s for ~0.1 s of engine);
- the dialog's "Single run" toggle is shown only to code locations older than Dagster 1.5.

This job, launched from its launchpad (Jobs > backfill_bars > Launchpad), goes through the run
queue (looked at every second), not the backfill daemon. Its one op runs the project's
`aggregate_bars` asset job in process over each block of consecutive symbols (in the `symbols`
partitions' order; all of them, or any consecutive selection, is one block) x the days: the same
run the CLI's `agg-pipeline backfill` makes (agg_pipeline/backfill.py), with every selected
asset's per-partition materialisation (its own days' counts) and its checks, shown in the UI
as an `aggregate_bars` run tagged agg/launched_by=<this run>.
"""

import time
from datetime import date

import dagster as dg

from agg_pipeline import backfill
from agg_pipeline.defs.partitions import SYMBOLS_PARTITIONS_NAME
from agg_pipeline.defs.tags import LAUNCHED_BY_TAG, REASON_TAG
from agg_pipeline.engine import timeframes
from agg_pipeline.engine.reasons import Reason

JOB_NAME = "backfill_bars"
OP_NAME = "backfill_bars_op"  # the launchpad's `ops: backfill_bars_op: config:`


class BackfillBarsConfig(dg.Config):
    # empty by default: the launchpad opens valid, and the job refuses saying what to fill in
    first_day: str = ""  # YYYY-MM-DD, a UTC day
    last_day: str = ""  # YYYY-MM-DD, inclusive; empty: first_day
    symbols: list[str] = []  # empty: every symbol of the `symbols` partitions
    timeframes: list[str] = ["5m", "1h"]  # and synthetic_bars_1m with 5m


def _refused(message: str) -> dg.Failure:
    return dg.Failure(description=message, allow_retries=False)


def _days(config: BackfillBarsConfig) -> tuple[date, date]:
    try:
        first = date.fromisoformat(config.first_day.strip())
        last = date.fromisoformat(config.last_day.strip()) if config.last_day.strip() else first
    except ValueError as exc:
        raise _refused(f"first_day / last_day: YYYY-MM-DD expected, e.g. first_day: "
                       f"'2026-01-05' ({exc})") from None
    try:
        backfill.check_days(first, last)
    except backfill.BackfillError as exc:
        raise _refused(str(exc)) from None
    return first, last


@dg.op(name=OP_NAME,
       description="Materialise the timeframes' bars assets over symbols x [first_day, last_day] "
                   "(UTC days): one run per job of the ladder (synthetic_bars, aggregate_bars, "
                   "aggregate_bars_<tf>) per block of its consecutive symbols, in that order.")
def backfill_bars_op(context: dg.OpExecutionContext, config: BackfillBarsConfig) -> None:
    first, last = _days(config)
    try:
        keys = backfill.asset_keys(config.timeframes or ["5m", "1h"])
    except timeframes.UnknownTimeframeError as exc:
        raise _refused(f"timeframes: {exc}") from None
    order = list(context.instance.get_dynamic_partitions(SYMBOLS_PARTITIONS_NAME))
    symbols = list(dict.fromkeys(s.strip() for s in config.symbols if s.strip())) or order
    unknown = [s for s in symbols if s not in order]
    if unknown or not symbols:
        raise _refused(f"not in the `symbols` partitions: {', '.join(unknown) or '(none synced)'}"
                       " (registry_sync_sensor adds the registry's symbols within a minute)")
    tags = {"dagster/max_retries": "0", REASON_TAG: Reason.UI_BACKFILL.tag(),
            LAUNCHED_BY_TAG: context.run_id}
    planned = backfill.ladder_blocks(context.instance, symbols, keys)
    assets = ", ".join(k.to_user_string() for k in keys)
    context.log.info(f"{len(symbols)} symbols x {first}..{last}: {len(planned)} run"
                     f"{'s' * (len(planned) > 1)} ("
                     + ", ".join(dict.fromkeys(p.job_name for p in planned)) + f") of {assets}")
    started = time.monotonic()
    runs = backfill.run_ladder(context.instance, symbols, first, last, keys, extra_tags=tags)
    line = backfill.describe(first, last, runs, time.monotonic() - started)
    context.log.info(line)
    context.add_output_metadata({
        "summary": line,
        "runs": dg.MetadataValue.json({r.run_id: r.symbols for r in runs}),
        "symbols": len(symbols),
        "days": (last - first).days + 1,
    })
    failed = [r for r in runs if not r.success]
    if failed:
        raise dg.Failure(
            description=f"{len(failed)} of {len(runs)} runs failed: "
                        + "; ".join(f"{r.run_id[:8]} ({', '.join(r.symbols)}): "
                                    f"{' | '.join(r.errors) or 'see the run'}" for r in failed),
            allow_retries=False)


@dg.job(name=JOB_NAME, tags={"dagster/max_retries": "0"},
        description="Backfill bars over symbols x days in one run that starts in seconds "
                    "(launchpad config: first_day, last_day, symbols, timeframes).")
def backfill_bars_job() -> None:
    backfill_bars_op()
