"""End to end with a real dagster-daemon: live bars appear and late corrections land,
with no manual action."""

from datetime import UTC, datetime, timedelta

import dagster as dg
import pytest

from agg_pipeline.db import connection
from agg_pipeline.defs.partitions import SYMBOLS_PARTITIONS_NAME
from agg_pipeline.defs.requests import IN_FLIGHT
from agg_pipeline_tests.helpers import (
    active_bars,
    add_symbol,
    bar,
    insert_bars,
    minute_bars,
    sync,
    wait_for,
)
from agg_pipeline_tests.processes import failed_runs, start_daemon, storage_instance

pytestmark = pytest.mark.daemon


def test_daemon_builds_live_bars_and_applies_late_corrections(db, database_url, make_database,
                                                               tmp_path):
    now = datetime.now(UTC)
    hour = (now - timedelta(minutes=2)).replace(minute=0, second=0, microsecond=0) - timedelta(
        hours=1)
    add_symbol(db, "EURUSD")
    sync(db)
    db.execute("UPDATE data_agg_state SET last_agg_bar_ts_utc = %s", (hour,))
    db.commit()

    storage_url = make_database("agg_e2e_dagster")
    with storage_instance(storage_url, tmp_path / "setup") as instance:
        instance.add_dynamic_partitions(SYMBOLS_PARTITIONS_NAME, ["EURUSD"])

    daemon = start_daemon(tmp_path / "dagster_home", market_url=database_url,
                          storage_url=storage_url)
    try:
        # an hour of 1m rows lands: every window of it is complete and past its delay
        insert_bars(db, "EURUSD", minute_bars(hour, 60))
        db.commit()

        def bars_built():
            with connection.connect(database_url) as conn:
                five, hourly = active_bars(conn, "EURUSD", "5m"), active_bars(conn, "EURUSD", "1h")
            return (len(five) == 12 and len(hourly) == 1) and (five, hourly)

        _, hourly = wait_for(bars_built, 300, "the 5m and 1h bars",
                         lambda: daemon.log()[-6000:], interval=2)
        assert hourly.iloc[0].ts_utc == hour and hourly.iloc[0].quality_score == 2

        # a correction of minute 7 lands late
        insert_bars(db, "EURUSD", [bar(hour + timedelta(minutes=7), 1.5,
                                       ingested_at=datetime.now(UTC))], upsert=True)
        db.commit()

        def corrected():
            with connection.connect(database_url) as conn:
                five, hourly = active_bars(conn, "EURUSD", "5m"), active_bars(conn, "EURUSD", "1h")
            window = five.set_index("ts_utc").loc[hour + timedelta(minutes=5)]
            return (window.high == 1.501 and hourly.iloc[0].high == 1.501) and (five, hourly)

        wait_for(corrected, 300, "the late correction in the 5m and 1h bars",
                 lambda: daemon.log()[-6000:], interval=2)
        # the run that wrote them may still be running its checks: stopping the daemon now
        # would interrupt it (its run worker is in the daemon's process group)
        with storage_instance(storage_url, tmp_path / "watch") as watch:
            wait_for(lambda: not watch.get_run_records(dg.RunsFilter(statuses=IN_FLIGHT)), 120,
                     "the runs to finish", lambda: daemon.log()[-6000:], interval=1)
    finally:
        daemon.stop()
    with storage_instance(storage_url, tmp_path / "check") as instance:
        runs = instance.get_run_records()
        failed = failed_runs(instance)
        assert runs and not failed, failed
        reasons = {r.dagster_run.tags.get("agg/reason", "") for r in runs}
        assert any(reason.startswith("late data") for reason in reasons), reasons
