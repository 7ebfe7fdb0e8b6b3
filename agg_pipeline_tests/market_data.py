"""Real market data from `<repo root>/../shared/data` (see its README.md): CSV loaders and a
bulk loader into data_bars.

Every loader returns a DataFrame with the columns ts_utc (tz-aware UTC, the bar's open time),
open, high, low, close, vol, sorted by ts_utc with unique timestamps. Prices are parsed with
round-trip precision so that "equal" means bit-for-bit equal to the decimal in the file.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pandas as pd
import psycopg

REPO_ROOT = Path(__file__).resolve().parent.parent
DATA_ROOT = REPO_ROOT.parent / "shared" / "data"

BINANCE_2021 = "binance_2021_tooyipjee"
OCTOBOT = "octobot_binance_bittrex"
LEAN = "lean_fxcm_eurusd"

BAR_FIELDS = ("open", "high", "low", "close", "vol")
PRICE_FIELDS = ("open", "high", "low", "close")

# Lean stores FXCM forex in the data time zone "UTC-05" (a fixed offset, no daylight saving):
# the files' Friday sessions end at 15:59, which is 20:59 UTC = 16:59 New York (EDT), the
# weekly FX close. test_real_data checks that reading.
LEAN_FXCM_DATA_TZ = timezone(timedelta(hours=-5), "UTC-05")

COPY_COLUMNS = ("canonical_symbol", "timeframe", "ts_utc", "open", "high", "low", "close", "vol",
                "is_partial", "source", "ingested_at", "raw")


class MarketDataMissing(FileNotFoundError):
    pass


def data_root() -> Path:
    """The shared data folder; a clear error when it is not there."""
    if not (DATA_ROOT / "README.md").is_file():
        raise MarketDataMissing(
            f"real market data not found at {DATA_ROOT} (expected <repo root>/../shared/data "
            f"with README.md and the folders {BINANCE_2021}, {OCTOBOT}, {LEAN}); the real-data "
            "tests need it and are never skipped"
        )
    return DATA_ROOT


def _require(path: Path) -> Path:
    if not path.is_file():
        raise MarketDataMissing(f"market data file missing: {path}")
    return path


def _finish(frame: pd.DataFrame, path: Path) -> pd.DataFrame:
    frame = frame[["ts_utc", *BAR_FIELDS]].reset_index(drop=True)
    if frame.empty:
        raise ValueError(f"{path}: no rows")
    if not frame.ts_utc.is_monotonic_increasing or frame.ts_utc.duplicated().any():
        raise ValueError(f"{path}: timestamps are not strictly increasing")
    return frame


def read_exchange_csv(path: Path) -> pd.DataFrame:
    """A Binance/Bittrex CSV: date (UTC open time, with an explicit offset), open, high, low,
    close, volume."""
    raw = pd.read_csv(_require(path), dtype={"date": str}, float_precision="round_trip")
    expected = ["date", "open", "high", "low", "close", "volume"]
    if list(raw.columns) != expected:
        raise ValueError(f"{path}: columns {list(raw.columns)}, expected {expected}")
    stamps = raw["date"]
    if not stamps.str.contains(r"(?:Z|[+-]00:00)$").all():
        raise ValueError(f"{path}: timestamps without an explicit UTC offset")
    raw["ts_utc"] = pd.to_datetime(stamps, utc=True, format="ISO8601")
    raw = raw.rename(columns={"volume": "vol"})
    return _finish(raw, path)


def read_lean_quotes(path: Path, side: str = "bid") -> pd.DataFrame:
    """A Lean FXCM quote CSV (date in the data time zone, bid_*/ask_* OHLC, sizes always 0):
    one side as bars without volume (vol = None)."""
    raw = pd.read_csv(_require(path), dtype={"date": str}, float_precision="round_trip")
    wanted = ["date", *(f"{side}_{f}" for f in PRICE_FIELDS)]
    missing = [c for c in wanted if c not in raw.columns]
    if missing:
        raise ValueError(f"{path}: missing columns {missing}")
    local = pd.to_datetime(raw["date"], format="%Y-%m-%dT%H:%M:%S")
    raw["ts_utc"] = local.dt.tz_localize(LEAN_FXCM_DATA_TZ).dt.tz_convert(UTC)
    raw = raw.rename(columns={f"{side}_{f}": f for f in PRICE_FIELDS})
    raw["vol"] = None
    return _finish(raw, path)


# ---------------------------------------------------------------------------------- OctoBot


@dataclass(frozen=True)
class OctobotSet:
    """One collection of one exchange/pair: files per timeframe, last candle not yet dropped."""

    exchange: str
    pair: str  # "ADA/BTC"
    collected_at: pd.Timestamp
    files: dict[str, Path]  # timeframe -> csv

    @property
    def symbol(self) -> str:
        """A registry symbol: exchange, pair and collection (one pair is collected twice)."""
        short = {"binance": "BN", "bittrex": "BX"}[self.exchange]
        return f"{short}-{self.pair.replace('/', '-')}-{int(self.collected_at.timestamp())}"

    @property
    def label(self) -> str:
        return f"{self.exchange} {self.pair} ({self.collected_at:%Y-%m-%d})"

    def bars(self, timeframe: str) -> pd.DataFrame:
        """The file's bars without its last candle (it may be unfinished)."""
        return read_exchange_csv(self.files[timeframe]).iloc[:-1].reset_index(drop=True)


