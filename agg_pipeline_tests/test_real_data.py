"""The aggregation engine against bars that exchanges and a data vendor published themselves.

Each source published every timeframe on its own (see ../shared/data/README.md), so rolling
their 1m bars up with the engine and comparing with their own 5m and 1h bars is a check
against the outside world. Prices must be equal exactly, volumes within 1e-9 relative.
Match counts go to the "agg_pipeline figures" section of pytest's summary.

Where a window cannot match, the test says why and checks that reason precisely: the windows
that differ must be exactly the ones the reason predicts, computed from the CSV files alone.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
import pytest

from agg_pipeline.engine import windows
from agg_pipeline.engine.aggregate import aggregate
from agg_pipeline_tests import market_data
from agg_pipeline_tests.helpers import active_bars, add_symbol, sync
from agg_pipeline_tests.reporting import report

AGG_START = datetime(2010, 1, 1, tzinfo=UTC)  # the data is from 2011-2021
NOW = datetime(2030, 1, 1, tzinfo=UTC)  # every window of the data is final by then
FIVE, HOUR, DAY = timedelta(minutes=5), timedelta(hours=1), timedelta(days=1)
STEPS = {"5m": FIVE, "1h": HOUR}
VOL_RTOL = 1e-9
# The engine's ladders (SPEC contract 4): the fewest source bars that still give a bar.
MIN_1M_PER_5M = 3
MIN_5M_PER_1H = 7
BINANCE_2021_PAIRS = ("BTC_USDT", "ETH_USDT", "ETH_BTC")  # the folder's file name stems


@pytest.fixture(scope="module")
def data_root():
    try:
        return market_data.data_root()
    except market_data.MarketDataMissing as exc:
        problem = str(exc)
    pytest.fail(problem, pytrace=False)  # never a skip: these tests are the outside check


# ------------------------------------------------------------------------------ helpers


def register(conn, symbols, *, skip_zero_volume=False) -> None:
    for symbol in symbols:
        add_symbol(conn, symbol, skip_zero_volume=skip_zero_volume)
    result = sync(conn, agg_start=AGG_START)
    assert not result.rejected, result.rejected


def roll_up(conn, symbol, bars_1m, timeframes=("5m", "1h")) -> dict:
    """Materialise every window of the days the 1m bars cover, 5m before 1h."""
    first, last = bars_1m.ts_utc.iloc[0].to_pydatetime(), bars_1m.ts_utc.iloc[-1].to_pydatetime()
    start, end = windows.floor(first, DAY), windows.floor(last, DAY) + DAY
    results = {tf: aggregate(conn, symbol, tf, start, end, now=NOW) for tf in timeframes}
    conn.commit()
    for result in results.values():
        assert result.source_rows_invalid == 0 and result.source_rows_partial == 0
    return results


def stored(conn, symbol, timeframe) -> pd.DataFrame:
    """Active derived bars, indexed by window start (UTC)."""
    bars = active_bars(conn, symbol, timeframe)
    bars.index = pd.DatetimeIndex(pd.to_datetime(bars.pop("ts_utc"), utc=True), name="ts_utc")
    return bars


def indexed(bars: pd.DataFrame) -> pd.DataFrame:
    return bars.set_index(pd.DatetimeIndex(bars.ts_utc, name="ts_utc")).drop(columns="ts_utc")


def same_volume(a, b) -> np.ndarray:
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return np.abs(a - b) <= VOL_RTOL * np.maximum(np.abs(a), np.abs(b))


def compare(ours: pd.DataFrame, theirs: pd.DataFrame, *, volume: bool = True) -> pd.DataFrame:
    """Per window present on both sides: which fields agree (prices exactly, volume within
    VOL_RTOL relative), and `match` when all of them do."""
    both = ours.join(theirs, how="inner", lsuffix="_ours", rsuffix="_theirs")
    fields = [*market_data.PRICE_FIELDS, *(("vol",) if volume else ())]
    out = pd.DataFrame(index=both.index)
    for field in fields:
        a, b = both[f"{field}_ours"], both[f"{field}_theirs"]
        out[field] = same_volume(a, b) if field == "vol" else (a.to_numpy() == b.to_numpy())
    out["match"] = out[fields].all(axis=1)
    return out


def windows_of(bars: pd.DataFrame, step: timedelta) -> pd.Series:
    return bars.ts_utc.dt.floor(step)


def pandas_rollup(bars: pd.DataFrame, step: timedelta) -> pd.DataFrame:
    """An independent roll-up of plain bars (all of them), for explaining differences."""
    grouped = bars.groupby(windows_of(bars, step).rename("window"), sort=True)
    out = grouped.agg(open=("open", "first"), high=("high", "max"), low=("low", "min"),
                      close=("close", "last"), vol=("vol", "sum"), n=("open", "size"))
    out.index = pd.DatetimeIndex(out.index, name="ts_utc")
    return out


def inside(index: pd.DatetimeIndex, step: timedelta, lo, hi) -> np.ndarray:
    """Windows [t, t+step) lying wholly inside [lo, hi)."""
    return np.asarray((index >= lo) & (index + step <= hi))


def expected_stored(bars_1m: pd.DataFrame) -> tuple[pd.Index, pd.Index, pd.Series]:
    """From the CSV alone: the 5m windows the ladder keeps, the 1h windows it keeps (from
    those 5m windows), and the 1m row count of every 5m window holding rows."""
    per_5m = bars_1m.groupby(windows_of(bars_1m, FIVE)).size()
    kept_5m = per_5m.index[per_5m >= MIN_1M_PER_5M]
    per_1h = pd.Series(1, index=kept_5m).groupby(kept_5m.floor(HOUR)).size()
    kept_1h = per_1h.index[per_1h >= MIN_5M_PER_1H]
    return pd.DatetimeIndex(kept_5m), pd.DatetimeIndex(kept_1h), per_5m


def share(part: int, whole: int) -> str:
    return f"{part}/{whole} ({100 * part / whole:.1f}%)" if whole else f"{part}/0"


# ------------------------------------------------------------- Binance 2021 (tooyipjee)


@pytest.mark.parametrize("pair", BINANCE_2021_PAIRS)
def test_binance_2021_5m_matches_exchange_except_known_mismatches(data_root, db, pair):
    folder = data_root / market_data.BINANCE_2021
    bars = market_data.read_exchange_csv(folder / f"{pair}-1m.csv")
    exchange = indexed(market_data.read_exchange_csv(folder / f"{pair}-5m.csv"))
    known_all = pd.read_csv(folder / "known_mismatches_1m_vs_5m.csv",
                            float_precision="round_trip")
    assert set(known_all.pair) <= set(BINANCE_2021_PAIRS), set(known_all.pair)
    assert pair in set(known_all.pair), f"known_mismatches_1m_vs_5m.csv lists nothing for {pair}"
    known = known_all[known_all.pair == pair].copy()
    known.index = pd.DatetimeIndex(pd.to_datetime(known.pop("window_start"), utc=True))

    symbol = f"BN-{pair}"
    register(db, [symbol])
    market_data.load_1m(db, symbol, bars)
    result = roll_up(db, symbol, bars, timeframes=("5m",))["5m"]
    ours = stored(db, symbol, "5m")

    # the ladder on real data: exactly the windows with >= 3 of 5 minutes are stored
    kept_5m, _, per_5m = expected_stored(bars)
    assert ours.index.equals(kept_5m)
    assert result.windows_skipped == int((per_5m < MIN_1M_PER_5M).sum())
    assert (ours.source_candles.to_numpy() == per_5m[kept_5m].to_numpy()).all()

    # stored windows the exchange has no bar for lie outside the exchange file's time range
    no_exchange = ours.index.difference(exchange.index)
    assert ((no_exchange < exchange.index[0]) | (no_exchange > exchange.index[-1])).all()
    # exchange bars inside the 1m file's span that we do not store: too few 1m rows there
    lo, hi = market_data.span(bars)
    exchange_in_span = exchange.index[inside(exchange.index, FIVE, lo, hi)]
    declined = exchange_in_span.difference(ours.index)
    assert (per_5m.reindex(declined, fill_value=0) < MIN_1M_PER_5M).all()

    # every compared window matches, except exactly the listed ones
    cmp = compare(ours, exchange)
    mismatched = cmp.index[~cmp.match]
    assert set(mismatched) == set(known.index), (
        f"unlisted mismatches: {sorted(set(mismatched) - set(known.index))}; "
        f"listed but matching: {sorted(set(known.index) - set(mismatched))}")
    # ... and they differ exactly as listed: our bar is the listed roll-up, the exchange's bar
    # the listed 5m bar, and the fields that differ are the ones the list shows differing
    listed_ours = known.rename(columns=lambda c: c.removeprefix("rollup_")).rename(
        columns={"volume": "vol"})
    listed_exchange = known.rename(columns=lambda c: c.removeprefix("exchange5m_")).rename(
        columns={"volume": "vol"})
    fields = [*market_data.PRICE_FIELDS, "vol"]
    ours_vs_list = compare(ours, listed_ours[fields])
    exchange_vs_list = compare(exchange, listed_exchange[fields])
    assert len(ours_vs_list) == len(known) and ours_vs_list.match.all()
    assert len(exchange_vs_list) == len(known) and exchange_vs_list.match.all()
    listed_diff = compare(listed_ours[fields], listed_exchange[fields])
    assert cmp.loc[known.index, fields].equals(listed_diff.loc[known.index, fields])
    # the README's account of them: the exchange's 5m volume exceeds the 1m sum
    assert (exchange.loc[known.index, "vol"] > ours.loc[known.index, "vol"]).all()

    matched = int(cmp.match.sum())
    assert matched == len(cmp) - len(known) and matched > 0
    report(f"binance_2021 {pair} 5m: {matched}/{len(cmp)} compared windows match, "
           f"{len(known)} listed known mismatches differ exactly as listed; stored without an "
           f"exchange bar (file edges): {len(no_exchange)}; exchange bars declined by the "
           f"ladder (<3 1m rows): {len(declined)}")

    # SPEC contract 9 on a month of real data: a second run writes nothing
    again = roll_up(db, symbol, bars, timeframes=("5m",))["5m"]
    assert again.rows_written == 0 and again.bars_unchanged == len(ours)


# ------------------------------------------------------------------- OctoBot: Binance


def binance_zero_volume_fillers(bars: pd.DataFrame) -> pd.Series:
    """Zero-volume 1m bars; asserts they are Binance's no-trade fillers (open = high = low =
    close = the previous bar's close)."""
    zero = bars.vol == 0
    flat = (bars.open == bars.high) & (bars.high == bars.low) & (bars.low == bars.close)
    previous_close = bars.close.shift()
    carried = (bars.close == previous_close) | previous_close.isna()
    assert (flat & carried)[zero].all(), bars[zero & ~(flat & carried)]
    return zero


