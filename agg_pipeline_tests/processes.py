"""Real Dagster processes for tests and benchmarks: `agg-pipeline dev`, `dagster-daemon`, and
the production shape (code server, webserver and daemon as separate processes)."""

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
from contextlib import contextmanager, suppress
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


# ------------------------------------------------- the production shape (deploy/workspace.yaml)


def production_env(home: Path, *, storage_url: str, code_server_port: int,
                   env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment every process of the production shape gets (deploy/compose.yaml's):
    the instance of dagster.yaml in DAGSTER_HOME with its storage URL, the code server's
    address for deploy/workspace.yaml, and settings.DAGSTER_PROCESS_ENV. The market-data URL
    is the code server's alone (start_code_server)."""
    from agg_pipeline import settings

    environment = {k: v for k, v in os.environ.items()
                   if not k.startswith(("AGG_", "DAGSTER_"))}
    environment.update({
        "DAGSTER_HOME": str(dagster_home(home / "dagster_home", storage_url)),
        settings.DAGSTER_STORAGE_URL_VAR: storage_url,
        settings.HOME_VAR: str(home / "agg_home"),
        "AGG_CODE_SERVER_HOST": "127.0.0.1",
        "AGG_CODE_SERVER_PORT": str(code_server_port),
        **settings.DAGSTER_PROCESS_ENV,
        **(env or {}),
    })
    return environment


def _spawn(command: list[str], log_path: Path, env: dict[str, str],
           cwd: Path) -> subprocess.Popen:
    """A process in its own session, as in its own container. SIGINT is reset to its
    default first: Dagster maps SIGTERM onto SIGINT's handler, so a SIGINT ignored by
    whatever started the tests would make SIGTERM ignored too."""
    with open(log_path, "a") as log:
        return subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd,
            start_new_session=True,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )


def image_command() -> list[str]:
    """deploy/Dockerfile's CMD: the code server's command line in the image."""
    from agg_pipeline import settings

    text = (settings.project_root() / "deploy" / "Dockerfile").read_text().replace("\\\n", " ")
    (cmd,) = [line for line in text.splitlines() if line.startswith("CMD ")]
    return json.loads(cmd.removeprefix("CMD "))


def image_user() -> int:
    """deploy/Dockerfile's USER uid (the image's uid and gid are the same)."""
    from agg_pipeline import settings

    text = (settings.project_root() / "deploy" / "Dockerfile").read_text()
    (user,) = [line for line in text.splitlines() if line.startswith("USER ")]
    return int(user.split()[1].split(":")[0])


@dataclass
class CodeServer:
    """`dagster code-server start`: deploy/Dockerfile's command, on a port of this host."""

    process: subprocess.Popen
    port: int
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_until_serving(self, timeout: float = 120) -> None:
        """Until the gRPC health check answers (the image's HEALTHCHECK) and the definitions
        load."""
        from dagster._core.errors import DagsterUserCodeUnreachableError
        from dagster._grpc.client import DagsterGrpcClient

        client = DagsterGrpcClient(host="127.0.0.1", port=self.port)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"the code server exited:\n{self.log()[-4000:]}")
            try:
                # list_repositories first: it raises while nothing listens (the health check
                # prints gRPC's error instead)
                if client.list_repositories() and client.health_check_query() == "SERVING":
                    return
            except DagsterUserCodeUnreachableError:
                pass
            time.sleep(0.5)
        raise AssertionError(f"the code server did not serve in {timeout:.0f} s\n"
                             f"{self.log()[-4000:]}")

    def deploy_stop(self, grace: float = 30) -> float:
        """What a container stop does to the code server: SIGTERM to every process of it (the
        image's init, tini -g, forwards it to the process group: run workers fail their runs),
        SIGKILL to what is left after `grace` seconds. Returns the seconds it took to exit."""
        started = time.monotonic()
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=30)
        with suppress(ProcessLookupError):  # run workers left in the group
            os.killpg(self.process.pid, signal.SIGKILL)
        return time.monotonic() - started


def start_code_server(home: Path, env: dict[str, str], *, market_url: str) -> CodeServer:
    """The image's command (deploy/Dockerfile's CMD) outside a container, on this host's
    loopback and the port production_env names; it and its run workers reach the market data
    at `market_url`."""
    from agg_pipeline import settings

    env = {**env, settings.DATABASE_URL_VAR: market_url}
    home.mkdir(parents=True, exist_ok=True)
    port = int(env["AGG_CODE_SERVER_PORT"])
    command = image_command()
    assert command[:3] == ["dagster", "code-server", "start"], command
    for flag, value in (("-h", "127.0.0.1"), ("-p", str(port))):
        command[command.index(flag) + 1] = value
    log_path = home / "code_server.log"
    process = _spawn([sys.executable, "-m", *command], log_path, env, cwd=home)
    return CodeServer(process=process, port=port, log_path=log_path)


def production_workspace() -> Path:
    from agg_pipeline import settings

    return settings.project_root() / "deploy" / "workspace.yaml"


def start_webserver(home: Path, env: dict[str, str]) -> DevServer:
    """dagster-webserver on deploy/workspace.yaml (a grpc_server entry), on a free port."""
    port = free_port()
    log_path = home / "webserver.log"
    process = _spawn(
        [sys.executable, "-m", "dagster_webserver", "-h", "127.0.0.1", "-p", str(port),
         "-w", str(production_workspace())], log_path, env, cwd=home)
    return DevServer(process=process, port=port, home=home, log_path=log_path)


def start_workspace_daemon(home: Path, env: dict[str, str]) -> Daemon:
    """dagster-daemon on deploy/workspace.yaml (a grpc_server entry)."""
    log_path = home / "daemon.log"
    process = _spawn([sys.executable, "-m", "dagster._daemon", "run", "-w",
                      str(production_workspace())], log_path, env, cwd=home)
    return Daemon(process=process, home=home, log_path=log_path)
