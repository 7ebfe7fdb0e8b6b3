"""Errors the engine raises, each naming what was wrong. All are hard failures (contract 11)."""

from __future__ import annotations


class AggregationError(RuntimeError):
    """Base class: an aggregation request that cannot be carried out as asked."""


class UnknownSymbolError(AggregationError):
    def __init__(self, symbol: str) -> None:
        super().__init__(f"unknown symbol {symbol!r}: it is not in core_asset_registry_all")


class MissingTaskError(AggregationError):
    def __init__(self, symbol: str, timeframe: str) -> None:
        super().__init__(
            f"no data_agg_state task for {symbol!r} / {timeframe}: the registry sync creates "
            "tasks for the environment's symbols (an optional timeframe needs the registry's "
            "agg_timeframes to list it, or its calc_* flag)"
        )


class InvalidRangeError(AggregationError):
    pass


class TaskConfigError(AggregationError):
    pass


class NullCursorError(AggregationError):
    def __init__(self, symbol: str, timeframe: str) -> None:
        super().__init__(
            f"cursor (last_agg_bar_ts_utc) of {symbol!r} / {timeframe} is NULL; a NULL cursor "
            "is an error, never a silent bootstrap: run the reset_cursors job to set it"
        )
