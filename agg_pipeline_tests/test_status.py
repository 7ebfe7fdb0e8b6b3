"""`agg-pipeline status`: a caught-up task reads "caught up", a lag is in minutes, always.

The window holding the newest source row is usually still open: a caught-up 5m task's cursor
sits at its start, 5 minutes before the end of the frontier's window (the view's `gap`), and
a caught-up 1h task's an hour before."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest

from agg_pipeline import cli
from agg_pipeline.engine import aggregate as engine
from agg_pipeline.engine import health
from agg_pipeline.engine.health import STATUS_COLUMNS, format_table, frontier_health, lag_text
from agg_pipeline_tests.helpers import T0, add_symbol, insert_bars, minute_bars, sync
from agg_pipeline_tests.test_cli import run_cli

MINUTE = timedelta(minutes=1)


def task(db, timeframe: str, now=None) -> dict:
    return next(r for r in frontier_health(db, now=now)
                if r["canonical_symbol"] == "EURUSD" and r["timeframe"] == timeframe)


def set_cursor(db, timeframe: str, cursor) -> None:
    db.execute("UPDATE data_agg_state SET last_agg_bar_ts_utc = %s "
               "WHERE canonical_symbol = 'EURUSD' AND timeframe = %s", (cursor, timeframe))
    db.commit()


@pytest.fixture
def live(db):
    """EURUSD's 1m rows 00:00-00:12 and, at 00:13:30, its 5m and 1h bars built: the 5m
    window [00:10, 00:15) and the hour are still open."""
    add_symbol(db, "EURUSD")
    sync(db, agg_start=T0)
    insert_bars(db, "EURUSD", minute_bars(T0, 13))
    db.commit()
    now = T0 + 13 * MINUTE + timedelta(seconds=30)
    for timeframe in ("5m", "1h"):
        engine.aggregate(db, "EURUSD", timeframe, T0, T0 + timedelta(days=1), now=now)
        db.commit()
    return db, now


def test_a_caught_up_task_is_caught_up_not_one_window_behind(live):
    db, now = live
    five, hour = task(db, "5m", now), task(db, "1h", now)
    assert (five["cursor_ts"], five["source_frontier_ts"]) == (T0 + 10 * MINUTE, T0 + 12 * MINUTE)
    assert (hour["cursor_ts"], hour["source_frontier_ts"]) == (T0, T0 + 5 * MINUTE)
    # the view's gap reads as lag; the task has nothing to do
    assert (five["gap"], hour["gap"]) == (timedelta(minutes=5), timedelta(hours=1))
    assert (five["lag"], hour["lag"]) == (timedelta(0), timedelta(0))
    assert lag_text(five) == lag_text(hour) == "caught up"


def test_a_lag_is_minutes_behind_the_newest_final_window(live):
    db, now = live
    set_cursor(db, "5m", T0)
    assert task(db, "5m", now)["lag"] == timedelta(minutes=10)
    assert lag_text(task(db, "5m", now)) == "10 min"
    # the open window becomes final once complete (contract 6), before its delay has passed
    insert_bars(db, "EURUSD", minute_bars(T0 + 13 * MINUTE, 2))
    db.commit()
    set_cursor(db, "5m", T0 + 10 * MINUTE)
    early = T0 + 14 * MINUTE + timedelta(seconds=30)
    assert task(db, "5m", early)["lag"] == timedelta(minutes=5)
    # or, incomplete, once its confirmation delay has passed
    db.execute("DELETE FROM data_bars WHERE ts_utc = %s", (T0 + 14 * MINUTE,))
    db.commit()
    assert task(db, "5m", early)["lag"] == timedelta(0)
    assert task(db, "5m", T0 + 16 * MINUTE)["lag"] == timedelta(minutes=5)
    # a day behind is still counted in minutes
    set_cursor(db, "1h", T0 - timedelta(days=1))
    assert lag_text(task(db, "1h", T0 + timedelta(hours=2))) == "1,500 min"


def test_the_table_is_in_one_unit_and_names_every_state(live):
    db, now = live
    set_cursor(db, "1h", T0 - timedelta(days=2))
    db.execute("UPDATE data_agg_state SET enabled = false WHERE timeframe = '1h'")
    add_symbol(db, "USDJPY")
    sync(db, agg_start=T0)
    db.execute("UPDATE data_agg_state SET last_agg_bar_ts_utc = NULL "
               "WHERE canonical_symbol = 'USDJPY' AND timeframe = '5m'")
    db.commit()
    text = format_table(frontier_health(db, now=now))
    header, _, *lines = text.splitlines()
    assert header.split("  ")[0] == "symbol" and "cursor status" in header
    by_task = {tuple(line.split()[:2]): line for line in lines}
    assert "caught up" in by_task[("EURUSD", "5m")]
    assert " 2,880 min " in by_task[("EURUSD", "1h")] and "paused" in by_task[("EURUSD", "1h")]
    assert re.search(r"\s-\s+NULL\s", by_task[("USDJPY", "5m")])  # no cursor: no lag
    assert re.search(r"\s-\s+NO_SOURCE\s", by_task[("USDJPY", "1h")])
    # one unit: minutes; never "5m", "1h00m" or "2d00h" as durations
    cells = [cell for line in lines for cell in re.split(r"\s{2,}", line.strip())[2:]]
    assert not [c for c in cells if re.fullmatch(r"-?\d+(m|h\d\dm|d\d\dh)", c)]
    # since success: minutes too, or "-" for a task that never succeeded
    assert re.search(r"\s0 min\s+0\s+0$", by_task[("EURUSD", "5m")])
    assert re.search(r"NULL\s+idle\s+-\s+0\s+0$", by_task[("USDJPY", "5m")])


def test_status_help_explains_every_column():
    result = run_cli("status", "--help", timeout=60)
    assert result.returncode == 0, result.stderr
    for title, _ in STATUS_COLUMNS:
        assert re.search(rf"^\s+{re.escape(title)}\b", result.stdout, re.M) or (
            title in ("symbol", "tf") and "symbol, tf" in result.stdout), title
    assert "caught up" in result.stdout and "minutes" in result.stdout
    assert all(len(line) <= 100 for line in result.stdout.splitlines())


def test_history_help_explains_its_columns():
    result = run_cli("history", "--help", timeout=60)
    assert result.returncode == 0, result.stderr
    for words in ("derivation_version", "valid from/to", "change", "reason", "--wide",
                  "inside a", "120 columns"):
        assert words in result.stdout, words
    assert all(len(line) <= 100 for line in result.stdout.splitlines())


def test_the_status_command_prints_caught_up(db, database_url):
    """Through the command, on the database's own clock: source rows long past, so every
    window is final; a cursor at the end of the frontier's window is caught up."""
    add_symbol(db, "EURUSD")
    sync(db, agg_start=T0)
    insert_bars(db, "EURUSD", minute_bars(T0, 60))
    db.commit()
    for timeframe in ("5m", "1h"):
        engine.aggregate(db, "EURUSD", timeframe, T0, T0 + timedelta(days=1))
        db.commit()
    result = run_cli("status", env={"AGG_DATABASE_URL": database_url})
    assert result.returncode == 0, result.stderr
    _, _, *lines = result.stdout.splitlines()
    assert [[*line.split()[:2], "caught up" in line] for line in lines] == [
        ["EURUSD", "5m", True], ["EURUSD", "1h", True]]
    assert health.timestamp(T0 + timedelta(hours=1)) in lines[0]  # the cursor
    assert cli.status.help.startswith("Cursor, frontier and health")
