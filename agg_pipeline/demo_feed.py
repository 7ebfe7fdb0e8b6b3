"""The live 1m feed of `agg-pipeline dev`'s demo: what an ingester does, every minute.

Just after each minute boundary (on the database's clock) it writes, for every feed symbol,
the 1m bar of the minute that just ended, stamped `ingested_at = now`, continuing the
symbol's price from its newest stored close with `demo.generate_bars`. Now and then a
minute is left out (the 5m bar's quality shows the gap) and an earlier minute the pipeline
has already aggregated is corrected (a new close, `ingested_at = now`: the late-data sensor
re-materialises its day and the 5m bar is updated; a corrected DXY component restates
DXY's minute, and so its 5m and 1h, the same way). So the frontier and late-data sensors,
the checks and freshness have something to do in front of the user.

Weekends: the seeded history follows FX sessions (closed from Friday 22:00 to Sunday 22:00
UTC); the feed does not. It writes every minute of the week, as a market that never closes
would, so the demo is never idle; Dagster's freshness policy ticks only inside the FX week
by default (`AGG_FRESHNESS_CRON`) and does not judge those hours.

After a pause (the machine slept, dev was stopped) the feed fills at most the last
`MAX_CATCH_UP` of minutes; an older gap stays a gap, as a feed outage would leave one.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import psycopg

from agg_pipeline import demo
from agg_pipeline.db import connection, queries

MINUTE = timedelta(minutes=1)
SEED = 11
MISSING_FRACTION = 0.02  # of the symbol-minutes: left out, never written
CORRECTION_CHANCE = 0.1  # per minute: one symbol's already aggregated minute is corrected
# a corrected minute belongs to an active 5m bar that started this long ago (old enough to be
# aggregated, recent enough to be the day the user is looking at)
CORRECTION_AGE = (timedelta(minutes=10), timedelta(hours=2))
MAX_CATCH_UP = timedelta(minutes=10)
OFFSET_SECONDS = 2.0  # a minute's bar is written this long after the minute ended

log = logging.getLogger(__name__)


def feed_symbols() -> tuple[str, ...]:
    """The symbols the feed writes: the demo's, but not the synthetic DXY (ingest_class
    'B'), which the pipeline computes from the six components the feed does write. The one
    place that decides it."""
    return tuple(s for s, spec in demo.DEMO_SYMBOLS.items() if spec.ingest_class != "B")


@dataclass(frozen=True)
class Correction:
    symbol: str
    ts_utc: datetime
    old_close: float
    new_close: float


@dataclass
class FeedTick:
    """What one tick did."""

    now: datetime
    written: dict[str, list[datetime]] = field(default_factory=dict)  # symbol -> minutes
    missing: dict[str, list[datetime]] = field(default_factory=dict)  # left out on purpose
    corrections: list[Correction] = field(default_factory=list)


@dataclass
class _Position:
    next_minute: datetime  # the first minute not yet written (or left out)
    price: float  # the close the next minute opens at


class DemoFeed:
    """Writes the feed symbols' complete minutes; `tick` once per minute (`run` does)."""

    def __init__(self, symbols: tuple[str, ...] | None = None, *, seed: int = SEED,
                 missing_fraction: float = MISSING_FRACTION,
                 correction_chance: float = CORRECTION_CHANCE):
        self.symbols = symbols if symbols is not None else feed_symbols()
        self.seed = seed
        self.missing_fraction = missing_fraction
        self.correction_chance = correction_chance
        self._rng = np.random.default_rng(seed)
        self._positions: dict[str, _Position] = {}

    def tick(self, conn: psycopg.Connection, now: datetime) -> FeedTick:
        """Write every complete minute (ending at or before `now`) not yet written, at most
        MAX_CATCH_UP of them, stamped `ingested_at = now`; maybe correct one earlier minute.
        One transaction."""
        now = now.astimezone(UTC)
        result = FeedTick(now=now)
        end = now.replace(second=0, microsecond=0)  # minutes before this one are complete
        with conn.transaction():
            self._locate(conn, end)
            for index, symbol in enumerate(self.symbols):
                position = self._positions.get(symbol)
                if position is None:
                    continue  # not in the registry
                start = max(position.next_minute, end - MAX_CATCH_UP)
                if start >= end:
                    continue
                spec = demo.demo_symbol(symbol)
                frame = demo.generate_bars(
                    spec, start, end, seed=demo.bar_seed(self.seed, index, start),
                    start_price=position.price, missing_fraction=self.missing_fraction,
                    late_fraction=0.0, trading=demo.every_minute)
                frame["ingested_at"] = pd.Timestamp(now)
                minutes = pd.date_range(start, end, freq="1min", inclusive="left", tz=UTC)
                written = list(frame["ts_utc"])
                result.written[symbol] = [ts.to_pydatetime() for ts in written]
                left_out = sorted(set(minutes) - set(written))
                if left_out:
                    result.missing[symbol] = [ts.to_pydatetime() for ts in left_out]
                if len(frame):
                    demo.write_bars(conn, symbol, frame, spec.has_volume)
                    # the walk goes on from the last written close (a left-out minute at the
                    # end of the range is simply not there)
                    position.price = float(frame["close"].iloc[-1])
                position.next_minute = end
            if self._rng.random() < self.correction_chance:
                correction = self._correct(conn, now)
                if correction is not None:
                    result.corrections.append(correction)
        return result

    def _locate(self, conn: psycopg.Connection, before: datetime) -> None:
        """Start each symbol after its newest stored bar (once; then the feed keeps count)."""
        unknown = [s for s in self.symbols if s not in self._positions]
        if not unknown:
            return
        rows = conn.execute(queries.query("demo_feed_last_bars"),
                            {"symbols": unknown, "before": before}).fetchall()
        for symbol, ts_utc, close in rows:
            if ts_utc is None:  # no history: start now, at the demo's start price
                self._positions[symbol] = _Position(before - MINUTE,
                                                    demo.demo_symbol(symbol).start_price)
            else:
                self._positions[symbol] = _Position(ts_utc.astimezone(UTC) + MINUTE,
                                                    float(close))

    def _correct(self, conn: psycopg.Connection, now: datetime) -> Correction | None:
        """Correct the last source minute of a random, already aggregated 5m bar."""
        symbols = sorted(self._positions)
        if not symbols:
            return None
        symbol = symbols[self._rng.integers(len(symbols))]
        youngest, oldest = CORRECTION_AGE
        candidates = [row[0].astimezone(UTC) for row in conn.execute(
            queries.query("demo_feed_correctable"),
            {"symbol": symbol, "since": now - oldest, "until": now - youngest}).fetchall()]
        if not candidates:
            return None  # nothing aggregated yet
        ts_utc = candidates[self._rng.integers(len(candidates))]
        row = conn.execute(queries.query("demo_feed_correct"), {
            "symbol": symbol, "ts": ts_utc, "now": now,
            "fraction": float(self._rng.uniform(0.1, 0.9))}).fetchone()
        return Correction(symbol, ts_utc, row[0], row[1]) if row else None

    def run(self, url: str, stop: threading.Event) -> None:
        """Tick just after every minute boundary until `stop` is set. Database errors are
        logged and retried the next minute; a refusal to write (no privilege) stops the feed."""
        conn: psycopg.Connection | None = None
        try:
            while not stop.is_set():
                wait = 60.0
                try:
                    if conn is None or conn.closed:
                        conn = connection.connect(url)
                    now = conn.execute("SELECT clock_timestamp()").fetchone()[0].astimezone(UTC)
                    conn.commit()
                    _report(self.tick(conn, now))
                    after = now.replace(second=0, microsecond=0) + MINUTE
                    wait = (after - now).total_seconds() + OFFSET_SECONDS
                except psycopg.errors.InsufficientPrivilege as exc:
                    log.error("demo feed stopped: it may not write data_bars (%s)",
                              str(exc).strip())
                    return
                except (psycopg.Error, connection.DatabaseConfigError) as exc:
                    log.warning("demo feed: %s; trying again in a minute", str(exc).strip())
                    if conn is not None:
                        conn.close()
                    conn = None
                stop.wait(wait)
        finally:
            if conn is not None:
                conn.close()


def _report(tick: FeedTick) -> None:
    for symbol, minutes in sorted(tick.missing.items()):
        log.info("demo feed: left out %s %s (a missing minute)", symbol,
                 ", ".join(f"{m:%H:%M}" for m in minutes))
    for c in tick.corrections:
        log.info("demo feed: corrected %s %s UTC, close %.6g -> %.6g (late data: its day is "
                 "re-materialised within a minute)", c.symbol, f"{c.ts_utc:%Y-%m-%d %H:%M}",
                 c.old_close, c.new_close)


def start(url: str) -> tuple[threading.Thread, threading.Event]:
    """The feed in a daemon thread; set the event to stop it."""
    stop = threading.Event()
    thread = threading.Thread(target=DemoFeed().run, args=(url, stop), name="demo-feed",
                              daemon=True)
    thread.start()
    return thread, stop
