"""The demo's live feed against a real database: the next minute's rows, gaps, corrections."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from agg_pipeline import demo, demo_feed
from agg_pipeline.engine import aggregate as engine
from agg_pipeline_tests.helpers import active_bars, sync

END = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)  # a Monday noon: the seeded history ends here
MINUTE = timedelta(minutes=1)
SYMBOLS = demo_feed.feed_symbols()


def rows(conn, symbol: str, since: datetime) -> list[tuple]:
    return conn.execute(
        "SELECT ts_utc, open, high, low, close, ingested_at, source FROM data_bars "
        "WHERE canonical_symbol = %s AND timeframe = '1m' AND ts_utc >= %s ORDER BY ts_utc",
        (symbol, since)).fetchall()


def last_close(conn, symbol: str, before: datetime) -> float:
    return conn.execute(
        "SELECT close FROM data_bars WHERE canonical_symbol = %s AND timeframe = '1m' "
        "AND ts_utc < %s ORDER BY ts_utc DESC LIMIT 1", (symbol, before)).fetchone()[0]


def test_feed_symbols_are_the_demo_symbols_but_the_computed_dxy():
    assert set(SYMBOLS) == set(demo.DEMO_SYMBOLS) - {"DXY"}
    assert {"EURUSD", "USDJPY", "GBPUSD", "USDCAD", "USDSEK", "USDCHF"} <= set(SYMBOLS)


def test_each_tick_writes_the_minute_that_just_ended_from_the_last_close(db):
    demo.seed_demo(db, SYMBOLS, days=2, end=END)
    db.commit()
    seeded_close = {s: last_close(db, s, END) for s in SYMBOLS}
    feed = demo_feed.DemoFeed(missing_fraction=0, correction_chance=0)

    now = END + MINUTE + timedelta(seconds=2)
    tick = feed.tick(db, now)
    assert tick.written == {s: [END] for s in SYMBOLS} and not tick.missing
    for symbol in SYMBOLS:
        [(ts, open_, high, low, close, ingested_at, source)] = rows(db, symbol, END)
        assert ts == END and ingested_at == now and source == "demo"
        assert open_ == seeded_close[symbol]  # the history's price goes on
        assert low <= min(open_, close) <= max(open_, close) <= high

    assert feed.tick(db, now + timedelta(seconds=20)).written == {}  # nothing new yet
    later = now + MINUTE
    assert feed.tick(db, later).written == {s: [END + MINUTE] for s in SYMBOLS}
    for symbol in SYMBOLS:
        first, second = rows(db, symbol, END)
        assert second[0] == END + MINUTE and second[5] == later and second[1] == first[4]


def test_at_the_weekend_the_feed_goes_on_and_fills_at_most_the_catch_up(db):
    saturday = datetime(2026, 3, 7, 12, 0, 30, tzinfo=UTC)  # FX closed since Friday 22:00
    demo.seed_demo(db, ["EURUSD"], days=3, end=saturday)
    db.commit()
    friday_close = last_close(db, "EURUSD", saturday)
    tick = demo_feed.DemoFeed(("EURUSD",), missing_fraction=0, correction_chance=0).tick(
        db, saturday)
    first = datetime(2026, 3, 7, 11, 50, tzinfo=UTC)
    expected = [first + i * MINUTE for i in range(10)]  # MAX_CATCH_UP, not the whole gap
    assert tick.written == {"EURUSD": expected}
    stored = rows(db, "EURUSD", datetime(2026, 3, 6, 22, tzinfo=UTC))
    assert [r[0] for r in stored] == expected
    assert stored[0][1] == friday_close


def test_a_missing_minute_stays_missing(db):
    demo.seed_demo(db, ["USDJPY"], days=1, end=END)
    db.commit()
    feed = demo_feed.DemoFeed(("USDJPY",), missing_fraction=1.0, correction_chance=0)
    now = END + MINUTE + timedelta(seconds=2)
    tick = feed.tick(db, now)
    assert tick.written == {"USDJPY": []} and tick.missing == {"USDJPY": [END]}
    feed.missing_fraction = 0
    assert feed.tick(db, now + MINUTE).written == {"USDJPY": [END + MINUTE]}
    assert [r[0] for r in rows(db, "USDJPY", END)] == [END + MINUTE]


def test_a_correction_changes_an_aggregated_minute_and_its_5m_bar(db):
    demo.seed_demo(db, ["EURUSD", "DXY"], days=1, end=END)
    sync(db, agg_start=END - timedelta(days=2))
    day = END.replace(hour=0)
    for symbol in ("EURUSD", "DXY"):
        engine.aggregate(db, symbol, "5m", day, day + timedelta(days=1), now=END)
    db.commit()
    before = {s: active_bars(db, s, "5m").set_index("ts_utc")["close"] for s in ("EURUSD", "DXY")}

    now = END + MINUTE + timedelta(seconds=2)
    feed = demo_feed.DemoFeed(("EURUSD", "DXY"), missing_fraction=0, correction_chance=1.0)
    [correction] = feed.tick(db, now).corrections
    assert correction.old_close != correction.new_close
    window = correction.ts_utc.replace(minute=correction.ts_utc.minute // 5 * 5)
    youngest, oldest = demo_feed.CORRECTION_AGE
    assert now - oldest <= window < now - youngest
    [row] = [r for r in rows(db, correction.symbol, window) if r[0] == correction.ts_utc]
    _, _, high, low, close, ingested_at, _ = row
    assert close == correction.new_close and low <= close <= high and ingested_at == now
    # it was the window's last source minute: its bar was built with the old close
    assert before[correction.symbol][window] == correction.old_close

    redone = engine.aggregate(db, correction.symbol, "5m", day, day + timedelta(days=1),
                              now=now)
    db.commit()
    assert redone.bars_updated == 1
    after = active_bars(db, correction.symbol, "5m").set_index("ts_utc")["close"]
    assert after[window] == correction.new_close
