"""`agg-pipeline dev`'s processes: one code server, the Dagster webserver and the daemon.

Not `dagster dev`: Dagster 1.13 marks it superseded (a "use dg dev" warning at every start),
it warns that the checkout's dagster.yaml is not used (true, and meant: DAGSTER_HOME holds the
instance config dev generates), and it is a black box to guard. dev runs the production
shape instead: `dagster code-server start` loads the code location once, and
`dagster-webserver` and `dagster-daemon run` reach it through a generated workspace whose one
entry is a `grpc_server`. The UI's "Reload" restarts the code server's child process, so code
edits still load without restarting dev.

Guards: one dev per AGG_HOME (an flock'd pid file that names the running one's pid and URL);
the UI's port is checked before anything starts; a child that dies stops dev (non-zero exit,
and the other children are stopped); Ctrl-C, SIGTERM and SIGHUP stop every child, and on
Linux the children get SIGTERM from the kernel when dev itself is killed.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import yaml

PID_FILE = "dev.pid"
LOCAL_HOST = "127.0.0.1"  # the code server listens here only: it runs code on request
START_TIMEOUT_S = 300.0  # code loading and the first UI answer on a busy 2-CPU machine
STOP_TIMEOUT_S = 30.0  # then the children still running are killed
DRAIN_S = 20.0  # a live run takes seconds; longer ones (backfills) are interrupted
CODE_SERVER, WEBSERVER, DAEMON = "code server", "dagster-webserver", "dagster-daemon"
POLL_S = 0.5
# The console of a run worker (printed through the code server) and of the instance's
# python loggers: INFO, not one DEBUG line per Dagster event (thousands a minute during a
# build). The events themselves are all stored and shown in the UI whatever this level.
INSTANCE_DEFAULTS = {"python_logs": {"python_log_level": "INFO"}}


class DevServerError(RuntimeError):
    """dev cannot start, or one of its processes died."""


@dataclass(frozen=True)
class CodeLocation:
    module_name: str
    location_name: str


def project_code_location(workspace: Path) -> CodeLocation:
    """The one python_module entry of the project's workspace.yaml."""
    entries = (yaml.safe_load(workspace.read_text()) or {}).get("load_from") or []
    modules = [e["python_module"] for e in entries if isinstance(e, dict) and "python_module" in e]
    if len(entries) != 1 or len(modules) != 1 or "module_name" not in modules[0]:
        raise DevServerError(f"{workspace} must load exactly one python_module")
    module = modules[0]
    return CodeLocation(module["module_name"], module.get("location_name", module["module_name"]))


def write_instance(dagster_home: Path, project_config: Path) -> Path:
    """DAGSTER_HOME/dagster.yaml: the project's instance config plus INSTANCE_DEFAULTS for
    sections it does not set."""
    config = yaml.safe_load(project_config.read_text()) or {}
    for section, defaults in INSTANCE_DEFAULTS.items():
        config[section] = {**defaults, **(config.get(section) or {})}
    dagster_home.mkdir(parents=True, exist_ok=True)
    path = dagster_home / "dagster.yaml"
    path.write_text(f"# Written by `agg-pipeline dev` from {project_config}: edit that file.\n"
                    + yaml.safe_dump(config, sort_keys=False))
    return path


def write_workspace(dagster_home: Path, location: CodeLocation, port: int) -> Path:
    """A workspace whose one code location is the code server dev runs."""
    path = dagster_home / "workspace.yaml"
    path.write_text(yaml.safe_dump({"load_from": [{"grpc_server": {
        "host": LOCAL_HOST, "port": port, "location_name": location.location_name}}]}))
    return path


