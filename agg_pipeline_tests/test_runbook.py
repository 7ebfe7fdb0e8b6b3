"""The runbook jobs through Dagster, with launchpad-style run config."""

from datetime import UTC, datetime, timedelta

import dagster as dg
import pytest

from agg_pipeline.definitions import defs
from agg_pipeline.defs.runbook import runbook_jobs
from agg_pipeline.engine import aggregate as engine
from agg_pipeline_tests.definitions_snapshot import launchpad_config
from agg_pipeline_tests.helpers import T0, add_symbol, insert_bars, minute_bars, sync

LATER = T0 + timedelta(days=2)


def launch(instance, job: str, config: dict | None = None):
    op = f"{job}_op"
    run_config = {"ops": {op: {"config": config}}} if config is not None else None
    result = defs.resolve_job_def(job).execute_in_process(
        instance=instance, run_config=run_config, raise_on_error=False)
    metadata = {}
    for event in result.all_events:
        if event.event_type_value == "STEP_OUTPUT":
            metadata = {k: v.value for k, v in event.step_output_data.metadata.items()}
    return result, metadata


def state(conn) -> list[tuple]:
    return conn.execute("SELECT * FROM data_agg_state ORDER BY canonical_symbol, "
                        "timeframe").fetchall()


@pytest.fixture
def built(db):
    for symbol in ("EURUSD", "DXY"):
        add_symbol(db, symbol)
        insert_bars(db, symbol, minute_bars(T0, 180))
    sync(db)
    db.execute("UPDATE data_agg_state SET last_agg_bar_ts_utc = %s", (T0,))
    db.commit()
    for symbol in ("EURUSD", "DXY"):
        for tf in ("5m", "1h"):
            engine.aggregate(db, symbol, tf, T0, T0 + timedelta(hours=3), now=LATER)
    db.commit()
    return db


def test_backup_reset_restore_returns_state_exactly(built, instance):
    before = state(built)
    result, meta = launch(instance, "backup_agg_state", {"name": "data_agg_state_backup_pre"})
    assert result.success and meta["rows"] == 4 and meta["created"] is True
    # running it again is a no-op
    result, meta = launch(instance, "backup_agg_state", {"name": "data_agg_state_backup_pre"})
    assert result.success and meta["created"] is False

    built.execute("UPDATE data_agg_state SET last_agg_bar_ts_utc = NULL "
                  "WHERE canonical_symbol = 'DXY' AND timeframe = '5m'")
    built.execute("UPDATE data_agg_state SET last_agg_bar_ts_utc = %s WHERE "
                  "canonical_symbol = 'EURUSD'", (T0 + timedelta(days=5),))
    built.commit()
    result, meta = launch(instance, "reset_cursors", {"dry_run": False})
    assert result.success and meta["cursors_changed"] == 3
    cursors = dict(built.execute(
        "SELECT canonical_symbol || '/' || timeframe, last_agg_bar_ts_utc FROM data_agg_state"
    ).fetchall())
    end = T0 + timedelta(hours=3)
    assert cursors == {"DXY/5m": end, "DXY/1h": end, "EURUSD/5m": end, "EURUSD/1h": end}
    assert state(built) != before

    result, meta = launch(instance, "restore_agg_state",
                          {"backup_table": "data_agg_state_backup_pre"})
    assert result.success and meta["rows_restored"] == 3 and meta["rows_removed"] == 0
    assert state(built) == before  # every column, updated_at included


def test_reset_refuses_to_commit_when_a_cursor_stays_ahead(built, instance):
    built.execute("UPDATE data_agg_state SET last_agg_bar_ts_utc = %s WHERE "
                  "canonical_symbol = 'DXY' AND timeframe = '5m'", (T0 + timedelta(days=9),))
    built.execute("UPDATE data_agg_state SET last_agg_bar_ts_utc = NULL WHERE "
                  "canonical_symbol = 'EURUSD' AND timeframe = '5m'")
    built.commit()
    before = state(built)
    result, _ = launch(instance, "reset_cursors", {"symbols": ["EURUSD"],
                                            "dry_run": False})
    assert not result.success
    failure = result.get_step_failure_events()[0].step_failure_data.error.message
    assert "post-reset validation failed" in failure and "DXY/5m (AHEAD)" in failure
    assert state(built) == before  # nothing committed, EURUSD's NULL included


def test_dry_run_reset_changes_nothing(built, instance):
    built.execute("UPDATE data_agg_state SET last_agg_bar_ts_utc = NULL")
    built.commit()
    before = state(built)
    result, meta = launch(instance, "reset_cursors", {"dry_run": True})
    assert result.success and meta["cursors_changed"] == 4 and meta["dry_run"] is True
    assert state(built) == before


