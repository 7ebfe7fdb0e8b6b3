"""Backfill benchmark: 10 symbols x 365 days of demo data through the Dagster daemon.

The target (SPEC, "Performance and scale"): a UI backfill of bars_5m + bars_1h over 10
symbols x 365 day partitions (3,650 symbol|day keys per asset) takes at most 2x the time the
engine alone needs for the same bars; Dagster's bookkeeping must not dominate. This script
measures, on the configured server (AGG_DATABASE_URL, else the embedded one), every
backfill-policy configuration it is given, and the engine alone:

  single-run      BackfillPolicy.single_run() (the default: AGG_BACKFILL_MAX_PARTITIONS_PER_RUN
                  unset)
  multi-run(N)    AGG_BACKFILL_MAX_PARTITIONS_PER_RUN=N, one per --batches value

For each: derived_data_bars and data_agg_source_days are emptied (a first build every time),
a fresh Dagster storage database is created, `agg-pipeline dev --no-demo` (webserver +
daemon) starts with that configuration, and the backfill is launched exactly as the UI's
"Launch backfill" dialog does it (GraphQL `launchPartitionBackfill` with `assetSelection`,
`partitionNames` and the `dagster/from_ui` tag). The clock runs from the mutation until
`partitionBackfillOrError` reports a terminal status. Then the backfill's runs are counted
(tag `dagster/backfill`), their `engine_calls` materialization metadata summed, and the
active bars compared per symbol with a direct count of qualifying windows (SPEC contract 4:
5m windows with >= 3 source minutes, 1h windows with >= 7 such 5m windows).

"UI launchpad" is the README's UI path: Jobs > backfill_bars > Launchpad > Launch run
(`launchPipelineExecution` of the `backfill_bars` job with its launchpad config), through the
run queue; its one op runs one aggregate_bars run over the rectangle in process. Its clock runs
until the launchpad's run reports SUCCESS; both runs are counted.

Two more rows put the backfill figures in context: "one run", the same dialog's "Launch as:
Single run" option (`launchPipelineExecution` of the asset job with the range tags
first..last key: one run over the whole symbol x day rectangle, through the run queue, not a
backfill), and "engine only", the engine called directly once per (symbol, timeframe) with no
Dagster at all. The CLI path is shown too: `dagster asset materialize --select
bars_5m,bars_1h --partition-range "<first>|<SYM>...<last>|<SYM>"` for one symbol, timed the
same way.

Sensors and the schedule keep running (as in production). They are kept idle, not stopped:
every task's cursor is set to the data's end (its frontier: the seeded bars end at a UTC
midnight), and no source row's ingested_at is later than that, so the frontier sensor, the
schedule and the late-data sensor find nothing to do. Runs they launch anyway are counted
and reported as "other runs".

Everything lives in uniquely named scratch databases (market data + one Dagster storage per
configuration), dropped at the end (also on error or Ctrl-C) unless --keep. It is a report:
the exit code is 0 whether or not the target is met, non-zero only on errors. Run from the
checkout:

    .venv/bin/python bench/backfill_bench.py [--days 365] [--batches 365,1825] [--no-cli] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import dagster as dg
from dagster._core.events import DagsterEventType

from agg_pipeline import settings
from agg_pipeline.db import connection, migrations
from agg_pipeline.defs.backfill_job import JOB_NAME as BACKFILL_JOB
from agg_pipeline.defs.backfill_job import OP_NAME
from agg_pipeline.defs.partitions import (
    RANGE_END_TAG,
    RANGE_START_TAG,
    SYMBOLS_PARTITIONS_NAME,
    partition_key,
)
from agg_pipeline.defs.tags import LAUNCHED_BY_TAG
from agg_pipeline.engine import aggregate as engine
from agg_pipeline.engine import tasks
from agg_pipeline.settings import BACKFILL_BATCH_VAR
from bench.common import (
    Scratch,
    load_note,
    log,
    log_problems,
    seed_market,
    server_url,
    terminate_on_sigterm,
)

TARGET_RATIO = 2.0  # end to end through Dagster / the engine alone, for the same bars
DEFAULT_SYMBOLS = ("EURUSD", "USDJPY", "XAUUSD", "DXY", "GBPUSD", "AUDUSD", "USDCHF",
                   "USDCAD", "NZDUSD", "EURJPY")
ASSETS = ("bars_5m", "bars_1h")
BACKFILL_TAG = "dagster/backfill"
TERMINAL = {"COMPLETED", "COMPLETED_SUCCESS", "COMPLETED_FAILED", "FAILED", "CANCELED"}
# SPEC contract 4: the fewest source bars that still give a bar
MIN_1M_PER_5M = 3
MIN_5M_PER_1H = 7

LAUNCH = """
mutation Launch($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on Error { message }
    ... on PythonError { stack }
  }
}"""

POLL = """
query Backfill($id: String!) {
  partitionBackfillOrError(backfillId: $id) {
    __typename
    ... on PartitionBackfill {
      status numPartitions timestamp endTimestamp
      error { message stack }
    }
    ... on Error { message }
  }
}"""


# ----------------------------------------------------------------------------------------
# market data


@dataclass(frozen=True)
class Dataset:
    url: str
    symbols: tuple[str, ...]
    first_day: date
    last_day: date  # inclusive
    expected: dict[tuple[str, str], int]  # (timeframe, symbol) -> qualifying windows

    @property
    def start(self) -> datetime:
        return datetime.combine(self.first_day, datetime.min.time(), tzinfo=UTC)

    @property
    def end(self) -> datetime:
        return datetime.combine(self.last_day + timedelta(days=1), datetime.min.time(),
                                tzinfo=UTC)

    @property
    def days(self) -> int:
        return (self.last_day - self.first_day).days + 1

    def partition_names(self, symbols: tuple[str, ...] | None = None) -> list[str]:
        return [str(partition_key(symbol, self.first_day + timedelta(days=offset)))
                for offset in range(self.days) for symbol in (symbols or self.symbols)]


EXPECTED_SQL = f"""
WITH m5 AS (
    SELECT canonical_symbol,
           date_bin('5 minutes', ts_utc, TIMESTAMPTZ '2000-01-01 00:00:00+00') AS w
    FROM data_bars
    WHERE timeframe = '1m' AND NOT is_partial AND ts_utc >= %(start)s AND ts_utc < %(end)s
    GROUP BY 1, 2
    HAVING count(*) >= {MIN_1M_PER_5M}
), h1 AS (
    SELECT canonical_symbol
    FROM m5
    GROUP BY canonical_symbol, date_bin('1 hour', w, TIMESTAMPTZ '2000-01-01 00:00:00+00')
    HAVING count(*) >= {MIN_5M_PER_1H}
)
SELECT '5m', canonical_symbol, count(*) FROM m5 GROUP BY 2
UNION ALL
SELECT '1h', canonical_symbol, count(*) FROM h1 GROUP BY 2
"""


def prepare_market(url: str, symbols: tuple[str, ...], days: int) -> Dataset:
    """Seed `days` whole UTC days ending at a midnight, sync tasks; count expected bars."""
    # whole days ending at the last UTC midnight at least an hour ago, so every window is
    # final and no row counts as freshly landed for the late-data sensor (10-minute lookback)
    end = datetime.now(UTC) - timedelta(hours=1)
    end = end.replace(hour=0, minute=0, second=0, microsecond=0)
    started = time.perf_counter()
    inserted = seed_market(url, symbols, days, end)
    with connection.connect(url) as conn:
        rows = {r[0]: r[1] for r in conn.execute(
            "SELECT canonical_symbol, count(*) FROM data_bars GROUP BY 1")}
        expected = {(tf, sym): n for tf, sym, n in conn.execute(
            EXPECTED_SQL, {"start": end - timedelta(days=days), "end": end})}
    log(f"seeded {sum(inserted.values()):,} 1m bars ({sum(rows.values()):,} in data_bars) for "
        f"{len(symbols)} symbols x {days} days in {time.perf_counter() - started:.0f} s")
    first = (end - timedelta(days=days)).date()
    return Dataset(url, symbols, first, (end - timedelta(days=1)).date(), expected)


def reset_derived(data: Dataset) -> None:
    """A first build every time: no derived bars, no fingerprints, cursors at the frontier."""
    migrations.migrate(data.url)  # `agg-pipeline dev` would apply new ones anyway
    with connection.connect(data.url, autocommit=True) as conn:
        conn.execute("TRUNCATE derived_data_bars, data_agg_source_days")
        conn.execute("UPDATE data_agg_state SET last_agg_bar_ts_utc = %s, hard_fail_streak = 0",
                     (data.end,))
        conn.execute("VACUUM ANALYZE derived_data_bars")


def active_bars(url: str) -> dict[tuple[str, str], int]:
    with connection.connect(url) as conn:
        return {(tf, sym): n for tf, sym, n in conn.execute(
            "SELECT timeframe, canonical_symbol, count(*) FROM derived_data_bars "
            "WHERE deleted_at IS NULL GROUP BY 1, 2")}


def compare_bars(data: Dataset, symbols: tuple[str, ...]) -> tuple[dict[str, int], list[str]]:
    """Active bars per timeframe, and every (timeframe, symbol) whose count is off."""
    found = active_bars(data.url)
    totals = {tf: sum(n for (t, _), n in found.items() if t == tf) for tf in ("5m", "1h")}
    problems = []
    for tf in ("5m", "1h"):
        for symbol in data.symbols:
            want = data.expected.get((tf, symbol), 0) if symbol in symbols else 0
            got = found.get((tf, symbol), 0)
            if got != want or (symbol in symbols and want == 0):
                problems.append(f"{symbol}/{tf}: {got} bars, expected {want}")
    return totals, problems


# ----------------------------------------------------------------------------------------
# Dagster


@dataclass
class Outcome:
    label: str
    seconds: float | None = None
    runs: int | None = None
    failed_runs: int = 0
    engine_calls: int | None = None
    bars: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    counts_for_target: bool = True
    bars_seconds: float | None = None  # from the launch until the last run ended

    def ratio(self, engine_seconds: float | None) -> float | None:
        if self.seconds is None or not engine_seconds:
            return None
        return self.seconds / engine_seconds

    def passed(self, engine_seconds: float | None) -> bool:
        """Within the target ratio with the right bars (failed runs reported on their own)."""
        ratio = self.ratio(engine_seconds)
        return not self.problems and ratio is not None and ratio <= TARGET_RATIO


def inspect_runs(instance: dg.DagsterInstance, records, outcome: Outcome,
                 launched_at: float) -> None:
    """Runs, their statuses, engine calls, failing checks, timing, into `outcome`."""
    outcome.runs = len(records)
    statuses = Counter(r.dagster_run.status.value for r in records)
    outcome.failed_runs = outcome.runs - statuses.get("SUCCESS", 0)
    outcome.engine_calls = 0
    not_passed: Counter[str] = Counter()
    failed_steps: Counter[str] = Counter()
    for record in records:
        run_id = record.dagster_run.run_id
        for entry in instance.all_logs(run_id):
            # each asset step logs its run totals once: "... (N engine calls): ..."
            calls = ENGINE_CALLS.search(entry.user_message)
            if entry.user_message.startswith("run totals") and calls:
                outcome.engine_calls += int(calls.group(1))
            event = entry.dagster_event
            if event is None or event.event_type not in (
                    DagsterEventType.ASSET_CHECK_EVALUATION, DagsterEventType.STEP_FAILURE):
                continue
            if event.event_type == DagsterEventType.STEP_FAILURE:
                failed_steps[event.step_key] += 1
            else:
                evaluation = event.event_specific_data
                if not evaluation.passed:
                    not_passed[f"{evaluation.asset_key.to_user_string()}:{evaluation.check_name}"
                               f" ({evaluation.severity.value})"] += 1
    if outcome.failed_runs:
        only_checks = failed_steps and all(k.endswith("_checks") for k in failed_steps)
        outcome.notes.append(
            f"{outcome.failed_runs} of {outcome.runs} runs did not succeed {dict(statuses)}; "
            f"failed steps {dict(failed_steps)}"
            + ("; only asset-check steps failed, the bars were written" if only_checks else ""))
        if not only_checks:
            outcome.problems.append(f"runs failed: {dict(statuses)}, steps {dict(failed_steps)}")
    if not_passed:
        outcome.notes.append(f"asset check evaluations not passed (per run): {dict(not_passed)}")
    outcome.notes.extend(run_summary(records, launched_at))
    ends = [r.end_time for r in records if r.end_time]
    if ends:
        outcome.bars_seconds = max(ends) - launched_at
    outcome.notes.extend(step_summary(instance, records))


def run_summary(records, launched_at: float) -> list[str]:
    """Latency and overlap of a backfill's runs, from their run records (seconds after the
    launch)."""
    starts = [r.start_time for r in records if r.start_time]
    ends = [r.end_time for r in records if r.end_time]
    if not starts or not ends:
        return []
    created = min(r.create_timestamp.timestamp() for r in records)
    durations = sorted(r.end_time - r.start_time for r in records if r.start_time and r.end_time)
    points = sorted([(s, 1) for s in starts] + [(e, -1) for e in ends])
    live = peak = 0
    for _, step in points:
        live += step
        peak = max(peak, live)
    return [
        f"after launch: first run created +{created - launched_at:.1f} s, first start "
        f"+{min(starts) - launched_at:.1f} s, last end +{max(ends) - launched_at:.1f} s; "
        f"run durations min/median/max "
        f"{durations[0]:.1f}/{durations[len(durations) // 2]:.1f}/{durations[-1]:.1f} s, "
        f"sum {sum(durations):.1f} s, at most {peak} at once",
    ]


def step_summary(instance: dg.DagsterInstance, records) -> list[str]:
    """Where the runs' time went: step durations summed by step key, and the runs' ranges."""
    seconds: Counter[str] = Counter()
    for record in records:
        for stat in instance.get_run_step_stats(record.dagster_run.run_id):
            if stat.start_time and stat.end_time:
                seconds[stat.step_key] += stat.end_time - stat.start_time
    lines = []
    if seconds:
        steps = ", ".join(f"{key} {value:.1f}" for key, value in seconds.most_common())
        lines.append(f"step seconds summed over runs: {steps}")
    ranges = [f"{tags.get(RANGE_START_TAG, '?')}...{tags.get(RANGE_END_TAG, '?')}"
              for tags in (r.dagster_run.tags
                           for r in sorted(records, key=lambda r: r.create_timestamp))]
    if ranges:
        more = f", ... ({len(ranges) - 4} more)" if len(ranges) > 4 else ""
        shown = ", ".join(ranges[:4]) + more
        lines.append(f"run partition ranges: {shown}")
    return lines


ONE_RUN = "one-run"  # the UI dialog's "Launch as: Single run" (range tags), not a backfill
LAUNCHPAD = "launchpad"  # Jobs > backfill_bars > Launchpad (the README's UI path)
# a step's "run totals, bars_5m, N partitions of M symbols (K ranges): ...": its engine spans
ENGINE_CALLS = re.compile(r"\((\d+) (?:engine calls|ranges?)\)")

LAUNCH_RUN = """
mutation LaunchRun($executionParams: ExecutionParams!) {
  launchPipelineExecution(executionParams: $executionParams) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on Error { message }
    ... on PythonError { stack }
  }
}"""

RUN_STATUS = """
query Run($id: ID!) { runOrError(runId: $id) { __typename ... on Run { status } } }"""

ASSET_CHECKS = """
query Checks($keys: [AssetKeyInput!]) {
  assetNodes(assetKeys: $keys) {
    assetKey { path }
    assetChecksOrError { ... on AssetChecks { checks { name jobNames } } }
  }
}"""


def graphql(dev, query: str, variables: dict, timeout: float) -> dict:
    """DevServer.graphql with a longer timeout: the webserver creates a launched run inside
    the request, one ASSET_MATERIALIZATION_PLANNED event per partition and asset."""
    request = urllib.request.Request(
        f"{dev.url}/graphql", data=json.dumps({"query": query, "variables": variables}).encode(),
        headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        payload = json.load(response)
    if payload.get("errors"):
        raise RuntimeError(payload["errors"])
    return payload["data"]


def _launch_backfill(dev, data: Dataset) -> str:
    """The UI's "Launch backfill" (LaunchAssetChoosePartitionsDialog, assets of the hidden
    asset job): assetSelection + partitionNames + the dagster/from_ui tag."""
    params = {
        "assetSelection": [{"path": [name]} for name in ASSETS],
        "partitionNames": data.partition_names(),
        "fromFailure": False,
        "tags": [{"key": "dagster/from_ui", "value": "true"}],
    }
    result = graphql(dev, LAUNCH, {"params": params}, 600)["launchPartitionBackfill"]
    if result["__typename"] != "LaunchBackfillSuccess":
        raise RuntimeError(f"launchPartitionBackfill: {result}")
    return result["backfillId"]


def _launch_one_run(dev, data: Dataset) -> str:
    """The same dialog's "Launch as: Single run": one run of the hidden asset job over the
    first..last selected key (range tags), with the assets' checks, as the UI sends it."""
    job = "__ASSET_JOB"
    nodes = dev.graphql(ASSET_CHECKS, {"keys": [{"path": [a]} for a in ASSETS]})["assetNodes"]
    checks = [{"assetKey": {"path": node["assetKey"]["path"]}, "name": check["name"]}
              for node in nodes
              for check in (node["assetChecksOrError"] or {}).get("checks", [])
              if job in check["jobNames"]]
    names = data.partition_names()  # day-major, symbols in partition order: a rectangle
    params = {
        "mode": "default",
        "executionMetadata": {"tags": [
            {"key": RANGE_START_TAG, "value": names[0]},
            {"key": RANGE_END_TAG, "value": names[-1]},
            {"key": "dagster/from_ui", "value": "true"},
        ]},
        "runConfigData": "{}",
        "selector": {
            "repositoryLocationName": "agg_pipeline",
            "repositoryName": "__repository__",
            "pipelineName": job,
            "assetSelection": [{"path": [a]} for a in ASSETS],
            "assetCheckSelection": checks,
        },
    }
    result = graphql(dev, LAUNCH_RUN, {"executionParams": params}, 1200)[
        "launchPipelineExecution"]
    if result["__typename"] != "LaunchRunSuccess":
        raise RuntimeError(f"launchPipelineExecution: {result}")
    return result["run"]["runId"]


