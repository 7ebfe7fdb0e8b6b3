"""The timeframe ladder and the calendars, as data: what each derived timeframe reads, how it
is scored, and which market clocks symbols' windows may follow.

Everything comes from one config file (agg_pipeline/timeframes.toml, or the file
AGG_TIMEFRAMES_FILE names), read once when the package loads and validated: an error names
the file and the entry. The engine, the SQL parameters, the registry sync, the assets, the
checks and the demo all follow it; a new timeframe is a config change and a restart.

Quality (SPEC contract 4): each timeframe's ladder is kept as shares of the expected count
of source bars, best first; a rung's minimum for a window expecting E source bars is
ceil(E x share), and a rung that rounds onto a better one never applies. For the nominal
count (interval / source interval) this is the configured ladder exactly: 5m 5->2, 4->1,
3->0; 1h 12->2, 10-11->1, 8-9->0, 7->-1; 15m, 4h, 1d the 1h ladder's shares (15m 3->2,
2->0; 4h 4->2, 3->0; 1d 24->2, 20-23->1, 16-19->0, 14-15->-1). A calendar window of another
length (a 23-hour DST day, a session closing early, a 30-minute last hour) is scored on
its own count with the same shares. Fewer source bars than the lowest rung: no bar.
"""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from fractions import Fraction
from functools import cached_property
from pathlib import Path

from agg_pipeline import settings
from agg_pipeline.engine import calendars
from agg_pipeline.engine.calendars import Calendar

ROOT_TIMEFRAME = "1m"  # the only timeframe read from data_bars
ROOT_MINUTES = 1
DEFAULT_DELAY_SECONDS = 60
FORMAT = 1
NAME_PATTERN = re.compile(r"([1-9][0-9]{0,3})([mhdw])")
UNIT_MINUTES = {"m": 1, "h": 60, "d": 1440, "w": 10080}
DAY_MINUTES, WEEK_MINUTES = 1440, 10080
# the seed schema's registry flags of the optional timeframes (honoured beside agg_timeframes)
LEGACY_FLAGS = {"15m": "calc_15m", "4h": "calc_4h", "1d": "calc_1d"}
TIMEFRAME_KEYS = {"source", "mandatory", "version", "ladder", "proportions", "ladder_of"}


class TimeframeConfigError(ValueError):
    """The config file cannot be used; the message names the file and the entry."""


@dataclass(frozen=True)
class Timeframe:
    name: str
    minutes: int
    source: str
    source_minutes: int
    mandatory: bool
    rungs: tuple[tuple[Fraction, int], ...]  # (share of the expected count, score), best first
    version: int = 1

    @cached_property  # (read for every symbol of a run)
    def step(self) -> timedelta:
        return timedelta(minutes=self.minutes)

    @property
    def source_step(self) -> timedelta:
        return timedelta(minutes=self.source_minutes)

    @property
    def reads_data_bars(self) -> bool:
        return self.source == ROOT_TIMEFRAME

    @property
    def expected_candles(self) -> int:
        """Source bars of a whole window on the UTC grid."""
        return self.minutes // self.source_minutes

    @property
    def asset_name(self) -> str:
        return f"bars_{self.name}"

    @property
    def registry_flag(self) -> str | None:
        """The seed schema's registry column switching it on, if it has one."""
        return None if self.mandatory else LEGACY_FLAGS.get(self.name)

    @cached_property
    def ladder(self) -> tuple[tuple[int, int], ...]:
        """(minimum source bars, score) for a whole UTC-grid window, best first."""
        return ladder_for(self.rungs, self.expected_candles)

    def quality(self, source_candles: int, expected: int | None = None) -> int | None:
        """The score of a window with this many usable source bars (of `expected`, default
        a whole window's); None: no bar."""
        expected = self.expected_candles if expected is None else expected
        for share, score in self.rungs:
            if source_candles * share.denominator >= expected * share.numerator:
                return score
        return None

    def score_by_count(self) -> list[int | None]:
        """The ladder as an array indexed by source count (0..expected), for SQL."""
        return [self.quality(n) for n in range(self.expected_candles + 1)]

    def rung_arrays(self) -> dict[str, list[int]]:
        """The shares as numerator, denominator and score arrays (agg_ladder_score, SQL)."""
        return {"rung_num": [s.numerator for s, _ in self.rungs],
                "rung_den": [s.denominator for s, _ in self.rungs],
                "rung_score": [score for _, score in self.rungs]}

    def definition(self) -> dict[str, object]:
        """What its bars depend on: recorded per version by the registry sync."""
        return {"minutes": self.minutes, "source": self.source,
                "rungs": [[str(share), score] for share, score in self.rungs]}


def ladder_for(rungs: tuple[tuple[Fraction, int], ...],
               expected: int) -> tuple[tuple[int, int], ...]:
    """Minimum counts of `rungs` for `expected` source bars (rounded up; a rung that rounds
    onto a better one is dropped)."""
    found: list[tuple[int, int]] = []
    for share, score in rungs:
        minimum = math.ceil(expected * share)
        if not found or found[-1][0] != minimum:
            found.append((minimum, score))
    return tuple(found)