@contextmanager
def exclusive_home(home: Path, url: str) -> Iterator[None]:
    """Hold AGG_HOME for this dev (pid and URL in its pid file), or refuse with the holder's.

    The lock is an flock on the pid file: the kernel releases it when the process ends,
    however it ends, so a stale file never blocks a new dev."""
    home.mkdir(parents=True, exist_ok=True)
    handle = open(home / PID_FILE, "a+")  # noqa: SIM115 (held for the context's lifetime)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        owner = handle.read().split()
        handle.close()
        pid, running_url = [*owner, "?", "?"][:2]
        raise DevServerError(
            f"agg-pipeline dev is already running on {home} (pid {pid}, UI {running_url}): "
            f"use that one, stop it (Ctrl-C in its terminal, or `kill {pid}`), or set "
            "AGG_HOME to another folder") from None
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()} {url}\n")
        handle.flush()
        yield
    finally:
        handle.truncate(0)
        handle.close()  # releases the lock


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def check_port_free(host: str, port: int) -> None:
    """Refuse a UI port that something already listens on (before anything starts)."""
    with socket.socket(_family(host), socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the webserver binds
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise DevServerError(
                f"cannot serve the UI on {host}:{port}: {exc.strerror or exc}. Another "
                "program (or another agg-pipeline dev) is using the port: pick another "
                "with --port") from None


def free_port(host: str = LOCAL_HOST) -> int:
    with socket.socket(_family(host), socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def probe_host(host: str) -> str:
    """Where this machine reaches a server bound to `host`."""
    return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)


def http_url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


@dataclass
class Child:
    name: str
    process: subprocess.Popen

    def describe_exit(self) -> str:
        code = self.process.returncode
        how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
        return f"{self.name} (pid {self.process.pid}) {how}"


@dataclass
class Supervisor:
    """Starts the children (inheriting this process's environment and console), watches
    them, and stops them all on exit from its context, in every case."""

    cwd: Path
    echo: Callable[[str], None]
    runs_in_flight: Callable[[], int] | None = None  # runs started and not finished
    children: list[Child] = field(default_factory=list)

    def __enter__(self) -> Supervisor:
        # Dagster's processes treat SIGTERM like SIGINT: a SIGINT ignored here (dev started in
        # the background of a script) would be inherited and make them ignore both.
        # SIGHUP (the terminal closed) too: the children, in their own process groups, would
        # not get it.
        self._previous = {signal.SIGTERM: signal.signal(signal.SIGTERM, _interrupt),
                          signal.SIGHUP: signal.signal(signal.SIGHUP, _interrupt),
                          signal.SIGINT: signal.signal(signal.SIGINT, signal.default_int_handler)}
        return self

    def __exit__(self, *exc_info) -> None:
        try:
            self.stop()
        finally:
            for signum, handler in self._previous.items():
                signal.signal(signum, handler)

    def spawn(self, name: str, args: list[str]) -> Child:
        # Each child leads its own process group: a Ctrl-C in the terminal reaches only dev,
        # which stops each child once, with what it started (code server's workers, runs).
        child = Child(name, subprocess.Popen([sys.executable, *args], cwd=self.cwd,
                                             process_group=0, preexec_fn=_parent_death_signal()))
        self.children.append(child)
        return child

    def start_code_server(self, location: CodeLocation, port: int) -> Child:
        return self.spawn(CODE_SERVER, [
            "-m", "dagster", "code-server", "start", "--host", LOCAL_HOST, "--port", str(port),
            "--module-name", location.module_name, "--location-name", location.location_name,
            "--log-level", "warning"])

    def start_webserver(self, workspace: Path, host: str, port: int) -> Child:
        return self.spawn(WEBSERVER, [
            "-m", "dagster_webserver", "--workspace", str(workspace), "--host", host,
            "--port", str(port), "--dagster-log-level", "info"])

    def start_daemon(self, workspace: Path) -> Child:
        return self.spawn(DAEMON, [
            "-m", "dagster._daemon", "run", "--workspace", str(workspace),
            "--log-level", "info"])

    def _check_alive(self) -> None:
        for child in self.children:
            if child.process.poll() is not None:
                raise DevServerError(f"{child.describe_exit()}: agg-pipeline dev stops")

    def _wait(self, ready: Callable[[], bool], what: str) -> float:
        started = time.monotonic()
        while not ready():
            self._check_alive()
            if time.monotonic() - started > START_TIMEOUT_S:
                raise DevServerError(f"{what} not ready after {START_TIMEOUT_S:.0f} s")
            time.sleep(POLL_S)
        return time.monotonic() - started

    def wait_for_port(self, port: int, what: str) -> float:
        """Until something accepts connections on LOCAL_HOST:port (the code server listens
        only once its code has loaded). Returns the seconds waited."""

        def listening() -> bool:
            try:
                socket.create_connection((LOCAL_HOST, port), timeout=1).close()
                return True
            except OSError:
                return False

        return self._wait(listening, what)

    def wait_for_http(self, url: str, what: str) -> float:
        # straight to this machine's server, whatever http_proxy the environment names
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

        def answering() -> bool:
            try:
                with opener.open(url, timeout=5) as response:
                    return response.status == 200
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                return False

        return self._wait(answering, what)

    def watch(self) -> None:
        """Until a child exits (DevServerError) or Ctrl-C/SIGTERM (KeyboardInterrupt)."""
        while True:
            self._check_alive()
            time.sleep(POLL_S)

    def stop(self) -> None:
        """The daemon first (no new runs), then, if `runs_in_flight` is given, up to DRAIN_S
        for the runs it started to finish (instead of being interrupted and failing), then
        the others. Each: SIGTERM to its process group, SIGKILL after STOP_TIMEOUT_S. Another
        Ctrl-C meanwhile is ignored: every wait is bounded."""
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, signal.SIG_IGN)
        running = [c for c in self.children if c.process.poll() is None]
        if running:
            self.echo(f"stopping {', '.join(c.name for c in running)} ...")
        launchers = [c for c in self.children if c.name == DAEMON]
        try:
            self._stop(launchers)
            code_server_up = any(c.name == CODE_SERVER and c.process.poll() is None
                                 for c in self.children)
            if self.runs_in_flight is not None and code_server_up:
                self._drain(self.runs_in_flight)
        except Exception as exc:  # e.g. Dagster's storage gone: stop the rest regardless
            self.echo(f"not waiting for runs in flight: {type(exc).__name__}: {exc}")
        finally:
            self._stop([c for c in self.children if c not in launchers])
        if running:
            self.echo("agg-pipeline dev stopped")

    def _drain(self, runs_in_flight: Callable[[], int]) -> None:
        deadline = time.monotonic() + DRAIN_S
        told = False
        while (count := runs_in_flight()) and time.monotonic() < deadline:
            if not told:
                self.echo(f"letting {count} run(s) in flight finish (up to {DRAIN_S:.0f} s)")
                told = True
            time.sleep(POLL_S)
        if count:
            self.echo(f"{count} run(s) still in flight: interrupted")

    def _stop(self, children: list[Child]) -> None:
        running = [c for c in children if c.process.poll() is None]
        for child in children:  # a dead child's group may hold what it started
            _signal_group(child, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for child in running:
            try:
                child.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.echo(f"{child.name} (pid {child.process.pid}) did not stop in "
                          f"{STOP_TIMEOUT_S:.0f} s: killed, with its process group")
                _signal_group(child, signal.SIGKILL)
                child.process.wait()


PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _parent_death_signal() -> Callable[[], None] | None:
    """Linux: a function for Popen's preexec_fn that has the kernel send the child SIGTERM
    when dev dies, however it dies (SIGKILL included), so no webserver or daemon outlives it
    (a second dev would then run a duplicate daemon). Children are started before dev starts
    any thread (preexec_fn is not safe with threads); elsewhere, None."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl

    def set_signal() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM)

    return set_signal


def _signal_group(child: Child, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # the whole group is gone already
        os.killpg(child.process.pid, signum)


def _interrupt(signum, frame) -> None:
    """SIGTERM stops dev as Ctrl-C does."""
    raise KeyboardInterrupt(f"signal {signum}")