def octobot_sets(exchange: str, timeframes: tuple[str, ...] = ("1m", "5m", "1h")
                 ) -> list[OctobotSet]:
    """The collections `_index.csv` lists for one exchange with 1m candles, each with the CSVs
    of `timeframes` (file name: <exchange>_<BASE>-<QUOTE>_<tf>_<collected_at epoch s>.csv).
    Collections without 1m candles (the index lists a 4h-only one) have nothing to roll up."""
    folder = data_root() / OCTOBOT
    index = pd.read_csv(_require(folder / "_index.csv"), dtype=str)
    index = index[index.exchange == exchange]
    index = index.assign(collected=pd.to_datetime(index.collected_at, utc=True, format="ISO8601"))
    sets = []
    for (pair, collected), rows in index.groupby(["symbol", "collected"], sort=True):
        listed = set(rows.tf)
        if "1m" not in listed:
            continue
        if not set(timeframes) <= listed:
            raise ValueError(f"_index.csv: {exchange} {pair} {collected} lacks "
                             f"{sorted(set(timeframes) - listed)}")
        stem = f"{exchange}_{pair.replace('/', '-')}"
        files = {tf: _require(folder / f"{stem}_{tf}_{int(collected.timestamp())}.csv")
                 for tf in timeframes}
        sets.append(OctobotSet(exchange, pair, collected, files))
    return sets


# ----------------------------------------------------------------------------- bulk loading


def _copy_rows(symbol: str, bars: pd.DataFrame, source: str) -> Iterator[tuple]:
    ingest_lag = timedelta(seconds=61)
    for ts, o, h, low, c, v in bars[["ts_utc", *BAR_FIELDS]].itertuples(index=False, name=None):
        ts = ts.to_pydatetime()
        vol = None if v is None or pd.isna(v) else float(v)
        yield (symbol, "1m", ts, float(o), float(h), float(low), float(c), vol, False, source,
               ts + ingest_lag, "{}")


def load_1m(conn: psycopg.Connection, symbol: str, bars: pd.DataFrame, *,
            source: str = "real_data") -> int:
    """COPY 1m bars into data_bars (final, ingested 61 s after their open)."""
    count = 0
    with conn.cursor() as cur, cur.copy(
        f"COPY data_bars ({', '.join(COPY_COLUMNS)}) FROM STDIN"
    ) as copy:
        for row in _copy_rows(symbol, bars, source):
            copy.write_row(row)
            count += 1
    return count


def span(bars: pd.DataFrame, step: timedelta = timedelta(minutes=1)) -> tuple[datetime, datetime]:
    """[first bar open, last bar end) of a bar file."""
    return bars.ts_utc.iloc[0].to_pydatetime(), bars.ts_utc.iloc[-1].to_pydatetime() + step