# ----------------------------------------------------------------------------- loading


@dataclass(frozen=True)
class Config:
    path: Path
    timeframes: dict[str, Timeframe]
    calendars: dict[str, Calendar]  # "utc" included
    asset_class_calendars: dict[str, str]


def canonical_name(minutes: int) -> str:
    """The name of an interval: in its largest whole unit (120 minutes is 2h, not 120m)."""
    for unit in ("w", "d", "h"):
        if minutes % UNIT_MINUTES[unit] == 0:
            return f"{minutes // UNIT_MINUTES[unit]}{unit}"
    return f"{minutes}m"


def _minutes(name: str, where: str) -> int:
    match = NAME_PATTERN.fullmatch(name)
    if not match:
        raise TimeframeConfigError(f"{where}: a timeframe is named by its interval: <n>m, <n>h, "
                                   "1d or 1w")
    minutes = int(match[1]) * UNIT_MINUTES[match[2]]
    if not (DAY_MINUTES % minutes == 0 or minutes == WEEK_MINUTES):
        raise TimeframeConfigError(f"{where}: the interval must divide a day or be 1w")
    if name != canonical_name(minutes):
        raise TimeframeConfigError(f"{where}: name it {canonical_name(minutes)!r}")
    return minutes


def _rungs(name: str, entry: Mapping, expected: int, raw: Mapping, where: str,
           seen: tuple[str, ...] = ()) -> tuple[tuple[Fraction, int], ...]:
    given = [k for k in ("ladder", "proportions", "ladder_of") if k in entry]
    if len(given) != 1:
        raise TimeframeConfigError(f"{where}: give exactly one of ladder, proportions, "
                                   f"ladder_of (found {given or 'none'})")
    if "ladder_of" in entry:
        other = entry["ladder_of"]
        if other not in raw or other in (name, *seen):
            raise TimeframeConfigError(f"{where}.ladder_of: {other!r} is not another timeframe "
                                       "of this file (or the references loop)")
        other_where = f"{where.rsplit('.', 1)[0]}.{other}"
        other_expected = _minutes(other, other_where) // _source_minutes(raw, other, other_where)
        return _rungs(other, raw[other], other_expected, raw, other_where, (*seen, name))
    if "ladder" in entry:
        pairs = [(_int(n, where), _int(s, where)) for n, s in _pairs(entry["ladder"], where)]
        if any(not 1 <= n <= expected for n, _ in pairs):
            raise TimeframeConfigError(f"{where}.ladder: minimums must lie in 1..{expected}")
        rungs = [(Fraction(n, expected), s) for n, s in pairs]
    else:
        try:
            rungs = [(Fraction(str(f)), _int(s, where))
                     for f, s in _pairs(entry["proportions"], where)]
        except (ValueError, ZeroDivisionError):
            raise TimeframeConfigError(f"{where}.proportions: shares are fractions such as "
                                       "\"5/6\"") from None
        if any(not 0 < f <= 1 for f, _ in rungs):
            raise TimeframeConfigError(f"{where}.proportions: shares must lie in (0, 1]")
    shares = [f for f, _ in rungs]
    if shares != sorted(set(shares), reverse=True):
        raise TimeframeConfigError(f"{where}: rungs must go from the most source bars down")
    return tuple(rungs)


def _pairs(value: object, where: str) -> list[tuple[object, object]]:
    if (not isinstance(value, list) or not value
            or any(not isinstance(p, list) or len(p) != 2 for p in value)):
        raise TimeframeConfigError(f"{where}: the ladder is a list of [minimum, score] pairs")
    return [tuple(p) for p in value]


