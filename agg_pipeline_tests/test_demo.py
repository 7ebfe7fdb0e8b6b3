"""Demo data: FX sessions, weekend gap, ~1% missing minutes, consistent OHLC, late rows."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from agg_pipeline import demo
from agg_pipeline_tests.helpers import define_dxy

END = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)  # a Monday noon


def test_seed_demo_writes_registry_and_realistic_bars(db):
    inserted = demo.seed_demo(db, ["EURUSD", "DXY"], days=28, end=END)
    db.commit()
    assert set(inserted) == {"EURUSD", "DXY"}

    registry = {r[0]: r[1:] for r in db.execute(
        "SELECT canonical_symbol, asset_class, ingest_class, active, test_active, base_timeframe"
        " FROM core_asset_registry_all").fetchall()}
    assert registry["DXY"] == ("index", "B", True, True, "1m")
    assert registry["EURUSD"] == ("fx", "A", True, True, "1m")

    stats = dict(db.execute("""
        SELECT canonical_symbol, json_build_object(
            'rows', count(*),
            'saturday', count(*) FILTER (WHERE extract(isodow FROM ts_utc) = 6),
            'invalid', count(*) FILTER (WHERE NOT agg_bar_is_valid(open, high, low, close, vol,
                                         vwap, trade_count, ts_utc, interval '1 minute')),
            'early', count(*) FILTER (WHERE ingested_at < ts_utc + interval '1 minute'),
            'late', count(*) FILTER (WHERE ingested_at > ts_utc + interval '1 hour'),
            'with_volume', count(vol),
            'last', max(ts_utc))
        FROM data_bars GROUP BY 1""").fetchall())
    session_minutes = 4 * 5 * 24 * 60  # four full FX weeks in 28 days
    for symbol in ("EURUSD", "DXY"):
        s = stats[symbol]
        assert s["saturday"] == 0 and s["invalid"] == 0 and s["early"] == 0
        missing = 1 - s["rows"] / session_minutes
        assert 0.005 < missing < 0.015, missing
        assert 0 < s["late"] < s["rows"] * 0.005
        assert s["last"].startswith("2026-03-02T11:59")
    assert stats["EURUSD"]["with_volume"] == stats["EURUSD"]["rows"]
    assert stats["DXY"]["with_volume"] == 0  # a synthetic index has no volume


def test_dxy_is_left_to_the_pipeline_when_its_components_are_seeded(db):
    define_dxy(db)  # as migration 017 defines it
    db.commit()
    inserted = demo.seed_demo(db, demo.DEFAULT_SYMBOLS, days=2, end=END)
    assert inserted["DXY"] == 0
    assert all(count > 0 for symbol, count in inserted.items() if symbol != "DXY")
    assert set(demo.DEFAULT_SYMBOLS) == {"DXY", "EURUSD", "USDJPY", "GBPUSD", "USDCAD",
                                         "USDSEK", "USDCHF", "XAUUSD"}
    assert db.execute("SELECT ingest_class FROM core_asset_registry_all "
                      "WHERE canonical_symbol = 'DXY'").fetchone() == ("B",)
    # without all of its components it stays a random walk (a benchmark's symbol list)
    assert demo.computed_symbols(db, ["DXY", "EURUSD"]) == set()


def test_seed_demo_twice_adds_nothing(db):
    first = demo.seed_demo(db, ["USDJPY"], days=3, end=END)
    again = demo.seed_demo(db, ["USDJPY"], days=3, end=END)
    assert first["USDJPY"] > 0 and again["USDJPY"] == 0


def test_closing_minutes_are_friday_22_utc():
    frame = demo.generate_bars(demo.DEMO_SYMBOLS["EURUSD"], datetime(2026, 2, 27, tzinfo=UTC),
                               datetime(2026, 3, 2, tzinfo=UTC), seed=1, missing_fraction=0)
    weekend = frame[(frame.ts_utc >= "2026-02-27 22:00Z") & (frame.ts_utc < "2026-03-01 22:00Z")]
    assert weekend.empty
    assert frame.ts_utc.max() == datetime(2026, 3, 1, 23, 59, tzinfo=UTC)
    assert (frame.open.iloc[1:].to_numpy() == frame.close.iloc[:-1].to_numpy()).all()


def test_first_minute_is_the_earliest_demo_bar(db):
    assert demo.first_minute(db) is None
    demo.seed_demo(db, ["EURUSD", "XAUUSD"], days=3, end=END)
    db.commit()
    earliest = db.execute("SELECT min(ts_utc) FROM data_bars").fetchone()[0]
    assert demo.first_minute(db) == earliest
    assert END - timedelta(days=3) <= earliest < END - timedelta(days=3) + timedelta(hours=1)
