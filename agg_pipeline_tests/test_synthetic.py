"""Synthetic series (migration 017, issue 13 item 2): DXY built from its six FX legs into
data_bars, against an independent pandas computation of the published formula; the
forward-fill bound; idempotence; restatement of DXY's 1m, 5m and 1h through the late-data
sensor; the live frontier path; and the runtime role's only way into data_bars."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import dagster as dg
import numpy as np
import pandas as pd
import psycopg
import pytest

from agg_pipeline import demo
from agg_pipeline.db import connection, migrations
from agg_pipeline.definitions import defs
from agg_pipeline.defs.assets import AS_OF_TAG
from agg_pipeline.defs.partitions import (
    RANGE_END_TAG,
    RANGE_START_TAG,
    SYMBOL_TAG,
    SYMBOLS_PARTITIONS_NAME,
    SYNTHETIC_PARTITIONS_NAME,
    range_tags,
    run_symbols,
    split_key,
)
from agg_pipeline.defs.requests import next_runs
from agg_pipeline.defs.resources import MarketDatabase
from agg_pipeline.defs.schedules import catchup_schedule
from agg_pipeline.defs.sensors import (
    ladder_sensor,
    late_data_sensor,
    registry_sync_sensor,
    source_frontier_sensor,
)
from agg_pipeline.engine import aggregate as engine
from agg_pipeline.engine import synthetic
from agg_pipeline_tests.helpers import (
    AGG_START,
    DXY_CONSTANT,
    DXY_EXPONENTS,
    T0,
    active_bars,
    add_symbol,
    cursors_at,
    define_dxy,
    sync,
)
from agg_pipeline_tests.reporting import report

RESOURCES = {"market_db": MarketDatabase()}
LEGS = tuple(DXY_EXPONENTS)
FILL = 2  # minutes: the bound of migration 017
DAY = T0.date()
MINUTE = timedelta(minutes=1)
ALL = ("DXY", *sorted(LEGS))  # the `symbols` partitions, in their order
AS_OF = T0 + timedelta(days=3)


@pytest.fixture
def legs(db):
    """DXY defined over its six components, all with tasks."""
    for symbol in LEGS:
        add_symbol(db, symbol)
    define_dxy(db)
    sync(db)
    return db


def leg_frames(start: datetime, end: datetime, *, missing: float = 0.03,
               seed: int = 5) -> dict[str, pd.DataFrame]:
    """Every-minute random walks for the six legs, a few minutes missing from each."""
    frames = {}
    for index, symbol in enumerate(LEGS):
        frames[symbol] = demo.generate_bars(
            demo.DEMO_SYMBOLS[symbol], start, end, seed=seed * 100 + index,
            missing_fraction=missing, late_fraction=0.0, trading=demo.every_minute)
    return frames


def write(conn: psycopg.Connection, frames: dict[str, pd.DataFrame]) -> None:
    with conn.transaction():
        for symbol, frame in frames.items():
            demo.write_bars(conn, symbol, frame, has_volume=True)


def stored_legs(conn: psycopg.Connection) -> dict[str, pd.DataFrame]:
    """The component rows as stored now: what the oracle computes from."""
    frames = {}
    for symbol in LEGS:
        rows = conn.execute("SELECT ts_utc, open, close FROM data_bars WHERE canonical_symbol "
                            "= %s AND timeframe = '1m' ORDER BY ts_utc", (symbol,)).fetchall()
        frames[symbol] = pd.DataFrame(rows, columns=["ts_utc", "open", "close"])
    conn.rollback()
    return frames


def oracle(frames: dict[str, pd.DataFrame], start: datetime, end: datetime) -> pd.DataFrame:
    """The published formula in pandas, independently of the SQL: each leg on the minute
    grid, a missing minute taking the leg's last close at most FILL minutes back (open =
    close = that close), the index where every leg has a value and one at least its own
    bar; high/low = max/min of the index's open and close."""
    grid = pd.date_range(start - FILL * MINUTE, end, freq="1min", inclusive="left", tz=UTC)
    open_ = pd.Series(DXY_CONSTANT, index=grid)
    close = pd.Series(DXY_CONSTANT, index=grid)
    traded = pd.Series(False, index=grid)
    filled: dict[str, pd.Series] = {}
    for symbol, exponent in DXY_EXPONENTS.items():
        leg = frames[symbol].assign(ts_utc=lambda f: pd.to_datetime(f.ts_utc, utc=True)
                                    ).set_index("ts_utc").reindex(grid)
        last_close = leg["close"].ffill(limit=FILL)
        leg_open = leg["open"].where(leg["open"].notna(), last_close)
        open_ = open_ * leg_open ** exponent
        close = close * last_close ** exponent
        filled[symbol] = leg["close"].isna() & last_close.notna()
        traded |= leg["close"].notna()
    index = pd.DataFrame({"open": open_, "close": close})[traded].dropna()
    index = index[(index.index >= start) & (index.index < end)]
    index["high"] = index[["open", "close"]].max(axis=1)
    index["low"] = index[["open", "close"]].min(axis=1)
    index["filled"] = [sorted(s for s in LEGS if filled[s][ts]) for ts in index.index]
    return index


