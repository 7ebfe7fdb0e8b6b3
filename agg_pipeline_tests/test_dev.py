"""`agg-pipeline dev` on the embedded default: UI up, definitions loaded, demo data in place."""

from __future__ import annotations

import pytest

from agg_pipeline.db import connection, embedded, migrations
from agg_pipeline_tests.processes import start_dev

pytestmark = pytest.mark.embedded_only


@pytest.fixture
def dev_server(tmp_path):
    server = start_dev(tmp_path / "home", "--demo-days", "3")
    try:
        yield server
    finally:
        server.stop()
        embedded.stop_server(tmp_path / "home")


def test_dev_serves_definitions_on_embedded_database_with_demo_data(dev_server):
    entries = dev_server.wait_until_loaded()
    assert [e["name"] for e in entries] == ["agg_pipeline"]
    assert entries[0]["locationOrLoadError"]["__typename"] == "RepositoryLocation"

    market = embedded.ensure_server(dev_server.home).database_url(embedded.MARKET_DATABASE)
    with connection.connect(market) as conn:
        symbols = {r[0] for r in conn.execute("SELECT DISTINCT canonical_symbol FROM data_bars")}
        applied = conn.execute("SELECT count(*) FROM agg_schema_migrations").fetchone()[0]
    assert symbols == {"EURUSD", "USDJPY", "XAUUSD", "DXY"}
    assert applied == len(migrations.discover())

    # Dagster's own storage is the embedded server's separate database
    dagster_db = embedded.ensure_server(dev_server.home).database_url(embedded.DAGSTER_DATABASE)
    with connection.connect(dagster_db) as conn:
        assert conn.execute("SELECT to_regclass('runs')").fetchone()[0] == "runs"
    log = dev_server.log()
    assert "Traceback" not in log
    assert "127.0.0.1" in log
