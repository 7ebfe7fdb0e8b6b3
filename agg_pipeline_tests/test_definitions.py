"""The Definitions that workspace.yaml loads."""

from __future__ import annotations

import os
import subprocess
import sys

import dagster as dg

from agg_pipeline.definitions import defs


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