def stored_index(conn: psycopg.Connection, start: datetime, end: datetime) -> pd.DataFrame:
    rows = conn.execute(
        "SELECT ts_utc, open, high, low, close, vol, vwap, trade_count, source, raw "
        "FROM data_bars WHERE canonical_symbol = 'DXY' AND timeframe = '1m' "
        "AND ts_utc >= %s AND ts_utc < %s ORDER BY ts_utc", (start, end)).fetchall()
    conn.rollback()
    frame = pd.DataFrame(rows, columns=["ts_utc", "open", "high", "low", "close", "vol", "vwap",
                                        "trade_count", "source", "raw"])
    return frame.set_index(pd.DatetimeIndex(pd.to_datetime(frame.pop("ts_utc"), utc=True)))


def assert_matches_oracle(conn: psycopg.Connection, start: datetime,
                          end: datetime) -> tuple[int, float]:
    """The stored index equals the oracle's; returns its minutes and the largest relative
    difference."""
    expected = oracle(stored_legs(conn), start, end)
    stored = stored_index(conn, start, end)
    assert list(stored.index) == list(expected.index)
    worst = 0.0
    for column in ("open", "high", "low", "close"):
        relative = (stored[column] / expected[column] - 1).abs().max()
        assert relative <= 1e-12, (column, relative)
        worst = max(worst, relative)
    assert (stored["source"] == "synthetic:DXY").all()
    assert stored[["vol", "vwap", "trade_count"]].isna().all().all()
    assert [sorted(r.get("filled", {})) for r in stored["raw"]] == list(expected["filled"])
    # the envelope the index cannot have left holds the known values
    assert all(r["low_bound"] <= low and high <= r["high_bound"]
               for r, low, high in zip(stored["raw"], stored["low"], stored["high"],
                                       strict=True))
    return len(stored), worst


def build_as_runtime(start: datetime, end: datetime,
                     now: datetime = AS_OF) -> synthetic.SyntheticResult:
    with MarketDatabase().connect() as conn:
        result = synthetic.build(conn, "DXY", start, end, now=now)
        conn.commit()
    return result


# ----------------------------------------------------------------------------- the formula


def test_migration_seeds_dxy_with_its_published_formula(make_database):
    url = make_database("agg_synth")
    migrations.migrate(url)
    with connection.connect(url) as conn:
        constant, fill = conn.execute(
            "SELECT constant, max_fill_minutes FROM data_agg_synthetic_series "
            "WHERE canonical_symbol = 'DXY'").fetchone()
        legs = dict(conn.execute("SELECT component, exponent FROM data_agg_synthetic_components "
                                 "WHERE canonical_symbol = 'DXY'").fetchall())
    assert constant == DXY_CONSTANT and fill == FILL
    assert legs == DXY_EXPONENTS


def test_dxy_equals_the_formula_computed_independently_in_pandas(legs, runtime_url):
    # two days, so the forward-fill also reaches across midnight
    start, end = T0, T0 + timedelta(days=2)
    frames = leg_frames(start - timedelta(hours=1), end)
    # a leg missing at midnight takes the previous day's close
    frames["USDSEK"] = frames["USDSEK"][frames["USDSEK"].ts_utc != T0 + timedelta(days=1)]
    write(legs, frames)
    result = build_as_runtime(start, end)
    totals = result.totals
    assert sorted(result.days) == [DAY, DAY + timedelta(days=1)]
    assert totals.rows_inserted == totals.index_minutes > 2800
    assert totals.minutes_filled > 100  # 3% of each leg's minutes missing
    assert totals.component_rows_read == sum(
        ((f.ts_utc >= start) & (f.ts_utc < end)).sum() for f in frames.values())
    minutes, worst = assert_matches_oracle(legs, start, end)
    assert minutes == totals.index_minutes
    report(f"DXY 1m vs the formula in pandas: {minutes} minutes over 2 days, largest "
           f"relative difference {worst:.1e} (bound 1e-12)")
    midnight = stored_index(legs, T0 + timedelta(days=1), T0 + timedelta(days=1, minutes=1))
    assert midnight["raw"].iloc[0]["filled"] == {"USDSEK": 1}