def _launch_launchpad(dev, data: Dataset) -> str:
    """Jobs > backfill_bars > Launchpad > Launch run: the job with its launchpad config, as the
    UI's launchpad sends it (launchPipelineExecution, runConfigData as YAML/JSON text)."""
    config = {"ops": {OP_NAME: {"config": {
        "first_day": data.first_day.isoformat(), "last_day": data.last_day.isoformat(),
        "symbols": list(data.symbols), "timeframes": [a.removeprefix("bars_") for a in ASSETS],
    }}}}
    params = {
        "mode": "default",
        "executionMetadata": {"tags": [{"key": "dagster/from_ui", "value": "true"}]},
        "runConfigData": json.dumps(config),
        "selector": {"repositoryLocationName": "agg_pipeline",
                     "repositoryName": "__repository__", "pipelineName": BACKFILL_JOB},
    }
    result = graphql(dev, LAUNCH_RUN, {"executionParams": params}, 600)[
        "launchPipelineExecution"]
    if result["__typename"] != "LaunchRunSuccess":
        raise RuntimeError(f"launchPipelineExecution: {result}")
    return result["run"]["runId"]


def run_dagster(scratch: Scratch, data: Dataset, batch: int | str | None, timeout: float,
                logs_dir: Path | None) -> Outcome:
    """One configuration through `agg-pipeline dev` (webserver + daemon): a backfill under the
    single-run (batch None) or multi-run(batch) policy, or (batch ONE_RUN) one range run."""
    from agg_pipeline_tests.processes import start_dev, storage_instance

    one_run = batch in (ONE_RUN, LAUNCHPAD)  # followed as one run
    if batch == LAUNCHPAD:
        label = "UI launchpad backfill_bars (one run + its aggregate_bars run)"
    elif one_run:
        label = "one run, range tags (the 1.13 UI no longer offers it)"
    else:
        label = "single-run" if batch is None else f"multi-run({batch})"
    outcome = Outcome(label)
    log(f"{label}: resetting derived bars, fresh Dagster storage")
    reset_derived(data)
    suffix = (batch if one_run else "single" if batch is None else f"multi{batch}")
    storage_url = scratch.database(f"dagster_{suffix}")
    home = scratch.directory(suffix)
    with storage_instance(storage_url, home / "instance") as instance:
        instance.add_dynamic_partitions(SYMBOLS_PARTITIONS_NAME, list(data.symbols))

    env = {settings.DATABASE_URL_VAR: data.url, settings.DAGSTER_STORAGE_URL_VAR: storage_url}
    if batch is not None and not one_run:
        env[BACKFILL_BATCH_VAR] = str(batch)
    started = time.perf_counter()
    dev = start_dev(home / "agg_home", "--no-demo", env=env)
    scratch.processes.append(dev)
    launched_id = None
    try:
        dev.wait_until_loaded()
        outcome.notes.append(f"dev up in {time.perf_counter() - started:.0f} s")
        what = "one run" if one_run else "the backfill"
        log(f"{label}: launching {what} of {len(ASSETS)} assets x "
            f"{len(data.symbols) * data.days} partitions")
        launched_at = time.time()
        load_before = os.getloadavg()
        t0 = time.perf_counter()
        launched_id = (_launch_launchpad if batch == LAUNCHPAD else
                       _launch_one_run if one_run else _launch_backfill)(dev, data)
        status, last_print, backfill = None, 0.0, {}
        while True:
            if one_run:
                status = dev.graphql(RUN_STATUS, {"id": launched_id})["runOrError"].get("status")
                done = status in ("SUCCESS", "FAILURE", "CANCELED")
            else:
                backfill = dev.graphql(POLL, {"id": launched_id})["partitionBackfillOrError"]
                status = backfill.get("status")
                done = status in TERMINAL
            elapsed = time.perf_counter() - t0
            if done:
                break
            if elapsed > timeout:
                outcome.problems.append(f"not finished after {timeout:.0f} s (status {status})")
                break
            if dev.process.poll() is not None:
                raise RuntimeError(f"agg-pipeline dev exited:\n{dev.log()[-4000:]}")
            if elapsed - last_print >= 30:
                last_print = elapsed
                log(f"{label}: {status} after {elapsed:.0f} s")
            time.sleep(1)
        outcome.seconds = time.perf_counter() - t0
        log(f"{label}: {status} after {outcome.seconds:.1f} s")
        outcome.notes.append(load_note(load_before))
        if status not in ("COMPLETED_SUCCESS", "SUCCESS") and not outcome.problems:
            outcome.problems.append(f"{what} {status}: {backfill.get('error')}")
        if backfill.get("endTimestamp"):
            outcome.notes.append(
                f"backfill {launched_id}: {status}, Dagster's own span "
                f"{backfill['endTimestamp'] - backfill['timestamp']:.1f} s")
    finally:
        dev.stop()
        scratch.processes.remove(dev)
        outcome.notes.extend(log_problems(dev.log()))
        if logs_dir is not None:
            logs_dir.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(dev.log_path, logs_dir / f"dev-{suffix}.log")

    with storage_instance(storage_url, home / "check") as instance:
        if one_run:
            records = instance.get_run_records(dg.RunsFilter(run_ids=[launched_id]))
            records += instance.get_run_records(
                dg.RunsFilter(tags={LAUNCHED_BY_TAG: launched_id}))
        else:
            records = instance.get_run_records(dg.RunsFilter(tags={BACKFILL_TAG: launched_id}))
        inspect_runs(instance, records, outcome, launched_at)
        mine = {r.dagster_run.run_id for r in records}
        others = [r for r in instance.get_run_records() if r.dagster_run.run_id not in mine]
        if others:
            reasons = Counter(r.dagster_run.tags.get("agg/reason", "?") for r in others)
            outcome.notes.append(f"other runs (sensors/schedule): {len(others)} {dict(reasons)}")
        else:
            outcome.notes.append("other runs (sensors/schedule): 0")
    outcome.bars, problems = compare_bars(data, data.symbols)
    outcome.problems.extend(problems[:10])
    return outcome


