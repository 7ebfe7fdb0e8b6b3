"""Helpers shared by the benchmark scripts that drive Dagster processes (backfill, soak).

The configured server, scratch databases and folders released on exit, progress lines on
stderr, the machine's load, error lines in a process log, and SIGTERM handled like Ctrl-C.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta
from pathlib import Path

from agg_pipeline import settings
from agg_pipeline.db import connection, migrations


def load_note(before: tuple[float, float, float]) -> str:
    """The machine's load around a measurement (other work on the machine swells wall time)."""
    after = os.getloadavg()
    return (f"load average (1 min) {before[0]:.1f} at launch, {after[0]:.1f} at the end, "
            f"on {os.cpu_count()} CPUs")


def alternating(rounds: int, sides: Sequence[str]) -> Iterator[tuple[int, list[str]]]:
    """(round number, the sides in that round's order) for A/B measurements within one run:
    every round reverses the previous one's order, so neither side always goes first (warm
    caches, background writes and the machine's load drift between the two)."""
    for number in range(rounds):
        yield number, list(sides) if number % 2 == 0 else list(sides)[::-1]


class BackendClock:
    """CPU time of one connection's server backend, read from /proc/<pid>/schedstat when the
    server runs on this machine (`None` otherwise): on a shared, busy machine wall-clock time
    swells with other work, the CPU a statement took much less. The backend is recognised by
    its database's name in its process title, so another server's process is never misread."""

    def __init__(self, pid: int, dbname: str) -> None:
        self.path: str | None = None
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                if dbname.encode() in handle.read():
                    self.path = f"/proc/{pid}/schedstat"
        except OSError:
            pass

    def read(self) -> tuple[float, float] | None:
        """(seconds on a CPU, seconds runnable but waiting for one) so far."""
        if self.path is None:
            return None
        with open(self.path) as handle:
            on_cpu, waiting = handle.read().split()[:2]
        return int(on_cpu) / 1e9, int(waiting) / 1e9


def log(message: str) -> None:
    print(f"  .. {message}", file=sys.stderr, flush=True)


def server_url() -> str:
    """AGG_DATABASE_URL's server when set (its credentials must create databases), else the
    embedded server (started when needed)."""
    configured = os.environ.get(settings.DATABASE_URL_VAR, "").strip()
    if configured:
        return configured
    from agg_pipeline.db import embedded

    return embedded.ensure_server().server_url


def seed_market(url: str, symbols: tuple[str, ...], days: int, end: datetime) -> dict[str, int]:
    """Migrate, write `days` of demo 1m bars ending at `end` with nothing stamped later than
    `end` (so no row counts as landing during the measurement), VACUUM ANALYZE them (now, not
    by autovacuum mid-measurement), and sync the tasks (prod). Returns the rows per symbol."""
    from agg_pipeline import demo
    from agg_pipeline.engine import tasks

    migrations.migrate(url)
    agg_start = settings.default_agg_start()
    if end - timedelta(days=days) < agg_start:
        raise SystemExit(f"--days {days} reaches before AGG_START_UTC ({agg_start:%Y-%m-%d}); "
                         "the day partitions do not cover it")
    with connection.connect(url) as conn:
        inserted = demo.seed_demo(conn, symbols, days, end=end)
        # seed_demo caps ingested_at at its own wall clock, which runs past `end`
        conn.execute("UPDATE data_bars SET ingested_at = %s WHERE ingested_at > %s", (end, end))
        conn.commit()
        conn.autocommit = True
        conn.execute("VACUUM ANALYZE data_bars")
        conn.autocommit = False
        result = tasks.sync_tasks(conn, "prod", agg_start=agg_start)
        if sorted(result.symbols) != sorted(symbols) or result.rejected:
            raise SystemExit(f"registry sync gave {result}")
        conn.commit()
    return inserted


# ----------------------------------------------------------------------------------------
# scratch resources, released in reverse order on exit


class Scratch:
    """Uniquely named scratch databases (`<prefix>_<pid>_<random>_<suffix>`) and folders,
    and the processes using them (anything with `stop()` and `process.pid`: DevServer,
    Daemon): `close()` stops the processes, then drops the databases and removes the
    folders, unless `keep`."""

    def __init__(self, server: str, keep: bool, prefix: str = "agg_bench"):
        self.server = server
        self.keep = keep
        self.prefix = f"{prefix}_{os.getpid()}_{uuid.uuid4().hex[:6]}"
        self.databases: list[str] = []
        self.dirs: list[Path] = []
        self.processes: list = []  # DevServer / Daemon objects still running

    def database(self, suffix: str) -> str:
        name = f"{self.prefix}_{suffix}"
        connection.create_database(self.server, name)
        self.databases.append(name)
        return connection.with_database(self.server, name)

    def directory(self, suffix: str) -> Path:
        path = Path(tempfile.mkdtemp(prefix=f"{self.prefix}_{suffix}_"))
        self.dirs.append(path)
        return path

    def close(self) -> None:
        for process in self.processes:
            try:
                process.stop()
            except Exception as exc:  # keep cleaning up
                log(f"could not stop {type(process).__name__} (pid {process.process.pid}): "
                    f"{exc}")
        self.processes.clear()
        if self.keep:
            log(f"--keep: databases {', '.join(self.databases)} and folders "
                f"{', '.join(map(str, self.dirs))} left in place")
            return
        for name in reversed(self.databases):
            try:
                connection.drop_database(self.server, name)
            except Exception as exc:
                log(f"could not drop {name}: {exc}")
        for path in self.dirs:
            shutil.rmtree(path, ignore_errors=True)


def terminate_on_sigterm(signum, frame):
    """signal.signal(SIGTERM, terminate_on_sigterm): clean up like Ctrl-C."""
    raise KeyboardInterrupt(f"signal {signum}")


ERROR_LINE = re.compile(r"Traceback|\bERROR\b|Exception|CRITICAL", re.IGNORECASE)


def log_problems(text: str, name: str = "dev.log") -> list[str]:
    """The error/traceback lines of a process log `name`: a count, then up to 8 distinct ones
    (timestamps stripped, 200 characters each); empty when there are none."""
    lines = [line.strip() for line in text.splitlines() if ERROR_LINE.search(line)]
    distinct = list(dict.fromkeys(re.sub(r"^\S+ \S+ [-+]\d{4} - ", "", line)[:200]
                                  for line in lines))
    return [f"{len(lines)} error/traceback line(s) in {name}", *distinct[:8]] if lines else []
