"""The forming bar (opt-in per symbol): the window still open has one partial bar, refreshed
from the source rows so far, made final at confirmation or withdrawn when the window does
not qualify. Readers that filter is_partial = false see exactly the final bars."""

from __future__ import annotations

from datetime import timedelta

import pytest

from agg_pipeline.engine import aggregate as engine
from agg_pipeline.engine import monitoring
from agg_pipeline.engine.monitoring import Scope
from agg_pipeline_tests.helpers import T0, add_symbol, cursors_at, insert_bars, minute_bars, sync
from agg_pipeline_tests.oracle import SPECS, bar_difference, derive, source_frame

MINUTE = timedelta(minutes=1)
HOUR = T0 + timedelta(hours=1)


def build(conn, now, symbol="EURUSD") -> dict[str, engine.AggregationResult]:
    results = {tf: engine.aggregate(conn, symbol, tf, T0, T0 + timedelta(days=1), now=now)
               for tf in ("5m", "1h")}
    conn.commit()
    return results


def partial_bars(conn, timeframe: str, symbol="EURUSD") -> list[tuple]:
    return conn.execute(
        "SELECT id, ts_utc, source_candles, quality_score, open, close FROM derived_data_bars "
        "WHERE canonical_symbol = %s AND timeframe = %s AND deleted_at IS NULL AND is_partial "
        "ORDER BY ts_utc", (symbol, timeframe)).fetchall()


def final_bars(conn, timeframe: str, symbol="EURUSD") -> dict:
    cur = conn.execute(
        "SELECT ts_utc, open, high, low, close, vol, vwap, trade_count, source_candles, "
        "expected_candles, quality_score, source_timeframe, raw FROM derived_data_bars "
        "WHERE canonical_symbol = %s AND timeframe = %s AND deleted_at IS NULL "
        "AND NOT is_partial ORDER BY ts_utc", (symbol, timeframe))
    names = [c.name for c in cur.description]
    return {row[0]: dict(zip(names, row, strict=True)) for row in cur.fetchall()}


@pytest.fixture
def forming(db):
    add_symbol(db, "EURUSD")
    add_symbol(db, "USDJPY")  # not opted in
    db.execute("UPDATE core_asset_registry_all SET agg_forming_bars = true "
               "WHERE canonical_symbol = 'EURUSD'")
    sync(db)
    for symbol in ("EURUSD", "USDJPY"):
        insert_bars(db, symbol, minute_bars(T0, 62))  # 00:00 .. 01:01
    db.commit()
    return db


def test_the_open_window_has_one_forming_bar_refreshed_then_final(forming):
    db = forming
    build(db, HOUR + timedelta(minutes=2, seconds=30))  # 01:00 and 01:01 are in
    ((five_id, five_ts, candles, quality, _, close),) = partial_bars(db, "5m")
    assert (five_ts, candles, quality) == (HOUR, 2, None)
    ((_, hour_ts, hour_candles, hour_quality, _, _),) = partial_bars(db, "1h")
    # 1h reads the final 5m bars and the forming one: 1 of 12 so far
    assert (hour_ts, hour_candles, hour_quality) == (HOUR, 1, None)
    assert HOUR not in final_bars(db, "5m") and T0 in final_bars(db, "1h")

    # two more minutes land: the same row is refreshed, still forming (4 of 5)
    insert_bars(db, "EURUSD", minute_bars(HOUR + 2 * MINUTE, 2, price=1.2))
    db.commit()
    build(db, HOUR + timedelta(minutes=4, seconds=30))
    ((same_id, _, candles, _, _, new_close),) = partial_bars(db, "5m")
    assert (same_id, candles) == (five_id, 4) and new_close != close

    # its last minute lands before the confirmation delay: complete, so final at once
    # (contract 6), the forming row made final in place
    insert_bars(db, "EURUSD", minute_bars(HOUR + 4 * MINUTE, 1, price=1.25))
    db.commit()
    results = build(db, HOUR + timedelta(minutes=5, seconds=2))  # delay ends at 01:06
    final = final_bars(db, "5m")
    assert final[HOUR]["quality_score"] == 2 and final[HOUR]["source_candles"] == 5
    assert results["5m"].bars_inserted == 1 and results["5m"].bars_updated == 0
    assert partial_bars(db, "5m") == []
    assert db.execute("SELECT id FROM derived_data_bars WHERE canonical_symbol = 'EURUSD' "
                      "AND timeframe = '5m' AND ts_utc = %s AND deleted_at IS NULL",
                      (HOUR,)).fetchone()[0] == five_id

    # 01:05 lands: 01:05 is forming; 1h reads the final 01:00 bar and the forming one
    insert_bars(db, "EURUSD", minute_bars(HOUR + 5 * MINUTE, 1, price=1.3))
    db.commit()
    build(db, HOUR + timedelta(minutes=6, seconds=10))
    assert [row[1:3] for row in partial_bars(db, "5m")] == [(HOUR + 5 * MINUTE, 1)]
    assert [row[1:3] for row in partial_bars(db, "1h")] == [(HOUR, 2)]
    # the symbol that did not opt in has no partial bar, ever
    assert partial_bars(db, "5m", "USDJPY") == partial_bars(db, "1h", "USDJPY") == []


