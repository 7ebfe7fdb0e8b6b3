#!/usr/bin/env bash
# Build the code-location image (deploy/Dockerfile) with podman and smoke-test it:
#   - it runs as the non-root user 10001, carries no test extras, has dagster-k8s and the SQL;
#   - its environment holds settings.DAGSTER_PROCESS_ENV;
#   - its command (`dagster code-server start ...`) serves the definitions: the gRPC health
#     check answers SERVING and a client loads the `agg_pipeline` location's jobs and assets;
#   - with AGG_SMOKE_DATABASE_URL (a database the image may migrate): `agg-pipeline migrate`.
#
#   bash deploy/smoke_image.sh            (as root, on a machine with podman installed)
#
# No registry is reachable beyond PyPI and Debian's mirror, so there is no Docker Hub base
# image: unless AGG_BASE_IMAGE names one, the script makes a Debian bookworm base with
# debootstrap (python3, venv, CA certificates; the host's CA bundle, so pip trusts the same
# TLS as the host) and `podman import`s it once.
#
# This machine's podman needs three things, all set here, not in /etc:
#   - runc, not crun (crun 1.8 refuses cgroup v1 "hybrid" hosts);
#   - explicit rlimits: podman asks for nofile=1048576 and more processes than the sandbox
#     lets a container raise to (no CAP_SYS_RESOURCE);
#   - host networking (pip during the build; the smoke test reaches the server on localhost).
set -euo pipefail
cd "$(dirname "$0")/.."

image="${AGG_IMAGE:-localhost/agg-pipeline:smoke}"
base="${AGG_BASE_IMAGE:-localhost/agg-debian-python:bookworm}"
port=4000  # the image's command and HEALTHCHECK use it; host networking: it must be free
container="agg-smoke-$$"
started=$(date +%s)

command -v podman >/dev/null || { echo "podman is not installed (apt-get install podman runc)" >&2; exit 2; }
conf="$(mktemp -d)"
trap 'podman rm -f "$container" >/dev/null 2>&1 || true; rm -rf "$conf"' EXIT
cat > "$conf/containers.conf" <<EOF
[containers]
default_ulimits = ["nofile=$(ulimit -Hn):$(ulimit -Hn)", "nproc=32768:32768"]
[engine]
runtime = "runc"
EOF
export CONTAINERS_CONF="$conf/containers.conf"

if ! podman image exists "$base"; then
  [ "$base" = "localhost/agg-debian-python:bookworm" ] || { echo "no base image $base" >&2; exit 2; }
  echo "== base image: debootstrap Debian bookworm (python3, venv)"
  rootfs="$conf/rootfs"
  debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    bookworm "$rootfs" "${AGG_DEBIAN_MIRROR:-http://deb.debian.org/debian}" >"$conf/debootstrap.log" \
    || { tail -20 "$conf/debootstrap.log" >&2; exit 1; }
  cp /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  tar -C "$rootfs" -c . | podman import --change 'CMD ["/bin/bash"]' - "$base" >/dev/null
fi

echo "== building $image"
podman build --format docker --network host --build-arg "BASE_IMAGE=$base" \
  -f deploy/Dockerfile -t "$image" . >"$conf/build.log" 2>&1 \
  || { tail -40 "$conf/build.log" >&2; exit 1; }
echo "built in $(( $(date +%s) - started ))s; $(podman image inspect "$image" --format '{{.Size}}') bytes"

run() { podman run --rm -i --no-healthcheck --network host "$image" "$@"; }