def test_a_missing_component_minute_follows_the_fill_rule(legs, runtime_url):
    start = T0 + timedelta(hours=10)
    frames = leg_frames(start - timedelta(minutes=10), start + timedelta(minutes=30), missing=0)
    sek = frames["USDSEK"]
    # USDSEK quiet for 3 minutes at 10:00..10:02, and for the whole window 10:10..10:14
    gone = [start + i * MINUTE for i in (0, 1, 2, 10, 11, 12, 13, 14)]
    frames["USDSEK"] = sek[~sek.ts_utc.isin(gone)]
    write(legs, frames)
    result = build_as_runtime(T0, T0 + timedelta(days=1))
    assert result.days[DAY].minutes_incomplete == 1 + 3  # 10:02; 10:12..10:14
    assert_matches_oracle(legs, T0, T0 + timedelta(days=1))
    stored = stored_index(legs, start, start + timedelta(minutes=15))
    fills = {ts.strftime("%H:%M"): raw.get("filled") for ts, raw in stored["raw"].items()}
    # filled with 09:59's close at an age of 1 and 2 minutes, then beyond the bound: no minute
    assert fills["10:00"] == {"USDSEK": 1} and fills["10:01"] == {"USDSEK": 2}
    assert "10:02" not in fills and fills["10:03"] is None
    assert fills["10:10"] == {"USDSEK": 1} and fills["10:11"] == {"USDSEK": 2}
    assert not {"10:12", "10:13", "10:14"} & set(fills)
    last_sek_close = sek.loc[sek.ts_utc == start - MINUTE, "close"].item()
    others = math.prod(frames[s].loc[frames[s].ts_utc == start, "open"].item() ** e
                       for s, e in DXY_EXPONENTS.items() if s != "USDSEK")
    assert stored["open"].iloc[0] == pytest.approx(
        DXY_CONSTANT * others * last_sek_close ** DXY_EXPONENTS["USDSEK"], rel=1e-12)
    # the index's 5m ladder sees the gaps: 4 of 5 minutes -> quality 1; a leg silent for a
    # whole window leaves 2 filled minutes, fewer than the ladder's 3: no bar at all
    engine.aggregate(legs, "DXY", "5m", T0, T0 + timedelta(days=1), now=AS_OF)
    legs.commit()
    bars = active_bars(legs, "DXY", "5m").set_index("ts_utc")
    assert bars.loc[start, ["source_candles", "quality_score"]].tolist() == [4, 1]
    assert start + timedelta(minutes=10) not in bars.index
    assert start + timedelta(minutes=5) in bars.index


def test_an_unchanged_index_is_never_rewritten(legs, runtime_url):
    write(legs, leg_frames(T0, T0 + timedelta(hours=6)))
    first = build_as_runtime(T0, T0 + timedelta(days=1))
    legs.commit()
    versions = legs.execute("SELECT ts_utc, xmin::text FROM data_bars WHERE "
                            "canonical_symbol = 'DXY'").fetchall()
    again = build_as_runtime(T0, T0 + timedelta(days=1))
    totals = again.totals
    assert totals.rows_written == 0
    assert totals.rows_unchanged == first.totals.rows_inserted > 300
    assert legs.execute("SELECT ts_utc, xmin::text FROM data_bars WHERE "
                        "canonical_symbol = 'DXY'").fetchall() == versions
    # no write: the change capture recorded nothing for DXY
    assert legs.execute("SELECT count(*) FROM data_agg_source_changes "
                        "WHERE canonical_symbol = 'DXY'").fetchone()[0] == 0


