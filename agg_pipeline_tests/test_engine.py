"""The aggregation engine against a real PostgreSQL: contracts 2-9 and 13, errors, rebuild."""

from __future__ import annotations

import re
import threading
from datetime import UTC, datetime, timedelta, timezone

import psycopg
import pytest

from agg_pipeline.db import connection
from agg_pipeline.engine import aggregate as engine
from agg_pipeline.engine import errors, tasks
from agg_pipeline.engine.timeframes import UnknownTimeframeError
from agg_pipeline_tests.helpers import (
    AGG_START,
    T0,
    active_bars,
    add_symbol,
    bar,
    insert_bars,
    minute_bars,
    sync,
)

HOUR = timedelta(hours=1)
LATER = T0 + timedelta(days=30)  # every window of the test data is final by then


@pytest.fixture
def eurusd(db):
    add_symbol(db, "EURUSD")
    sync(db)
    return db


def build(conn, start=AGG_START, end=T0 + 2 * HOUR, now=LATER, timeframes=("5m", "1h")):
    results = {tf: engine.aggregate(conn, "EURUSD", tf, start, end, now=now) for tf in timeframes}
    conn.commit()
    return results


def cursor_of(conn, timeframe="5m"):
    return conn.execute(
        "SELECT last_agg_bar_ts_utc FROM data_agg_state WHERE canonical_symbol = 'EURUSD' "
        "AND timeframe = %s", (timeframe,)).fetchone()[0]


def test_rollup_values_and_quality_ladder(eurusd):
    # window 00:00 complete, 00:05 missing one minute, 00:10 missing two, 00:15 missing three
    insert_bars(eurusd, "EURUSD", minute_bars(T0, 20, skip=[6, 11, 12, 16, 17, 18]))
    result = build(eurusd, end=T0 + 20 * timedelta(minutes=1), timeframes=("5m",))["5m"]
    bars = active_bars(eurusd, "EURUSD", "5m").set_index("ts_utc")
    assert list(bars.index) == [T0 + timedelta(minutes=m) for m in (0, 5, 10)]
    assert list(bars.quality_score) == [2, 1, 0]
    assert list(bars.source_candles) == [5, 4, 3]
    assert set(bars.expected_candles) == {5}
    first = bars.iloc[0]
    assert first.open == pytest.approx(1.1, abs=0) and first.close == 1.1004 + 0.0005
    assert first.high == 1.1004 + 0.001 and first.low == 1.1 - 0.001
    assert first.vol == 5.0 and first.trade_count == 5
    assert result.windows_skipped == 1 and result.bars_poor_quality == 1
    assert result.bars_inserted == 3


def test_second_run_writes_nothing(eurusd):
    insert_bars(eurusd, "EURUSD", minute_bars(T0, 120, skip=[3, 50]))
    first = build(eurusd)
    assert first["5m"].bars_inserted == 24 and first["1h"].bars_inserted == 2
    stamps = eurusd.execute("SELECT max(updated_at) FROM derived_data_bars").fetchone()[0]
    again = build(eurusd)
    for result in again.values():
        assert result.rows_written == 0
    assert again["5m"].bars_unchanged == 24 and again["1h"].bars_unchanged == 2
    assert eurusd.execute("SELECT max(updated_at) FROM derived_data_bars").fetchone()[0] == stamps


def test_range_statement_is_planned_for_its_bounds_every_time(eurusd):
    # a run calls the engine once per symbol and range on one connection; a generic plan of
    # the range statement (psycopg prepares it, PostgreSQL then stops re-planning) is slower
    insert_bars(eurusd, "EURUSD", minute_bars(T0, 60))
    for _ in range(12):
        build(eurusd, timeframes=("5m",))
    generic = eurusd.execute(
        "SELECT count(*) FROM pg_prepared_statements "
        "WHERE statement LIKE '%%INSERT INTO derived_data_bars%%' AND generic_plans > 0"
    ).fetchone()[0]
    assert generic == 0


