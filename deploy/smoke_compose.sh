#!/usr/bin/env bash
# Bring deploy/compose.yaml up with a real compose engine (podman-compose 1.6 on podman) and
# check the one-host deployment end to end, then tear it down:
#   - images: the code image deploy/smoke_image.sh built (AGG_IMAGE), and PostgreSQL 15 from
#     Debian's packages (deploy/postgres/Dockerfile) on the same debootstrapped base;
#   - one `podman-compose up -d` of the whole file, secrets from a throwaway .env;
#   - `migrate` exits 0; postgres, the code server and the webserver pass their own health
#     checks (`podman healthcheck run`: podman schedules them with systemd, absent here); the
#     daemon keeps running;
#   - a symbol seeded with three days of recent 1m bars (`agg-pipeline seed-demo`, run through
#     the `migrate` service: the runtime login may not write source bars) gets its 5m and 1h bars
#     from the daemon's sensors (the frontier sensor ticks every 5 s; the schedule every 5
#     minutes builds them as well);
#   - the UI on its published port answers /server_info and GraphQL: the code location loaded,
#     a successful aggregate_bars run, and that run's captured step output (the storage volume
#     the code server and the webserver share);
#   - the Dagster services stop on SIGTERM (exit code 0, in seconds); `down -v` leaves no
#     container, volume or network of the project.
# On any failure: non-zero, every service's state, and the failing service's logs; the trap
# tears everything down all the same.
#
#   bash deploy/smoke_image.sh && bash deploy/smoke_compose.sh     (as root, podman installed)
#
# podman-compose: Debian 12's 1.0.3 ignores depends_on conditions and the top-level `name`
# and would start every service at once; 1.6 (PyPI) waits for `migrate` to exit before the
# code server starts. Unless `podman-compose` on PATH (or AGG_PODMAN_COMPOSE) is 1.6 or newer,
# the script installs podman-compose==1.6.0 into .venv-compose. 1.6 needs podman >= 4.6 to
# wait for `service_healthy`; on Debian 12's podman 4.3 it starts the webserver and the daemon
# right after the code server's container, and they connect once it serves.
set -euo pipefail
cd "$(dirname "$0")/.."

image="${AGG_IMAGE:-localhost/agg-pipeline:smoke}"
base="${AGG_BASE_IMAGE:-localhost/agg-debian-python:bookworm}"
pg_image="${AGG_POSTGRES_IMAGE:-localhost/agg-postgres:15}"
project="agg-compose-smoke-$$"  # not the file's `name`: a real deployment may share the host
symbol=EURUSD
started=$(date +%s)
failing=""  # the service a failed step was waiting for: its logs are printed

command -v podman >/dev/null || { echo "podman is not installed (apt-get install podman runc)" >&2; exit 2; }
podman image exists "$image" || { echo "no image $image: run deploy/smoke_image.sh first" >&2; exit 2; }
podman image exists "$base" || { echo "no base image $base: run deploy/smoke_image.sh first" >&2; exit 2; }

work="$(mktemp -d)"
chmod 700 "$work"
# as deploy/smoke_image.sh: runc (crun 1.8 refuses this cgroup v1 host) and rlimits the sandbox
# lets a container have
cat > "$work/containers.conf" <<EOF
[containers]
default_ulimits = ["nofile=$(ulimit -Hn):$(ulimit -Hn)", "nproc=32768:32768"]
[engine]
runtime = "runc"
EOF
export CONTAINERS_CONF="$work/containers.conf"

compose_cmd="${AGG_PODMAN_COMPOSE:-podman-compose}"
if ! "$compose_cmd" --version 2>/dev/null | grep -Eq 'podman-compose version (1\.([6-9]|[1-9][0-9])|[2-9])\.'; then
  venv="${AGG_COMPOSE_VENV:-.venv-compose}"
  if ! "$venv/bin/podman-compose" --version 2>/dev/null | grep -q 'podman-compose version 1\.6\.0'; then
    echo "== installing podman-compose 1.6.0 into $venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check 'podman-compose==1.6.0' >"$work/pip.log" 2>&1 \
      || { tail -20 "$work/pip.log" >&2; exit 1; }
  fi
  compose_cmd="$venv/bin/podman-compose"
fi
echo "== $("$compose_cmd" --version 2>/dev/null | head -1); $(podman --version)"

# Throwaway secrets, never printed: compose reads them from this .env only.
port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
(umask 077; python3 - "$image" "$pg_image" "$port" > "$work/.env" <<'PY'
import secrets
import sys

for name in ("POSTGRES_PASSWORD", "AGG_MIGRATOR_PASSWORD", "AGG_RUNTIME_PASSWORD",
             "DAGSTER_PG_PASSWORD"):
    print(f"{name}={secrets.token_urlsafe(24)}")
print(f"AGG_IMAGE={sys.argv[1]}\nAGG_POSTGRES_IMAGE={sys.argv[2]}\nAGG_WEBSERVER_PORT={sys.argv[3]}")
PY
)
compose() { "$compose_cmd" -p "$project" -f deploy/compose.yaml --env-file "$work/.env" "$@"; }
services=(postgres migrate code-server webserver daemon)
container() {  # the container of service $1 (podman-compose names it <project>_<service>_1)
  podman ps -a --format '{{.Names}}' --filter "label=com.docker.compose.project=$project" \
    --filter "label=com.docker.compose.service=$1" | head -1
}