def test_slots_of_another_source_are_left_alone(legs, runtime_url):
    write(legs, leg_frames(T0, T0 + timedelta(minutes=10), missing=0))
    legs.execute("INSERT INTO data_bars (canonical_symbol, timeframe, ts_utc, open, high, low, "
                 "close, is_partial, source, ingested_at, raw) VALUES ('DXY', '1m', %s, 99, 99, "
                 "99, 99, false, 'dxy', now(), '{}')", (T0 + 3 * MINUTE,))
    legs.commit()
    result = build_as_runtime(T0, T0 + timedelta(days=1))
    assert result.totals.slots_taken == 1 and result.totals.rows_inserted == 9
    assert legs.execute("SELECT source, close FROM data_bars WHERE canonical_symbol = 'DXY' "
                        "AND ts_utc = %s", (T0 + 3 * MINUTE,)).fetchone() == ("dxy", 99)


def test_late_rows_and_deletions_of_components_are_found_and_restate_the_index(legs,
                                                                              runtime_url):
    write(legs, leg_frames(T0, T0 + timedelta(days=1), missing=0))
    outage = [T0 + timedelta(hours=5, minutes=m) for m in (0, 1, 2)]
    legs.execute("DELETE FROM data_bars WHERE canonical_symbol = 'USDJPY' AND ts_utc = ANY(%s)",
                 (outage,))
    legs.commit()
    build_as_runtime(T0, T0 + timedelta(days=1))
    since = datetime.now(UTC) - timedelta(minutes=1)
    with MarketDatabase().connect() as conn:
        assert synthetic.late_days(conn, since, AS_OF) == {}  # what it was built from
    # the missing USDJPY minutes land late; an EURUSD minute is deleted
    frame = leg_frames(T0, T0 + timedelta(days=1), missing=0)["USDJPY"]
    late = frame[frame.ts_utc.isin(outage)].assign(
        ingested_at=pd.Timestamp(datetime.now(UTC)))
    write(legs, {"USDJPY": late})
    legs.execute("DELETE FROM data_bars WHERE canonical_symbol = 'EURUSD' AND ts_utc = %s",
                 (T0 + timedelta(hours=7),))
    legs.commit()
    with MarketDatabase().connect() as conn:
        found = synthetic.late_days(conn, since, AS_OF)
    assert found == {"DXY": {DAY: {"late rows", "delete"}}}
    result = build_as_runtime(T0, T0 + timedelta(days=1))
    # 05:02 was beyond the bound (now computed), 05:00 and 05:01 were filled (now exact);
    # 07:00 is EURUSD-filled now
    assert (result.totals.rows_inserted, result.totals.rows_updated) == (1, 3)
    assert_matches_oracle(legs, T0, T0 + timedelta(days=1))
    with MarketDatabase().connect() as conn:
        assert synthetic.late_days(conn, since, AS_OF) == {}
    # DXY's own writes are changes of its source like any ingester's: the update is captured
    assert legs.execute("SELECT kinds FROM data_agg_source_changes WHERE canonical_symbol = "
                        "'DXY' AND seq > consumed_seq").fetchone() == (["update"],)


def test_a_series_missing_a_component_is_an_ordinary_symbol(db):
    for symbol in LEGS[:-1]:
        add_symbol(db, symbol)
    define_dxy(db)
    sync(db)
    with MarketDatabase().connect() as conn:
        assert synthetic.synthetic_symbols(conn) == set()  # USDCHF is not in the registry
        add_symbol(db, LEGS[-1])
        db.commit()
        assert synthetic.synthetic_symbols(conn, ["DXY", "EURUSD"]) == {"DXY"}
        db.execute("UPDATE data_agg_state SET enabled = false WHERE canonical_symbol = 'DXY'")
        db.commit()
        assert synthetic.synthetic_symbols(conn) == set()  # its 5m task is paused


# ----------------------------------------------------------------------------- Dagster


def run_requested(instance: dg.DagsterInstance, request: dg.RunRequest,
                  as_of: datetime | None = None) -> dg.ExecuteInProcessResult:
    """The request's run, then each run of its chain ladder_sensor launches after it (the
    synthetic series' run before the block's aggregate_bars run); the last run's result."""
    while True:
        tags = dict(request.tags)
        if as_of is not None:
            tags[AS_OF_TAG] = as_of.isoformat()
        result = defs.resolve_job_def(request.job_name or "aggregate_bars").execute_in_process(
            instance=instance, tags=tags, asset_selection=list(request.asset_selection))
        following = ladder_sensor(dg.build_sensor_context(instance=instance))
        if not result.success or isinstance(following, dg.SkipReason):
            return result
        [request] = [r for r in following.run_requests
                     if r.tags["agg/plan"] == request.tags["agg/plan"]]


