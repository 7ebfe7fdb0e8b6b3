"""Environment settings: defaults, and a bad value is an error naming its variable."""

from __future__ import annotations

import pytest

from agg_pipeline import settings


@pytest.mark.parametrize(("var", "read", "default"), [
    (settings.SCHEDULE_MAX_RUNS_VAR, settings.schedule_max_runs, 10),
    (settings.BACKFILL_BATCH_VAR, settings.backfill_max_partitions_per_run, None),
    (settings.ALERT_WEBHOOK_VAR, settings.alert_webhook_url, None),
])
def test_unset_or_blank_gives_the_default(monkeypatch, var, read, default):
    monkeypatch.delenv(var, raising=False)
    assert read() == default
    monkeypatch.setenv(var, "  ")
    assert read() == default


@pytest.mark.parametrize("var", [settings.SCHEDULE_MAX_RUNS_VAR, settings.BACKFILL_BATCH_VAR])
@pytest.mark.parametrize("raw", ["0", "-3", "ten", "2.5"])
def test_counts_must_be_positive_integers(monkeypatch, var, raw):
    monkeypatch.setenv(var, raw)
    read = (settings.schedule_max_runs if var == settings.SCHEDULE_MAX_RUNS_VAR
            else settings.backfill_max_partitions_per_run)
    with pytest.raises(ValueError, match=f"{var}='{raw}' must be a positive integer"):
        read()


def test_counts_are_read_as_given(monkeypatch):
    monkeypatch.setenv(settings.SCHEDULE_MAX_RUNS_VAR, " 3 ")
    monkeypatch.setenv(settings.BACKFILL_BATCH_VAR, "365")
    assert settings.schedule_max_runs() == 3
    assert settings.backfill_max_partitions_per_run() == 365


@pytest.mark.parametrize(("raw", "message"), [
    ("yesterday", "is not an ISO-8601 timestamp"),
    ("2025-07-01T06:00:00+00:00", "must be midnight UTC"),
])
def test_agg_start_must_be_an_iso_midnight(monkeypatch, raw, message):
    monkeypatch.setenv(settings.START_VAR, raw)
    with pytest.raises(ValueError, match=message):
        settings.default_agg_start()
