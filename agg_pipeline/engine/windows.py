"""Window arithmetic on the UTC grid anchored at 2000-01-01 00:00 UTC (as SQL's date_bin).

Every result is in UTC whatever the input's zone (SPEC contract 1). psycopg returns
timestamptz values in the session's TimeZone (a server in America/New_York gives
ZoneInfo('America/New_York') datetimes), and Python's arithmetic on such values is wall-clock
arithmetic: subtracting across a DST switch or taking `.date()` gives the local answer, not
the UTC one. So instants are converted to UTC before any arithmetic, and days are UTC days.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache

ORIGIN = datetime(2000, 1, 1, tzinfo=UTC)
DAY = timedelta(days=1)
# Instants the engine computes with stay well inside both Python's and PostgreSQL's ranges
# (window arithmetic adds up to a day); the same bounds as the cursor constraint (sql/010).
EARLIEST = datetime(1900, 1, 1, tzinfo=UTC)
LATEST = datetime(9000, 1, 1, tzinfo=UTC)


def require_utc(value: datetime, name: str) -> datetime:
    """`value` as an aware UTC datetime in [EARLIEST, LATEST); errors name the argument."""
    if not isinstance(value, datetime):
        raise TypeError(f"{name} must be a datetime, got {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name}={value.isoformat()} has no time zone; pass an aware UTC datetime")
    try:
        value = value.astimezone(UTC)
    except OverflowError:
        value = None
    if value is None or not EARLIEST <= value < LATEST:
        raise ValueError(f"{name} must lie in [{EARLIEST:%Y-%m-%d}, {LATEST:%Y-%m-%d}) UTC; "
                         "use the range you mean, not a sentinel such as datetime.max")
    return value


def utc(value: datetime) -> datetime:
    """The same instant in UTC (an aware datetime in any zone, e.g. read from the database).
    A naive datetime is refused: astimezone() would take it for this machine's local time."""
    if value.tzinfo is None:
        raise ValueError(f"{value.isoformat()} has no time zone; pass an aware datetime")
    return value.astimezone(UTC)


def utc_or_none(value: datetime | None) -> datetime | None:
    return None if value is None else utc(value)


def utc_values(row: dict) -> dict:
    """A row read from the database with its instants in UTC (for results and displays)."""
    return {k: v.astimezone(UTC) if isinstance(v, datetime) and v.tzinfo else v
            for k, v in row.items()}


def floor(value: datetime, step: timedelta) -> datetime:
    # in another zone, `value - delta` would be wall-clock arithmetic; and the memo's keys
    # must be UTC: 01:30 EDT and 01:30 EST (fold=1) of New York's repeated hour hash and
    # compare equal as New York times, so a memo keyed on them mixes them up
    return _floor(utc(value), step)


def ceil(value: datetime, step: timedelta) -> datetime:
    return _ceil(utc(value), step)


# (memoised: a run over thousands of symbols floors the same few instants for each of them)
@lru_cache(maxsize=4096)
def _floor(value: datetime, step: timedelta) -> datetime:
    return value - (value - ORIGIN) % step


@lru_cache(maxsize=4096)
def _ceil(value: datetime, step: timedelta) -> datetime:
    floored = _floor(value, step)
    return floored if floored == value else floored + step


def day_start(value: datetime) -> datetime:
    return floor(value, DAY)


def utc_date(value: datetime) -> date:
    """The UTC day holding the instant `value` (its `.date()` would be the local day)."""
    return utc(value).date()


def day_instant(day: date) -> datetime:
    """00:00 UTC of `day`."""
    return datetime.combine(day, time(), tzinfo=UTC)


def sql_interval(step: timedelta) -> str:
    """`step` as a statement parameter (cast to interval there) that PostgreSQL adds as an
    absolute duration whatever the session's TimeZone: psycopg sends a day as '1 day', which
    in a zone with DST is 23 or 25 hours across the switch."""
    return f"{step // timedelta(microseconds=1)} microseconds"
