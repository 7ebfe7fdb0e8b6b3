"""alerts_sensor against a local HTTP receiver: one alert per incident, a recovery notice,
retries when the webhook fails, and the webhook URL never logged."""

import json
import logging
import threading
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import dagster as dg
import pytest

from agg_pipeline.definitions import defs
from agg_pipeline.defs.alerts import alerts_sensor
from agg_pipeline.defs.assets import AS_OF_TAG, bars_1m, derived_bars_assets
from agg_pipeline.defs.checks import all_checks
from agg_pipeline.defs.partitions import (
    RANGE_END_TAG,
    RANGE_START_TAG,
    SYMBOLS_PARTITIONS_NAME,
    range_tags,
    run_symbols,
)
from agg_pipeline.defs.resources import MarketDatabase
from agg_pipeline.settings import ALERT_WEBHOOK_VAR
from agg_pipeline_tests.helpers import T0, add_symbol, insert_bars, minute_bars, sync

SECRET_PATH = "/hooks/T0KEN-s3cret-value"


class Receiver:
    """An HTTP server on 127.0.0.1 recording JSON POSTs; can be told to fail."""

    def __init__(self) -> None:
        self.messages: list[dict] = []
        self.fail_next = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if receiver.fail_next:
                    receiver.fail_next -= 1
                    self.send_response(500)
                else:
                    receiver.messages.append(json.loads(body))
                    self.send_response(204)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}{SECRET_PATH}"

    def take(self) -> list[tuple[str, str]]:
        taken = sorted((m["status"], m["incident"]) for m in self.messages)
        self.messages.clear()
        return taken


@pytest.fixture
def receiver(monkeypatch):
    receiver = Receiver()
    monkeypatch.setenv(ALERT_WEBHOOK_VAR, receiver.url)
    yield receiver
    receiver.server.shutdown()


def tick(instance, cursor):
    context = dg.build_sensor_context(instance=instance, cursor=cursor,
                                      resources={"market_db": MarketDatabase()})
    result = alerts_sensor(context)
    return result.cursor


def run_bars(instance, ok=True, symbol="EURUSD", last_symbol=None):
    result = defs.resolve_job_def("aggregate_bars").execute_in_process(
        instance=instance, raise_on_error=False,
        asset_selection=[dg.AssetKey("bars_5m")],
        tags={**range_tags(symbol, T0.date(), T0.date(), last_symbol=last_symbol),
              AS_OF_TAG: (T0 + timedelta(days=1)).isoformat()})
    assert result.success is ok
    return result


def run_checks(instance):
    dg.materialize([bars_1m, *derived_bars_assets, *all_checks], instance=instance,
                   selection=dg.AssetSelection.checks_for_assets("bars_5m"),
                   resources=defs.resources, raise_on_error=False)


def test_alerts_fire_once_clear_once_and_never_leak_the_url(db, instance, receiver, caplog):
    add_symbol(db, "EURUSD")
    sync(db)
    insert_bars(db, "EURUSD", minute_bars(T0, 60))
    db.execute("UPDATE data_agg_state SET last_agg_bar_ts_utc = NULL WHERE timeframe = '5m'")
    db.commit()
    instance.add_dynamic_partitions(SYMBOLS_PARTITIONS_NAME, ["EURUSD"])
    for _ in range(3):  # three hard failures: the mandatory task goes hard_failed
        run_bars(instance, ok=False)
    run_checks(instance)  # cursor_not_ahead fails on the NULL cursor

    caplog.set_level(logging.DEBUG)
    receiver.fail_next = 1  # the first delivery fails: it must be retried, not lost
    cursor = tick(instance, None)
    # the task, its failed runs, the two ERROR checks it fails, and the check run that the
    # blocking check failure failed
    opened = {("firing", "task:EURUSD/5m"), ("firing", "run:EURUSD"),
              ("firing", "check:bars_5m:cursor_not_ahead"),
              ("firing", "check:bars_5m:no_failed_tasks"),
              ("firing", "run:__ephemeral_asset_job__")}
    first = set(receiver.take())
    assert len(first) == len(opened) - 1 and first < opened
    cursor = tick(instance, cursor)
    assert set(receiver.take()) == opened - first

    # the same incidents again (another failed run of EURUSD): no new alert
    run_bars(instance, ok=False)
    cursor = tick(instance, cursor)
    assert receiver.take() == []

    # recovery: a sane cursor, a successful run, passing checks
    db.execute("UPDATE data_agg_state SET last_agg_bar_ts_utc = %s WHERE timeframe = '5m'", (T0,))
    db.commit()
    run_bars(instance, ok=True)
    run_checks(instance)
    cursor = tick(instance, cursor)
    assert set(receiver.take()) == {("resolved", key) for _, key in opened}
    assert tick(instance, cursor) == cursor and receiver.take() == []

    # payloads carry no secret; logs never show the URL
    assert SECRET_PATH not in caplog.text and "T0KEN" not in caplog.text
    assert '"status": "firing"' in caplog.text  # the structured log line is always written


