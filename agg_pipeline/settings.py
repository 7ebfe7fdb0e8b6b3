"""Environment configuration: every variable the project reads, in one place.

Secrets (database URLs) are read here and handed to connection code; they are never
logged, put in Dagster metadata or shown in the UI.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent

DATABASE_URL_VAR = "AGG_DATABASE_URL"
DAGSTER_STORAGE_URL_VAR = "DAGSTER_POSTGRES_URL"
TEST_DATABASE_URL_VAR = "AGG_TEST_DATABASE_URL"
ENVIRONMENT_VAR = "AGG_ENV"
HOME_VAR = "AGG_HOME"
TIMEFRAMES_FILE_VAR = "AGG_TIMEFRAMES_FILE"

ENVIRONMENTS = ("prod", "dev", "test")


def project_root() -> Path | None:
    """The source checkout holding this package, if it runs from one."""
    root = PACKAGE_DIR.parent
    return root if (root / "pyproject.toml").is_file() else None


def sql_dir() -> Path:
    """The `sql/` folder: the checkout's own, or the copy packaged into the wheel."""
    root = project_root()
    if root is not None and (root / "sql").is_dir():
        return root / "sql"
    return PACKAGE_DIR / "sql"


def agg_home() -> Path:
    """Project-local state (embedded server data, Dagster home).

    Every process (webserver, daemon, run workers, CLI) must agree on it, so it is
    anchored on the checkout rather than the current directory when possible.
    """
    configured = os.environ.get(HOME_VAR)
    if configured:
        return Path(configured).expanduser().resolve()
    root = project_root()
    return (root if root is not None else Path.cwd()) / ".agg_pipeline"


def timeframes_file() -> Path:
    """The timeframes and calendars config: AGG_TIMEFRAMES_FILE, else the packaged one."""
    configured = os.environ.get(TIMEFRAMES_FILE_VAR, "").strip()
    return Path(configured).expanduser() if configured else PACKAGE_DIR / "timeframes.toml"


def environment() -> str:
    """Which registry flag selects symbols: prod uses `active`, dev/test use `test_active`."""
    env = os.environ.get(ENVIRONMENT_VAR, "prod").strip().lower()
    if env not in ENVIRONMENTS:
        raise ValueError(f"{ENVIRONMENT_VAR}={env!r} is not one of {', '.join(ENVIRONMENTS)}")
    return env


def configured_database_url() -> str | None:
    """The market-data database URL from the environment, or None for the embedded server."""
    url = os.environ.get(DATABASE_URL_VAR, "").strip()
    return url or None


# Dagster reads these only from the environment, never from dagster.yaml: the webserver and
# the daemon (which create runs and their planned events) and the code server (whose run
# workers store the events) must all carry them. `agg-pipeline dev`, deploy/compose.yaml and
# deploy/helm/values.yaml set them; a test keeps those in step with this dict.
#  - a run's per-partition materialisations are stored in batches of up to 1000 rows instead
#    of one INSERT each;
#  - a run over N partitions writes one "planned" event per asset instead of N. Trade-off,
#    read in dagster/_core/storage/event_log/base.py: a failed run then marks none of its
#    partitions failed in the UI (the run itself fails, alerts_sensor reports it, and the
#    task table books it).
DAGSTER_PROCESS_ENV: dict[str, str] = {
    "DAGSTER_EVENT_BATCH_SIZE": "1000",
    "DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS": "true",
}


def apply_dagster_process_env() -> list[str]:
    """Set the DAGSTER_PROCESS_ENV variables this process's environment lacks (a value the
    user set wins); returns the names that were missing.

    Effective for what this process and its children do afterwards: Dagster 1.13.27 reads
    both with os.getenv each time it uses them (DAGSTER_EVENT_BATCH_SIZE when a run stores
    its events, DAGSTER_EMIT_... when a run is created and its planned events written). It
    cannot reach a webserver or daemon that is already running: they create runs too."""
    missing = [name for name in DAGSTER_PROCESS_ENV if name not in os.environ]
    for name in missing:
        os.environ[name] = DAGSTER_PROCESS_ENV[name]
    return missing