def build_index_then_bars(instance: dg.DagsterInstance, tags: dict[str, str]) -> bool:
    """DXY's index (synthetic_bars, its own partitions) over the days of the rectangle `tags`
    name, then bars_5m and bars_1h over the rectangle (aggregate_bars): a backfill's runs."""
    first, last = split_key(tags[RANGE_START_TAG])[1], split_key(tags[RANGE_END_TAG])[1]
    index = defs.resolve_job_def("synthetic_bars").execute_in_process(
        instance=instance, tags={**tags, **range_tags("DXY", first, last)},
        asset_selection=[dg.AssetKey("synthetic_bars_1m")])
    bars = defs.resolve_job_def("aggregate_bars").execute_in_process(
        instance=instance, tags=tags,
        asset_selection=[dg.AssetKey("bars_5m"), dg.AssetKey("bars_1h")])
    return index.success and bars.success


def chain_assets(request: dg.RunRequest) -> set[str]:
    """The assets of the request's run and of the runs chained after it."""
    return ({k.to_user_string() for k in request.asset_selection}
            | {"bars_" + tf for entry in next_runs(request.tags) for tf in entry[3]})


def test_a_late_component_correction_restates_dxy_1m_5m_and_1h_through_the_sensor(legs,
                                                                                 instance):
    write(legs, leg_frames(T0, T0 + timedelta(days=1), missing=0))
    legs.commit()
    instance.add_dynamic_partitions(SYMBOLS_PARTITIONS_NAME, list(ALL))
    instance.add_dynamic_partitions(SYNTHETIC_PARTITIONS_NAME, ["DXY"])
    tags = {**range_tags("DXY", DAY, DAY, last_symbol=ALL[-1]), AS_OF_TAG: AS_OF.isoformat()}
    assert build_index_then_bars(instance, tags)
    window = T0 + timedelta(hours=3, minutes=5)
    before_5m = active_bars(legs, "DXY", "5m").set_index("ts_utc").loc[window]
    before_1h = active_bars(legs, "DXY", "1h").set_index("ts_utc").loc[T0 + timedelta(hours=3)]
    assert before_5m["source_candles"] >= 4
    quiet = late_data_sensor(dg.build_sensor_context(instance=instance, resources=RESOURCES))
    assert not quiet.run_requests

    # EURUSD's 03:09 is corrected in place (ingested_at as it was: only the change capture
    # sees it): 2% lower, a leg with a negative exponent, so DXY's 03:09 rises above the hour
    legs.execute("UPDATE data_bars SET low = low * 0.98, close = low * 0.98 "
                 "WHERE canonical_symbol = 'EURUSD' AND ts_utc = %s", (window + 4 * MINUTE,))
    legs.commit()
    result = late_data_sensor(dg.build_sensor_context(instance=instance, resources=RESOURCES,
                                                      cursor=quiet.cursor))
    selected = set().union(*(chain_assets(r) for r in result.run_requests))
    assert selected == {"synthetic_bars_1m", "bars_5m", "bars_1h"}
    assert all(r.tags["agg/reason"].startswith("late data on 2025-07-07")
               for r in result.run_requests)
    for request in result.run_requests:
        assert run_requested(instance, request, AS_OF).success

    assert_matches_oracle(legs, T0, T0 + timedelta(days=1))
    dxy_0309 = stored_index(legs, window + 4 * MINUTE, window + 5 * MINUTE).iloc[0]
    after_5m = active_bars(legs, "DXY", "5m").set_index("ts_utc").loc[window]
    after_1h = active_bars(legs, "DXY", "1h").set_index("ts_utc").loc[T0 + timedelta(hours=3)]
    assert after_5m["close"] == dxy_0309["close"] != before_5m["close"]
    assert after_5m["high"] == dxy_0309["high"] > before_5m["high"]
    assert after_1h["high"] == dxy_0309["high"] > before_1h["high"]
    revisions = legs.execute(
        "SELECT timeframe, ts_utc, change, reason FROM derived_bar_revisions "
        "WHERE canonical_symbol = 'DXY' ORDER BY timeframe").fetchall()
    # the 1h bar says why as its 5m bar does (it was "late_data", the run's reason)
    assert revisions == [("1h", T0 + timedelta(hours=3), "restated", "correction"),
                         ("5m", window, "restated", "correction")]
    # DXY's own recorded change was consumed by its 5m run; nothing is left to do
    assert legs.execute("SELECT count(*) FROM data_agg_source_changes "
                        "WHERE seq > consumed_seq").fetchone()[0] == 0
    after = late_data_sensor(dg.build_sensor_context(instance=instance, resources=RESOURCES,
                                                     cursor=quiet.cursor))
    assert not after.run_requests