def test_a_failed_batched_run_alerts_for_each_symbol_until_that_symbol_succeeds(
        db, instance, receiver):
    symbols = ["EURUSD", "GBPUSD", "USDJPY"]
    for symbol in symbols:
        add_symbol(db, symbol)
    sync(db)
    for symbol in symbols:
        insert_bars(db, symbol, minute_bars(T0, 60))
    db.execute("UPDATE data_agg_state SET last_agg_bar_ts_utc = NULL WHERE timeframe = '5m' "
               "AND canonical_symbol IN ('EURUSD', 'GBPUSD')")
    db.commit()
    instance.add_dynamic_partitions(SYMBOLS_PARTITIONS_NAME, symbols)

    def run_alerts():
        return sorted(entry for entry in receiver.take() if entry[1].startswith("run:"))

    run_bars(instance, ok=False, symbol="EURUSD", last_symbol="GBPUSD")
    run_bars(instance, ok=True, symbol="USDJPY")  # a later run of another symbol clears nothing
    cursor = tick(instance, None)
    summaries = {m["incident"]: m["summary"] for m in receiver.messages}
    assert run_alerts() == [("firing", "run:EURUSD"), ("firing", "run:GBPUSD")]
    assert summaries["run:GBPUSD"].endswith("for GBPUSD failed (one of the run's 2 symbols)")

    db.execute("UPDATE data_agg_state SET last_agg_bar_ts_utc = %s WHERE timeframe = '5m'", (T0,))
    db.commit()
    run_bars(instance, ok=True, symbol="GBPUSD")
    cursor = tick(instance, cursor)
    assert run_alerts() == [("resolved", "run:GBPUSD")]  # EURUSD has not succeeded since
    run_bars(instance, ok=True, symbol="EURUSD", last_symbol="USDJPY")
    tick(instance, cursor)
    assert run_alerts() == [("resolved", "run:EURUSD")]


def test_a_runs_symbols_come_from_each_kind_of_tag_and_a_foreign_range_names_none():
    """Protects the alerts sensor from one odd run: a range of another partitions definition
    (single-dimension keys) names no symbol, so its job is the subject, not a crash."""
    order = ["AAA", "BBB", "CCC", "DDD"]
    assert run_symbols(range_tags("BBB", T0.date(), T0.date()), order) == ["BBB"]
    assert run_symbols(range_tags("BBB", T0.date(), T0.date(), last_symbol="DDD"),
                       order) == ["BBB", "CCC", "DDD"]
    assert run_symbols({"dagster/partition/symbol": "CCC"}, order) == ["CCC"]
    removed = range_tags("AAA", T0.date(), T0.date(), last_symbol="ZZZ")
    assert run_symbols(removed, order) == ["AAA", "ZZZ"]
    assert run_symbols({RANGE_START_TAG: "AAA", RANGE_END_TAG: "CCC"}, order) == []
    assert run_symbols({}, order) == []


def test_alert_payload_is_chat_ready(receiver, db, instance):
    add_symbol(db, "DXY")
    sync(db)
    db.execute("UPDATE data_agg_state SET status = 'hard_failed', hard_fail_streak = 3, "
               "last_error = 'boom' WHERE timeframe = '1h'")
    db.commit()
    tick(instance, None)
    [message] = receiver.messages
    assert message["kind"] == "task" and message["details"]["last_error"] == "boom"
    assert message["text"].startswith("🔴 agg_pipeline firing: task DXY / 1h is hard_failed")
