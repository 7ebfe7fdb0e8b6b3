"""Wait until the PostgreSQL server of AGG_DATABASE_URL accepts this login, then run the
command given (exec: it replaces this process).

    python /opt/dagster/app/wait_for_database.py agg-pipeline migrate

deploy/compose.yaml's one-off `migrate` starts this way instead of through a `depends_on`
on the `postgres` service, because two compose engines cannot honour that dependency:
podman-compose on podman < 4.6 ignores `condition: service_healthy` (it starts `migrate`
while the server is still initialising its volume), and podman (4.3 of Debian 12; fixed
upstream in 2025, containers/podman pull request 26193) cannot start a container that
requires a stopped container that itself requires a running one: the code server requires
`migrate`, which has exited, which would require `postgres`. Without the dependency, every
engine starts `migrate` at once, and it waits here.

Retries only while the server is unreachable or starting (an outage: see
agg_pipeline.db.connection); a refused login or a missing database fails at once. Waits at
most AGG_DATABASE_WAIT_SECONDS (default 180). Messages never carry the password.
"""

from __future__ import annotations

import os
import sys
import time

from agg_pipeline import settings
from agg_pipeline.db.connection import DatabaseConfigError, DatabaseUnavailableError, connect

# the server's container may not have joined the network yet when this one starts
RETRYABLE_CONFIG = ("could not translate host name",)


def wait(url: str, seconds: float) -> str | None:
    """None once a connection succeeds; the last error's one line after `seconds`, or at
    once when the server refused the login."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            connect(url, connect_timeout=5).close()
            return None
        except DatabaseUnavailableError as exc:
            error = str(exc)
        except DatabaseConfigError as exc:
            error = str(exc)
            if not any(text in error for text in RETRYABLE_CONFIG):
                return error
        if time.monotonic() >= deadline:
            return error
        time.sleep(1)


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: wait_for_database.py COMMAND [ARG...]", file=sys.stderr)
        return 2
    url = settings.configured_database_url()
    if not url:
        print(f"{settings.DATABASE_URL_VAR} is not set", file=sys.stderr)
        return 2
    seconds = float(os.environ.get("AGG_DATABASE_WAIT_SECONDS", "180"))
    started = time.monotonic()
    error = wait(url, seconds)
    if error:
        print(f"gave up waiting for the database after {time.monotonic() - started:.0f}s: "
              f"{error}", file=sys.stderr)
        return 1
    print(f"database answered after {time.monotonic() - started:.0f}s", flush=True)
    os.execvp(argv[0], argv)
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