def test_corrected_source_bar_updates_exactly_the_affected_bars(eurusd):
    insert_bars(eurusd, "EURUSD", minute_bars(T0, 120))
    build(eurusd)
    before = {tf: active_bars(eurusd, "EURUSD", tf).set_index("ts_utc") for tf in ("5m", "1h")}
    corrected = T0 + timedelta(minutes=67)
    insert_bars(eurusd, "EURUSD", [bar(corrected, 1.5, spread=0.01)], upsert=True)
    results = build(eurusd)
    assert (results["5m"].bars_updated, results["5m"].bars_inserted) == (1, 0)
    assert (results["1h"].bars_updated, results["1h"].bars_inserted) == (1, 0)
    after = {tf: active_bars(eurusd, "EURUSD", tf).set_index("ts_utc") for tf in ("5m", "1h")}
    changed_5m = after["5m"].index[(after["5m"].high != before["5m"].high)]
    assert list(changed_5m) == [T0 + timedelta(minutes=65)]
    assert after["1h"].loc[T0 + HOUR, "high"] == 1.51
    assert after["1h"].loc[T0, "high"] == before["1h"].loc[T0, "high"]


def test_deleted_source_rows_soft_delete_bars_and_keep_history(eurusd):
    insert_bars(eurusd, "EURUSD", minute_bars(T0, 120))
    build(eurusd)
    # leave 2 bars in 00:10 (below the 5m ladder) and so 11 5m bars in the first hour
    eurusd.execute("DELETE FROM data_bars WHERE ts_utc >= %s AND ts_utc < %s",
                   (T0 + timedelta(minutes=10), T0 + timedelta(minutes=13)))
    results = build(eurusd)
    assert results["5m"].bars_soft_deleted == 1 and results["5m"].windows_skipped == 1
    assert results["1h"].bars_updated == 1
    assert eurusd.execute(
        "SELECT count(*) FROM derived_data_bars WHERE timeframe = '5m' AND ts_utc = %s "
        "AND deleted_at IS NOT NULL", (T0 + timedelta(minutes=10),)).fetchone()[0] == 1
    hour = active_bars(eurusd, "EURUSD", "1h").set_index("ts_utc").loc[T0]
    assert (hour.source_candles, hour.quality_score) == (11, 1)
    # the data comes back: a new active row, the soft-deleted one stays as history
    insert_bars(eurusd, "EURUSD", minute_bars(T0 + timedelta(minutes=10), 3, price=1.101))
    assert build(eurusd)["5m"].bars_inserted == 1
    assert eurusd.execute("SELECT count(*) FROM derived_data_bars WHERE timeframe = '5m' "
                          "AND ts_utc = %s", (T0 + timedelta(minutes=10),)).fetchone()[0] == 2


def test_weekend_gap_is_crossed_in_one_call(eurusd):
    friday_close = datetime(2025, 7, 11, 21, 55, tzinfo=UTC)
    sunday_open = datetime(2025, 7, 13, 22, 0, tzinfo=UTC)
    insert_bars(eurusd, "EURUSD", minute_bars(friday_close, 5) + minute_bars(sunday_open, 10))
    eurusd.execute("UPDATE data_agg_state SET last_agg_bar_ts_utc = %s", (friday_close,))
    eurusd.commit()
    result = engine.aggregate(eurusd, "EURUSD", "5m", friday_close, sunday_open + HOUR,
                              now=sunday_open + HOUR)
    eurusd.commit()
    assert result.bars_inserted == 3
    assert result.cursor_after == sunday_open + timedelta(minutes=10)


