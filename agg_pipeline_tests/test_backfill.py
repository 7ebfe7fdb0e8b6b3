"""`agg-pipeline backfill SYMBOLS FIRST_DAY LAST_DAY`: the README's CLI backfill, run as a user
runs it (a subprocess whose environment has no DAGSTER_HOME and none of Dagster's variables),
over a real market database and real Dagster storage, as the least-privilege login."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from datetime import timedelta

import dagster as dg

from agg_pipeline import backfill, settings
from agg_pipeline_tests.helpers import T0, add_symbol, insert_bars, minute_bars, sync
from agg_pipeline_tests.processes import storage_instance

DAY = timedelta(days=1)
# what a user's shell has not set: the command must set them itself
UNSET = ("DAGSTER_HOME", settings.START_VAR, *settings.DAGSTER_PROCESS_ENV)


def run_backfill(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k not in UNSET}
    return subprocess.run([sys.executable, "-m", "agg_pipeline.cli", "backfill", *args],
                          capture_output=True, text=True, timeout=600, env={**base, **env})


def bar_counts(db) -> dict[tuple[str, str], int]:
    rows = db.execute("SELECT canonical_symbol, timeframe, count(*) FROM derived_data_bars "
                      "WHERE deleted_at IS NULL GROUP BY 1, 2").fetchall()
    db.commit()
    return {(symbol, tf): n for symbol, tf, n in rows}


def test_backfill_builds_the_rectangle_on_the_projects_instance(db, dagster_storage_url,
                                                               tmp_path):
    for symbol in ("EURUSD", "GBPUSD", "USDJPY"):
        add_symbol(db, symbol)
    sync(db)
    for symbol in ("EURUSD", "GBPUSD", "USDJPY"):
        insert_bars(db, symbol, minute_bars(T0, 2 * 24 * 60))
    db.commit()
    env = {settings.DAGSTER_STORAGE_URL_VAR: dagster_storage_url,
           settings.HOME_VAR: str(tmp_path / "home")}

    # EURUSD and USDJPY are not consecutive in the `symbols` partitions: two rectangles
    first = run_backfill("EURUSD,USDJPY", f"{T0.date()}", f"{T0.date() + DAY}", env=env)
    assert first.returncode == 0, first.stderr
    [line] = first.stdout.splitlines()
    assert re.fullmatch(
        r"backfill EURUSD,USDJPY 2025-07-07\.\.2025-07-08: 2 runs succeeded in [\d.]+ s "
        r"\((\w{8}), (\w{8})\); 5m: 1,152 new; 1h: 96 new", line), line
    assert bar_counts(db) == {("EURUSD", "5m"): 576, ("EURUSD", "1h"): 48,
                              ("USDJPY", "5m"): 576, ("USDJPY", "1h"): 48}
    assert "Traceback" not in first.stderr

    # the runs are in the instance dev's UI shows, with the product's Dagster variables
    # applied: one planned event per asset, not one per partition (2 days x 1 symbol)
    ids = re.findall(r"\b\w{8}\b(?=[,)])", line)
    with storage_instance(dagster_storage_url, tmp_path / "check") as instance:
        runs = [r for r in instance.get_runs(dg.RunsFilter(tags=backfill.NO_RETRY_TAGS))
                if r.run_id[:8] in ids]
        assert [r.status for r in runs] == [dg.DagsterRunStatus.SUCCESS] * 2
        planned = instance.get_records_for_run(
            runs[0].run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION_PLANNED).records
        assert len(planned) == 2  # bars_5m, bars_1h: no synthetic series, no synthetic_bars_1m
    assert (tmp_path / "home" / "dagster_home" / "dagster.yaml").is_file()

    again = run_backfill("EURUSD", f"{T0.date()}", f"{T0.date()}", "--timeframes", "5m",
                         env=env)
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip().endswith("; 5m: 288 unchanged"), again.stdout


def test_backfill_refuses_what_it_cannot_do_in_one_line(db, dagster_storage_url, tmp_path):
    add_symbol(db, "EURUSD")
    sync(db)
    home = {settings.HOME_VAR: str(tmp_path / "home")}
    storage = {settings.DAGSTER_STORAGE_URL_VAR: dagster_storage_url, **home}
    cases = [
        ((), home, "AGG_DATABASE_URL is set but DAGSTER_POSTGRES_URL is not"),
        (("--timeframes", "7m"), storage, "unknown target timeframe '7m'"),
        (("--symbols-ignored",), storage, "No such option"),
    ]
    for extra, env, expected in cases:
        result = run_backfill("EURUSD", "2025-07-07", "2025-07-08", *extra, env=env)
        assert result.returncode in (1, 2) and expected in result.stderr, result.stderr
        assert "Traceback" not in result.stderr
    for args, expected in [(("XXX", "2025-07-07", "2025-07-07"), "registry"),
                           (("EURUSD", "2025-07-08", "2025-07-07"), "is before FIRST_DAY"),
                           (("EURUSD", "2024-01-01", "2024-01-02"), "first day partition")]:
        result = run_backfill(*args, env=storage)
        assert result.returncode == 1 and expected in result.stderr, result.stderr
        assert "Traceback" not in result.stderr


def test_blocks_follow_the_partitions_order():
    order = ["AUDUSD", "EURUSD", "GBPUSD", "USDJPY", "XAUUSD"]
    assert backfill.blocks(["USDJPY", "EURUSD", "GBPUSD"], order) == [
        ["EURUSD", "GBPUSD", "USDJPY"]]
    assert backfill.blocks(["AUDUSD", "XAUUSD", "GBPUSD"], order) == [
        ["AUDUSD"], ["GBPUSD"], ["XAUUSD"]]