START_VAR = "AGG_START_UTC"
DEFAULT_START = "2025-07-01T00:00:00+00:00"


def default_agg_start() -> datetime:
    """agg_start_utc for new tasks and the first day partition (SPEC contract 5)."""
    raw = os.environ.get(START_VAR, DEFAULT_START)
    try:
        value = datetime.fromisoformat(raw)
    except ValueError:
        raise ValueError(f"{START_VAR}={raw!r} is not an ISO-8601 timestamp") from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    value = value.astimezone(UTC)
    if (value.hour, value.minute, value.second, value.microsecond) != (0, 0, 0, 0):
        raise ValueError(f"{START_VAR}={raw!r} must be midnight UTC (day partitions start there)")
    return value


TIME_PARTITION_VAR = "AGG_TIME_PARTITION"
TIME_PARTITION_GRAINS = ("day", "month", "year")


def time_partition() -> str:
    """The time dimension of the bars assets' partitions: `day` (default), `month` or `year`."""
    raw = os.environ.get(TIME_PARTITION_VAR, "").strip().lower() or "day"
    if raw not in TIME_PARTITION_GRAINS:
        raise ValueError(f"{TIME_PARTITION_VAR}={raw!r} is not one of "
                         f"{', '.join(TIME_PARTITION_GRAINS)}")
    return raw


FRESHNESS_CRON_VAR = "AGG_FRESHNESS_CRON"
# Every half hour from Monday 00:00 to Friday 20:30 UTC: always inside the FX week (Sunday
# ~21:00 to Friday ~21:00 UTC), so a closed market never counts as stale.
DEFAULT_FRESHNESS_CRON = "*/30 0-20 * * 1-5"


def freshness_cron() -> str | None:
    """Deadlines of Dagster's freshness policy on the mandatory bars assets; None when off."""
    raw = os.environ.get(FRESHNESS_CRON_VAR, DEFAULT_FRESHNESS_CRON).strip()
    if raw.lower() in ("", "off"):
        return None
    from dagster._utils.schedules import is_valid_cron_string  # Dagster's own cron rules

    if not is_valid_cron_string(raw):
        raise ValueError(f"{FRESHNESS_CRON_VAR}={raw!r} is not a cron expression "
                         "(five fields, e.g. '*/30 0-20 * * 1-5'), nor 'off'")
    return raw


def _positive_int(var: str, raw: str) -> int:
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError(f"{var}={raw!r} must be a positive integer")
    return int(raw)


def _count(var: str, default: int) -> int:
    raw = os.environ.get(var, "").strip()
    return _positive_int(var, raw) if raw else default


# The live path's planner (engine/planning.py): the schedule and the sensors.
MAX_RUNS_PER_TICK_VAR = "AGG_MAX_RUNS_PER_TICK"
DEFAULT_MAX_RUNS_PER_TICK = 10  # the cron worker's MAX_TASKS, now runs of many symbols each


# source_frontier_sensor's interval (read when the code loads). Dagster's sensor loop ticks
# at most every 5 s; a tick at 1,000 symbols costs the daemon ~0.5 s with nothing to request,
# ~1 s at 10,000 (README, "Performance and scale"): raise it to trade latency for CPU.
FRONTIER_INTERVAL_VAR = "AGG_FRONTIER_INTERVAL_SECONDS"
DEFAULT_FRONTIER_INTERVAL_S = 5


def frontier_interval_seconds() -> int:
    """How often source_frontier_sensor looks for complete windows (at least 5 s)."""
    seconds = _count(FRONTIER_INTERVAL_VAR, DEFAULT_FRONTIER_INTERVAL_S)
    if seconds < 5:
        raise ValueError(f"{FRONTIER_INTERVAL_VAR}={seconds}: Dagster's sensors tick at most "
                         "every 5 seconds")
    return seconds