def test_cursor_stops_at_frontier_and_first_unconfirmed_window(eurusd):
    insert_bars(eurusd, "EURUSD", minute_bars(T0, 23))  # newest row 00:22
    # at 00:21:30 with a 60 s delay, windows up to 00:20 are final; the range starts at
    # the cursor (agg_start_utc), so the empty days before T0 are passed over too
    now = T0 + timedelta(minutes=21, seconds=30)
    result = engine.aggregate(eurusd, "EURUSD", "5m", AGG_START, T0 + HOUR, now=now)
    eurusd.commit()
    assert result.cursor_after == T0 + timedelta(minutes=20)
    assert result.bars_inserted == 4
    # later the window [00:20, 00:25) is final, but the cursor stops at its end, where
    # the newest source row's window ends (never beyond)
    result = engine.aggregate(eurusd, "EURUSD", "5m", T0, T0 + HOUR, now=T0 + HOUR)
    eurusd.commit()
    assert result.cursor_after == T0 + timedelta(minutes=25)
    assert result.bars_inserted == 1  # [00:20, 00:25) holds 3 rows: quality 0
    # a row stamped far in the future moves neither the cursor nor the frontier
    insert_bars(eurusd, "EURUSD", [bar(datetime(2099, 1, 1, tzinfo=UTC), 1.2)])
    result = engine.aggregate(eurusd, "EURUSD", "5m", T0, T0 + 2 * HOUR, now=T0 + 2 * HOUR)
    assert result.cursor_after == T0 + timedelta(minutes=25)
    assert result.newest_source_ts == T0 + timedelta(minutes=22)


def test_cursor_only_moves_forward_and_not_over_unprocessed_windows(eurusd):
    insert_bars(eurusd, "EURUSD", minute_bars(T0, 180))
    build(eurusd, end=T0 + 3 * HOUR, timeframes=("5m",))
    assert cursor_of(eurusd) == T0 + 3 * HOUR
    # re-materialising an old range never moves the cursor back
    build(eurusd, start=T0, end=T0 + HOUR, timeframes=("5m",))
    assert cursor_of(eurusd) == T0 + 3 * HOUR
    # a range that starts after the cursor leaves it alone: windows in between are unprocessed
    eurusd.execute("UPDATE data_agg_state SET last_agg_bar_ts_utc = %s WHERE timeframe = '5m'",
                   (T0,))
    eurusd.commit()
    build(eurusd, start=T0 + 2 * HOUR, end=T0 + 3 * HOUR, timeframes=("5m",))
    assert cursor_of(eurusd) == T0


def test_no_bar_before_agg_start(eurusd):
    insert_bars(eurusd, "EURUSD", minute_bars(T0, 120))
    build(eurusd)
    eurusd.execute("UPDATE data_agg_state SET agg_start_utc = %s", (T0 + HOUR,))
    eurusd.commit()
    results = build(eurusd)
    for tf, expected_deleted in (("5m", 12), ("1h", 1)):
        bars = active_bars(eurusd, "EURUSD", tf)
        assert bars.ts_utc.min() >= T0 + HOUR
        assert results[tf].bars_soft_deleted == expected_deleted


def test_invalid_source_rows_are_excluded_and_counted(eurusd, caplog):
    good = minute_bars(T0, 5)
    nan = float("nan")
    bad = [
        bar(T0 + timedelta(minutes=5), nan),
        bar(T0 + timedelta(minutes=6), 1.1, high=float("inf")),
        bar(T0 + timedelta(minutes=7), -1.1, high=-1.0, low=-1.2, close=-1.1),
        bar(T0 + timedelta(minutes=8), 1.1, high=1.0, low=1.2),        # high < low
        bar(T0 + timedelta(minutes=9), 1.1, close=1.3),                 # close > high
        bar(T0 + timedelta(minutes=9, seconds=30), 1.1),               # off the minute grid
        bar(T0 + timedelta(minutes=10), 0.0, high=0.0, low=0.0, close=0.0),
        bar(T0 + timedelta(minutes=11), 1.1, vol=-5.0),
        bar(T0 + timedelta(minutes=12), 1.1, open=None),
    ]
    insert_bars(eurusd, "EURUSD", good + bad)
    with caplog.at_level("WARNING"):
        result = build(eurusd, timeframes=("5m",))["5m"]
    assert result.source_rows_invalid == len(bad)
    assert result.bars_inserted == 1  # the two windows of bad rows yield no bar
    assert "9 invalid source rows excluded" in caplog.text and "EURUSD" in caplog.text


def test_partial_source_rows_wait_until_final(eurusd):
    rows = minute_bars(T0, 5)
    rows[-1]["is_partial"] = True
    insert_bars(eurusd, "EURUSD", rows)
    result = build(eurusd, timeframes=("5m",))["5m"]
    assert result.source_rows_partial == 1
    assert active_bars(eurusd, "EURUSD", "5m").source_candles.tolist() == [4]


