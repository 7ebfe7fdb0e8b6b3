"""Secrets stay secret: the database password (in AGG_DATABASE_URL) and the webhook URL appear
nowhere in Dagster's event log, run metadata, tags or alert payloads."""

import threading
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import click
import dagster as dg
import pytest
from dagster._serdes import serialize_value

from agg_pipeline import cli, settings
from agg_pipeline.db import connection
from agg_pipeline.definitions import defs
from agg_pipeline.defs.alerts import alerts_sensor
from agg_pipeline.defs.assets import AS_OF_TAG
from agg_pipeline.defs.partitions import SYMBOLS_PARTITIONS_NAME, range_tags
from agg_pipeline.defs.resources import MarketDatabase
from agg_pipeline.defs.sensors import registry_sync_sensor, source_frontier_sensor
from agg_pipeline.settings import ALERT_WEBHOOK_VAR
from agg_pipeline_tests.helpers import T0, add_symbol, insert_bars, minute_bars, sync

WEBHOOK_SECRET = "/hook/WEBHOOK-SECRET-4f9a"


def everything_dagster_stored(instance: dg.DagsterInstance) -> str:
    """Every run (config, tags), every event of every run, every sensor tick, serialised."""
    parts = []
    for record in instance.get_run_records():
        run = record.dagster_run
        parts.append(serialize_value(run))
        for entry in instance.all_logs(run.run_id):
            parts.append(serialize_value(entry))
    return "\n".join(parts)


@pytest.fixture
def receiver(monkeypatch):
    bodies: list[bytes] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            bodies.append(self.rfile.read(int(self.headers["Content-Length"])))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv(ALERT_WEBHOOK_VAR, f"http://127.0.0.1:{server.server_port}{WEBHOOK_SECRET}")
    yield bodies
    server.shutdown()


def test_password_and_webhook_never_stored_or_logged(db, instance, runtime_url, receiver,
                                                     monkeypatch, caplog):
    password = connection.parse_url(runtime_url)["password"]
    assert password and password in runtime_url  # the pipeline really uses a password
    add_symbol(db, "EURUSD")
    insert_bars(db, "EURUSD", minute_bars(T0, 120))
    sync(db)
    db.execute("UPDATE data_agg_state SET last_agg_bar_ts_utc = %s", (T0,))
    db.commit()
    instance.add_dynamic_partitions(SYMBOLS_PARTITIONS_NAME, ["EURUSD"])
    resources = {"market_db": MarketDatabase()}
    job = defs.resolve_job_def("aggregate_bars")
    tags = {**range_tags("EURUSD", T0.date(), T0.date()),
            AS_OF_TAG: (T0 + timedelta(days=1)).isoformat()}

    # a successful materialisation with checks, sensor ticks
    assert job.execute_in_process(instance=instance, tags=tags).success
    registry_sync_sensor(dg.build_sensor_context(instance=instance, resources=resources))
    source_frontier_sensor(dg.build_sensor_context(instance=instance, resources=resources))
    # a failing run (hard failure inside the engine)
    db.execute("UPDATE data_agg_state SET last_agg_bar_ts_utc = NULL WHERE timeframe = '5m'")
    db.commit()
    assert not job.execute_in_process(instance=instance, tags=tags, raise_on_error=False).success
    # a failing run that cannot even connect, the password in its URL
    unreachable = connection.build_url({**connection.parse_url(runtime_url), "port": "1",
                                        "host": "127.0.0.1"})
    monkeypatch.setenv(settings.DATABASE_URL_VAR, unreachable)
    failed = job.execute_in_process(instance=instance, tags=tags, raise_on_error=False)
    assert not failed.success
    assert "127.0.0.1:1/" in str(failed.get_step_failure_events()[0].step_failure_data.error)
    monkeypatch.setenv(settings.DATABASE_URL_VAR, runtime_url)
    # alerts for the failures
    alerts_sensor(dg.build_sensor_context(instance=instance, resources=resources))
    assert receiver, "alerts were posted"

    stored = everything_dagster_stored(instance)
    assert "EURUSD" in stored and "127.0.0.1:1/" in stored  # the search sees real content
    for secret in (password, WEBHOOK_SECRET):
        assert secret not in stored
        assert secret not in caplog.text
        assert not any(secret.encode() in body for body in receiver)


def test_webserver_binds_to_localhost_unless_told():
    host = next(p for p in cli.dev.params if p.name == "host")
    assert isinstance(host, click.Option) and host.default == "127.0.0.1"
