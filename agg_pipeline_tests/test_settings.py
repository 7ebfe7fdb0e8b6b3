"""Environment settings: defaults, and a bad value is an error naming its variable."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from agg_pipeline import settings
from agg_pipeline.defs.config import PipelineConfig
from agg_pipeline.defs.factory import build_definitions

# builds Definitions in this process (conftest.no_defs_state_storage)
pytestmark = pytest.mark.usefixtures("no_defs_state_storage")


@pytest.mark.parametrize(("var", "read", "default"), [
    (settings.MAX_RUNS_PER_TICK_VAR, settings.max_runs_per_tick, 10),
    (settings.MAX_PARTITIONS_PER_RUN_VAR, settings.max_partitions_per_run, 1000),
    (settings.RECONCILE_DAYS_VAR, settings.reconcile_days, 7),
    (settings.RECONCILE_SYMBOLS_VAR, settings.reconcile_symbols_per_tick, 10),
    (settings.BACKFILL_BATCH_VAR, settings.backfill_max_partitions_per_run, None),
    (settings.ALERT_WEBHOOK_VAR, settings.alert_webhook_url, None),
    (settings.HEARTBEAT_VAR, settings.heartbeat_seconds, 10),
    (settings.HEARTBEAT_TIMEOUT_VAR, settings.heartbeat_timeout_seconds, 90),
    (settings.LIVENESS_CHECK_VAR, settings.liveness_check_seconds, 30),
    (settings.FRONTIER_INTERVAL_VAR, settings.frontier_interval_seconds, 5),
])
def test_unset_or_blank_gives_the_default(monkeypatch, var, read, default):
    monkeypatch.delenv(var, raising=False)
    assert read() == default
    monkeypatch.setenv(var, "  ")
    assert read() == default


COUNTS = {
    settings.MAX_RUNS_PER_TICK_VAR: settings.max_runs_per_tick,
    settings.MAX_PARTITIONS_PER_RUN_VAR: settings.max_partitions_per_run,
    settings.RECONCILE_DAYS_VAR: settings.reconcile_days,
    settings.RECONCILE_SYMBOLS_VAR: settings.reconcile_symbols_per_tick,
    settings.BACKFILL_BATCH_VAR: settings.backfill_max_partitions_per_run,
    settings.HEARTBEAT_VAR: settings.heartbeat_seconds,
    settings.HEARTBEAT_TIMEOUT_VAR: settings.heartbeat_timeout_seconds,
    settings.LIVENESS_CHECK_VAR: settings.liveness_check_seconds,
    settings.FRONTIER_INTERVAL_VAR: settings.frontier_interval_seconds,
}


@pytest.mark.parametrize("var", sorted(COUNTS))
@pytest.mark.parametrize("raw", ["0", "-3", "ten", "2.5"])
def test_counts_must_be_positive_integers(monkeypatch, var, raw):
    monkeypatch.setenv(var, raw)
    with pytest.raises(ValueError, match=f"{var}='{raw}' must be a positive integer"):
        COUNTS[var]()


def test_counts_are_read_as_given(monkeypatch):
    monkeypatch.setenv(settings.MAX_RUNS_PER_TICK_VAR, " 3 ")
    monkeypatch.setenv(settings.BACKFILL_BATCH_VAR, "365")
    assert settings.max_runs_per_tick() == 3
    assert settings.backfill_max_partitions_per_run() == 365


def test_the_frontier_interval_is_one_dagster_can_tick(monkeypatch):
    monkeypatch.setenv(settings.FRONTIER_INTERVAL_VAR, "4")
    with pytest.raises(ValueError, match="tick at most every 5 seconds"):
        settings.frontier_interval_seconds()
    monkeypatch.setenv(settings.FRONTIER_INTERVAL_VAR, "20")
    assert settings.frontier_interval_seconds() == 20
    assert build_definitions(PipelineConfig.from_env()).resolve_sensor_def(
        "source_frontier_sensor").minimum_interval_seconds == 20


def test_the_heartbeat_timeout_leaves_room_for_three_beats(monkeypatch):
    """A timeout of fewer beats would take a worker that missed two beats (a busy machine, a
    database blip) for dead."""
    monkeypatch.setenv(settings.HEARTBEAT_VAR, "20")
    monkeypatch.setenv(settings.HEARTBEAT_TIMEOUT_VAR, "59")
    with pytest.raises(ValueError, match="must be at least 3 x AGG_HEARTBEAT_SECONDS"):
        settings.heartbeat_timeout_seconds()
    monkeypatch.setenv(settings.HEARTBEAT_TIMEOUT_VAR, "60")
    assert settings.heartbeat_timeout_seconds() == 60


@pytest.mark.parametrize(("raw", "message"), [
    ("yesterday", "is not an ISO-8601 timestamp"),
    ("2025-07-01T06:00:00+00:00", "must be midnight UTC"),
])
def test_agg_start_must_be_an_iso_midnight(monkeypatch, raw, message):
    monkeypatch.setenv(settings.START_VAR, raw)
    with pytest.raises(ValueError, match=message):
        settings.default_agg_start()


def test_validate_names_every_bad_setting_in_one_line(monkeypatch):
    for var in (settings.ENVIRONMENT_VAR, settings.START_VAR, settings.TIME_PARTITION_VAR,
                settings.FRESHNESS_CRON_VAR, *COUNTS):
        monkeypatch.delenv(var, raising=False)
    settings.validate()  # the defaults are valid
    monkeypatch.setenv(settings.ENVIRONMENT_VAR, "staging")
    monkeypatch.setenv(settings.FRESHNESS_CRON_VAR, "every five minutes")
    monkeypatch.setenv(settings.RECONCILE_DAYS_VAR, "0")
    with pytest.raises(ValueError) as raised:
        settings.validate()
    message = str(raised.value)
    assert "\n" not in message
    for named in ("AGG_ENV='staging'", "AGG_FRESHNESS_CRON='every five minutes'",
                  "AGG_RECONCILE_DAYS='0'"):
        assert named in message


@pytest.mark.parametrize(("raw", "expected"), [
    ("off", None), ("", None), ("*/30 0-20 * * 1-5", "*/30 0-20 * * 1-5")])
def test_freshness_cron(monkeypatch, raw, expected):
    monkeypatch.setenv(settings.FRESHNESS_CRON_VAR, raw)
    assert settings.freshness_cron() == expected


# What a process that loads the code location sees, and what Dagster then reads: Dagster
# 1.13.27 reads both variables with os.getenv when it uses them, so values set while the
# definitions are imported are the ones it uses.
PROBE = """
import json, os
import agg_pipeline.definitions
import dagster as dg
from dagster._core.instance.utils import _is_batch_writing_enabled
with dg.DagsterInstance.ephemeral() as instance:
    planned_subset = (instance.event_log_storage
                      .supports_partition_subset_in_asset_materialization_planned_events)