def test_the_reconciliation_rebuilds_dxy_when_a_leg_changed_around_the_capture(
        legs, instance, monkeypatch):
    """Protects the backstop for synthetic series: a leg's minute edited in place with the
    capture triggers disabled is seen by no late-data path; the reconciliation that finds the
    leg's day changed requests DXY's days that read it too, and the run restates DXY."""
    monkeypatch.setenv("AGG_RECONCILE_DAYS", "1000")  # T0 is long before the database clock
    monkeypatch.setenv("AGG_RECONCILE_SYMBOLS_PER_TICK", str(len(ALL)))
    write(legs, leg_frames(T0, T0 + timedelta(days=1), missing=0))
    legs.commit()
    instance.add_dynamic_partitions(SYMBOLS_PARTITIONS_NAME, list(ALL))
    instance.add_dynamic_partitions(SYNTHETIC_PARTITIONS_NAME, ["DXY"])
    # from agg_start: the cursors move to the end of the data, behind which the backstop looks
    tags = {**range_tags("DXY", AGG_START.date(), DAY, last_symbol=ALL[-1]),
            AS_OF_TAG: AS_OF.isoformat()}
    assert build_index_then_bars(instance, tags)
    quiet = late_data_sensor(dg.build_sensor_context(instance=instance, resources=RESOURCES))
    assert not quiet.run_requests

    minute = T0 + timedelta(hours=5, minutes=2)
    capture = ("agg_capture_source_update", "agg_capture_source_delete")
    for trigger in capture:
        legs.execute(f"ALTER TABLE data_bars DISABLE TRIGGER {trigger}")
    legs.execute("UPDATE data_bars SET close = close * 1.01, high = greatest(high, close * 1.01)"
                 " WHERE canonical_symbol = 'USDJPY' AND ts_utc = %s", (minute,))
    for trigger in capture:
        legs.execute(f"ALTER TABLE data_bars ENABLE ALWAYS TRIGGER {trigger}")
    legs.commit()
    before = stored_index(legs, minute, minute + MINUTE).iloc[0]["close"]

    result = late_data_sensor(dg.build_sensor_context(instance=instance, resources=RESOURCES,
                                                      cursor=quiet.cursor))
    assert result.run_requests
    assert all(r.tags["agg/reason"] == "reconciliation" for r in result.run_requests)
    in_order = instance.get_dynamic_partitions(SYMBOLS_PARTITIONS_NAME)
    # (the legs between them in the block ride along)
    assert {"DXY", "USDJPY"} <= {s for r in result.run_requests
                                 for s in run_symbols(r.tags, in_order)
                                 + [s for e in next_runs(r.tags) for s in in_order[
                                     in_order.index(e[1]):in_order.index(e[2]) + 1]]}
    assert "synthetic_bars_1m" in set().union(*(chain_assets(r) for r in result.run_requests))
    for request in result.run_requests:
        assert run_requested(instance, request, AS_OF).success

    assert_matches_oracle(legs, T0, T0 + timedelta(days=1))
    assert stored_index(legs, minute, minute + MINUTE).iloc[0]["close"] != before


