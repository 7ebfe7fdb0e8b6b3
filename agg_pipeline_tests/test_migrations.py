"""Migration runner: idempotent, refuses edited history, serialises concurrent runs."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from agg_pipeline import settings
from agg_pipeline.db import connection, migrations

EXPECTED_RELATIONS = {
    "core_asset_registry_all": "r",
    "data_bars": "r",
    "derived_data_bars": "r",
    "data_agg_state": "r",
    "data_agg_source_days": "r",
    "agg_schema_migrations": "r",
    "v_aggregation_frontier_health": "v",
    "data_bars_ingested_at_idx": "i",
    "derived_unique_symbol_tf_ts": "i",
    "derived_data_bars_history_idx": "i",
}


def test_migrate_creates_schema_and_second_run_is_a_no_op(make_database):
    url = make_database()
    applied = migrations.migrate(url)
    assert applied == [m.filename for m in migrations.discover()]
    with connection.connect(url) as conn:
        relkinds = dict(conn.execute(
            "SELECT relname, relkind::text FROM pg_class WHERE relname = ANY(%s)",
            (list(EXPECTED_RELATIONS),),
        ).fetchall())
        ledger_before = conn.execute(
            "SELECT filename, checksum, applied_at FROM agg_schema_migrations ORDER BY 1"
        ).fetchall()
    assert relkinds == EXPECTED_RELATIONS

    assert migrations.migrate(url) == []
    with connection.connect(url) as conn:
        ledger_after = conn.execute(
            "SELECT filename, checksum, applied_at FROM agg_schema_migrations ORDER BY 1"
        ).fetchall()
        migrations.assert_migrated(conn)
    assert ledger_after == ledger_before


def test_phase5_columns_and_late_data_index(database_url):
    with connection.connect(database_url) as conn:
        columns = {r[0]: r[1:] for r in conn.execute(
            "SELECT column_name, data_type, column_default, is_nullable "
            "FROM information_schema.columns WHERE table_name = 'data_agg_state'"
        ).fetchall()}
        index = conn.execute(
            "SELECT indexdef FROM pg_indexes WHERE indexname = 'data_bars_ingested_at_idx'"
        ).fetchone()[0]
    assert columns["agg_start_utc"][0] == "timestamp with time zone"
    assert "2025-07-01" in columns["agg_start_utc"][1]
    assert columns["enabled"][1] == "true" and columns["enabled"][2] == "NO"
    assert columns["task_priority"][1] == "100"
    assert "(ingested_at)" in index


def test_edited_applied_migration_is_refused_by_name(make_database, tmp_path):
    sql_copy = tmp_path / "sql"
    shutil.copytree(settings.sql_dir(), sql_copy)
    url = make_database()
    migrations.migrate(url, sql_dir=sql_copy)
    edited = sql_copy / "002_data_bars.sql"
    edited.write_text(edited.read_text() + "\n-- an innocent-looking edit\n")
    (sql_copy / "999_never_applied.sql").write_text("CREATE TABLE must_not_exist (x int);")

    with pytest.raises(migrations.MigrationError, match=r"002_data_bars\.sql was changed"):
        migrations.migrate(url, sql_dir=sql_copy)
    with connection.connect(url) as conn:
        assert conn.execute("SELECT to_regclass('must_not_exist')").fetchone()[0] is None
        with pytest.raises(migrations.MigrationError, match=r"002_data_bars\.sql"):
            migrations.assert_migrated(conn, sql_dir=sql_copy)


def test_failed_migration_rolls_back_and_is_not_recorded(make_database, tmp_path):
    sql_copy = tmp_path / "sql"
    shutil.copytree(settings.sql_dir(), sql_copy)
    (sql_copy / "900_broken.sql").write_text(
        "CREATE TABLE half_done (x int);\nSELECT no_such_function();\n"
    )
    url = make_database()
    with pytest.raises(migrations.MigrationError, match=r"900_broken\.sql failed"):
        migrations.migrate(url, sql_dir=sql_copy)
    with connection.connect(url) as conn:
        assert conn.execute("SELECT to_regclass('half_done')").fetchone()[0] is None
        recorded = [r[0] for r in conn.execute("SELECT filename FROM agg_schema_migrations")]
    assert "900_broken.sql" not in recorded and "010_finite_timestamps.sql" in recorded


def test_database_without_migrations_gives_clear_error(make_database):
    url = make_database()
    with connection.connect(url) as conn, pytest.raises(
        migrations.SchemaNotReadyError, match="agg-pipeline migrate"
    ):
        migrations.assert_migrated(conn)


def test_concurrent_migrate_processes_apply_once(make_database, tmp_path):
    """Two processes start together: one applies, the other waits on the lock, then finds
    nothing to do. A slow extra migration keeps the first one busy long enough."""
    sql_copy = tmp_path / "sql"
    shutil.copytree(settings.sql_dir(), sql_copy)
    (sql_copy / "901_slow.sql").write_text("SELECT pg_sleep(2);\nCREATE TABLE slow_done (x int);\n")
    url = make_database()
    script = textwrap.dedent(f"""
        from pathlib import Path
        from agg_pipeline.db import migrations
        applied = migrations.migrate({url!r}, sql_dir=Path({str(sql_copy)!r}), echo=print)
        print("APPLIED", len(applied))
    """)
    procs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
             for _ in range(2)]
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    counts = sorted(int(o.split("APPLIED")[1]) for o in outputs)
    assert counts == [0, len(list(sql_copy.glob("*.sql")))]
    waiting = next(o for o in outputs if "APPLIED 0" in o)
    assert "another process is migrating" in waiting


def test_migration_names_are_validated(tmp_path):
    (tmp_path / "001_ok.sql").write_text("SELECT 1;")
    (tmp_path / "Oops.sql").write_text("SELECT 1;")
    with pytest.raises(migrations.MigrationError, match=r"Oops\.sql"):
        migrations.discover(tmp_path)
    (tmp_path / "Oops.sql").unlink()
    (tmp_path / "001_twin.sql").write_text("SELECT 1;")
    with pytest.raises(migrations.MigrationError, match="001"):
        migrations.discover(tmp_path)


def test_wheel_layout_finds_packaged_sql(monkeypatch):
    """An installed wheel carries sql/ inside the package (pyproject force-include)."""
    text = Path(settings.PACKAGE_DIR.parent / "pyproject.toml").read_text()
    assert '"sql" = "agg_pipeline/sql"' in text
    monkeypatch.setattr(settings, "project_root", lambda: None)
    assert settings.sql_dir() == settings.PACKAGE_DIR / "sql"