def max_runs_per_tick() -> int:
    """Runs the schedule or a sensor may request per tick (each covers many symbols)."""
    return _count(MAX_RUNS_PER_TICK_VAR, DEFAULT_MAX_RUNS_PER_TICK)


MAX_PARTITIONS_PER_RUN_VAR = "AGG_MAX_PARTITIONS_PER_RUN"
# one materialisation event per partition and asset: 1,000 symbols' live day in one run
DEFAULT_MAX_PARTITIONS_PER_RUN = 1000


def max_partitions_per_run() -> int:
    """Symbol x period partitions one live run may cover."""
    return _count(MAX_PARTITIONS_PER_RUN_VAR, DEFAULT_MAX_PARTITIONS_PER_RUN)


RECONCILE_DAYS_VAR = "AGG_RECONCILE_DAYS"
DEFAULT_RECONCILE_DAYS = 7


def reconcile_days() -> int:
    """The recent UTC days the reconciliation backstop re-checks (today included)."""
    return _count(RECONCILE_DAYS_VAR, DEFAULT_RECONCILE_DAYS)


RECONCILE_SYMBOLS_VAR = "AGG_RECONCILE_SYMBOLS_PER_TICK"
DEFAULT_RECONCILE_SYMBOLS = 10  # ~0.35 s of a late-data tick (bench/tick_bench.py)


def reconcile_symbols_per_tick() -> int:
    """Symbols the reconciliation backstop re-checks per late-data tick (a rotation)."""
    return _count(RECONCILE_SYMBOLS_VAR, DEFAULT_RECONCILE_SYMBOLS)


BACKFILL_BATCH_VAR = "AGG_BACKFILL_MAX_PARTITIONS_PER_RUN"


def backfill_max_partitions_per_run() -> int | None:
    """None: a backfill is a single run (per symbol); N: runs of at most N partitions."""
    raw = os.environ.get(BACKFILL_BATCH_VAR, "").strip()
    return _positive_int(BACKFILL_BATCH_VAR, raw) if raw else None


ALERT_WEBHOOK_VAR = "AGG_ALERT_WEBHOOK_URL"


def alert_webhook_url() -> str | None:
    """Where alerts are POSTed (a secret: never logged); None for log lines only."""
    return os.environ.get(ALERT_WEBHOOK_VAR, "").strip() or None


# Run liveness (defs/liveness.py): every run worker records a heartbeat; a STARTED run silent
# for the timeout is failed (and retried), on every launcher. The timeout must leave a live
# worker room for a few beats lost to a busy machine or a database blip. The sensor confirms a
# suspect at a look at least two beats after the first (a live worker has beaten again by
# then, even after an outage): two beats (20 s) fit in one look interval (30 s), so the next
# look confirms. Bound: 90 s of silence + up to 30 s to the first look + 30 s = 2.5 minutes,
# plus the ticks' own latency (measured: 150 s from kill -9 to FAILURE); stated as 3 minutes.
HEARTBEAT_VAR = "AGG_HEARTBEAT_SECONDS"
DEFAULT_HEARTBEAT_S = 10
HEARTBEAT_TIMEOUT_VAR = "AGG_HEARTBEAT_TIMEOUT_SECONDS"
DEFAULT_HEARTBEAT_TIMEOUT_S = 90
LIVENESS_CHECK_VAR = "AGG_LIVENESS_CHECK_SECONDS"
DEFAULT_LIVENESS_CHECK_S = 30


def heartbeat_seconds() -> int:
    """How often a run worker records that it is alive."""
    return _count(HEARTBEAT_VAR, DEFAULT_HEARTBEAT_S)