def test_rebuild_range_job_bumps_version_and_keeps_history(built, instance):
    result, meta = launch(instance, "rebuild_range", {
        "symbols": ["EURUSD"], "start": T0.isoformat(),
        "end": (T0 + timedelta(hours=1)).isoformat()})
    assert result.success
    assert meta["bars_soft_deleted"] == 13 and meta["bars_inserted"] == 13  # 12 x 5m + 1h
    versions = dict(built.execute(
        "SELECT timeframe, max(derivation_version) FROM derived_data_bars WHERE "
        "canonical_symbol = 'EURUSD' AND deleted_at IS NULL GROUP BY 1").fetchall())
    assert versions == {"5m": 2, "1h": 2}
    result, _ = launch(instance, "rebuild_range", {"symbols": ["EURUSD"], "start": "yesterday",
                                                   "end": "2026-01-01T00:00:00Z"})
    assert not result.success


def test_preflight_report_answers_the_runbook_questions(built, instance):
    built.execute("UPDATE data_agg_state SET last_agg_bar_ts_utc = NULL WHERE "
                  "canonical_symbol = 'DXY' AND timeframe = '1h'")
    built.commit()
    result, meta = launch(instance, "preflight_report")
    assert result.success
    assert meta["missing_schema_objects"] == 0
    assert meta["tasks_with_bad_cursor"] == 1 and meta["task_count"] == 4
    assert "DXY" in meta["tasks"] and "source_bars_in_next_window" in meta["tasks"]


def test_backup_names_are_validated_and_old_backups_pruned(built, instance):
    result, _ = launch(instance, "backup_agg_state", {"name": "x; DROP TABLE data_bars"})
    assert not result.success
    old = datetime.now(UTC) - timedelta(days=3)
    built.execute(f"CREATE TABLE data_agg_state_backup_{old:%Y%m%dt%H%M%Sz} AS "
                  "SELECT * FROM data_agg_state")
    built.commit()
    launch(instance, "backup_agg_state", {})  # a fresh timestamped one, kept
    launch(instance, "backup_agg_state", {"name": "data_agg_state_backup_named"})  # kept
    result, meta = launch(instance, "prune_backups", {"older_than_days": 2})
    assert result.success and meta["dropped"] == 1
    left = [r[0] for r in built.execute("SELECT backup_table FROM v_agg_state_backups")]
    assert len(left) == 2 and "data_agg_state_backup_named" in left
    assert built.execute("SELECT to_regclass('data_bars')").fetchone()[0] == "data_bars"


def test_runbook_jobs_are_listed_with_launchpad_config():
    for name, field in (("reset_cursors", "symbols"), ("restore_agg_state", "backup_table"),
                        ("rebuild_range", "start"), ("prune_backups", "older_than_days")):
        job = defs.resolve_job_def(name)
        op = job.graph.node_defs[0]
        assert field in op.config_schema.as_field().config_type.fields, name
    assert isinstance(defs.resolve_job_def("preflight_report"), dg.JobDefinition)


# ================================================= refusals: unknown names, bad ranges and ages


def failure(result) -> str:
    assert not result.success
    return result.get_step_failure_events()[0].step_failure_data.error.message


def everything(conn) -> tuple:
    """Every row a runbook job may change: tasks, bars, revisions, backups."""
    row = conn.execute(
        "SELECT (SELECT md5(string_agg(s::text, '|' ORDER BY s.canonical_symbol, s.timeframe)) "
        "FROM data_agg_state s), "
        "(SELECT md5(string_agg(d::text, '|' ORDER BY d.id)) FROM derived_data_bars d), "
        "(SELECT count(*) FROM derived_bar_revisions), "
        "(SELECT string_agg(backup_table, ',' ORDER BY backup_table) FROM v_agg_state_backups)"
    ).fetchone()
    conn.rollback()
    return row


