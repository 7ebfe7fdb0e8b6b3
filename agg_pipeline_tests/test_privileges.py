"""Least privilege: the pipeline's role reads sources, writes derived bars and task state,
and nothing more. These tests fail if a grant is widened."""

from datetime import timedelta

import psycopg
import pytest

from agg_pipeline.db import connection
from agg_pipeline.defs.resources import MarketDatabase
from agg_pipeline_tests.helpers import T0, add_symbol, insert_bars, minute_bars, sync

FORBIDDEN = [
    ("DROP TABLE derived_data_bars", psycopg.errors.InsufficientPrivilege),
    ("ALTER TABLE data_agg_state ADD COLUMN x int", psycopg.errors.InsufficientPrivilege),
    ("TRUNCATE data_bars", psycopg.errors.InsufficientPrivilege),
    ("DELETE FROM data_bars", psycopg.errors.InsufficientPrivilege),
    ("DELETE FROM derived_data_bars", psycopg.errors.InsufficientPrivilege),
    ("DELETE FROM data_agg_state", psycopg.errors.InsufficientPrivilege),
    ("UPDATE data_bars SET close = 1", psycopg.errors.InsufficientPrivilege),
    ("INSERT INTO core_asset_registry_all (canonical_symbol) VALUES ('X')",
     psycopg.errors.InsufficientPrivilege),
    ("UPDATE core_asset_registry_all SET active = false", psycopg.errors.InsufficientPrivilege),
    ("CREATE TABLE sneaky (x int)", psycopg.errors.InsufficientPrivilege),
    ("DROP VIEW v_aggregation_frontier_health", psycopg.errors.InsufficientPrivilege),
    ("CREATE OR REPLACE FUNCTION agg_bar_is_valid(double precision, double precision, "
     "double precision, double precision, double precision, double precision, integer, "
     "timestamptz, interval) RETURNS boolean LANGUAGE sql AS 'SELECT true'",
     psycopg.errors.InsufficientPrivilege),
]


@pytest.fixture
def as_runtime(db, runtime_url):
    add_symbol(db, "EURUSD")
    insert_bars(db, "EURUSD", minute_bars(T0, 60))
    sync(db)
    db.commit()
    with MarketDatabase().connect() as conn:  # what every asset, check and sensor uses
        yield conn


def test_pipeline_connects_as_the_runtime_role_only(as_runtime, runtime_url):
    user, is_super, member = as_runtime.execute(
        "SELECT current_user, usesuper, pg_has_role(current_user, 'agg_pipeline_runtime', "
        "'MEMBER') FROM pg_user WHERE usename = current_user").fetchone()
    assert user == connection.parse_url(runtime_url)["user"]
    assert not is_super and member


@pytest.mark.parametrize(("statement", "error"), FORBIDDEN, ids=[s[:40] for s, _ in FORBIDDEN])
def test_runtime_role_cannot(as_runtime, statement, error):
    with pytest.raises(error):
        as_runtime.execute(statement)
    as_runtime.rollback()


def test_runtime_role_can_do_its_job(as_runtime):
    from agg_pipeline.engine import aggregate, runbook

    result = aggregate.aggregate(as_runtime, "EURUSD", "5m", T0, T0 + timedelta(hours=1),
                                 now=T0 + timedelta(days=1))
    as_runtime.commit()
    assert result.bars_inserted == 12
    backup = runbook.backup_agg_state(as_runtime)
    assert backup.created and backup.rows == 2
    assert runbook.restore_agg_state(as_runtime, backup.table) == {"rows_restored": 0,
                                                                   "rows_removed": 0}


def test_definer_functions_have_a_fixed_search_path_and_validate_names(as_runtime):
    rows = as_runtime.execute(
        "SELECT proname, prosecdef, proconfig FROM pg_proc WHERE proname IN "
        "('agg_backup_state', 'agg_restore_state', 'agg_prune_backups') ORDER BY 1").fetchall()
    assert len(rows) == 3
    for name, definer, config in rows:
        assert definer, name
        assert any(c.startswith("search_path=") and c.endswith("pg_temp") for c in config), name
    with pytest.raises(psycopg.errors.InvalidName):
        as_runtime.execute("SELECT agg_backup_state('data_agg_state_backup_x; DROP TABLE "
                           "data_bars')")
    as_runtime.rollback()
    with pytest.raises(psycopg.errors.InvalidName):
        as_runtime.execute("SELECT agg_restore_state('data_bars')")
    as_runtime.rollback()
