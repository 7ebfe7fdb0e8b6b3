"""`./run test` on the embedded server cleans up after itself: it stops the server it started
and removes the AGG_HOME it created, never a server that was running before it (CI's, dev's)
nor one another session still uses; its last line says what it did."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from agg_pipeline import settings

pytestmark = pytest.mark.embedded_only

ROOT = settings.project_root()
# one quick test that needs the server (it creates a database on it and drops it)
INNER = "agg_pipeline_tests/test_status.py::test_the_status_command_prints_caught_up"


def run(*args: str, home: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items()
           if k not in (settings.TEST_DATABASE_URL_VAR, settings.DATABASE_URL_VAR)}
    env[settings.HOME_VAR] = str(home)
    return subprocess.Popen(["bash", str(ROOT / "run"), *args], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def finish(process: subprocess.Popen) -> tuple[str, str]:
    out, err = process.communicate(timeout=600)
    assert process.returncode == 0, out + err
    return out, err


def running(home: Path) -> bool:
    pid_file = home / "pg" / "postmaster.pid"
    if not pid_file.exists():
        return False
    try:
        os.kill(int(pid_file.read_text().split()[0]), 0)
    except ProcessLookupError:
        return False
    return True


def test_two_sessions_share_the_server_they_started_and_the_last_removes_it(tmp_path):
    home = tmp_path / "home"
    sessions = [run("test", INNER, "-q", "-p", "no:cacheprovider", home=home) for _ in range(2)]
    lines = [finish(session)[1].splitlines()[-1] for session in sessions]  # both passed
    assert sorted(lines) == sorted([
        f"./run test: another ./run test still uses the embedded PostgreSQL in {home}/pg; "
        "the last to end stops it",
        f"./run test: stopped the embedded PostgreSQL it started; removed {home} (the "
        "server's data; it did not exist before)"]), lines
    assert not home.exists()


def test_a_server_running_before_is_left_running(tmp_path):
    home = tmp_path / "home"
    finish(run("db", "start", home=home))
    try:
        _, err = finish(run("test", INNER, "-q", "-p", "no:cacheprovider", home=home))
        assert err.splitlines()[-1] == (
            f"./run test: the embedded PostgreSQL in {home}/pg was already running and is "
            "left running (./run db stop stops it)")
        assert running(home)
    finally:
        finish(run("db", "stop", home=home))