@pytest.mark.parametrize(("config", "expected"), [
    ({"symbols": ["NOSUCH"]}, "unknown symbol(s), not in the registry: 'NOSUCH'"),
    ({"symbols": ["EURUSD", "NOSUCH", "NOPE"]},
     "unknown symbol(s), not in the registry: 'NOSUCH', 'NOPE'"),
    ({"symbols": ["GBPUSD"]}, "in the registry but without tasks (not active in this "
                              "environment, or not synced yet): 'GBPUSD'"),
    ({"timeframes": ["7m"]}, "unknown timeframe(s) '7m': the ladder has 5m, 15m, 1h, 4h, 1d"),
    ({"symbols": ["EURUSD"], "timeframes": ["5m", "7m", "2h"]}, "unknown timeframe(s) '2h', '7m'"),
    ({"timeframes": ["15m"]}, "no task has timeframe(s) '15m'"),
    ({"symbols": ["EURUSD", "DXY"], "timeframes": ["1h", "15m"]},
     "no such task(s): EURUSD/15m, DXY/15m"),
])
def test_reset_cursors_refuses_what_does_not_exist_before_changing_anything(
        built, instance, config, expected):
    """Protects the operator from a green no-op (issue 18): a selection naming a symbol
    without tasks or a timeframe outside the ladder (or without tasks) used to succeed
    having reset nothing, or only the part that existed; it fails naming what is unknown,
    and nothing changes (EURUSD's NULL cursor, which the reset would fix, stays NULL)."""
    add_symbol(built, "GBPUSD", active=False)  # registered, but not in the prod environment
    built.execute("UPDATE data_agg_state SET last_agg_bar_ts_utc = NULL "
                  "WHERE canonical_symbol = 'EURUSD' AND timeframe = '5m'")
    built.commit()
    before = everything(built)
    message = failure(launch(instance, "reset_cursors", config)[0])
    assert expected in message and "nothing changed" in message
    assert everything(built) == before
    result, meta = launch(instance, "reset_cursors", {"symbols": ["EURUSD"],
                                                      "timeframes": ["5m"], "dry_run": False})
    assert result.success and meta["cursors_changed"] == 1  # the same, named rightly


@pytest.mark.parametrize(("config", "expected"), [
    ({"symbols": ["EURUSD", "NOSUCH"]}, "not in the registry: 'NOSUCH'"),
    ({"symbols": []}, "name at least one symbol"),
    ({"symbols": ["EURUSD"], "timeframes": ["7m"]}, "unknown timeframe(s) '7m'"),
    ({"symbols": ["EURUSD"], "timeframes": ["5m", "15m"]}, "no such task(s): EURUSD/15m"),
    ({"symbols": ["EURUSD", "DXY"]}, "NULL cursor on DXY/1h: run reset_cursors first"),
    ({"symbols": ["EURUSD"], "start": (T0 + timedelta(hours=1)).isoformat(),
      "end": T0.isoformat()}, "must be before end"),
    ({"symbols": ["EURUSD"], "end": T0.isoformat()}, "must be before end"),
    ({"symbols": ["EURUSD"], "start": "2025-07-07T00:00:00"}, "needs a time zone"),
    ({"symbols": ["EURUSD"], "end": "10000-01-01T00:00:00Z"}, "is not an ISO 8601 timestamp"),
    ({"symbols": ["EURUSD"], "end": "9999-12-31T00:00:00Z"}, "end must lie in"),
])
def test_rebuild_range_checks_the_whole_request_before_rebuilding_anything(
        built, instance, config, expected):
    """Protects rebuild_range from doing part of a request (it committed each symbol and
    timeframe as it went, then failed on the unknown one) or none of it in green: unknown
    symbols and timeframes, a missing task, a NULL cursor, an inverted or empty range, a
    range without a time zone or out of range are refused first, and nothing changes."""
    built.execute("UPDATE data_agg_state SET last_agg_bar_ts_utc = NULL "
                  "WHERE canonical_symbol = 'DXY' AND timeframe = '1h'")
    built.commit()
    before = everything(built)
    request = {"start": T0.isoformat(), "end": (T0 + timedelta(hours=1)).isoformat(), **config}
    message = failure(launch(instance, "rebuild_range", request)[0])
    assert expected in message, message
    assert everything(built) == before


def test_rebuild_range_takes_any_offset_as_the_utc_instant_it_names(built, instance):
    """Protects the time zone of rebuild_range's bounds: 02:00+02:00 is 00:00 UTC; the run
    says which UTC range it rebuilt."""
    result, meta = launch(instance, "rebuild_range", {
        "symbols": ["EURUSD"], "start": "2025-07-07T02:00:00+02:00",
        "end": "2025-07-07T01:00:00Z"})
    assert result.success and meta["bars_inserted"] == 13  # 12 x 5m + 1h, as from 00:00Z
    assert (meta["start_utc"], meta["end_utc"]) == (T0.isoformat(),
                                                    (T0 + timedelta(hours=1)).isoformat())


@pytest.mark.parametrize("days", [-1, -0.001, 1e308, float("nan"), float("inf"),
                                  float("-inf"), 3651])