def run_direct(data: Dataset) -> Outcome:
    """Reference without Dagster: the engine called directly, once per (symbol, timeframe)
    over the whole range, symbols one after another (what one run per symbol does inside)."""
    outcome = Outcome("engine only, no Dagster", counts_for_target=False, runs=0)
    log("engine only: resetting derived bars")
    reset_derived(data)
    load_before = os.getloadavg()
    per_tf: Counter[str] = Counter()
    t0 = time.perf_counter()
    with connection.connect(data.url) as conn:
        for symbol in data.symbols:
            for tf in ("5m", "1h"):
                started = time.perf_counter()
                engine.aggregate(conn, symbol, tf, data.start, data.end)
                conn.commit()
                per_tf[tf] += time.perf_counter() - started
    outcome.seconds = time.perf_counter() - t0
    outcome.engine_calls = 2 * len(data.symbols)
    outcome.notes.append(load_note(load_before))
    outcome.notes.append(f"engine seconds: 5m {per_tf['5m']:.1f}, 1h {per_tf['1h']:.1f} "
                         f"(per symbol {outcome.seconds / len(data.symbols):.1f})")
    outcome.bars, problems = compare_bars(data, data.symbols)
    outcome.problems.extend(problems[:10])
    return outcome


def run_cli(scratch: Scratch, data: Dataset, symbol: str, timeout: float,
            logs_dir: Path | None) -> Outcome:
    from agg_pipeline_tests.processes import storage_instance

    outcome = Outcome(f"CLI, {symbol} only", counts_for_target=False)
    log("CLI: resetting derived bars, fresh Dagster storage")
    reset_derived(data)
    storage_url = scratch.database("dagster_cli")
    home = scratch.directory("cli")
    dagster_home = home / "dagster_home"
    dagster_home.mkdir()
    shutil.copyfile(settings.project_root() / "dagster.yaml", dagster_home / "dagster.yaml")
    with storage_instance(storage_url, home / "instance") as instance:
        instance.add_dynamic_partitions(SYMBOLS_PARTITIONS_NAME, list(data.symbols))
    first, last = (str(partition_key(symbol, d)) for d in (data.first_day, data.last_day))
    command = [sys.executable, "-m", "dagster", "asset", "materialize",
               "-m", "agg_pipeline.definitions", "--select", ",".join(ASSETS),
               "--partition-range", f"{first}...{last}"]
    env = {k: v for k, v in os.environ.items() if k != BACKFILL_BATCH_VAR}
    env.update({settings.DATABASE_URL_VAR: data.url,
                settings.DAGSTER_STORAGE_URL_VAR: storage_url,
                "DAGSTER_HOME": str(dagster_home)})
    log(f"CLI: {' '.join(command[1:])}")
    launched_at = time.time()
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    done = subprocess.run(command, env=env, cwd=settings.project_root(), capture_output=True,
                          text=True, timeout=timeout)
    outcome.seconds = time.perf_counter() - t0
    outcome.notes.append(load_note(load_before))
    output = done.stdout + done.stderr
    if logs_dir is not None:
        logs_dir.mkdir(parents=True, exist_ok=True)
        (logs_dir / "cli.log").write_text(output)
    if done.returncode != 0:
        outcome.problems.append(f"exit code {done.returncode}: {output.strip()[-1500:]}")
    outcome.notes.append(f"command: dagster asset materialize -m agg_pipeline.definitions "
                         f"--select {','.join(ASSETS)} --partition-range \"{first}...{last}\"")
    with storage_instance(storage_url, home / "check") as instance:
        records = instance.get_run_records()
        inspect_runs(instance, records, outcome, launched_at)
    outcome.bars, problems = compare_bars(data, (symbol,))
    outcome.problems.extend(problems[:10])
    return outcome


