"""Real Dagster processes for tests and benchmarks: `agg-pipeline dev` and `dagster-daemon`."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class DevServer:
    process: subprocess.Popen
    port: int
    home: Path
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def graphql(self, query: str, variables: dict | None = None) -> dict:
        request = urllib.request.Request(
            f"{self.url}/graphql",
            data=json.dumps({"query": query, "variables": variables or {}}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            payload = json.load(response)
        if payload.get("errors"):
            raise AssertionError(payload["errors"])
        return payload["data"]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_until_loaded(self, timeout: float = 240) -> list[dict]:
        """Wait until the code location has loaded; returns the location entries."""
        deadline = time.monotonic() + timeout
        last_error: object = None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"agg-pipeline dev exited:\n{self.log()[-4000:]}")
            try:
                data = self.graphql("""{ workspaceOrError { ... on Workspace {
                    locationEntries { name loadStatus locationOrLoadError {
                      __typename ... on PythonError { message } } } } } }""")
                entries = data["workspaceOrError"]["locationEntries"]
                if entries and all(e["loadStatus"] == "LOADED" for e in entries):
                    return entries
                last_error = entries
            except (urllib.error.URLError, ConnectionError, TimeoutError, AssertionError) as exc:
                last_error = exc
            time.sleep(1)
        raise AssertionError(f"UI not ready: {last_error}\n{self.log()[-4000:]}")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=30)


def start_dev(home: Path, *args: str, env: dict[str, str] | None = None) -> DevServer:
    """`agg-pipeline dev` on a free port with its own AGG_HOME (so its own embedded server)."""
    port = free_port()
    home.mkdir(parents=True, exist_ok=True)
    log_path = home / "dev.log"
    environment = {k: v for k, v in os.environ.items()
                   if k not in ("AGG_DATABASE_URL", "DAGSTER_POSTGRES_URL", "DAGSTER_HOME")}
    environment.update({"AGG_HOME": str(home), **(env or {})})
    with open(log_path, "w") as log:  # the child keeps its own copy of the descriptor
        process = subprocess.Popen(
            [sys.executable, "-m", "agg_pipeline.cli", "dev", "--port", str(port), *args],
            stdout=log, stderr=subprocess.STDOUT, env=environment, start_new_session=True,
        )
    return DevServer(process=process, port=port, home=home, log_path=log_path)


@dataclass
class Daemon:
    process: subprocess.Popen
    home: Path
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=30)


def dagster_home(home: Path, storage_url: str) -> Path:
    """A DAGSTER_HOME holding the project's dagster.yaml (storage from DAGSTER_POSTGRES_URL)."""
    from agg_pipeline import settings

    home.mkdir(parents=True, exist_ok=True)
    root = settings.project_root()
    (home / "dagster.yaml").write_text((root / "dagster.yaml").read_text())
    return home


def start_daemon(home: Path, *, market_url: str, storage_url: str,
                 env: dict[str, str] | None = None) -> Daemon:
    """`dagster-daemon run` on the project's workspace, the instance of dagster.yaml."""
    from agg_pipeline import settings

    dagster_home(home, storage_url)
    log_path = home / "daemon.log"
    environment = {**os.environ, "DAGSTER_HOME": str(home), "DAGSTER_POSTGRES_URL": storage_url,
                   settings.DATABASE_URL_VAR: market_url, **(env or {})}
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "dagster._daemon", "run", "-w",
             str(settings.project_root() / "workspace.yaml")],
            stdout=log, stderr=subprocess.STDOUT, env=environment, start_new_session=True,
            cwd=settings.project_root(),
        )
    return Daemon(process=process, home=home, log_path=log_path)


@contextmanager
def storage_instance(storage_url: str, temp_dir: Path) -> Iterator:
    """A Dagster instance on the PostgreSQL storage at `storage_url`."""
    import dagster as dg

    temp_dir.mkdir(parents=True, exist_ok=True)
    overrides = {"storage": {"postgres": {"postgres_url": storage_url}}}
    with dg.instance_for_test(overrides=overrides, temp_dir=str(temp_dir)) as instance:
        yield instance


def failed_runs(instance) -> dict[str, tuple[str, list[str]]]:
    """Runs that did not succeed: run id -> (agg/reason tag, failure messages)."""
    import dagster as dg

    return {
        r.dagster_run.run_id: (r.dagster_run.tags.get("agg/reason", ""), [
            e.message for e in instance.all_logs(r.dagster_run.run_id)
            if e.dagster_event is not None and e.dagster_event.is_failure])
        for r in instance.get_run_records()
        if r.dagster_run.status != dg.DagsterRunStatus.SUCCESS
    }