def test_zero_volume_fillers_left_out_of_ohlc_only_when_enabled(db):
    add_symbol(db, "EURUSD", skip_zero_volume=True)
    add_symbol(db, "PLAIN")
    sync(db)
    filler = bar(T0, 2.0, vol=0.0, spread=0.5)
    rows = [filler, *minute_bars(T0 + timedelta(minutes=1), 4, price=1.0, step=0.0)]
    for symbol in ("EURUSD", "PLAIN"):
        insert_bars(db, symbol, rows)
    for symbol in ("EURUSD", "PLAIN"):
        engine.aggregate(db, symbol, "5m", T0, T0 + HOUR, now=LATER)
    skip = active_bars(db, "EURUSD", "5m").iloc[0]
    plain = active_bars(db, "PLAIN", "5m").iloc[0]
    assert (skip.open, skip.high, skip.source_candles) == (1.0, 1.001, 5)
    assert (plain.open, plain.high, plain.source_candles) == (2.0, 2.5, 5)


def test_errors_name_what_is_wrong(eurusd):
    def run(symbol="EURUSD", timeframe="5m", start=T0, end=T0 + HOUR):
        return engine.aggregate(eurusd, symbol, timeframe, start, end, now=LATER)

    with pytest.raises(errors.UnknownSymbolError, match="'NOPE'"):
        run(symbol="NOPE")
    eurusd.rollback()
    with pytest.raises(UnknownTimeframeError, match="'7m'"):
        run(timeframe="7m")
    with pytest.raises(errors.InvalidRangeError, match="inverted"):
        run(start=T0 + HOUR, end=T0)
    with pytest.raises(errors.InvalidRangeError, match="empty"):
        run(end=T0)
    with pytest.raises(ValueError, match="time zone"):
        run(start=datetime(2025, 7, 7))
    with pytest.raises(errors.MissingTaskError, match="calc_"):
        run(timeframe="15m")
    eurusd.rollback()
    eurusd.execute("UPDATE data_agg_state SET last_agg_bar_ts_utc = NULL WHERE timeframe = '5m'")
    eurusd.commit()
    with pytest.raises(errors.NullCursorError, match="EURUSD"):
        run()
    eurusd.rollback()
    eurusd.execute("UPDATE data_agg_state SET last_agg_bar_ts_utc = %s, source_timeframe = '1h' "
                   "WHERE timeframe = '5m'", (T0,))
    eurusd.commit()
    with pytest.raises(errors.TaskConfigError, match="built from 1m"):
        run()


def test_rebuild_range_soft_deletes_and_recomputes_with_new_version(eurusd):
    insert_bars(eurusd, "EURUSD", minute_bars(T0, 120))
    build(eurusd)
    result = engine.rebuild_range(eurusd, "EURUSD", "5m", T0, T0 + HOUR, now=LATER)
    eurusd.commit()
    assert (result.bars_soft_deleted, result.bars_inserted) == (12, 12)
    assert result.derivation_version == 2
    versions = active_bars(eurusd, "EURUSD", "5m").groupby("derivation_version").size()
    assert versions.to_dict() == {1: 12, 2: 12}
    history = eurusd.execute("SELECT count(*) FROM derived_data_bars WHERE timeframe = '5m' "
                             "AND deleted_at IS NOT NULL").fetchone()[0]
    assert history == 12


def test_two_writers_on_the_same_range_agree(eurusd, database_url):
    """Contract 13: the task row's lock serialises writers; both finish, no error, one
    result."""
    insert_bars(eurusd, "EURUSD", minute_bars(T0, 24 * 60))
    eurusd.commit()
    outcomes, failures = [], []
    barrier = threading.Barrier(2)

    def worker():
        try:
            with connection.connect(database_url) as conn:
                barrier.wait()
                outcomes.append(engine.aggregate(conn, "EURUSD", "5m", T0, T0 + 24 * HOUR,
                                                 now=LATER))
                conn.commit()
        except Exception as exc:  # collected and asserted below
            failures.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert failures == []
    assert sorted(r.bars_inserted for r in outcomes) == [0, 288]
    assert sorted(r.bars_unchanged for r in outcomes) == [0, 288]
    assert len(active_bars(eurusd, "EURUSD", "5m")) == 288


