"""Window arithmetic on the UTC grid anchored at 2000-01-01 00:00 UTC (as SQL's date_bin)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

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


def floor(value: datetime, step: timedelta) -> datetime:
    return value - (value - ORIGIN) % step


def ceil(value: datetime, step: timedelta) -> datetime:
    floored = floor(value, step)
    return floored if floored == value else floored + step


def day_start(value: datetime) -> datetime:
    return floor(value, DAY)
