"""Dev benchmark: a new user's `agg-pipeline dev`, from start to every demo symbol's bars.

The issue's target: on the 30-day, 4-symbol demo, every symbol's 5m and 1h bars are there
within 30 s of the UI answering. This script runs what `./run dev` does on a fresh clone, in
a scratch AGG_HOME (so its own embedded PostgreSQL server, initdb included), --runs times:

  start    `agg-pipeline dev --demo-days N` starts (embedded server, migrations, demo data,
           registry sync, code server, webserver, daemon, live feed)
  UI       the webserver's GraphQL reports the code location LOADED
  bars     every demo symbol has its whole history in 5m and 1h: active bars from the demo's
           first day to within 20 minutes (5m) / 3 hours (1h) of now, polled every 0.5 s

and prints, per run, the seconds from start to the UI and from the UI to the bars, the bar
counts, the machine's load, and the number of console lines dev printed. It is a report:
exit code 0 whether or not the target is met. Run from the checkout:

    .venv/bin/python bench/dev_bench.py [--days 30] [--runs 1] [--keep]
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from datetime import UTC, datetime, timedelta

from agg_pipeline import demo
from agg_pipeline.db import connection, embedded
from bench.common import Scratch, load_note, log, log_problems, terminate_on_sigterm

TARGET_S = 30.0
TIMEOUT_S = 600.0
RECENT = {"5m": timedelta(minutes=20), "1h": timedelta(hours=3)}
BARS = """
    SELECT s.canonical_symbol, s.timeframe, min(d.ts_utc), max(d.ts_utc), count(d.ts_utc)
    FROM data_agg_state s
    LEFT JOIN derived_data_bars d ON d.canonical_symbol = s.canonical_symbol
     AND d.timeframe = s.timeframe AND d.deleted_at IS NULL
    WHERE s.timeframe IN ('5m', '1h')
    GROUP BY 1, 2"""


def built(url: str) -> dict[tuple[str, str], int] | None:
    """Bars per (symbol, timeframe) once every demo symbol's history is complete."""
    with connection.connect(url) as conn:
        rows = conn.execute(BARS).fetchall()
        first = demo.first_minute(conn)
    now = datetime.now(UTC)
    wanted = {(s, tf) for s in demo.DEMO_SYMBOLS for tf in RECENT}
    done = {(s, tf) for s, tf, low, high, _ in rows
            if low is not None and low < first + timedelta(days=1) and high >= now - RECENT[tf]}
    return {(s, tf): n for s, tf, _, _, n in rows} if done >= wanted else None


def one_run(scratch: Scratch, days: int, index: int) -> str:
    from agg_pipeline_tests.processes import start_dev

    home = scratch.directory(f"run{index}") / "home"
    load_before = os.getloadavg()
    started = time.monotonic()
    dev = start_dev(home, "--demo-days", str(days))
    scratch.processes.append(dev)
    try:
        dev.wait_until_loaded(timeout=TIMEOUT_S)
        ui = time.monotonic()
        log(f"run {index}: UI answered {ui - started:.1f} s after start")
        url = embedded.ensure_server(home).database_url(embedded.MARKET_DATABASE)
        counts = None
        while counts is None and time.monotonic() - ui < TIMEOUT_S:
            if dev.process.poll() is not None:
                raise RuntimeError(f"agg-pipeline dev exited:\n{dev.log()[-4000:]}")
            counts = built(url)
            if counts is None:
                time.sleep(0.5)
        bars = time.monotonic()
        if counts is None:
            return f"run {index}: bars not complete {TIMEOUT_S:.0f} s after the UI answered"
        verdict = "meets" if bars - ui <= TARGET_S else "misses"
        lines = [
            f"run {index}: start -> UI {ui - started:.1f} s; UI -> every symbol's 5m + 1h "
            f"history {bars - ui:.1f} s ({verdict} the {TARGET_S:.0f} s target)",
            "  bars: " + ", ".join(f"{s} {tf} {n:,}" for (s, tf), n in sorted(counts.items())),
            f"  {load_note(load_before)}",
        ]
    finally:
        dev.stop()
        scratch.processes.remove(dev)
        embedded.stop_server(home)
    output = dev.log()
    lines.append(f"  dev printed {output.count(chr(10))} console lines")
    lines.extend(f"  {problem}" for problem in log_problems(output))
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--days", type=int, default=30, help="days of demo data")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--keep", action="store_true",
                        help="leave the scratch folders (and their data) in place")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, terminate_on_sigterm)
    # the scratch homes hold their own servers: no database is created on another one
    scratch = Scratch(server="", keep=args.keep, prefix="agg_dev_bench")
    results = []
    try:
        for index in range(1, args.runs + 1):
            results.append(one_run(scratch, args.days, index))
    finally:
        scratch.close()
    print(f"agg-pipeline dev, {len(demo.DEMO_SYMBOLS)} demo symbols x {args.days} days")
    print("\n".join(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