def test_failure_state_machine(eurusd):
    eurusd.execute("INSERT INTO data_agg_state (canonical_symbol, timeframe, source_timeframe, "
                   "run_interval_minutes, aggregation_delay_seconds, is_mandatory, "
                   "last_agg_bar_ts_utc) VALUES ('EURUSD', '4h', '1h', 240, 60, false, %s)", (T0,))
    eurusd.commit()

    def fail(timeframe, transient=False):
        return tasks.record_failure(eurusd, "EURUSD", timeframe, transient=transient,
                                    error="boom")

    assert fail("5m", transient=True).hard_fail_streak == 0
    outcomes = [fail("5m") for _ in range(3)]
    assert [o.hard_fail_streak for o in outcomes] == [1, 2, 3]
    assert [o.status for o in outcomes] == ["idle", "idle", "hard_failed"]
    assert outcomes[-1].enabled  # mandatory: still scheduled, and alerting
    optional = [fail("4h") for _ in range(3)][-1]
    assert (optional.status, optional.enabled) == ("disabled", False)
    # success resets the streak and brings the mandatory task back
    insert_bars(eurusd, "EURUSD", minute_bars(T0, 10))
    build(eurusd, timeframes=("5m",))
    row = eurusd.execute("SELECT status, hard_fail_streak, last_error FROM data_agg_state "
                         "WHERE timeframe = '5m'").fetchone()
    assert row == ("idle", 0, None)
    # an operator re-enabling the auto-disabled task gives it a fresh start
    eurusd.execute("UPDATE data_agg_state SET enabled = true WHERE timeframe = '4h'")
    eurusd.commit()
    assert eurusd.execute("SELECT status, hard_fail_streak FROM data_agg_state "
                          "WHERE timeframe = '4h'").fetchone() == ("idle", 0)


def test_transient_errors_are_classified():
    assert tasks.is_transient(psycopg.errors.SerializationFailure())
    assert tasks.is_transient(psycopg.errors.AdminShutdown())
    assert tasks.is_transient(psycopg.OperationalError("server closed the connection"))
    assert not tasks.is_transient(psycopg.errors.UndefinedTable())
    assert not tasks.is_transient(errors.NullCursorError("X", "5m"))


def test_unreachable_server_is_transient_a_refusal_is_not(database_url):
    """A server that cannot be reached (down, restarting) is an outage the retries ride out;
    a server that answers "no" (no such database) is a configuration error."""
    with pytest.raises(connection.DatabaseUnavailableError) as down:
        connection.connect("postgresql://agg@127.0.0.1:1/markets", connect_timeout=2)
    assert tasks.is_transient(down.value)
    with pytest.raises(connection.DatabaseConfigError) as refused:
        connection.connect(connection.with_database(database_url, "agg_no_such_database"))
    assert not isinstance(refused.value, connection.DatabaseUnavailableError)
    assert not tasks.is_transient(refused.value)


def test_filler_rule_leaves_bars_without_volume_alone(db):
    """Regression: with the filler setting on, NULL volumes (FX) are not fillers, and a
    window with no volume at all still gets its bar."""
    add_symbol(db, "FX1", skip_zero_volume=True)
    sync(db)
    rows = minute_bars(T0, 5, vol=None)
    mixed = [bar(T0 + timedelta(minutes=5), 2.0, vol=None, spread=0.5),
             *minute_bars(T0 + timedelta(minutes=6), 4, price=1.0, step=0.0, vol=3.0)]
    insert_bars(db, "FX1", rows + mixed)
    engine.aggregate(db, "FX1", "5m", T0, T0 + HOUR, now=LATER)
    bars = active_bars(db, "FX1", "5m").set_index("ts_utc")
    assert bars.loc[T0, "open"] == 1.1 and bars.loc[T0, "source_candles"] == 5
    assert bars.loc[T0 + timedelta(minutes=5), "high"] == 2.5  # the NULL-volume bar counts


