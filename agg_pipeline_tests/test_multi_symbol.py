"""One statement for many symbols (aggregate_many) gives, symbol by symbol, what the engine
gives each symbol on its own: the same bars, soft deletes, revisions (change and reason),
cursors, day fingerprints and per-day counts (SPEC contract 14), through first builds, late
rows, corrections and deletions, full and incremental reads, full reads in one statement or
one per day. Each symbol exists twice, as
"<name>.M" built with its fellows in one call and "<name>.S" built alone, from the same rows;
the comparison is between the twins."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agg_pipeline.engine import aggregate as engine
from agg_pipeline_tests.helpers import add_symbol, bar, insert_bars, sync

T0 = datetime(2025, 7, 7, tzinfo=UTC)  # a Monday
DAY = timedelta(days=1)
MINUTE = timedelta(minutes=1)
TIMEFRAMES = ("5m", "15m", "1h")
SCALE = float(os.environ.get("AGG_ORACLE_SCALE", "1"))

rows_of_a_symbol = st.lists(
    st.tuples(st.integers(0, 2 * 1440 - 1),  # the minute, over two days
              st.sampled_from(["ok", "ok", "ok", "ok", "invalid", "partial", "no volume"])),
    min_size=0, max_size=400, unique_by=lambda r: r[0])
changes_of_a_symbol = st.lists(
    st.tuples(st.sampled_from(["late row", "correct", "delete"]), st.integers(0, 2 * 1440 - 1)),
    max_size=6)
scenario = st.lists(st.tuples(rows_of_a_symbol, changes_of_a_symbol), min_size=1, max_size=5)


def source_bar(minute: int, kind: str, landed: datetime | None = None) -> dict:
    price = 1.1 + (minute % 97) * 0.0001
    extra = {"high": price - 0.01} if kind == "invalid" else (
        {"is_partial": True} if kind == "partial" else {})
    return bar(T0 + minute * MINUTE, price, vol=None if kind == "no volume" else 2.0,
               ingested_at=landed, **extra)


def build(db, symbols: list[str], now: datetime, *, together: bool, incremental: bool,
          reason: str) -> dict[str, dict[str, engine.AggregationResult]]:
    """Every timeframe of `symbols` over both days: one call for all, or one each."""
    results: dict[str, dict[str, engine.AggregationResult]] = {s: {} for s in symbols}
    groups = [symbols] if together else [[s] for s in symbols]
    for tf in TIMEFRAMES:
        for group in groups:
            batch = engine.aggregate_many(
                db, tf, [engine.Span(s, T0, T0 + 2 * DAY) for s in group], now=now,
                reason=reason, run_id=f"run-{reason}", incremental=incremental)
            assert not batch.failed, batch.failed
            for result in batch.results:
                results[result.symbol][tf] = result
            for symbol in batch.idle:
                results[symbol][tf] = None
    db.commit()
    return results


def stored(db, symbol: str) -> dict[str, list]:
    """Everything the engine keeps of a symbol, without ids and clocks."""
    def rows(query: str) -> list:
        return [tuple(r) for r in db.execute(query, (symbol,)).fetchall()]
    found = {
        "bars": rows("SELECT timeframe, ts_utc, open, high, low, close, vol, vwap, trade_count, "
                     "source_candles, quality_score, is_partial, deleted_at IS NULL, raw "
                     "FROM derived_data_bars WHERE canonical_symbol = %s ORDER BY 1, 2, 13"),
        "revisions": rows("SELECT timeframe, ts_utc, change, reason, open, close, source_candles "
                          "FROM derived_bar_revisions WHERE canonical_symbol = %s "
                          "ORDER BY 1, 2, valid_to"),
        "cursors": rows("SELECT timeframe, last_agg_bar_ts_utc, total_bars_created "
                        "FROM data_agg_state WHERE canonical_symbol = %s ORDER BY 1"),
        "days": rows("SELECT timeframe, day, covered_from, final_through, source_rows, "
                     "source_ingested_max, source_ingested_sum, source_removed "
                     "FROM data_agg_source_days WHERE canonical_symbol = %s ORDER BY 1, 2"),
    }
    db.rollback()
    return found


def counts(results: dict) -> dict:
    return {tf: None if r is None else (r.counts(), r.cursor_before, r.cursor_after,
                                        {d: c for d, c in r.days.items()})
            for tf, r in results.items()}


def assert_twins_equal(db, names: list[str], together: dict, alone: dict) -> None:
    for name in names:
        assert stored(db, f"{name}.M") == stored(db, f"{name}.S"), name
        assert counts(together[f"{name}.M"]) == counts(alone[f"{name}.S"]), name


@settings(max_examples=max(1, round(25 * SCALE)), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(symbols=scenario, cut=st.integers(60, 2 * 1440), incremental=st.booleans(),
       chunked=st.booleans())
def test_many_symbols_in_one_statement_equal_each_symbol_alone(db, monkeypatch, symbols, cut,
                                                               incremental, chunked):
    # chunked: a full read of many symbols runs as one statement per UTC day (as a batch
    # of ~300 symbols does with the default budget), one symbol alone as one statement
    monkeypatch.setattr(engine, "CHUNK_SOURCE_ROWS", 1 if chunked else 10**9)
    db.execute("TRUNCATE data_bars, derived_data_bars, derived_bar_revisions, "
               "data_agg_source_days, data_agg_source_changes, data_agg_state, "
               "core_asset_registry_all RESTART IDENTITY CASCADE")
    names = [f"S{i}" for i in range(len(symbols))]
    for name, (rows, _) in zip(names, symbols, strict=True):
        for twin in (f"{name}.M", f"{name}.S"):
            add_symbol(db, twin, calc_15m=True)
            insert_bars(db, twin, [source_bar(m, kind) for m, kind in rows])
    sync(db, agg_start=T0)
    together_names = [f"{n}.M" for n in names]
    alone_names = [f"{n}.S" for n in names]

    # a live day up to `cut` minutes, then the rest: full or incremental reads
    for now, reason in ((T0 + cut * MINUTE + timedelta(seconds=5), "catch_up"),
                        (T0 + 2 * DAY + timedelta(minutes=2), "catch_up")):
        together = build(db, together_names, now, together=True, incremental=incremental,
                         reason=reason)
        alone = build(db, alone_names, now, together=False, incremental=incremental,
                      reason=reason)
        assert_twins_equal(db, names, together, alone)

    # late rows, corrections and deletions, then the late-data path's full re-read
    landed = T0 + 2 * DAY + timedelta(minutes=30)
    for name, (_, changes) in zip(names, symbols, strict=True):
        for twin in (f"{name}.M", f"{name}.S"):
            for kind, minute in changes:
                if kind == "delete":
                    db.execute("DELETE FROM data_bars WHERE canonical_symbol = %s AND ts_utc = %s",
                               (twin, T0 + minute * MINUTE))
                else:
                    row = source_bar(minute, "ok", landed)
                    if kind == "correct":
                        row = {**row, "close": row["low"]}
                    insert_bars(db, twin, [row], upsert=True)
    db.commit()
    now = landed + timedelta(minutes=1)
    together = build(db, together_names, now, together=True, incremental=False,
                     reason="late_data")
    alone = build(db, alone_names, now, together=False, incremental=False, reason="late_data")
    assert_twins_equal(db, names, together, alone)