def test_octobot_binance_needs_the_filler_setting_then_matches_100pct(data_root, db):
    sets = market_data.octobot_sets("binance")
    assert sets, "_index.csv lists no Binance collection with 1m candles"
    register(db, [s.symbol for s in sets])  # the filler setting off, as by default
    files = {}
    for s in sets:
        bars = s.bars("1m")
        files[s.symbol] = {"1m": bars, "5m": indexed(s.bars("5m")), "1h": indexed(s.bars("1h")),
                           "zero": binance_zero_volume_fillers(bars)}
        market_data.load_1m(db, s.symbol, bars)

    def evaluate(label: str) -> dict:
        outcome = {}
        for s in sets:
            f = files[s.symbol]
            lo, hi = market_data.span(f["1m"])
            for tf, step in STEPS.items():
                ours, exchange = stored(db, s.symbol, tf), f[tf]
                comparable = exchange.index[inside(exchange.index, step, lo, hi)]
                # Binance 1m files miss no minute of a comparable window: all are stored
                assert comparable.difference(ours.index).empty, (label, s.label, tf)
                edge = ours.index.difference(comparable)
                assert not inside(edge, step, lo, hi).any()  # only windows at the file edges
                cmp = compare(ours.loc[comparable], exchange.loc[comparable])
                outcome[s.symbol, tf] = (cmp, ours, len(edge))
        return outcome

    for s in sets:
        roll_up(db, s.symbol, files[s.symbol]["1m"])
    naive = evaluate("filler setting off")

    # the naive roll-up differs only where 1m fillers sit in the window, and it does differ
    for s in sets:
        f = files[s.symbol]
        for tf, step in STEPS.items():
            cmp = naive[s.symbol, tf][0]
            with_fillers = set(windows_of(f["1m"], step)[f["zero"]])
            assert set(cmp.index[~cmp.match]) <= with_fillers, (s.label, tf)
    powr = [s for s in sets if s.pair == "POWR/BTC"]
    assert powr, "_index.csv lists no POWR/BTC collection"
    powr_5m = naive[powr[0].symbol, "5m"][0]
    assert (~powr_5m.match).sum() > 0
    for s in sets:
        line = ", ".join(
            f"{tf} {share(int((~naive[s.symbol, tf][0].match).sum()), len(naive[s.symbol, tf][0]))}"
            for tf in STEPS)
        report(f"octobot {s.label}: {int(files[s.symbol]['zero'].sum())} zero-volume 1m fillers; "
               f"naive roll-up (setting off) mismatches: {line}")

    # the operator switches the setting on; re-materialising updates exactly the bars whose
    # values change, and no window starts or stops qualifying (counts are unaffected)
    db.execute("UPDATE core_asset_registry_all SET agg_skip_zero_volume_ohlc = true "
               "WHERE canonical_symbol = ANY(%s)", ([s.symbol for s in sets],))
    db.commit()
    for s in sets:
        before = {tf: naive[s.symbol, tf][1] for tf in STEPS}
        results = roll_up(db, s.symbol, files[s.symbol]["1m"])
        for tf in STEPS:
            after = stored(db, s.symbol, tf)
            assert after.index.equals(before[tf].index)
            cols = [*market_data.PRICE_FIELDS, "vol"]
            changed = int((~compare(after[cols], before[tf][cols]).match).sum())
            assert results[tf].bars_inserted == 0 and results[tf].bars_soft_deleted == 0
            assert results[tf].bars_updated == changed, (s.label, tf)
    filler = evaluate("filler setting on")

    totals = {tf: [0, 0, 0] for tf in STEPS}
    for s in sets:
        for tf in STEPS:
            cmp, _, edge = filler[s.symbol, tf]
            assert cmp.match.all(), (s.label, tf, cmp[~cmp.match])
            totals[tf][0] += int(cmp.match.sum())
            totals[tf][1] += len(cmp)
            totals[tf][2] += edge
    assert all(total[1] > 0 for total in totals.values())
    report(f"octobot binance, filler setting on, {len(sets)} pairs: "
           + "; ".join(f"{tf} {share(m, n)} comparable windows match ({e} stored edge windows "
                       "only partly covered by the 1m file, not compared)"
                       for tf, (m, n, e) in totals.items()))
    report(f"octobot binance POWR/BTC 1m->5m naive mismatch share: "
           f"{share(int((~powr_5m.match).sum()), len(powr_5m))}")