echo "== user, packages, SQL, environment"
[ "$(run id -u)" = 10001 ] || { echo "the image does not run as uid 10001" >&2; exit 1; }
# the SQL files of this checkout (migrations and queries), by name: each must be in the wheel
run python - $(cd sql && ls -- *.sql queries/*.sql) <<'PY'
import importlib.metadata as md
import os
import sys
from pathlib import Path

import dagster_k8s  # noqa: F401  (the k8s extra)

from agg_pipeline import settings

installed = {d.metadata["Name"].lower() for d in md.distributions()}
dev_only = {"pytest", "pytest-timeout", "hypothesis", "playwright", "ruff"} & installed
assert not dev_only, f"test extras in the image: {sorted(dev_only)}"
assert settings.project_root() is None, "the package must run from site-packages"
sql_files = sys.argv[1:]
assert any(name.startswith("queries/") for name in sql_files), sql_files
missing = [name for name in sql_files if not (settings.sql_dir() / name).is_file()]
assert not missing, f"SQL missing from the image: {missing}"
wrong = {k: os.environ.get(k) for k, v in settings.DAGSTER_PROCESS_ENV.items()
         if os.environ.get(k) != v}
assert not wrong, f"DAGSTER_PROCESS_ENV not in the image's environment: {wrong}"
# what uid 10001 may write: run workers' compute logs, AGG_HOME; not the instance config
home = Path(os.environ["DAGSTER_HOME"])
for folder in (home / "storage", settings.agg_home()):
    (folder / "smoke").touch()
    (folder / "smoke").unlink()
assert not os.access(home / "dagster.yaml", os.W_OK) and not os.access(home, os.W_OK)
print(f"ok: {len(installed)} distributions, dagster {md.version('dagster')}, "
      f"dagster-k8s {md.version('dagster-k8s')}, {len(sql_files)} SQL files in {settings.sql_dir()}")
PY
healthcheck="$(podman image inspect "$image" --format '{{json .Config.Healthcheck.Test}}')"
echo "healthcheck: $healthcheck"
case "$healthcheck" in *grpc-health-check*) ;; *) echo "no HEALTHCHECK in the image" >&2; exit 1;; esac

echo "== the image's command: code server on port $port"
if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
  echo "port $port is taken on this host" >&2; exit 1
fi
# (podman cannot schedule the HEALTHCHECK without systemd: it says so on stderr; the loop
# below runs the image's own HEALTHCHECK command with `podman healthcheck run`)
podman run -d --name "$container" --network host "$image" >/dev/null 2>"$conf/run.log"
deadline=$(( $(date +%s) + 180 ))
until podman healthcheck run "$container" >/dev/null 2>&1; do
  if [ "$(date +%s)" -ge "$deadline" ] || [ "$(podman inspect "$container" --format '{{.State.Running}}')" != true ]; then
    echo "the code server did not become healthy:" >&2; podman logs "$container" 2>&1 | tail -40 >&2; exit 1
  fi
  sleep 1
done
echo "healthy after $(( $(date +%s) - started ))s since the start of the script"
podman exec -i "$container" python - "$port" <<'PY'
import sys

from dagster import DagsterInstance
from dagster._core.remote_origin import GrpcServerCodeLocationOrigin

origin = GrpcServerCodeLocationOrigin(host="localhost", port=int(sys.argv[1]),
                                      location_name="agg_pipeline")
with DagsterInstance.ephemeral() as instance, origin.create_location(instance) as location:
    (repo,) = location.get_repositories().values()
    jobs = {job.name for job in repo.get_all_jobs()}
    assets = {node.key.to_user_string() for node in repo.asset_graph.asset_nodes}
    assert "aggregate_bars" in jobs, jobs
    assert {"bars_5m", "bars_1h"} <= assets, assets
    print(f"ok: location {location.name}: {len(jobs)} jobs, {len(assets)} assets, "
          f"{len(repo.get_schedules())} schedules, {len(repo.get_sensors())} sensors")
PY
[ "$(podman exec "$container" id -u)" = 10001 ]
# a deploy stops the container with SIGTERM: the code server must exit on it (draining its
# runs), not sit out the grace period until SIGKILL
stopping=$(date +%s)
podman stop -t 30 "$container" >/dev/null
stopped_in=$(( $(date +%s) - stopping ))
[ "$stopped_in" -lt 25 ] || { echo "the code server ignored SIGTERM (${stopped_in}s)" >&2; exit 1; }
echo "stopped on SIGTERM in ${stopped_in}s, exit code $(podman inspect "$container" --format '{{.State.ExitCode}}')"

if [ -n "${AGG_SMOKE_DATABASE_URL:-}" ]; then
  echo "== agg-pipeline migrate (AGG_SMOKE_DATABASE_URL)"
  podman run --rm --no-healthcheck --network host -e AGG_DATABASE_URL="$AGG_SMOKE_DATABASE_URL" "$image" \
    agg-pipeline migrate | tail -3
fi
echo "== image smoke test passed in $(( $(date +%s) - started ))s"