finish() {
  local code=$?
  if [ "$code" -ne 0 ]; then
    echo "== FAILED (exit $code) after $(( $(date +%s) - started ))s${failing:+, waiting for $failing}" >&2
    podman ps -a --filter "label=com.docker.compose.project=$project" \
      --format '{{.Names}}  {{.Status}}' >&2 || true
    for service in "${services[@]}"; do
      local name lines=15
      name="$(container "$service")"
      [ -n "$name" ] || continue
      [ "$service" = "$failing" ] && lines=120
      echo "---- logs of $service (last $lines lines)" >&2
      podman logs --tail "$lines" "$name" 2>&1 | sed 's/^/  /' >&2 || true
    done
  fi
  compose down -v -t 30 >"$work/down.log" 2>&1 || { echo "compose down failed:" >&2; tail -20 "$work/down.log" >&2; }
  rm -rf "$work"
  exit "$code"
}
trap finish EXIT

echo "== PostgreSQL image $pg_image (Debian's postgresql-15 on $base)"
podman build --format docker --network host --build-arg "BASE_IMAGE=$base" \
  -f deploy/postgres/Dockerfile -t "$pg_image" deploy/postgres >"$work/build.log" 2>&1 \
  || { tail -40 "$work/build.log" >&2; exit 1; }

echo "== compose up (project $project, UI on 127.0.0.1:$port)"
volumes_before="$(podman volume ls -q | sort)"
up_started=$(date +%s)
compose up -d >"$work/up.log" 2>&1 || { grep -v '^[0-9a-f]\{64\}$' "$work/up.log" >&2; exit 1; }
grep -i 'warning\|error' "$work/up.log" | grep -v systemd | sed 's/^/  /' || true

# migrate: podman-compose waited for its first run to exit before the code server; podman runs
# it again (a no-op) as each dependent starts. Every run must end with exit code 0.
failing=migrate
migrate="$(container migrate)"
code="$(podman wait "$migrate")"
[ "$code" = 0 ] || { echo "migrate exited with $code" >&2; exit 1; }
grep -E 'applied [0-9]+ migration|up to date' <(podman logs "$migrate" 2>&1) | head -1 | sed 's/^/  migrate: /'

# seeded now, while the code server loads: the daemon's first registry sync then finds it.
# Three days: the demo's FX sessions are 24x5, and the last day of a weekend has no bars.
echo "== $symbol: three days of 1m bars up to now (seed-demo through the migrate service)"
failing=migrate
compose run --rm --no-deps -T migrate agg-pipeline seed-demo --symbols "$symbol" --days 3 \
  >"$work/seed.log" 2>&1 || { cat "$work/seed.log" >&2; exit 1; }
grep -E "$symbol" "$work/seed.log" | tail -1 | sed 's/^/  /'
seeded=$(date +%s)

healthy() {  # healthy SERVICE SECONDS: run the container's own health check until it passes
  local service="$1" name deadline
  failing="$service"
  name="$(container "$service")"
  deadline=$(( $(date +%s) + $2 ))
  until podman healthcheck run "$name" >/dev/null 2>&1; do
    if [ "$(date +%s)" -ge "$deadline" ]; then
      echo "$service did not pass its health check within $2s" >&2; exit 1
    fi
    sleep 2
  done
  echo "  $service healthy $(( $(date +%s) - up_started ))s after up"
}
healthy postgres 120
healthy code-server 300
healthy webserver 180
failing=daemon
for service in code-server webserver daemon; do
  name="$(container "$service")"
  state="$(podman inspect "$name" --format '{{.State.Status}} {{.RestartCount}}')"
  [ "$state" = "running 0" ] || { failing="$service"; echo "$service: $state (status, restarts)" >&2; exit 1; }
done

failing=daemon
pg="$(container postgres)"
deadline=$(( seeded + 420 ))
while :; do
  bars="$(podman exec "$pg" psql -U postgres -d markets -tAc \
    "SELECT string_agg(timeframe || '=' || n, ' ' ORDER BY timeframe) FROM (
       SELECT timeframe, count(*) AS n FROM derived_data_bars
       WHERE canonical_symbol = '$symbol' AND deleted_at IS NULL GROUP BY timeframe) t")"
  case " $bars " in *" 1h="[1-9]*" 5m="[1-9]*) break ;; esac
  if [ "$(date +%s)" -ge "$deadline" ]; then
    echo "no 5m and 1h bars for $symbol $(( $(date +%s) - seeded ))s after seeding: '${bars}'" >&2
    exit 1
  fi
  sleep 5
done
echo "  bars: $bars, $(( $(date +%s) - seeded ))s after seeding"