# ------------------------------------------------------------------- OctoBot: Bittrex


def test_octobot_bittrex_5m_matches_and_1h_differs_exactly_where_the_ladder_drops_5m(
        data_root, db):
    """Bittrex omits no-trade minutes, and has no 5m/1h bar for a window without trades.

    5m: every window we store matches Bittrex's 5m bar. Windows with 1-2 trading minutes have
    a Bittrex bar but our ladder (>= 3 of 5) declines them; they are counted.
    1h: Bittrex builds an hour from all its trades; we build it from our stored 5m bars only
    (SPEC contract 3), so an hour holding a declined 5m window lacks those trades and cannot
    match: its volume falls short by exactly the declined windows' volume. Every other stored
    hour matches. The exact set of such hours is computed from the CSV and asserted.
    """
    sets = market_data.octobot_sets("bittrex")
    assert sets, "_index.csv lists no Bittrex collection with 1m candles"
    register(db, [s.symbol for s in sets])
    totals = pd.Series(0, index=["5m match", "5m stored", "5m declined", "1h match",
                                 "1h stored", "1h short", "1h declined"])
    for s in sets:
        bars = s.bars("1m")
        x5, x1 = indexed(s.bars("5m")), indexed(s.bars("1h"))
        assert (bars.vol > 0).all()  # no fillers: no-trade minutes are left out
        market_data.load_1m(db, s.symbol, bars)
        results = roll_up(db, s.symbol, bars)
        ours5, ours1 = stored(db, s.symbol, "5m"), stored(db, s.symbol, "1h")
        kept_5m, kept_1h, per_5m = expected_stored(bars)
        assert ours5.index.equals(kept_5m) and ours1.index.equals(kept_1h)
        declined_5m = per_5m.index[per_5m < MIN_1M_PER_5M]
        assert results["5m"].windows_skipped == len(declined_5m)

        # 5m: every stored window has a Bittrex bar and matches it
        assert ours5.index.difference(x5.index).empty
        cmp5 = compare(ours5, x5)
        assert cmp5.match.all(), cmp5[~cmp5.match]

        # 1h: Bittrex's hour is the roll-up of all the hour's 1m bars (whole hours of the file)
        lo, hi = market_data.span(bars)
        direct = pandas_rollup(bars, HOUR)
        whole = direct.index[inside(direct.index, HOUR, lo, hi)]
        assert whole.difference(x1.index).empty
        assert compare(direct.loc[whole], x1.loc[whole]).match.all()

        # ours: stored hours without a declined 5m window match; the others all differ
        assert ours1.index.difference(x1.index).empty
        cmp1 = compare(ours1, x1)
        in_declined = bars.ts_utc.dt.floor(FIVE).isin(declined_5m).to_numpy()
        declined_vol = bars[in_declined].groupby(windows_of(bars[in_declined], HOUR)).vol.sum()
        short = ours1.index.intersection(declined_vol.index)
        clean = ours1.index.difference(short)
        assert cmp1.loc[clean].match.all(), cmp1.loc[clean][~cmp1.loc[clean].match]
        assert not cmp1.loc[short].match.any()
        # ... by the declined windows' volume exactly (an hour that starts before the file's
        # first row also holds earlier trades the file lacks: by at least that much)
        theirs_vol = x1.loc[short, "vol"]
        expected_vol = ours1.loc[short, "vol"] + declined_vol.loc[short]
        from_start = np.asarray(short >= lo)
        assert same_volume(theirs_vol[from_start], expected_vol[from_start]).all()
        assert (theirs_vol[~from_start] >= expected_vol[~from_start] * (1 - VOL_RTOL)).all()

        figures = pd.Series({
            "5m match": int(cmp5.match.sum()), "5m stored": len(ours5),
            "5m declined": len(declined_5m), "1h match": int(cmp1.match.sum()),
            "1h stored": len(ours1), "1h short": len(short),
            "1h declined": len(direct) - len(ours1)})
        totals += figures
        report(f"octobot {s.label}: " + bittrex_figures(figures)
               + f" ({int((~from_start).sum())} of the short hours start before the 1m file)")
    report(f"octobot bittrex, {len(sets)} pairs: " + bittrex_figures(totals))


