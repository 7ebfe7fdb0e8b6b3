"""Timeframes as data (issue 22): the ladder and the calendars come from one config file,
validated with errors naming the entry; a timeframe is added by config alone; the registry
switches optional timeframes per symbol without a column per timeframe; a ladder cannot change
under the same derivation version."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import dagster as dg
import pytest

from agg_pipeline.defs.config import PipelineConfig
from agg_pipeline.defs.factory import build_definitions
from agg_pipeline.defs.partitions import SYMBOLS_PARTITIONS_NAME
from agg_pipeline.engine import aggregate as engine
from agg_pipeline.engine import tasks, timeframes
from agg_pipeline_tests import oracle
from agg_pipeline_tests.helpers import (
    SHIPPED_TIMEFRAMES,
    T0,
    add_symbol,
    config_text,
    insert_bars,
    load_config,
    minute_bars,
    sync,
)
from agg_pipeline_tests.stored import assert_active_bars_equal, derived_rows, source_rows

# builds Definitions in this process (conftest.no_defs_state_storage)
pytestmark = pytest.mark.usefixtures("no_defs_state_storage")

SHIPPED = SHIPPED_TIMEFRAMES
THIRTY = """
[timeframes.30m]
source = "5m"
mandatory = false
ladder_of = "1h"  # of 6 expected: 6 -> 2, 5 -> 1, 4 -> 0
version = 1
"""


def write_config(tmp_path: Path, text: str, name: str = "timeframes.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def tasks_of(db) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for symbol, name in db.execute("SELECT canonical_symbol, timeframe FROM data_agg_state "
                                   "WHERE status <> 'retired'"):
        found.setdefault(symbol, set()).add(name)
    return found


# ----------------------------------------------------------------------------- validation


@pytest.mark.parametrize(("change", "message"), [
    (('source = "1h"\nmandatory = false\nladder_of = "1h"', 'source = "2h"\nmandatory = false'
      '\nladder_of = "1h"'), r"timeframes\.4h\.source: '2h' is neither"),
    (("[timeframes.15m]", "[timeframes.7m]\nsource = \"1m\"\nmandatory = false\nladder = "
      "[[7, 2]]\nversion = 1\n\n[timeframes.15m]"), r"timeframes\.7m: the interval must "
     r"divide a day"),
    (("[timeframes.15m]", "[timeframes.60m]"), r"timeframes\.60m: name it '1h'"),
    (("ladder = [[5, 2], [4, 1], [3, 0]]", "ladder = [[6, 2]]"),
     r"timeframes\.5m\.ladder: minimums must lie in 1\.\.5"),
    (("ladder = [[5, 2], [4, 1], [3, 0]]", "ladder = [[3, 2], [4, 1]]"),
     r"timeframes\.5m: rungs must go from the most source bars down"),
    (('ladder_of = "1h"  # 3', 'ladder = [[3, 2]]\nladder_of = "1h"  # 3'),
     r"timeframes\.15m: give exactly one of ladder, proportions, ladder_of"),
    (('time_zone = "America/New_York"\nsession_open = "17:00"',
      'time_zone = "America/Gotham"\nsession_open = "17:00"'),
     r"calendars\.fx: unknown time zone 'America/Gotham'"),
    (('session_open = "09:30"', 'session_open = "09:32"'),
     r"calendars\.us_equity: a session boundary is off the 5m grid"),
    (('session_close = "16:00"', 'session_close = "09:00"'),
     r"calendars\.us_equity: close 09:00 is not after open 09:30"),
    (("[asset_class_calendars]", "[asset_class_calendars]\nfx = \"forex\""),
     r"asset_class_calendars\.fx: unknown calendar 'forex'"),
    (("format = 1", "format = 2"), r"format must be 1"),
])
def test_a_broken_config_is_refused_naming_the_entry(tmp_path, change, message):
    old, new = change
    assert old in SHIPPED
    path = write_config(tmp_path, SHIPPED.replace(old, new, 1))
    with pytest.raises(timeframes.TimeframeConfigError, match=message) as error:
        timeframes.load(path)
    assert str(path) in str(error.value)


def test_the_shipped_config_is_the_documented_ladder():
    ladders = {tf.name: (tf.source, tf.mandatory, tf.ladder) for tf in timeframes.ORDERED}
    assert ladders == {
        "5m": ("1m", True, ((5, 2), (4, 1), (3, 0))),
        "15m": ("5m", False, ((3, 2), (2, 0))),
        "1h": ("5m", True, ((12, 2), (10, 1), (8, 0), (7, -1))),
        "4h": ("1h", False, ((4, 2), (3, 0))),
        "1d": ("1h", False, ((24, 2), (20, 1), (16, 0), (14, -1))),
    }
    # a 23-hour day (a DST Sunday on a 24-hour calendar) on the 1h ladder's shares
    day = timeframes.get("1d")
    assert [day.quality(n, 23) for n in (23, 20, 19, 16, 15, 14, 13)] == [2, 1, 0, 0, -1, -1,
                                                                          None]


# ----------------------------------------------------------------------------- registry


def test_optional_timeframes_come_from_one_registry_column_and_the_seed_flags(db, caplog):
    add_symbol(db, "FLAGS", calc_4h=True)
    add_symbol(db, "LISTED")
    db.execute("UPDATE core_asset_registry_all SET agg_timeframes = '{1d,15m,3h}' "
               "WHERE canonical_symbol = 'LISTED'")
    add_symbol(db, "ELSEWHERE")
    db.execute("UPDATE core_asset_registry_all SET agg_calendar = 'moon' "
               "WHERE canonical_symbol = 'ELSEWHERE'")
    result = sync(db)
    assert tasks_of(db) == {"FLAGS": {"5m", "1h", "4h"}, "LISTED": {"5m", "15m", "1h", "1d"}}
    assert result.unknown_timeframes == {"LISTED": ["3h"]}
    assert "LISTED asks for timeframes 3h" in caplog.text
    assert result.rejected == {"ELSEWHERE": "unknown calendar 'moon'; known: fx, us_equity, utc"}


def test_an_asset_class_can_put_its_symbols_on_a_calendar(db, tmp_path):
    add_symbol(db, "EURUSD", calc_4h=True, calc_1d=True)  # asset_class 'fx'
    add_symbol(db, "OWNUTC", calc_1d=True)
    db.execute("UPDATE core_asset_registry_all SET agg_calendar = 'utc' "
               "WHERE canonical_symbol = 'OWNUTC'")  # its own choice wins
    with timeframes.configured(load_config(tmp_path / "t.toml",
                                           config_text(asset_classes='fx = "fx"\n'))):
        sync(db)
    calendars = dict(((s, t), c) for s, t, c in db.execute(
        "SELECT canonical_symbol, timeframe, window_calendar FROM data_agg_state"))
    assert calendars == {("EURUSD", "5m"): None, ("EURUSD", "1h"): None,
                         ("EURUSD", "4h"): "fx", ("EURUSD", "1d"): "fx",
                         ("OWNUTC", "5m"): None, ("OWNUTC", "1h"): None,
                         ("OWNUTC", "1d"): None}
    sync(db)  # the shipped config: no asset-class calendar, EURUSD back on the UTC grid
    assert db.execute("SELECT count(*) FROM data_agg_state WHERE window_calendar IS NOT NULL"
                      ).fetchone() == (0,)


def test_a_ladder_changed_under_the_same_version_is_refused(db, tmp_path):
    add_symbol(db, "EURUSD")
    sync(db)
    # the 1h ladder is also 15m's, 4h's and 1d's (ladder_of): all of them changed
    hourly = SHIPPED.replace("ladder = [[12, 2], [10, 1], [8, 0], [7, -1]]",
                             "ladder = [[12, 2], [9, 1], [7, 0]]")
    with timeframes.configured(timeframes.load(write_config(tmp_path, hourly))):
        with pytest.raises(tasks.TimeframeVersionError,
                           match=r"timeframes\.15m changed .* raise its version"):
            sync(db)
        db.rollback()
    five = SHIPPED.replace("ladder = [[5, 2], [4, 1], [3, 0]]\nversion = 1",
                           "ladder = [[5, 2], [3, 0]]\nversion = 1")
    with timeframes.configured(timeframes.load(write_config(tmp_path, five, "b.toml"))):
        with pytest.raises(tasks.TimeframeVersionError, match=r"timeframes\.5m changed"):
            sync(db)
        db.rollback()
    bumped = five.replace("ladder = [[5, 2], [3, 0]]\nversion = 1",
                          "ladder = [[5, 2], [3, 0]]\nversion = 2")
    with timeframes.configured(timeframes.load(write_config(tmp_path, bumped, "c.toml"))):
        sync(db)
    versions = dict(db.execute("SELECT timeframe, derivation_version FROM data_agg_state"))
    assert versions == {"5m": 2, "1h": 1}
    recorded = db.execute("SELECT version FROM agg_timeframe_versions WHERE timeframe = '5m' "
                          "ORDER BY 1").fetchall()
    assert recorded == [(1,), (2,)]


# ----------------------------------------------------------------------------- 30m


def thirty_minute_oracle(db, symbol: str, now) -> dict:
    frame = oracle.source_frame(source_rows(db, symbol), 1)
    five = oracle.derive(frame, oracle.SPECS["5m"], start=T0, end=T0 + timedelta(days=1),
                         now=now, agg_start=T0, skip_zero_volume=False).bars
    spec = oracle.Spec("30m", 30, "5m", 5, {6: 2, 5: 1, 4: 0})
    rows = [{"ts_utc": ts, **bar, "is_partial": False} for ts, bar in sorted(five.items())]
    return oracle.derive(oracle.source_frame(rows, 5), spec, start=T0,
                         end=T0 + timedelta(days=1), now=now, agg_start=T0,
                         skip_zero_volume=False).bars


def seed_half(db) -> None:
    """A morning of 1m bars with holes: 30m windows of 6, 5, 4 and fewer 5m bars."""
    add_symbol(db, "HALF")
    db.execute("UPDATE core_asset_registry_all SET agg_timeframes = '{30m}' "
               "WHERE canonical_symbol = 'HALF'")
    holes = set(range(30, 35)) | set(range(60, 70)) | set(range(90, 105)) | {121, 122, 123}
    insert_bars(db, "HALF", minute_bars(T0, 240, skip=holes))
    db.commit()


def test_a_30m_timeframe_added_by_config_alone_is_built_by_the_engine(db, tmp_path):
    config = timeframes.load(write_config(tmp_path, config_text(THIRTY)))
    now = T0 + timedelta(days=2)
    with timeframes.configured(config):
        seed_half(db)
        sync(db, agg_start=T0)
        assert tasks_of(db) == {"HALF": {"5m", "1h", "30m"}}
        for name in ("5m", "30m"):
            batch = engine.aggregate_many(db, name, [engine.Span("HALF", T0, T0 + timedelta(
                days=1))], now=now)
            assert not batch.failed, batch.failed
        db.commit()
    expected = thirty_minute_oracle(db, "HALF", now)
    assert {b["quality_score"] for b in expected.values()} == {2, 1, 0}
    assert_active_bars_equal(derived_rows(db, "HALF", "30m"), expected, "HALF 30m")


def test_a_30m_timeframe_added_by_config_alone_is_materialised_by_dagster(db, tmp_path):
    """A new timeframe is a config change: Definitions built (in this process, beside the
    default ladder's) from a config with a 30m rung have its asset, checks and job, and
    Dagster materialises it; the engine reads that ladder while the runs execute."""
    path = write_config(tmp_path, config_text(THIRTY))
    config = PipelineConfig(timeframes=timeframes.load(path))
    with config.engine_ladder():
        seed_half(db)
        sync(db, agg_start=T0)
        day = T0.date()
        defs = build_definitions(config)
        instance = dg.DagsterInstance.ephemeral()
        instance.add_dynamic_partitions(SYMBOLS_PARTITIONS_NAME, ["HALF"])
        instance.add_dynamic_partitions("symbols_30m", ["HALF"])  # an optional rung: its job
        results = [defs.resolve_job_def(job).execute_in_process(
            instance=instance, tags=config.partitions.range_tags("HALF", day, day),
            raise_on_error=False, asset_selection=[dg.AssetKey(asset)])
            for job, asset in (("aggregate_bars", "bars_5m"), ("aggregate_bars_30m", "bars_30m"))]
    checks = {e.asset_check_evaluation_data.asset_check_key.to_user_string():
              e.asset_check_evaluation_data.passed
              for result in results
              for e in result.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"}
    assert all(r.success for r in results)
    assert dg.AssetKey("bars_30m") in defs.resolve_all_asset_keys()
    assert checks["bars_30m:matches_source"] is True
    assert len([k for k in checks if k.startswith("bars_30m:")]) == 7
    expected = thirty_minute_oracle(db, "HALF", T0 + timedelta(days=2))
    assert_active_bars_equal(derived_rows(db, "HALF", "30m"), expected, "HALF 30m (Dagster)")
