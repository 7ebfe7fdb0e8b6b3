"""Environment settings: defaults, and a bad value is an error naming its variable."""

from __future__ import annotations

import pytest

from agg_pipeline import settings


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
