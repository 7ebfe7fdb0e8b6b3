"""Run workers' heartbeats (migration 020): a worker records, on the database's clock, that it is
alive; the liveness sensor (defs/liveness.py) reads which ones went silent. Plain Python + SQL.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

import psycopg
from psycopg.rows import dict_row

from agg_pipeline.db import queries

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Heartbeat:
    run_id: str
    job_name: str
    worker: str  # host:pid
    beat_at: datetime
    silent_s: float  # since beat_at, on the database's clock
    checked_at: datetime  # the database's clock when read


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def beat(conn: psycopg.Connection, run_id: str, job_name: str, worker: str) -> None:
    """One beat (autocommit connection, or the caller commits)."""
    conn.execute(queries.query("run_heartbeat_beat"),
                 {"run_id": run_id, "job_name": job_name, "worker": worker})


def recorded(conn: psycopg.Connection) -> list[Heartbeat]:
    """Every run worker with a heartbeat row, the longest silent first."""
    with conn.cursor(row_factory=dict_row) as cur:
        return [Heartbeat(**row) for row in cur.execute(queries.query("run_heartbeats"))]


def forget(conn: psycopg.Connection, run_ids: Sequence[str]) -> int:
    """Delete the heartbeats of runs no longer in flight; returns how many."""
    if not run_ids:
        return 0
    return conn.execute(queries.query("run_heartbeat_forget"),
                        {"run_ids": list(run_ids)}).rowcount


class Beater:
    """Beats for one run from a daemon thread until `stop()`, which deletes the run's row.

    The first beat is made in `start()`, so the row exists before the run's first step. The
    thread keeps one autocommit connection (a login per beat would cost more than the beat) and
    opens a new one after any error: a database outage only delays beats, and the sensor's
    timeout is several beats long. A worker killed outright simply stops beating."""

    def __init__(self, connect: Callable[[], psycopg.Connection], run_id: str, job_name: str,
                 interval_s: float) -> None:
        self._connect, self.run_id, self.job_name = connect, run_id, job_name
        self.interval_s, self.worker = interval_s, worker_name()
        self._conn: psycopg.Connection | None = None
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"agg-heartbeat-{run_id[:8]}",
                                        daemon=True)
        self.failures = 0

    def start(self) -> None:
        self._beat()
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join(timeout=self.interval_s + 15)
        # a thread still stuck in a beat keeps its connection: the row is deleted on a new one
        own = self._conn if not self._thread.is_alive() else None
        try:
            conn = own if own is not None and not own.closed else self._connect()
            with conn:
                forget(conn, [self.run_id])
        except Exception as exc:  # the sensor deletes the row of a run that ended
            log.warning("run %s: could not delete its heartbeat: %s", self.run_id, exc)
        self._conn = None

    def _loop(self) -> None:
        while not self._stopped.wait(self.interval_s):
            self._beat()

    def _beat(self) -> None:
        try:
            if self._conn is None or self._conn.closed:
                self._conn = self._connect()
            beat(self._conn, self.run_id, self.job_name, self.worker)
        except Exception as exc:
            self.failures += 1
            log.warning("run %s: heartbeat not recorded (%s): %s", self.run_id,
                        type(exc).__name__, exc)
            if self._conn is not None:
                self._conn.close()
            self._conn = None