def test_the_frontier_sensor_builds_dxy_live_before_its_5m(db, instance):
    now = db.execute("SELECT now()").fetchone()[0].astimezone(UTC)
    start = (now - timedelta(minutes=40)).replace(second=0, microsecond=0)
    start -= timedelta(minutes=start.minute % 5)
    for symbol in LEGS:
        add_symbol(db, symbol)
    define_dxy(db)
    sync(db)
    cursors_at(db, start)
    end = now.replace(second=0, microsecond=0) - MINUTE  # the last minute has not landed yet
    write(db, leg_frames(start, end, missing=0))
    db.commit()
    instance.add_dynamic_partitions(SYMBOLS_PARTITIONS_NAME, list(ALL))
    instance.add_dynamic_partitions(SYNTHETIC_PARTITIONS_NAME, ["DXY"])

    tick = source_frontier_sensor(dg.build_sensor_context(instance=instance, resources=RESOURCES))
    [request] = tick.run_requests  # one block: the six legs' new windows and DXY's index
    # DXY's index first (its own job and partitions), then the block's 5m and 1h
    assert request.job_name == "synthetic_bars"
    assert chain_assets(request) == {"synthetic_bars_1m", "bars_5m", "bars_1h"}
    assert request.tags["agg/reason"] == "new complete windows"
    assert run_requested(instance, request).success

    run_as_of = instance.get_run_records(dg.RunsFilter(tags={"agg/plan": request.tags[
        "agg/plan"]}))[0].create_timestamp
    built = stored_index(db, start, end)
    assert built.index.min() == start and len(built) == (
        min(end, run_as_of.replace(second=0, microsecond=0) - MINUTE) - start) // MINUTE
    # how far the index was built: the run's final minutes (its as_of less the 60 s delay)
    assert db.execute("SELECT built_through FROM v_agg_synthetic_series WHERE canonical_symbol "
                      "= 'DXY'").fetchone()[0] == run_as_of.replace(second=0, microsecond=0
                                                                    ) - MINUTE
    db.rollback()
    bars = active_bars(db, "DXY", "5m")
    assert len(bars) >= 6 and bars.ts_utc.min() == start
    assert (bars["source_candles"] == 5).all()
    # nothing new: the next tick requests nothing
    again = source_frontier_sensor(dg.build_sensor_context(instance=instance, resources=RESOURCES,
                                                           cursor=tick.cursor))
    assert again.run_requests == []
    with MarketDatabase().connect() as conn:
        assert synthetic.frontier_days(conn, run_as_of) == {}


# ----------------------------------------------------------------------------- privileges


RUNTIME_REFUSED = [
    "INSERT INTO data_bars (canonical_symbol, timeframe, ts_utc, open, high, low, close, "
    "is_partial, source, ingested_at, raw) VALUES ({symbol!r}, '1m', '2025-07-08', 1, 1, 1, 1, "
    "false, 'synthetic:DXY', now(), '{{}}')",
    "UPDATE data_bars SET close = close WHERE canonical_symbol = {symbol!r}",
    "DELETE FROM data_bars WHERE canonical_symbol = {symbol!r}",
]


@pytest.mark.parametrize("symbol", ["EURUSD", "DXY"])
@pytest.mark.parametrize("statement", RUNTIME_REFUSED, ids=["insert", "update", "delete"])
def test_the_runtime_role_cannot_write_data_bars_outside_the_function(legs, runtime_url,
                                                                      symbol, statement):
    write(legs, leg_frames(T0, T0 + timedelta(minutes=5), missing=0))
    build_as_runtime(T0, T0 + timedelta(days=1))
    with MarketDatabase().connect() as conn, pytest.raises(
            psycopg.errors.InsufficientPrivilege):
        conn.execute(statement.format(symbol=symbol))


def test_the_build_function_writes_only_a_defined_synthetic_series(legs, runtime_url):
    write(legs, leg_frames(T0, T0 + timedelta(minutes=5), missing=0))
    legs.execute("UPDATE core_asset_registry_all SET ingest_class = 'A' "
                 "WHERE canonical_symbol = 'DXY'")
    legs.commit()
    with MarketDatabase().connect() as conn:
        for symbol, problem in (("EURUSD", "is not a synthetic series"),
                                ("DXY", "ingest_class = 'B'")):
            with pytest.raises(psycopg.errors.InvalidParameterValue, match=problem):
                synthetic.build(conn, symbol, T0, T0 + timedelta(days=1), now=AS_OF)
            conn.rollback()
        # nor (re)define a series, nor touch what it was built from
        for statement in (
                "SELECT agg_define_synthetic('EURUSD', 1, ARRAY['USDJPY'], ARRAY[1.0::float8])",
                "UPDATE data_agg_synthetic_components SET exponent = 1",
                "DELETE FROM data_agg_synthetic_inputs"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)
            conn.rollback()
    assert legs.execute("SELECT count(*) FROM data_bars WHERE canonical_symbol IN "
                        "('EURUSD', 'DXY')").fetchone()[0] == 5