print(json.dumps({"env": {k: os.environ.get(k) for k in %r},
                  "batched": _is_batch_writing_enabled(), "planned_subset": planned_subset}))
"""


def load_code_location(env: dict[str, str]) -> tuple[dict, str]:
    environment = {k: v for k, v in os.environ.items() if k not in settings.DAGSTER_PROCESS_ENV}
    result = subprocess.run([sys.executable, "-c", PROBE % (list(settings.DAGSTER_PROCESS_ENV),)],
                            capture_output=True, text=True, timeout=120,
                            env={**environment, **env})
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout), result.stderr


def test_the_code_location_sets_dagsters_variables_and_says_they_were_missing():
    seen, stderr = load_code_location({})
    assert seen == {"env": settings.DAGSTER_PROCESS_ENV, "batched": True,
                    "planned_subset": True}
    [warning] = [line for line in stderr.splitlines() if "DAGSTER_EVENT_BATCH_SIZE" in line]
    assert ("DAGSTER_EVENT_BATCH_SIZE=1000, DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS=true"
            " missing from the environment") in warning
    assert "webserver and daemon" in warning and '(README, "Configuration")' in warning


def test_the_code_location_keeps_the_users_values_without_a_word():
    mine = {"DAGSTER_EVENT_BATCH_SIZE": "500",
            "DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS": "false"}
    seen, stderr = load_code_location(mine)
    assert seen == {"env": mine, "batched": True, "planned_subset": False}
    assert "DAGSTER_" not in stderr
