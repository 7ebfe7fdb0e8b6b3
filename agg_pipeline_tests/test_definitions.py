"""The Definitions that workspace.yaml loads, and the factory that builds any configuration's."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from datetime import date

import dagster as dg
import pytest

from agg_pipeline import settings
from agg_pipeline.definitions import defs
from agg_pipeline.defs.config import PipelineConfig
from agg_pipeline.defs.factory import build_definitions
from agg_pipeline.engine import reasons, timeframes
from agg_pipeline_tests.helpers import config_text

# builds Definitions in this process (conftest.no_defs_state_storage)
pytestmark = pytest.mark.usefixtures("no_defs_state_storage")


def test_definitions_validate():
    dg.Definitions.validate_loadable(defs)


def test_dagster_cli_validates_the_workspace(tmp_path):
    # an empty DAGSTER_HOME: validation needs no instance storage
    result = subprocess.run(
        [sys.executable, "-m", "dagster", "definitions", "validate", "-w", "workspace.yaml"],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "DAGSTER_HOME": str(tmp_path)},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Validation successful" in result.stdout + result.stderr


THIRTY = """
[timeframes.30m]
source = "5m"
mandatory = false
ladder_of = "1h"
version = 1
"""


def _described(defs: dg.Definitions) -> dict:
    """What a configuration shapes: the assets, their partitions, the jobs, the checks."""
    repo = defs.get_repository_def()
    graph = repo.asset_graph
    return {
        "assets": sorted(k.to_user_string() for k in graph.get_all_asset_keys()),
        "partitions": str(graph.get(dg.AssetKey("bars_5m")).partitions_def),
        "jobs": sorted(j.name for j in repo.get_all_jobs() if not j.name.startswith("__")),
        "job_partitions": str(repo.get_job("aggregate_bars").partitions_def),
        "checks": sorted(k.to_user_string() for k in graph.asset_check_keys),
    }


def test_two_configurations_build_side_by_side_without_leaking(tmp_path):
    """Issue 22: Definitions are built from a PipelineConfig, several in one process: a year
    grain beside the day grain, a ladder with a 30m rung beside the shipped one. Each
    resolves every job, and building one changes nothing in another (nor in `defs`)."""
    default = PipelineConfig()
    path = tmp_path / "timeframes.toml"
    path.write_text(config_text(THIRTY))
    year_30m = dataclasses.replace(default, time_grain="year",
                                   timeframes=timeframes.load(path))
    before, environments = _described(build_definitions(default)), _described(defs)
    built = {"day": build_definitions(default), "year": build_definitions(year_30m)}
    for each in built.values():
        dg.Definitions.validate_loadable(each)
    day, year = (_described(each) for each in built.values())
    assert day == before == _described(build_definitions(default))
    assert "bars_30m" in year["assets"] and "bars_30m" not in day["assets"]
    assert len([k for k in year["checks"] if k.startswith("bars_30m:")]) == 7
    # one job per partitions definition: the 30m rung (optional) brings its own
    assert set(year["jobs"]) == set(day["jobs"]) | {"aggregate_bars_30m"}
    assert "aggregate_bars" in day["jobs"]
    assert day["partitions"] == day["job_partitions"]
    assert "Daily, starting 2025-07-01" in day["job_partitions"]
    assert "0 0 1 1 *, starting 2025-01-01" in year["job_partitions"]
    assert year["partitions"] == year["job_partitions"]
    # the keys and the live planner's requests follow each configuration's grain
    july_3 = date(2025, 7, 3)
    assert str(default.partitions.partition_key("EURUSD", july_3)) == "2025-07-03|EURUSD"
    assert str(year_30m.partitions.partition_key("EURUSD", july_3)) == "EURUSD|2025-01-01"
    assert year_30m.partitions.run_day_spans(["EURUSD|2025-01-01"], {}) == {
        "EURUSD": [(date(2025, 1, 1), date(2025, 12, 31))]}
    # the environment's Definitions (workspace.yaml's) are as they were
    assert _described(defs) == environments


def test_a_config_is_frozen_and_validated():
    config = PipelineConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.time_grain = "year"  # type: ignore[misc]
    with pytest.raises(ValueError, match=r"time_grain='week' is not one of day, month, year"):
        PipelineConfig(time_grain="week")
    assert PipelineConfig.Reason is reasons.Reason and PipelineConfig.tags.REASON_TAG


def test_from_env_names_every_bad_setting_in_one_line(monkeypatch):
    monkeypatch.setenv(settings.TIME_PARTITION_VAR, "week")
    monkeypatch.setenv(settings.START_VAR, "2025-07-01T12:00:00+00:00")
    with pytest.raises(ValueError) as error:
        PipelineConfig.from_env()
    message = str(error.value)
    assert "\n" not in message
    assert f"{settings.TIME_PARTITION_VAR}='week'" in message
    assert f"{settings.START_VAR}=" in message and "must be midnight UTC" in message
    monkeypatch.setenv(settings.TIME_PARTITION_VAR, "month")
    monkeypatch.delenv(settings.START_VAR)
    assert PipelineConfig.from_env().partitions.grain == "month"