def test_the_build_function_is_a_definer_function_with_a_fixed_search_path(legs):
    owner = legs.execute("SELECT current_user").fetchone()[0]  # the migrating user
    definer, config, function_owner, public, runtime = legs.execute(
        "SELECT p.prosecdef, p.proconfig, pg_get_userbyid(p.proowner), "
        "has_function_privilege('public', p.oid, 'EXECUTE'), "
        "has_function_privilege('agg_pipeline_runtime', p.oid, 'EXECUTE') "
        "FROM pg_proc p WHERE p.proname = 'agg_build_synthetic_bars'").fetchone()
    assert definer and runtime and not public
    assert function_owner == owner
    assert any(c.startswith("search_path=") and c.endswith("pg_temp") for c in config)
    assert not legs.execute("SELECT has_function_privilege('agg_pipeline_runtime', "
                            "'agg_define_synthetic(text, double precision, text[], "
                            "double precision[], integer, text)', 'EXECUTE')").fetchone()[0]


def test_the_oracle_applies_the_published_formula():
    """One minute by hand, so the oracle itself is checked."""
    ts = T0
    frames = {s: pd.DataFrame({"ts_utc": [ts], "open": [p], "close": [p * 1.001]})
              for s, p in zip(LEGS, np.linspace(1.0, 2.0, len(LEGS)), strict=True)}
    row = oracle(frames, ts, ts + MINUTE).iloc[0]
    assert row["open"] == pytest.approx(
        DXY_CONSTANT * math.prod(frames[s]["open"][0] ** e for s, e in DXY_EXPONENTS.items()),
        rel=1e-15)


def test_the_schedule_leaves_dxy_to_the_frontier_sensor(db, instance):
    """The schedule launches aggregate_bars runs only (a schedule has one job), and a
    synthetic series' 5m must follow its index's run (synthetic_bars): it plans the legs'
    catch-up, never DXY's 5m, and the frontier sensor, finding the same work, builds DXY's
    index and then its bars."""
    now = db.execute("SELECT now()").fetchone()[0].astimezone(UTC)
    start = (now - timedelta(minutes=40)).replace(second=0, microsecond=0)
    start -= timedelta(minutes=start.minute % 5)
    for symbol in LEGS:
        add_symbol(db, symbol)
    define_dxy(db)
    sync(db)
    cursors_at(db, start)
    write(db, leg_frames(start, now.replace(second=0, microsecond=0) - MINUTE, missing=0))
    db.commit()
    instance.add_dynamic_partitions(SYMBOLS_PARTITIONS_NAME, list(ALL))
    instance.add_dynamic_partitions(SYNTHETIC_PARTITIONS_NAME, ["DXY"])
    requests = catchup_schedule(dg.build_schedule_context(
        instance=instance, resources=RESOURCES, scheduled_execution_time=now))
    assert requests and all(r.job_name == "aggregate_bars" for r in requests)
    assert not [r for r in requests if r.tags[RANGE_START_TAG].endswith("|DXY")]
    tick = source_frontier_sensor(dg.build_sensor_context(instance=instance, resources=RESOURCES))
    [request] = tick.run_requests
    assert request.job_name == "synthetic_bars" and request.tags[SYMBOL_TAG] == "DXY"
    assert run_requested(instance, request).success
    assert len(active_bars(db, "DXY", "5m")) >= 6


def test_only_synthetic_series_have_synthetic_bars_1m_partitions(db, instance):
    """registry_sync_sensor puts DXY, and none of its legs, in `symbols_synthetic`: the catalog
    shows synthetic_bars_1m partitions for the index only."""
    for symbol in LEGS:
        add_symbol(db, symbol)
    define_dxy(db)
    db.commit()
    result = registry_sync_sensor(dg.build_sensor_context(instance=instance, resources=RESOURCES))
    for request in result.dynamic_partitions_requests:
        instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
    assert instance.get_dynamic_partitions(SYNTHETIC_PARTITIONS_NAME) == ["DXY"]
    assert sorted(instance.get_dynamic_partitions(SYMBOLS_PARTITIONS_NAME)) == sorted(ALL)
    keys = defs.get_assets_def(dg.AssetKey("synthetic_bars_1m")).partitions_def \
        .get_partition_keys(dynamic_partitions_store=instance)
    assert {key.keys_by_dimension["symbol"] for key in keys} == {"DXY"}