def test_volume_that_only_some_bars_carry_is_unknown_and_says_so(eurusd):
    """The partial-volume rule: a window whose usable rows only partly carry volume gets
    vol, vwap (and, on its own, trade_count) NULL, and raw keeps what was known."""
    rows = minute_bars(T0, 10)  # two windows of five bars with vol 1.0 each
    rows[2]["vol"] = rows[2]["vwap"] = None  # 00:02: no volume (a trade count)
    rows[7]["trade_count"] = None  # 00:07: volume, but no trade count
    insert_bars(eurusd, "EURUSD", rows)
    eurusd.commit()
    engine.aggregate(eurusd, "EURUSD", "5m", T0, T0 + timedelta(hours=1), now=LATER)
    eurusd.commit()
    bars = eurusd.execute("SELECT ts_utc, vol, vwap, trade_count, raw FROM derived_data_bars "
                          "ORDER BY ts_utc").fetchall()
    (_, vol0, vwap0, trades0, raw0), (_, vol1, vwap1, trades1, raw1) = bars
    assert (vol0, vwap0, trades0) == (None, None, 5)
    assert raw0 == {"partial_volume": {"source_candles": 5, "with_vol": 4, "vol_of_those": 4.0,
                                       "with_trade_count": 5, "trade_count_of_those": 5}}
    assert (vol1, trades1) == (5.0, None) and vwap1 is not None
    assert raw1["partial_volume"]["with_trade_count"] == 4
    # the missing volume arrives: the bar is complete again and its note goes
    eurusd.execute("UPDATE data_bars SET vol = 1.0, vwap = open, ingested_at = now() "
                   "WHERE ts_utc = %s", (T0 + timedelta(minutes=2),))
    eurusd.commit()
    result = engine.aggregate(eurusd, "EURUSD", "5m", T0, T0 + timedelta(hours=1), now=LATER)
    eurusd.commit()
    assert result.bars_updated == 1
    assert eurusd.execute("SELECT vol, raw FROM derived_data_bars WHERE ts_utc = %s "
                          "AND deleted_at IS NULL", (T0,)).fetchone() == (5.0, {})


WEST = timezone(timedelta(hours=-5))


@pytest.mark.parametrize(("arguments", "error", "message"), [
    ({"end": datetime.max.replace(tzinfo=UTC)}, ValueError, "end must lie in"),
    ({"end": datetime.max.replace(tzinfo=WEST)}, ValueError, "end must lie in"),
    ({"start": datetime.min.replace(tzinfo=UTC)}, ValueError, "start must lie in"),
    ({"start": datetime(2025, 7, 7)}, ValueError, "start=2025-07-07T00:00:00 has no time zone"),
    ({"end": "2025-07-08"}, TypeError, "end must be a datetime, got str"),
    ({"now": datetime.max.replace(tzinfo=UTC)}, ValueError, "now must lie in"),
    ({"timeframe": "7m"}, UnknownTimeframeError, "unknown target timeframe '7m'"),
    ({"symbol": None}, TypeError, "symbol must be a non-empty str, got None"),
    ({"symbol": ""}, TypeError, "symbol must be a non-empty str, got ''"),
    ({"derivation_version": 0}, ValueError, "derivation_version=0 must be a positive"),
    ({"derivation_version": True}, ValueError, "derivation_version=True must be a positive"),
    ({"reason": "whim"}, ValueError, "reason='whim' is not one of"),
    ({"run_id": ""}, ValueError, "run_id='' must be a run id"),
    ({"conn": None}, TypeError, "conn must be a psycopg.Connection, got NoneType"),
])
def test_every_argument_is_checked_and_named(eurusd, arguments, error, message):
    """aggregate and rebuild_range reject each bad argument with an error naming it (a year
    9999 bound used to surface as a bare OverflowError)."""
    defaults = {"conn": eurusd, "symbol": "EURUSD", "timeframe": "5m", "start": T0,
                "end": T0 + HOUR, "now": LATER}
    for function, keywords in ((engine.aggregate, {"now", "derivation_version", "reason",
                                                   "run_id"}),
                               (engine.rebuild_range, {"now", "run_id"})):
        if not arguments.keys() <= {*defaults, *keywords}:
            continue  # an argument this function does not take
        call = {**defaults, **arguments}
        positional = [call.pop(name) for name in ("conn", "symbol", "timeframe", "start", "end")]
        with pytest.raises(error, match=re.escape(message)):
            function(*positional, **call)
        eurusd.rollback()