def test_prune_backups_refuses_ages_that_are_not_a_sane_number_of_days(built, instance, days):
    """Protects backups (issue 18): older_than_days -1 dropped a backup made a second
    earlier, and 1e308 / NaN crashed; each is refused, naming the value and the bounds, and
    no backup is dropped."""
    launch(instance, "backup_agg_state", {})  # a fresh timestamped backup
    old = datetime.now(UTC) - timedelta(days=3)
    built.execute(f"CREATE TABLE data_agg_state_backup_{old:%Y%m%dt%H%M%Sz} AS "
                  "SELECT * FROM data_agg_state")
    built.commit()
    before = everything(built)
    message = failure(launch(instance, "prune_backups", {"older_than_days": days})[0])
    assert f"older_than_days={float(days)!r} must be a number of days from 0 to 3650" in message
    assert everything(built) == before
    result, meta = launch(instance, "prune_backups", {"older_than_days": 0.5})
    assert result.success and meta["dropped"] == 1  # the 3-day-old one; the fresh one stays


@pytest.mark.parametrize(("job", "config", "expected"), [
    ("backup_agg_state", {"name": "Pre-Deploy"}, "must match ^data_agg_state_backup_"),
    ("backup_agg_state", {"name": "data_agg_state_backup_" + "x" * 41}, "must match"),
    ("restore_agg_state", {"backup_table": "pre_deploy"}, "is not a data_agg_state backup"),
    ("restore_agg_state", {"backup_table": "data_agg_state_backup_nosuch"}, "does not exist"),
])
def test_backup_names_that_are_not_backups_are_refused_by_name(built, instance, job, config,
                                                               expected):
    """The siblings checked with issue 18's unknown names: a backup name outside the
    pattern, a restore from a table that is not a backup or does not exist, each refused
    with the reason, and nothing changes."""
    before = everything(built)
    assert expected in failure(launch(instance, job, config)[0])
    assert everything(built) == before


# ========================================== launchpads: open prefilled, valid, without secrets


RUNBOOK_JOBS = [job.name for job in runbook_jobs]


@pytest.mark.parametrize("name", RUNBOOK_JOBS)
def test_each_runbook_launchpad_opens_with_a_valid_config(name):
    """Issue 21: launchpads opened red ('Missing required config entries'), each showing the
    resource's url_env_var. Each now opens with a config that validates, names its op's
    every field (an example or a default), and shows no resource config."""
    job = defs.resolve_job_def(name)
    opened = launchpad_config(job)
    assert "resources" not in opened
    assert dg.validate_run_config(job, opened)
    op = job.graph.node_defs[0]
    fields = getattr(op.config_schema.as_field().config_type, "fields", None) or {}
    assert all(not spec.is_required for spec in fields.values()), name
    # every field with a value is shown (None, backup_agg_state's name, is left out)
    shown = opened.get("ops", {}).get(op.name, {}).get("config", {})
    assert set(shown) == {f for f, spec in fields.items() if spec.default_provided
                          and spec.default_value is not None}


@pytest.mark.parametrize(("name", "expected"), [
    ("preflight_report", None),
    ("reset_cursors", None),  # a dry run of every cursor
    ("restore_agg_state", "name the backup to restore (backup_table): "
                          "data_agg_state_backup_pre; nothing changed"),
    ("rebuild_range", "name at least one symbol to rebuild; nothing changed"),
    # a dry run of DXY 1m (seed 004's legacy bars): counts, withdraws nothing; here, where
    # DXY has none, refused saying so
    ("legacy_cleanup", "DXY has no '1m' bars in derived_data_bars"),
    ("legacy_cleanup_undo", "run_id of the clean-up run to undo is required"),
])
def test_runbook_jobs_launched_as_they_open_change_nothing(built, instance, name, expected):
    """Launched with the launchpad's config as it opens, a job either only reports (a
    dry run) or is refused saying what to fill in; nothing changes."""
    launch(instance, "backup_agg_state", {"name": "data_agg_state_backup_pre"})
    before = everything(built)
    result = defs.resolve_job_def(name).execute_in_process(
        instance=instance, run_config=launchpad_config(defs.resolve_job_def(name)),
        raise_on_error=False)
    if expected is None:
        assert result.success
    else:
        assert expected in failure(result)
    assert everything(built) == before


def test_restore_without_a_backup_says_there_is_none(built, instance):
    message = failure(launch(instance, "restore_agg_state", {})[0])
    assert "there is none (backup_agg_state makes one); nothing changed" in message
