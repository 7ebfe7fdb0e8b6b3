"""Window arithmetic on the UTC grid anchored at 2000-01-01 00:00 UTC (as SQL's date_bin)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

ORIGIN = datetime(2000, 1, 1, tzinfo=UTC)
DAY = timedelta(days=1)


def require_utc(value: datetime, name: str) -> datetime:
    if not isinstance(value, datetime):
        raise TypeError(f"{name} must be a datetime, got {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name}={value.isoformat()} has no time zone; pass an aware UTC datetime")
    return value.astimezone(UTC)


def floor(value: datetime, step: timedelta) -> datetime:
    return value - (value - ORIGIN) % step


def ceil(value: datetime, step: timedelta) -> datetime:
    floored = floor(value, step)
    return floored if floored == value else floored + step


def day_start(value: datetime) -> datetime:
    return floor(value, DAY)