def test_a_forming_bar_whose_window_does_not_qualify_is_withdrawn(forming):
    db = forming
    build(db, HOUR + timedelta(minutes=4))
    # the window [01:05, 01:10) receives only two minutes, then the next window begins
    insert_bars(db, "EURUSD", minute_bars(HOUR + 2 * MINUTE, 5))
    db.commit()
    build(db, HOUR + timedelta(minutes=7))
    assert [row[1:3] for row in partial_bars(db, "5m")] == [(HOUR + 5 * MINUTE, 2)]
    insert_bars(db, "EURUSD", minute_bars(HOUR + 10 * MINUTE, 1))
    db.commit()
    results = build(db, HOUR + timedelta(minutes=11, seconds=10))
    assert results["5m"].bars_soft_deleted == 1
    assert HOUR + 5 * MINUTE not in final_bars(db, "5m")
    assert [row[1] for row in partial_bars(db, "5m")] == [HOUR + 10 * MINUTE]


def test_readers_of_final_bars_see_exactly_the_final_bars(forming):
    """What a reader filtering is_partial = false sees equals the oracle's final bars, while
    forming bars come and go; the checks take the forming bars for what they are."""
    db = forming
    for minutes in range(2, 18):
        insert_bars(db, "EURUSD", minute_bars(HOUR + minutes * MINUTE, 1, price=1.1 + minutes))
        db.commit()
        build(db, HOUR + (minutes + 1) * MINUTE + timedelta(seconds=5))
        # the newest minute's window forms until it is complete, then it is final at once
        complete = minutes % 5 == 4
        assert len(partial_bars(db, "5m")) == (0 if complete else 1)
        assert len(partial_bars(db, "1h")) == 1
    now = HOUR + timedelta(minutes=18, seconds=5)
    source = db.execute(
        "SELECT ts_utc, open, high, low, close, vol, vwap, trade_count, is_partial "
        "FROM data_bars WHERE canonical_symbol = 'EURUSD' ORDER BY ts_utc").fetchall()
    names = ("ts_utc", "open", "high", "low", "close", "vol", "vwap", "trade_count",
             "is_partial")
    frame = source_frame([dict(zip(names, row, strict=True)) for row in source], 1)
    oracle = derive(frame, SPECS["5m"], start=T0, end=T0 + timedelta(days=1), now=now,
                    agg_start=T0, skip_zero_volume=False)
    stored = final_bars(db, "5m")
    assert sorted(stored) == sorted(oracle.bars)
    assert all(not bar_difference(oracle.bars[ts], stored[ts]) for ts in stored)
    scope = Scope({"EURUSD": [(T0.date(), T0.date())]})
    assert monitoring.matches_source(db, "5m", scope, sample=timedelta(days=1)).passed
    db.rollback()
    assert monitoring.ohlc_sane(db, "5m", scope).passed
    db.rollback()


def test_opting_out_withdraws_the_forming_bars(forming):
    db = forming
    build(db, HOUR + timedelta(minutes=2, seconds=30))
    assert partial_bars(db, "5m") and partial_bars(db, "1h")
    db.execute("UPDATE core_asset_registry_all SET agg_forming_bars = false")
    db.commit()
    build(db, HOUR + timedelta(minutes=3))
    assert partial_bars(db, "5m") == partial_bars(db, "1h") == []
    forming_through = db.execute("SELECT forming_through FROM data_agg_state "
                                 "WHERE canonical_symbol = 'EURUSD'").fetchall()
    assert forming_through == [(None,), (None,)]


def test_the_frontier_sensor_refreshes_forming_bars_as_minutes_land(db, instance):
    """A minute landing in the open window is enough for the frontier sensor to request a
    run for a symbol keeping a forming bar (not for one that does not); after that run the
    same state asks for nothing."""
    import dagster as dg

    from agg_pipeline.defs.partitions import SYMBOLS_PARTITIONS_NAME
    from agg_pipeline.defs.resources import MarketDatabase
    from agg_pipeline.defs.sensors import source_frontier_sensor
    from agg_pipeline_tests.test_synthetic import run_requested

    now = db.execute("SELECT now()").fetchone()[0]
    window = now.replace(second=0, microsecond=0) - timedelta(minutes=now.minute % 5)
    for symbol in ("EURUSD", "USDJPY"):
        add_symbol(db, symbol)
    db.execute("UPDATE core_asset_registry_all SET agg_forming_bars = true "
               "WHERE canonical_symbol = 'EURUSD'")
    sync(db)
    cursors_at(db, window)
    db.commit()
    instance.add_dynamic_partitions(SYMBOLS_PARTITIONS_NAME, ["EURUSD", "USDJPY"])
    resources = {"market_db": MarketDatabase()}

    def tick(cursor=None):
        return source_frontier_sensor(dg.build_sensor_context(
            instance=instance, resources=resources, cursor=cursor))

    # the open window's first minute lands (it is not final: no window is complete)
    for symbol in ("EURUSD", "USDJPY"):
        insert_bars(db, symbol, [dict(row, ts_utc=window, ingested_at=now)
                                 for row in minute_bars(window, 1)])
    db.commit()
    first = tick()
    [request] = first.run_requests
    assert request.tags["agg/symbol"] == "EURUSD" and request.tags["agg/reason"] == "forming bar"
    assert run_requested(instance, request).success
    assert [row[1:3] for row in partial_bars(db, "5m")] == [(window, 1)]
    assert partial_bars(db, "5m", "USDJPY") == []
    assert tick(first.cursor).run_requests == []