# ----------------------------------------------------------------------------------------
# report


def report(data: Dataset, outcomes: list[Outcome]) -> None:
    partitions = len(data.symbols) * data.days
    print()
    print(f"Backfill of {', '.join(ASSETS)}: {len(data.symbols)} symbols x {data.days} days "
          f"({data.first_day} .. {data.last_day}) = {partitions:,} partitions per asset, "
          f"through the Dagster daemon (agg-pipeline dev), on {connection.describe_url(data.url)}")
    want5 = sum(n for (tf, _), n in data.expected.items() if tf == "5m")
    want1 = sum(n for (tf, _), n in data.expected.items() if tf == "1h")
    direct = next((o for o in outcomes if not o.counts_for_target and o.runs == 0), None)
    engine_s = direct.seconds if direct is not None and not direct.problems else None
    print(f"Expected bars (direct count of qualifying windows): 5m {want5:,}, 1h {want1:,}; "
          f"target: end to end within {TARGET_RATIO:.0f}x the engine alone"
          + (f" ({engine_s:.1f} s)" if engine_s else " (engine-only case not measured)"))
    print()
    header = ("configuration", "wall s", "x engine", "bars s", "x engine", "runs",
              "failed runs", "engine calls", "5m bars", "1h bars", "bars check",
              f"<= {TARGET_RATIO:.0f}x")

    def times(seconds: float | None) -> str:
        return "-" if seconds is None or not engine_s else f"{seconds / engine_s:.2f}"

    rows = []
    for o in outcomes:
        rows.append((
            o.label,
            "-" if o.seconds is None else f"{o.seconds:.1f}",
            times(o.seconds),
            "-" if o.bars_seconds is None else f"{o.bars_seconds:.1f}",
            times(o.bars_seconds),
            "-" if o.runs is None else str(o.runs),
            "-" if o.runs is None else str(o.failed_runs),
            "-" if o.engine_calls is None else str(o.engine_calls),
            f"{o.bars.get('5m', 0):,}",
            f"{o.bars.get('1h', 0):,}",
            "ok" if not o.problems else "FAIL",
            ("PASS" if o.passed(engine_s) else "FAIL") if o.counts_for_target else "n/a",
        ))
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                        for i, (c, w) in enumerate(zip(row, widths, strict=True))))
    print()
    print("wall s: from the launch until the backfill (or run) reports a terminal status; bars "
          "s: until its last run ended (every bar written).")
    print()
    for o in outcomes:
        print(f"{o.label}:")
        for line in o.notes:
            print(f"  - {line}")
        for line in o.problems:
            print(f"  ! {line}")


