"""The timeframe ladder, as data: what each derived timeframe reads and how it is scored.

5m <- 1m and 1h <- 5m are mandatory for every symbol of the environment; 15m <- 5m,
4h <- 1h and 1d <- 1h are switched on per symbol by the registry flags calc_15m, calc_4h,
calc_1d. Windows are aligned to 2000-01-01 00:00 UTC, so 4h windows start at 00/04/08/...
UTC and 1d windows at 00:00 UTC; every window of every timeframe lies inside one UTC day.

Quality ladders (SPEC contract 4): 5m and 1h as the seeds define them. The optional
timeframes use the 1h ladder's proportions of the expected count: 100% -> 2, >= 5/6 -> 1,
>= 2/3 -> 0, >= 7/12 -> -1 (rounded up; a rung that rounds onto a better one is dropped):
  15m <- 5m (3 expected):   3 -> 2, 2 -> 0
  4h  <- 1h (4 expected):   4 -> 2, 3 -> 0
  1d  <- 1h (24 expected): 24 -> 2, 20-23 -> 1, 16-19 -> 0, 14-15 -> -1
Fewer source bars than the lowest rung: no bar.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import timedelta
from functools import cached_property

ROOT_TIMEFRAME = "1m"  # the only timeframe read from data_bars
ROOT_MINUTES = 1
DEFAULT_DELAY_SECONDS = 60


@dataclass(frozen=True)
class Timeframe:
    name: str
    minutes: int
    source: str
    mandatory: bool
    registry_flag: str | None  # core_asset_registry_all column switching an optional timeframe on
    ladder: tuple[tuple[int, int], ...]  # (minimum source bars, quality score), best first

    @cached_property  # (read for every symbol of a run)
    def step(self) -> timedelta:
        return timedelta(minutes=self.minutes)

    @property
    def source_minutes(self) -> int:
        return ROOT_MINUTES if self.source == ROOT_TIMEFRAME else TIMEFRAMES[self.source].minutes

    @property
    def source_step(self) -> timedelta:
        return timedelta(minutes=self.source_minutes)

    @property
    def reads_data_bars(self) -> bool:
        return self.source == ROOT_TIMEFRAME

    @property
    def expected_candles(self) -> int:
        return self.minutes // self.source_minutes

    @property
    def asset_name(self) -> str:
        return f"bars_{self.name}"

    def quality(self, source_candles: int) -> int | None:
        """The score of a window with this many usable source bars; None: no bar."""
        for minimum, score in self.ladder:
            if source_candles >= minimum:
                return score
        return None

    def score_by_count(self) -> list[int | None]:
        """The ladder as an array indexed by source count (0..expected), for SQL."""
        return [self.quality(n) for n in range(self.expected_candles + 1)]


def proportional_ladder(expected: int) -> tuple[tuple[int, int], ...]:
    """The 1h ladder's proportions applied to another expected count."""
    rungs: list[tuple[int, int]] = []
    for fraction, score in ((1.0, 2), (5 / 6, 1), (2 / 3, 0), (7 / 12, -1)):
        minimum = math.ceil(expected * fraction - 1e-9)
        if rungs and rungs[-1][0] == minimum:
            continue
        rungs.append((minimum, score))
    return tuple(rungs)


TIMEFRAMES: dict[str, Timeframe] = {
    tf.name: tf
    for tf in (
        Timeframe("5m", 5, "1m", True, None, ((5, 2), (4, 1), (3, 0))),
        Timeframe("15m", 15, "5m", False, "calc_15m", proportional_ladder(3)),
        Timeframe("1h", 60, "5m", True, None, ((12, 2), (10, 1), (8, 0), (7, -1))),
        Timeframe("4h", 240, "1h", False, "calc_4h", proportional_ladder(4)),
        Timeframe("1d", 1440, "1h", False, "calc_1d", proportional_ladder(24)),
    )
}

# Contract 12 orders 5m before 1h: by interval, shortest first.
ORDERED: tuple[Timeframe, ...] = tuple(sorted(TIMEFRAMES.values(), key=lambda tf: tf.minutes))


class UnknownTimeframeError(ValueError):
    def __init__(self, name: object) -> None:
        super().__init__(
            f"unknown target timeframe {name!r}; known: {', '.join(t.name for t in ORDERED)}"
        )


def get(name: str) -> Timeframe:
    try:
        return TIMEFRAMES[name]
    except (KeyError, TypeError):
        raise UnknownTimeframeError(name) from None


def downstream(name: str) -> list[Timeframe]:
    """Timeframes derived, directly or not, from `name` (in ladder order)."""
    if name == ROOT_TIMEFRAME:
        return list(ORDERED)
    found: list[Timeframe] = []
    for tf in ORDERED:
        source = tf.source
        while source != ROOT_TIMEFRAME:
            if source == name:
                found.append(tf)
                break
            source = TIMEFRAMES[source].source
    return found