def heartbeat_timeout_seconds() -> int:
    """A run worker silent this long is taken for dead: at least three heartbeats."""
    timeout = _count(HEARTBEAT_TIMEOUT_VAR, DEFAULT_HEARTBEAT_TIMEOUT_S)
    if timeout < 3 * heartbeat_seconds():
        raise ValueError(f"{HEARTBEAT_TIMEOUT_VAR}={timeout} must be at least 3 x "
                         f"{HEARTBEAT_VAR} ({heartbeat_seconds()})")
    return timeout


def liveness_check_seconds() -> int:
    """How often run_liveness_sensor looks at the heartbeats (read when the code loads)."""
    return _count(LIVENESS_CHECK_VAR, DEFAULT_LIVENESS_CHECK_S)


# Retention of Dagster's own run/event storage (defs/storage_retention.py): finished live-lane
# runs older than these many days are deleted with their events, unless a run holds the latest
# materialisation, observation or check evaluation of something. 0 or `off` disables a class.
DAGSTER_RETENTION_DAYS_VAR = "AGG_DAGSTER_RETENTION_DAYS"
DEFAULT_DAGSTER_RETENTION_DAYS = 7
DAGSTER_RETENTION_FAILED_DAYS_VAR = "AGG_DAGSTER_RETENTION_FAILED_DAYS"
DEFAULT_DAGSTER_RETENTION_FAILED_DAYS = 30
DAGSTER_RETENTION_RUNS_PER_TICK_VAR = "AGG_DAGSTER_RETENTION_RUNS_PER_TICK"
DEFAULT_DAGSTER_RETENTION_RUNS_PER_TICK = 50


def _days_or_off(var: str, default: int) -> int | None:
    raw = os.environ.get(var, "").strip().lower()
    if not raw:
        return default
    if raw in ("0", "off"):
        return None
    if not raw.isdigit():
        raise ValueError(f"{var}={raw!r} must be a whole number of days, or 0 / 'off' to "
                         "disable it")
    return int(raw)


def dagster_retention_days() -> int | None:
    """Age in days after which a successful live run is deleted from Dagster's storage;
    None: never."""
    return _days_or_off(DAGSTER_RETENTION_DAYS_VAR, DEFAULT_DAGSTER_RETENTION_DAYS)


def dagster_retention_failed_days() -> int | None:
    """The same for a failed or canceled live run: never shorter than the successful runs'."""
    failed = _days_or_off(DAGSTER_RETENTION_FAILED_DAYS_VAR,
                          DEFAULT_DAGSTER_RETENTION_FAILED_DAYS)
    success = dagster_retention_days()
    if failed is not None and success is not None and failed < success:
        raise ValueError(f"{DAGSTER_RETENTION_FAILED_DAYS_VAR}={failed} must be at least "
                         f"{DAGSTER_RETENTION_DAYS_VAR} ({success}): failed runs are kept "
                         "longer, for their diagnosis")
    return failed


def dagster_retention_runs_per_tick() -> int:
    """Runs the retention sensor deletes at most per tick."""
    return _count(DAGSTER_RETENTION_RUNS_PER_TICK_VAR, DEFAULT_DAGSTER_RETENTION_RUNS_PER_TICK)


def validate() -> None:
    """Read every setting once: ValueError naming each bad one (one line). `agg-pipeline dev`
    calls it before starting anything, so a bad value is not found later by each Dagster
    process as it loads the code (with a traceback each)."""
    readers = (environment, default_agg_start, time_partition, freshness_cron,
               max_runs_per_tick, max_partitions_per_run, reconcile_days,
               reconcile_symbols_per_tick, backfill_max_partitions_per_run,
               heartbeat_timeout_seconds, liveness_check_seconds, frontier_interval_seconds,
               dagster_retention_days,
               dagster_retention_failed_days, dagster_retention_runs_per_tick)
    problems = []
    for read in readers:
        try:
            read()
        except ValueError as exc:
            problems.append(str(exc))
    if problems:
        raise ValueError("; ".join(problems))
