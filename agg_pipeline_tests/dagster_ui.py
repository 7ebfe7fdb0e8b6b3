"""Start `agg-pipeline dev` as a user would and talk to its webserver (shared by UI tests)."""

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
