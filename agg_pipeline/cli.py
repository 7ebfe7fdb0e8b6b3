"""`agg-pipeline`: run the project locally and operate its database.

  agg-pipeline dev         embedded PostgreSQL + migrations + demo data + Dagster UI/daemon
  agg-pipeline migrate     apply sql/ migrations to the market-data database
  agg-pipeline seed-demo   write demo registry rows and realistic 1m bars
  agg-pipeline status      the frontier-health view as a table
  agg-pipeline db ...      manage the embedded server
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path

import click

from agg_pipeline import settings
from agg_pipeline.db import connection, embedded, migrations


def _clean_errors(command: Callable) -> Callable:
    """Expected failures print one clear line, not a traceback."""

    @wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except (connection.DatabaseConfigError, migrations.MigrationError, ValueError) as exc:
            raise click.ClickException(str(exc)) from None

    return wrapper


@click.group(help=__doc__)
def main() -> None:
    pass


def _market_url() -> str:
    return connection.market_database_url()


@main.command()
@_clean_errors
def migrate() -> None:
    """Apply pending migrations (AGG_DATABASE_URL, or the embedded server)."""
    url = _market_url()
    applied = migrations.migrate(url, echo=click.echo)
    target = connection.describe_url(url)
    if applied:
        click.echo(f"applied {len(applied)} migration(s) to {target}")
    else:
        click.echo(f"{target} is up to date")


def _split_symbols(values: tuple[str, ...]) -> list[str]:
    symbols = [s.strip() for value in values for s in value.split(",") if s.strip()]
    return symbols


@main.command("seed-demo")
@click.option("--symbols", "-s", multiple=True, help="Symbols (comma-separated or repeated).")
@click.option("--days", default=30, show_default=True, type=click.IntRange(min=1))
@_clean_errors
def seed_demo_command(symbols: tuple[str, ...], days: int) -> None:
    """Write demo registry rows and `--days` of 1m bars up to now."""
    from agg_pipeline import demo
    from agg_pipeline.engine.tasks import symbol_problem

    chosen = _split_symbols(symbols) or list(demo.DEFAULT_SYMBOLS)
    for symbol in chosen:
        problem = symbol_problem(symbol)
        if problem:
            raise click.BadParameter(f"{symbol!r}: {problem}", param_hint="--symbols")
    _seed(_market_url(), chosen, days)


def _seed(url: str, symbols: list[str], days: int) -> None:
    from agg_pipeline import demo

    with connection.connect(url) as conn:
        migrations.assert_migrated(conn)
        conn.rollback()
        total = len(symbols) * days * 24 * 60
        with click.progressbar(length=total, label=f"demo data for {', '.join(symbols)}") as bar:
            inserted = demo.seed_demo(conn, symbols, days, progress=bar.update)
        # fresh statistics, so the first aggregations plan on real row counts
        conn.execute("ANALYZE data_bars")
        conn.commit()
    for symbol, count in inserted.items():
        click.echo(f"{symbol}: {count} new 1m bars")


@main.command()
@_clean_errors
def status() -> None:
    """Cursor, frontier and health of every aggregation task."""
    from agg_pipeline.engine.health import format_table, frontier_health

    with connection.market_connection() as conn:
        migrations.assert_migrated(conn)
        rows = frontier_health(conn)
    click.echo(format_table(rows) if rows else "no aggregation tasks yet")


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Interface for the Dagster webserver (default: this machine only).")
@click.option("--port", default=3000, show_default=True, type=int)
@click.option("--demo-days", default=30, show_default=True, type=click.IntRange(min=1),
              help="Days of demo data written when the registry is empty.")
@click.option("--no-demo", is_flag=True, help="Never write demo data.")
@_clean_errors
def dev(host: str, port: int, demo_days: int, no_demo: bool) -> None:
    """Run the Dagster webserver and daemon against the configured (or embedded) database."""
    env = dict(os.environ)
    home = settings.agg_home()
    env[settings.HOME_VAR] = str(home)
    if settings.configured_database_url():
        if not env.get(settings.DAGSTER_STORAGE_URL_VAR):
            raise click.ClickException(
                f"{settings.DATABASE_URL_VAR} is set but {settings.DAGSTER_STORAGE_URL_VAR} is "
                "not: set both (Dagster keeps its runs in its own database), or neither to use "
                "the embedded server"
            )
        market_url = settings.configured_database_url()
    else:
        server = embedded.ensure_server(home)
        click.echo(f"embedded PostgreSQL {embedded.PG_MAJOR} running in {server.pgdata}")
        market_url = server.database_url(embedded.MARKET_DATABASE)
        env.setdefault(
            settings.DAGSTER_STORAGE_URL_VAR, server.database_url(embedded.DAGSTER_DATABASE)
        )
    applied = migrations.migrate(market_url, echo=click.echo)
    click.echo(f"market data: {connection.describe_url(market_url)} "
               f"({len(applied)} migration(s) applied)")
    if not no_demo:
        with connection.connect(market_url) as conn:
            empty = conn.execute(
                "SELECT NOT EXISTS (SELECT 1 FROM core_asset_registry_all)"
            ).fetchone()[0]
        if empty:
            from agg_pipeline import demo

            click.echo("registry is empty: writing demo data")
            _seed(market_url, list(demo.DEFAULT_SYMBOLS), demo_days)

    dagster_home = home / "dagster_home"
    dagster_home.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(_project_file("dagster.yaml"), dagster_home / "dagster.yaml")
    env["DAGSTER_HOME"] = str(dagster_home)
    workspace = _project_file("workspace.yaml")
    command = [sys.executable, "-m", "dagster", "dev", "-h", host, "-p", str(port),
               "-w", str(workspace)]
    click.echo(f"Dagster UI: http://{host}:{port}")
    os.execvpe(command[0], command, env)


def _project_file(name: str) -> Path:
    root = settings.project_root()
    for folder in (root, Path.cwd()):
        if folder is not None and (folder / name).is_file():
            return folder / name
    raise click.ClickException(f"{name} not found: run `agg-pipeline dev` from the project folder")


@main.group()
def db() -> None:
    """The embedded PostgreSQL server (used when AGG_DATABASE_URL is unset)."""


@db.command("start")
@_clean_errors
def db_start() -> None:
    server = embedded.ensure_server()
    click.echo(f"running in {server.pgdata}")


@db.command("stop")
@_clean_errors
def db_stop() -> None:
    click.echo("stopped" if embedded.stop_server() else "not running")


@db.command("url")
@click.option("--dagster", is_flag=True, help="The Dagster storage database instead.")
@_clean_errors
def db_url(dagster: bool) -> None:
    """Print the embedded server's URL (it has no password: local socket, trust auth)."""
    server = embedded.ensure_server()
    click.echo(server.database_url(
        embedded.DAGSTER_DATABASE if dagster else embedded.MARKET_DATABASE))


if __name__ == "__main__":
    main()