def _int(value: object, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TimeframeConfigError(f"{where}: {value!r} is not an integer")
    return value


def _source_minutes(raw: Mapping, name: str, where: str) -> int:
    source = raw[name].get("source") if isinstance(raw[name], Mapping) else None
    if source == ROOT_TIMEFRAME:
        return ROOT_MINUTES
    if not isinstance(source, str) or source not in raw:
        raise TimeframeConfigError(f"{where}.source: {source!r} is neither {ROOT_TIMEFRAME!r} "
                                   "nor a timeframe of this file")
    return _minutes(source, f"{where}.source")


def _timeframe(name: str, raw: Mapping, where: str) -> Timeframe:
    entry = raw[name]
    if not isinstance(entry, Mapping):
        raise TimeframeConfigError(f"{where}: expected a table")
    if unknown := sorted(set(entry) - TIMEFRAME_KEYS):
        raise TimeframeConfigError(f"{where}: unknown keys {unknown}; known: "
                                   f"{sorted(TIMEFRAME_KEYS)}")
    minutes = _minutes(name, where)
    source_minutes = _source_minutes(raw, name, where)
    if source_minutes >= minutes or minutes % source_minutes:
        raise TimeframeConfigError(f"{where}: its source {entry['source']!r} must be shorter "
                                   "and divide its interval")
    mandatory, version = entry.get("mandatory"), entry.get("version")
    if not isinstance(mandatory, bool):
        raise TimeframeConfigError(f"{where}.mandatory must be true or false")
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version < 2**31:
        raise TimeframeConfigError(f"{where}.version must be a positive integer")
    return Timeframe(name, minutes, entry["source"], source_minutes, mandatory,
                     _rungs(name, entry, minutes // source_minutes, raw, where), version)


def _calendars(data: Mapping, where: str) -> tuple[dict[str, Calendar], dict[str, str]]:
    found = {calendars.UTC_CALENDAR: calendars.UTC_DEFAULT}
    for name, entry in data.get("calendars", {}).items():
        if not isinstance(entry, Mapping):
            raise TimeframeConfigError(f"{where}: calendars.{name}: expected a table")
        try:
            found[name] = calendars.parse(name, entry, f"{where}: calendars.{name}")
        except calendars.CalendarConfigError as error:
            raise TimeframeConfigError(str(error)) from None
    by_class = dict(data.get("asset_class_calendars", {}))
    for asset_class, name in by_class.items():
        if name not in found:
            raise TimeframeConfigError(f"{where}: asset_class_calendars.{asset_class}: unknown "
                                       f"calendar {name!r}; known: {sorted(found)}")
    return found, by_class


def _check_roots(found: dict[str, Timeframe], cals: dict[str, Calendar], where: str) -> None:
    """Timeframes read from data_bars keep the UTC grid on every calendar (fingerprints,
    change capture and incremental reads are per UTC day): every session boundary must lie
    on their grid."""
    for tf in found.values():
        for calendar in cals.values():
            if tf.reads_data_bars and calendar.follows(tf.step):
                raise TimeframeConfigError(
                    f"{where}: calendars.{calendar.name}: a session boundary is off the "
                    f"{tf.name} grid, which {tf.name} (read from data_bars) needs")


def load(path: Path) -> Config:
    """The config in `path`, validated."""
    where = str(path)
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise TimeframeConfigError(f"{where}: {error}") from None
    if data.get("format") != FORMAT:
        raise TimeframeConfigError(f"{where}: format must be {FORMAT}")
    if unknown := sorted(set(data) - {"format", "timeframes", "calendars",
                                      "asset_class_calendars"}):
        raise TimeframeConfigError(f"{where}: unknown tables {unknown}")
    raw = data.get("timeframes", {})
    if not raw:
        raise TimeframeConfigError(f"{where}: no [timeframes.<name>] entry")
    found = {name: _timeframe(name, raw, f"{where}: timeframes.{name}") for name in raw}
    cals, by_class = _calendars(data, where)
    _check_roots(found, cals, where)
    return Config(path, found, cals, by_class)


def _ordered(config: Config) -> tuple[Timeframe, ...]:
    # Contract 12 orders 5m before 1h: by interval, shortest first.
    return tuple(sorted(config.timeframes.values(), key=lambda tf: tf.minutes))


CONFIG = load(settings.timeframes_file())
TIMEFRAMES: dict[str, Timeframe] = CONFIG.timeframes
ORDERED: tuple[Timeframe, ...] = _ordered(CONFIG)
CALENDARS: dict[str, Calendar] = CONFIG.calendars


@contextmanager
def configured(config: Config) -> Iterator[Config]:
    """The engine (not Dagster's definitions, built at import) reads `config` instead of the
    file's until the block ends: tests, and a process serving another config in-process."""
    global CONFIG, TIMEFRAMES, ORDERED, CALENDARS
    previous = CONFIG
    CONFIG, TIMEFRAMES, ORDERED, CALENDARS = (config, config.timeframes, _ordered(config),
                                              config.calendars)
    try:
        yield config
    finally:
        CONFIG, TIMEFRAMES, ORDERED, CALENDARS = (previous, previous.timeframes,
                                                  _ordered(previous), previous.calendars)


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


def calendar_of(registry_calendar: str | None, asset_class: str | None) -> str:
    """The calendar a registry row puts its symbol on (its own, its asset class's, or UTC);
    the name may be unknown (the caller reports it)."""
    if registry_calendar:
        return registry_calendar
    return CONFIG.asset_class_calendars.get(asset_class or "", calendars.UTC_CALENDAR)


def grid(tf: Timeframe, calendar: str | None) -> calendars.Grid:
    """The windows of `tf` for a task following `calendar` (None: the UTC grid). KeyError:
    an unknown calendar."""
    if calendar is None:
        return calendars.utc_grid(tf.step)  # (the hot path: a few per symbol of a run)
    return calendars.grid(CALENDARS[calendar], tf.step, tf.source_step)


def window_calendar(tf: Timeframe, calendar: str) -> str | None:
    """The calendar `tf`'s windows follow for a symbol on `calendar`, None for the UTC grid
    (data_agg_state.window_calendar)."""
    return calendar if CALENDARS[calendar].follows(tf.step) else None


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
