"""Secrets stay secret: the database password (in AGG_DATABASE_URL) and the webhook URL appear
nowhere in Dagster's event log, run metadata, tags or alert payloads."""

import logging
import os
import subprocess
import sys
import threading
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import quote

import click
import dagster as dg
import pytest
from dagster._serdes import serialize_value
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agg_pipeline import cli
from agg_pipeline import settings as settings_module
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
    monkeypatch.setenv(settings_module.DATABASE_URL_VAR, unreachable)
    failed = job.execute_in_process(instance=instance, tags=tags, raise_on_error=False)
    assert not failed.success
    assert "127.0.0.1:1/" in str(failed.get_step_failure_events()[0].step_failure_data.error)
    monkeypatch.setenv(settings_module.DATABASE_URL_VAR, runtime_url)
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


# ------------------------------------------------------------------ passwords in hostile URLs

# Passwords are drawn from letters no libpq keyword or message uses (so a fragment found in
# an output can only have come from the password) plus every character that means something
# in a URL or a key=value string.
MARKERS = "qzjxQZJXäß€"
HOSTILE = "@:/%?#&=+ ,;'\"\\[]!$"
passwords = st.text(alphabet=MARKERS + HOSTILE + "0123456789", min_size=1, max_size=24)
MIN_FRAGMENT = connection.MIN_SECRET_FRAGMENT


def fragments(password: str) -> set[str]:
    """The password's substrings of MIN_FRAGMENT characters or more holding a marker letter."""
    return {password[i:j] for i in range(len(password))
            for j in range(i + MIN_FRAGMENT, len(password) + 1)
            if any(c in MARKERS for c in password[i:j])}


def quoted(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def typed_urls(password: str) -> dict[str, str]:
    """The ways a user may write the password into AGG_DATABASE_URL, for a closed port."""
    return {
        "url, unencoded": f"postgresql://agg:{password}@127.0.0.1:1/markets",
        "url, percent-encoded": f"postgresql://agg:{quote(password, safe='')}@127.0.0.1:1/markets",
        "url, unencoded in the query": f"postgresql://agg@127.0.0.1:1/markets?password={password}",
        "postgres:// url, unencoded": f"postgres://agg:{password}@127.0.0.1:1/markets",
        "key=value, unquoted": f"host=127.0.0.1 port=1 dbname=markets user=agg password={password}",
        "key=value, quoted": f"host=127.0.0.1 port=1 dbname=markets user=agg "
                             f"password={quoted(password)}",
    }


def outputs_for(url: str) -> list[str]:
    """What a user or a log can see of `url`: describe_url and the error of connecting."""
    seen = [connection.describe_url(url)]
    try:
        connection.connect(url, connect_timeout=2).close()
    except connection.DatabaseConfigError as exc:
        seen.append(str(exc))
        assert exc.__cause__ is None
    return seen


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(password=passwords)
def test_no_password_fragment_reaches_any_message(password, caplog):
    caplog.set_level(logging.DEBUG)
    for form, url in typed_urls(password).items():
        seen = "\n".join([*outputs_for(url), caplog.text])
        leaked = sorted(f for f in fragments(password) if f in seen)
        assert not leaked, (form, url, seen)
    # the encoded forms are not refused: they reach the server with the password intact
    for form in ("url, percent-encoded", "key=value, quoted"):
        assert connection.parse_url(typed_urls(password)[form])["password"] == password


def test_a_percent_escape_that_is_no_utf8_is_a_clear_error_naming_no_part_of_it():
    """Found by the property test below: `%80` in a password made psycopg's decoding raise
    UnicodeDecodeError, a traceback instead of the one-line configuration error."""
    url = "postgresql://agg:s3cr%80t@127.0.0.1:5432/db"
    with pytest.raises(connection.DatabaseConfigError) as raised:
        connection.parse_url(url)
    assert str(raised.value) == connection.INVALID_URL and "s3cr" not in str(raised.value)


@pytest.mark.parametrize(("url", "encoded", "password"), [
    # issue 18's: libpq reads host "ss", port "w", database "rd%x@127.0.0.1:5432/db"
    ("postgresql://u:p@ss:w/rd%25x@127.0.0.1:5432/db",
     "postgresql://u:p%40ss%3Aw%2Frd%2525x@127.0.0.1:5432/db", "p@ss:w/rd%25x"),
    # "/" before the "@": no credentials at all, host "agg", port "se"
    ("postgresql://agg:se/cret@127.0.0.1:5432/db",
     "postgresql://agg:se%2Fcret@127.0.0.1:5432/db", "se/cret"),
    ("postgresql://agg@corp:p4ss@127.0.0.1:5432/db",  # an Azure-style user name
     "postgresql://agg%40corp:p4ss@127.0.0.1:5432/db", "p4ss"),
    ("postgresql://agg:p4ss@127.0.0.1:5432/db?application_name=x@y",
     "postgresql://agg:p4ss@127.0.0.1:5432/db?application_name=x%40y", "p4ss"),
])
def test_ambiguous_url_is_refused_naming_no_part_of_it(url, encoded, password):
    with pytest.raises(connection.DatabaseConfigError) as raised:
        connection.connect(url)
    assert str(raised.value) == connection.MALFORMED_URL and "%40" in str(raised.value)
    assert connection.describe_url(url) == "<malformed URL>"
    # percent-encoded, the same URL is accepted, its password intact
    assert connection.parse_url(encoded)["password"] == password


def test_issue_18_url_through_the_cli_prints_no_part_of_the_password():
    result = subprocess.run(
        [sys.executable, "-m", "agg_pipeline.cli", "status"], capture_output=True, text=True,
        timeout=60, env={**os.environ, settings_module.DATABASE_URL_VAR:
                         "postgresql://u:p@ss:w/rd%25x@127.0.0.1:5432/db"})
    assert result.returncode == 1
    assert result.stderr == f"Error: {connection.MALFORMED_URL}\n"
    for fragment in ("ss:w", "rd%", "rd%25x", "w/rd", "p@ss"):
        assert fragment not in result.stderr


@settings(max_examples=300)
@given(message=st.text(max_size=80), secret=st.text(min_size=1, max_size=12))
def test_masking_changes_only_the_password(message, secret):
    masked = connection.mask_secret(message, secret)
    if secret not in message:
        assert masked == message
    elif len(secret) >= MIN_FRAGMENT:
        assert secret not in masked


def test_masking_a_short_password_leaves_words_alone():
    message = "failed to resolve host 'h': Servname not supported for ai_socktype"
    assert connection.mask_secret(message, "p") == message
    assert connection.mask_secret("user p at 'p'", "p") == "user *** at '***'"
