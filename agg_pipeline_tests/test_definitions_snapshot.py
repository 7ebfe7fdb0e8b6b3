"""Snapshot of the Definitions (issue 22): the asset, check, job, sensor and schedule keys,
their partitions, the runbook launchpads' configs, the executor and the resources, compared
with agg_pipeline_tests/snapshots/definitions.json.

A change to the definitions shows here as a diff to review. When it is intended, regenerate
the snapshot and commit it with the change:

    AGG_UPDATE_SNAPSHOTS=1 ./run test agg_pipeline_tests/test_definitions_snapshot.py

(the test rewrites the file and fails once, saying so; the next run passes). The description
is of build_definitions(PipelineConfig()), made in this process: the defaults are pinned, not
this machine's settings. No database needed.
"""

from __future__ import annotations

import difflib
import json
import os
from pathlib import Path

import pytest

from agg_pipeline_tests.definitions_snapshot import snapshot

# builds Definitions in this process (conftest.no_defs_state_storage)
pytestmark = pytest.mark.usefixtures("no_defs_state_storage")

SNAPSHOT = Path(__file__).parent / "snapshots" / "definitions.json"
UPDATE_VAR = "AGG_UPDATE_SNAPSHOTS"


def test_definitions_match_the_snapshot():
    current = snapshot()
    json.loads(current)  # well-formed
    stored = SNAPSHOT.read_text() if SNAPSHOT.exists() else ""
    if current == stored:
        return
    diff = "".join(difflib.unified_diff(
        stored.splitlines(keepends=True), current.splitlines(keepends=True),
        fromfile=str(SNAPSHOT.relative_to(Path.cwd()) if SNAPSHOT.is_relative_to(Path.cwd())
                     else SNAPSHOT), tofile="the definitions now"))
    if os.environ.get(UPDATE_VAR) == "1":
        SNAPSHOT.parent.mkdir(parents=True, exist_ok=True)
        SNAPSHOT.write_text(current)
        raise AssertionError(f"{SNAPSHOT} rewritten ({UPDATE_VAR}=1): review the diff below, "
                             f"commit it, and run again without {UPDATE_VAR}\n{diff}")
    raise AssertionError(
        f"the definitions differ from {SNAPSHOT.name}; if the change is intended, regenerate "
        f"it: {UPDATE_VAR}=1 ./run test agg_pipeline_tests/test_definitions_snapshot.py\n"
        + (diff or "(no snapshot stored yet)"))