def guarded(label: str, measure) -> Outcome:
    """One configuration; an error is reported in its row and the next one still runs."""
    try:
        return measure()
    except Exception as exc:
        log(f"{label} failed: {type(exc).__name__}: {exc}")
        return Outcome(label, problems=[f"error: {type(exc).__name__}: {str(exc)[:1500]}"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--symbols", default=",".join(DEFAULT_SYMBOLS),
                        help="comma-separated (unknown names get FX defaults)")
    parser.add_argument("--batches", default="",
                        help="multi-run max partitions per run, comma-separated ('' for none)")
    parser.add_argument("--no-single", action="store_true", help="skip the single-run case")
    parser.add_argument("--no-one-run", action="store_true",
                        help="skip the one-run case (the UI's 'Launch as: Single run')")
    parser.add_argument("--no-launchpad", action="store_true",
                        help="skip the launchpad case (Jobs > backfill_bars, the README's path)")
    parser.add_argument("--no-cli", action="store_true", help="skip the CLI case")
    parser.add_argument("--no-direct", action="store_true",
                        help="skip the engine-only reference (no Dagster)")
    parser.add_argument("--cli-symbol", default=None, help="symbol of the CLI case (the first)")
    parser.add_argument("--timeout", type=float, default=1800,
                        help="seconds to wait for one backfill")
    parser.add_argument("--logs", type=Path, default=None,
                        help="copy each configuration's dev.log (and the CLI output) here")
    parser.add_argument("--keep", action="store_true",
                        help="leave the scratch databases and folders in place")
    args = parser.parse_args()
    symbols = tuple(s.strip() for s in args.symbols.split(",") if s.strip())
    batches = [int(b) for b in args.batches.split(",") if b.strip()]
    if any(b < 1 for b in batches):
        parser.error("--batches values must be positive")
    for symbol in symbols:
        if tasks.symbol_problem(symbol):
            parser.error(f"--symbols: {symbol!r}: {tasks.symbol_problem(symbol)}")
    root = settings.project_root()
    if root is None:
        parser.error("run from the source checkout (the dagster.yaml and workspace.yaml)")
    # every configuration sets the batch size itself
    os.environ.pop(BACKFILL_BATCH_VAR, None)

    signal.signal(signal.SIGTERM, terminate_on_sigterm)
    scratch = Scratch(server_url(), args.keep)
    outcomes: list[Outcome] = []
    try:
        market_url = scratch.database("market")
        log(f"scratch market database {connection.describe_url(market_url)}")
        data = prepare_market(market_url, symbols, args.days)
        if not args.no_direct:
            outcomes.append(run_direct(data))
        configurations: list[int | str | None] = ([] if args.no_single else [None]) + batches
        if not args.no_one_run:
            configurations.append(ONE_RUN)
        if not args.no_launchpad:
            configurations.insert(0, LAUNCHPAD)
        for batch in configurations:
            outcomes.append(guarded(f"configuration {batch or 'single-run'}", lambda b=batch:
                                    run_dagster(scratch, data, b, args.timeout, args.logs)))
        if not args.no_cli:
            symbol = args.cli_symbol or symbols[0]
            outcomes.append(guarded(f"CLI, {symbol} only", lambda: run_cli(
                scratch, data, symbol, args.timeout, args.logs)))
        report(data, outcomes)
    finally:
        scratch.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