echo "== the UI on 127.0.0.1:$port"
failing=webserver
python3 - "$port" "$(container webserver)" <<'PY'
import json
import sys
import time
import urllib.request

base = f"http://127.0.0.1:{sys.argv[1]}"


def graphql(query: str, **variables) -> dict:
    request = urllib.request.Request(
        f"{base}/graphql", data=json.dumps({"query": query, "variables": variables}).encode(),
        headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        body = json.load(response)
    assert not body.get("errors"), body["errors"]
    return body["data"]


with urllib.request.urlopen(f"{base}/server_info", timeout=10) as response:
    info = json.load(response)
data = graphql("""{
  version
  workspaceOrError { __typename ... on Workspace { locationEntries {
    name loadStatus locationOrLoadError { __typename ... on PythonError { message } } } } }
}""")
assert data["version"] == info["dagster_version"], (data["version"], info)
(entry,) = data["workspaceOrError"]["locationEntries"]
assert entry["name"] == "agg_pipeline" and entry["loadStatus"] == "LOADED", entry
assert entry["locationOrLoadError"]["__typename"] == "RepositoryLocation", entry

# the bars are in before their run ends (its asset checks follow): wait for the run itself
deadline = time.monotonic() + 180
while True:
    runs = graphql("""{ runsOrError(filter: {pipelineName: "aggregate_bars"}) {
      __typename ... on Runs { results { runId status tags { key value } } } } }""")
    runs = runs["runsOrError"]["results"]
    failed = [r["runId"] for r in runs if r["status"] in ("FAILURE", "CANCELED")]
    assert not failed, f"aggregate_bars run(s) failed: {failed}"
    done = [r for r in runs if r["status"] == "SUCCESS"]
    if done:
        break
    assert time.monotonic() < deadline, f"no aggregate_bars run succeeded: {runs}"
    time.sleep(3)
run = done[-1]  # the first
tags = {t["key"]: t["value"] for t in run["tags"]}
by = tags.get("dagster/sensor_name") or tags.get("dagster/schedule_name")
assert by, tags

# the run's captured step output, as the UI's run page reads it
events = graphql("""query ($runId: ID!) { logsForRun(runId: $runId) {
  __typename ... on EventConnection { events { __typename
    ... on LogsCapturedEvent { fileKey stepKeys } } } } }""", runId=run["runId"])
captured = [e for e in events["logsForRun"]["events"] if e["__typename"] == "LogsCapturedEvent"]
assert captured, "no LogsCapturedEvent"
logs = graphql("""query ($key: [String!]!) { capturedLogs(logKey: $key) { stdout stderr } }""",
               key=[run["runId"], "compute_logs", captured[0]["fileKey"]])["capturedLogs"]
assert (logs["stdout"] or "") + (logs["stderr"] or ""), f"the UI shows no step output: {logs}"
print(f"  dagster {info['dagster_version']}; location agg_pipeline loaded; {len(done)} successful "
      f"aggregate_bars run(s), the first by {by} ({tags.get('agg/days')}), its step output "
      f"readable ({len((logs['stdout'] or '') + (logs['stderr'] or ''))} chars)")
PY

# podman-compose stops every service at once, the database with them: the Dagster services
# first (as deploy/README.md says to), each on SIGTERM, well within its grace period
echo "== compose stop daemon webserver code-server, then down"
stopping=$(date +%s)
compose stop -t 30 daemon webserver code-server >"$work/stop.log" 2>&1 \
  || { tail -20 "$work/stop.log" >&2; exit 1; }
stopped_in=$(( $(date +%s) - stopping ))
for service in daemon webserver code-server; do
  state="$(podman inspect "$(container "$service")" --format '{{.State.Status}} {{.State.ExitCode}}')"
  [ "$state" = "exited 0" ] || { failing="$service"; echo "$service after SIGTERM: $state" >&2; exit 1; }
done
[ "$stopped_in" -lt 25 ] || { echo "the Dagster services took ${stopped_in}s to stop" >&2; exit 1; }
failing=""
trap - EXIT
down_started=$(date +%s)
compose down -v -t 30 >"$work/down.log" 2>&1 || { tail -20 "$work/down.log" >&2; rm -rf "$work"; exit 1; }
left="$(podman ps -a -q --filter "label=com.docker.compose.project=$project")"
# the project's named volumes, and any anonymous one (64 hex digits) its containers made
left+="$(comm -13 <(echo "$volumes_before") <(podman volume ls -q | sort) \
  | grep -E "^${project}_|^[0-9a-f]{64}$" || true)"
left+="$(podman network ls --format '{{.Name}}' | grep "^${project}_" || true)"
rm -rf "$work"
[ -z "$left" ] || { echo "left behind after down -v: $left" >&2; exit 1; }
echo "stopped in ${stopped_in}s (exit code 0 each), down in $(( $(date +%s) - down_started ))s, nothing left behind"
echo "== compose smoke test passed in $(( $(date +%s) - started ))s"