def restated_from(conn, timeframe="1h"):
    return conn.execute(
        "SELECT source_restated_from FROM data_agg_state WHERE canonical_symbol = 'EURUSD' "
        "AND timeframe = %s", (timeframe,)).fetchone()[0]


def test_a_5m_bar_restated_behind_the_1h_cursor_is_read_again_by_a_live_1h_read(eurusd):
    """Protects contract 10 downstream (migration 022): a live run reads 1h from its cursor;
    a 5m bar restated behind that cursor (a live 5m read of its whole day that consumed a
    correction; here a late-data read of 5m alone) must still reach 1h. The writer marks the
    1h task, the next incremental 1h read starts at its range's start and restates the hour,
    the mark goes, and with nothing restated the next read is incremental again. Without the
    mark the live 1h read found nothing to do and kept the stale hour (the live-writer test's
    intermittent mismatch)."""
    db = eurusd
    insert_bars(db, "EURUSD", minute_bars(T0, 180))
    db.commit()
    spans = [engine.Span("EURUSD", AGG_START, T0 + 24 * HOUR)]

    def live(timeframe):
        batch = engine.aggregate_many(db, timeframe, spans, now=LATER, reason="catch_up",
                                      incremental=True)
        db.commit()
        return batch

    live("5m"), live("1h")
    assert cursor_of(db, "1h") == T0 + 3 * HOUR and restated_from(db) is None
    corrected = T0 + HOUR + timedelta(minutes=7)
    db.execute("UPDATE data_bars SET high = high + 0.5 WHERE canonical_symbol = 'EURUSD' "
               "AND timeframe = '1m' AND ts_utc = %s", (corrected,))
    db.commit()
    engine.aggregate_many(db, "5m", spans, now=LATER, reason="late_data")
    db.commit()
    assert restated_from(db) == T0 + HOUR + timedelta(minutes=5)
    assert restated_from(db, "5m") is None  # 5m reads data_bars: its own changes are captured

    [result] = live("1h").results
    assert result.read_from == AGG_START and result.bars_updated == 1
    five, one = active_bars(db, "EURUSD", "5m"), active_bars(db, "EURUSD", "1h")
    in_hour = five[(five.ts_utc >= T0 + HOUR) & (five.ts_utc < T0 + 2 * HOUR)]
    assert one[one.ts_utc == T0 + HOUR].high.item() == in_hour.high.max()
    assert restated_from(db) is None
    again = live("1h")
    assert again.results == [] and again.idle == {"EURUSD": T0 + 3 * HOUR}


def test_a_bar_does_not_depend_on_the_order_its_source_rows_are_read_in(db):
    """The same minutes stored in opposite heap orders, read in heap order (index scans off):
    float sums would differ in their last bits, the engine's exact sums do not."""
    rows = [bar(T0 + timedelta(minutes=i), 1.1 + i * 0.00037, vol=0.1 * (i % 7 + 1))
            for i in range(120)]
    for symbol in ("EURUSD", "GBPUSD"):
        add_symbol(db, symbol)
    sync(db)
    insert_bars(db, "EURUSD", rows)
    insert_bars(db, "GBPUSD", reversed(rows))
    db.execute("SET enable_indexscan = off")
    db.execute("SET enable_indexonlyscan = off")
    for symbol in ("EURUSD", "GBPUSD"):
        for tf in ("5m", "1h"):
            engine.aggregate(db, symbol, tf, AGG_START, T0 + 2 * HOUR, now=LATER)
    db.commit()
    columns = ["ts_utc", "open", "high", "low", "close", "vol", "vwap", "trade_count"]
    for tf in ("5m", "1h"):
        ours, theirs = (active_bars(db, s, tf)[columns] for s in ("EURUSD", "GBPUSD"))
        assert len(ours) == {"5m": 24, "1h": 2}[tf]
        assert ours.equals(theirs), tf