def bittrex_figures(f: pd.Series) -> str:
    return (f"5m {share(f['5m match'], f['5m stored'])} stored windows match, "
            f"{f['5m declined']} windows with 1-2 trading minutes declined by the ladder; "
            f"1h {share(f['1h match'], f['1h stored'])} stored hours match, the other "
            f"{f['1h short']} hold a declined 5m window and fall short by its volume, "
            f"{f['1h declined']} hours with trades not stored (<7 stored 5m bars)")


# ----------------------------------------------------------------------- Lean FXCM EURUSD


def test_lean_eurusd_bid_rolls_up_to_vendor_hours(data_root, db):
    """Lean's FXCM EURUSD bid minutes -> 5m -> 1h against Lean's own hour bars.

    The files' clock is Lean's FXCM data time zone, UTC-05 without daylight saving: checked
    below by the Friday close. The vendor builds an hour from all its minutes; we build it
    from the 5m bars our ladder keeps, so an hour can only differ where a 5m window with 1-2
    minutes was declined, and then exactly as the roll-up without those minutes says.
    """
    folder = data_root / market_data.LEAN
    bars = market_data.read_lean_quotes(folder / "EURUSD-1m-quote.csv", "bid")
    vendor = indexed(market_data.read_lean_quotes(folder / "EURUSD-1h-quote.csv", "bid"))
    new_york = bars.ts_utc.dt.tz_convert(ZoneInfo("America/New_York"))
    # every weekly close in the file (a Friday bar followed by a weekend-long gap: the file's
    # date ranges end elsewhere with gaps of months) is the 16:59 minute in New York, the FX
    # market's 17:00 close: the UTC-05 reading is right (a UTC reading would close the week
    # at 11:59 New York time, an America/New_York reading at 15:59)
    gap = bars.ts_utc.shift(-1) - bars.ts_utc
    gap_follows = ((gap > DAY) & (gap < 3 * DAY)).to_numpy()
    weekly_closes = new_york[gap_follows & (new_york.dt.dayofweek == 4).to_numpy()]
    assert not weekly_closes.empty
    assert (weekly_closes.dt.strftime("%H:%M") == "16:59").all(), weekly_closes

    symbol = "EURUSD-FXCM-BID"
    register(db, [symbol])
    market_data.load_1m(db, symbol, bars)
    results = roll_up(db, symbol, bars)
    ours5, ours1 = stored(db, symbol, "5m"), stored(db, symbol, "1h")
    kept_5m, kept_1h, per_5m = expected_stored(bars)
    assert ours5.index.equals(kept_5m) and ours1.index.equals(kept_1h)
    assert results["5m"].windows_skipped == int((per_5m < MIN_1M_PER_5M).sum())
    for frame in (ours5, ours1):
        assert frame.vol.isna().all() and frame.vwap.isna().all()  # FX: no volume anywhere

    # every vendor hour gets a bar, and we store no hour the vendor lacks
    assert ours1.index.equals(vendor.index)
    # the vendor's hour is the roll-up of all the hour's minutes
    direct = pandas_rollup(bars.assign(vol=0.0), HOUR)
    assert compare(direct.loc[vendor.index], vendor, volume=False).match.all()
    # ours is the roll-up of the minutes in the 5m windows the ladder keeps
    kept_rows = bars[bars.ts_utc.dt.floor(FIVE).isin(kept_5m)]
    laddered = pandas_rollup(kept_rows.assign(vol=0.0), HOUR)
    assert compare(ours1, laddered, volume=False).match.all()

    cmp = compare(ours1, vendor, volume=False)
    declined_hours = per_5m.index[per_5m < MIN_1M_PER_5M].floor(HOUR).unique()
    predicted = compare(laddered.loc[vendor.index], direct.loc[vendor.index], volume=False)
    assert set(cmp.index[~cmp.match]) == set(predicted.index[~predicted.match])
    assert set(cmp.index[~cmp.match]) <= set(declined_hours)
    mismatched = cmp.index[~cmp.match]
    report(f"lean EURUSD bid 1m->5m->1h: {share(int(cmp.match.sum()), len(cmp))} vendor hours "
           f"match exactly; {results['5m'].windows_skipped} 5m windows with 1-2 minutes "
           f"declined (in {len(declined_hours)} hours); {len(mismatched)} hours differ only "
           f"because of them: {', '.join(f'{t:%Y-%m-%d %H:%M}Z' for t in mismatched)}")


def test_lean_eurusd_filler_setting_changes_nothing_without_volume(data_root, db):
    """The filler setting leaves out vol = 0 bars only when the window holds a bar with
    vol > 0, otherwise all bars are used. FX bars carry no volume (NULL): switched on for an
    FX symbol by mistake, the setting must change nothing."""
    bars = market_data.read_lean_quotes(
        data_root / market_data.LEAN / "EURUSD-1m-quote.csv", "bid")
    plain, with_setting = "EURUSD-FXCM-BID", "EURUSD-FXCM-BID-SKIP0"
    add_symbol(db, plain)
    add_symbol(db, with_setting, skip_zero_volume=True)
    sync(db, agg_start=AGG_START)
    for symbol in (plain, with_setting):
        market_data.load_1m(db, symbol, bars)
        roll_up(db, symbol, bars)
    for tf in STEPS:
        ours = stored(db, with_setting, tf)
        assert not ours.empty and ours.equals(stored(db, plain, tf))
