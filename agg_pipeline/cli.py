"""Derived market bars (5m, 1h and more) from the 1m bars in PostgreSQL, run by Dagster.

Every command works on AGG_DATABASE_URL, or, when it is unset, on the embedded PostgreSQL
server in AGG_HOME (started when needed). `agg-pipeline COMMAND --help` shows a command's
options; README.md has the rest.
"""

from __future__ import annotations

import logging
import os
import textwrap
import time
from collections.abc import Callable
from datetime import UTC, datetime
from functools import wraps
from pathlib import Path

import click
import psycopg

from agg_pipeline import devserver, listing, settings
from agg_pipeline.db import connection, embedded, migrations
from agg_pipeline.engine.reasons import Revision

# A login without a right the command needs: the pipeline's runtime login (README, "Least
# privilege") may run dev, status and history, and migrate when nothing is pending.
PERMISSION_HINT = (f"the login in {settings.DATABASE_URL_VAR} lacks this privilege; the "
                   "pipeline's runtime login may not change the schema or the registry: run "
                   "`migrate` and `seed-demo` with the migrator's URL")


def _clean_errors(command: Callable) -> Callable:
    """Expected failures (configuration, connection, permissions, schema not ready) print one
    clear line on stderr and exit 1, not a traceback."""

    @wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except (connection.DatabaseConfigError, migrations.MigrationError,
                devserver.DevServerError, ValueError) as exc:
            raise click.ClickException(" ".join(str(exc).split())) from None
        except psycopg.errors.InsufficientPrivilege as exc:
            raise click.ClickException(
                f"{connection.describe_error(exc)}: {PERMISSION_HINT}") from None
        except psycopg.OperationalError as exc:  # the connection broke, a timeout, a conflict
            raise click.ClickException(
                f"database error: {connection.describe_error(exc)}") from None

    wrapper.cleans_errors = True  # a test checks that every command has it
    return wrapper


# The test suite has no agg-pipeline command (pytest runs in the project's environment), but
# a user looking for it starts here.
RUN_ONLY_COMMANDS = (("./run test [PYTEST ARGS]",
                      "The test suite against a real PostgreSQL (AGG_TEST_DATABASE_URL, else "
                      "the embedded server). Only through ./run."),)
COMMAND_ORDER = ("dev", "migrate", "seed-demo", "status", "history", "backfill", "db")


def _synopsis(ctx: click.Context, path: str, command: click.Command) -> str:
    """`path` and the command's options, e.g. `dev [--port 3000] [--no-demo]` (a default
    where there is one, else the option's metavar)."""
    parts = [path]
    parts += [param.make_metavar(ctx) for param in command.params
              if isinstance(param, click.Argument)]
    for param in command.params:
        if not isinstance(param, click.Option) or param.hidden:
            continue
        name = max(param.opts, key=len)
        if param.is_flag:
            parts.append(f"[{name}]")
        elif isinstance(param.default, int | str):
            parts.append(f"[{name} {param.default}]")
        else:
            parts.append(f"[{name} {param.make_metavar(ctx)}]")
    return " ".join(parts)


class _CommandList(click.Group):
    """Lists every command with its options and what it does, sub-commands and `./run test`
    included, instead of click's one truncated line per top-level command."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(self.commands, key=lambda n: (*COMMAND_ORDER, n).index(n))

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        entries: list[tuple[str, str]] = []
        for name in self.list_commands(ctx):
            command = self.commands[name]
            commands = (command.commands.items() if isinstance(command, click.Group)
                        else [("", command)])
            for sub_name, sub in commands:
                entries.append((_synopsis(ctx, f"{name} {sub_name}".strip(), sub),
                                sub.get_short_help_str(limit=300)))
        entries.extend(RUN_ONLY_COMMANDS)
        with formatter.section("Commands"):
            for synopsis, text in entries:
                formatter.write(f"{'':>{formatter.current_indent}}{synopsis}\n")  # unwrapped
                with formatter.indentation():
                    formatter.write_text(text)


@click.group(cls=_CommandList, help=__doc__,
             context_settings={"max_content_width": 100, "help_option_names": ["-h", "--help"]})
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
@click.option("--symbols", "-s", multiple=True, metavar="SYMBOLS",
              help="Symbols (comma-separated or repeated).")
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
        label = f"demo data for {listing.summarise(symbols)}"
        with click.progressbar(length=total, label=label) as bar:
            inserted = demo.seed_demo(conn, symbols, days, progress=bar.update)
        # fresh statistics, so the first aggregations plan on real row counts
        conn.execute("ANALYZE data_bars")
        computed = demo.computed_symbols(conn, symbols)
        conn.commit()
    for symbol, count in inserted.items():
        click.echo(f"{symbol}: computed by the pipeline from its components (synthetic_bars_1m)"
                   if symbol in computed else f"{symbol}: {count} new 1m bars")


STATUS_HELP = """Cursor, frontier and health of every aggregation task (one per symbol and
target timeframe), from the view v_aggregation_frontier_health. Times are UTC; every duration
is in minutes.

\b
Columns:
  symbol, tf     the task: a symbol and the timeframe it derives (5m, 15m, 1h, 4h, 1d)
  cursor         the start of the next window to process: every window before it is done
  frontier       the newest usable source bar (1m rows for 5m; 5m bars for 15m and 1h; ...)
  lag            how far the cursor is behind the end of the newest final window (complete,
                 or past its confirmation delay): "caught up" when it is not behind at all.
                 The window holding the frontier is usually still open, so a caught-up 5m
                 task's cursor sits at that window's start, not its end
  cursor status  OK; AHEAD (past the end of the frontier's window: an error); NULL (no
                 cursor: an error, never bootstrapped silently); NO_SOURCE (no source rows
                 yet); BAD_CONFIG (no interval or source timeframe)
  task status    idle (normal, also while a run works on it); hard_failed (a mandatory task
                 after 3 hard failures in a row: still scheduled, alerting); disabled (an
                 optional one, after 3); retired (its symbol or timeframe left the registry);
                 paused (an operator set enabled = false: the schedule and sensors skip it)
  since success  minutes since the task's last successful run
  fail streak    hard failures in a row (transient ones do not count); success resets it
  stray rows     rows of data_bars for this symbol that no timeframe reads (a timeframe
                 other than 1m, e.g. an ingester writing 5m rows); on the task reading 1m
"""


@main.command(help=STATUS_HELP, short_help="Cursor, frontier, lag and health of every "
              "aggregation task.")
@_clean_errors
def status() -> None:
    from agg_pipeline.engine.health import format_table, frontier_health

    with connection.market_connection() as conn:
        migrations.assert_migrated(conn)
        rows = frontier_health(conn)
    click.echo(format_table(rows) if rows else "no aggregation tasks yet")


class _Instant(click.ParamType):
    """An ISO 8601 instant; without an offset it is UTC."""

    name = "INSTANT"

    def convert(self, value, param, ctx) -> datetime:
        if isinstance(value, datetime):
            return value
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            self.fail(f"{value!r} is not an ISO 8601 instant (e.g. 2026-01-05T14:30Z)", param,
                      ctx)
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


HISTORY_HELP = """Every version of SYMBOL's TIMEFRAME bars starting in [START, END), oldest
first; without END, the one bar whose window holds START. START may be any instant inside a
window (14:12 means the 5m bar 14:10, and the header line says so). Instants are ISO 8601,
UTC unless they carry an offset; the output is in UTC.

\b
Columns:
  bar            the bar's window start (its label)
  open .. vol    the version's values; prices to as many decimals as the symbol's source
                 prices need (--wide: every digit of the stored double)
  n, q           source bars it was built from, and its quality score (the ladder: 5m 5->2,
                 4->1, 3->0; 1h 12->2, 10-11->1, 8-9->0, 7->-1)
  ver            derivation_version: the version of the rules that built it; it changes
                 only when rebuild_range rebuilds bars, not when a bar is restated, so
                 successive versions of a bar often share it
  valid from/to  when this version was the bar: a reader at an instant in [from, to) saw
                 it; no "to": it is the bar now
  change         what ended the version: restated (values changed), withdrawn (the window no
                 longer qualifies, e.g. its source rows were deleted), rebuilt
                 (rebuild_range); current: not ended
{REASONS}
  run            the Dagster run that made the change (its first 8 characters)

The default table fits 120 columns: a date shared by every line moves to the header, and if
it is still too wide ver, vol and run are left out (the header says so). --wide prints
everything: full timestamps, every digit, full run ids, vwap, trades and expected bars (exp).
""".replace("{REASONS}", "\n".join(textwrap.wrap(
    "why: " + ", ".join(Revision), width=90, initial_indent="  reason         ",
    subsequent_indent=" " * 17)))


@main.command(help=HISTORY_HELP,
              short_help="Every version of SYMBOL's TIMEFRAME bars starting in [START, END) "
              "(one bar without END): values, when each was current, what replaced it, why "
              "and which run.")
@click.argument("symbol")
@click.argument("timeframe")
@click.argument("start", type=_Instant())
@click.argument("end", type=_Instant(), required=False)
@click.option("--as-of", "at", type=_Instant(), metavar="INSTANT",
              help="Only the versions current at this instant: the bars as a reader saw them.")
@click.option("--wide", is_flag=True,
              help="Every column, full timestamps, every digit, full run ids.")
@_clean_errors
def history(symbol: str, timeframe: str, start: datetime, end: datetime | None,
            at: datetime | None, wide: bool) -> None:
    from agg_pipeline.engine.history import format_history, read_history

    with connection.market_connection() as conn:
        migrations.assert_migrated(conn)
        found = read_history(conn, symbol, timeframe, start, end, at=at)
    click.echo(format_history(found, wide=wide))


BACKFILL_HELP = """Materialise SYMBOLS x [FIRST_DAY, LAST_DAY] (UTC days, inclusive) now, in
this process: Dagster's own execution of the aggregate_bars job on the project's Dagster
instance, one run per block of consecutive symbols (as the UI's backfill_bars job), shown in
the UI's Runs like any other. Prints one line: the runs, how they ended, and per timeframe the bars
written new, restated, withdrawn and left unchanged.

\b
It sets what a raw `dagster asset materialize` would need from you, each only when unset:
  DAGSTER_HOME          $AGG_HOME/dagster_home, dev's (its dagster.yaml written if missing)
  DAGSTER_POSTGRES_URL  the embedded server's Dagster database (with AGG_DATABASE_URL set,
                        you must set it: the storage your webserver and daemon use)
  DAGSTER_EVENT_BATCH_SIZE, DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS
                        the product's values (without them a long range runs ~12x slower)
  AGG_START_UTC         the demo's first day when the database holds demo data, as dev does

The registry's tasks and `symbols` partitions are brought up to date first (as dev and
registry_sync_sensor do). dev's server need not be running.
"""


@main.command(help=BACKFILL_HELP, short_help="Materialise SYMBOLS x [FIRST_DAY, LAST_DAY] "
              "now, in this process (Dagster's own execution, on the project's instance); "
              "one summary line.")
@click.argument("symbols", metavar="SYMBOL[,SYMBOL...]")
@click.argument("first_day", type=click.DateTime(["%Y-%m-%d"]), metavar="FIRST_DAY")
@click.argument("last_day", type=click.DateTime(["%Y-%m-%d"]), metavar="LAST_DAY")
@click.option("--timeframes", "timeframe_names", default="5m,1h", show_default=True,
              metavar="TIMEFRAMES", help="Comma-separated, of timeframes.toml's (as shipped: "
              "5m, 15m, 1h, 4h, 1d).")
@_clean_errors
def backfill(symbols: str, first_day: datetime, last_day: datetime,
             timeframe_names: str) -> None:
    from agg_pipeline import backfill as backfilling

    chosen = _split_symbols((symbols,))
    names = [n.strip() for n in timeframe_names.split(",") if n.strip()]
    if not chosen:
        raise click.BadParameter("no symbol given", param_hint="SYMBOLS")
    line, runs = backfilling.backfill(
        chosen, first_day.date(), last_day.date(), names, _project_file("dagster.yaml"),
        _sync_registry)
    click.echo(line)
    for run in runs:
        for error in run.errors:
            click.echo(f"run {run.run_id}: {error}", err=True)
    if not all(run.success for run in runs):
        raise SystemExit(1)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Interface for the Dagster webserver (default: this machine only).")
@click.option("--port", default=3000, show_default=True, type=click.IntRange(1, 65535),
              help="Port of the Dagster UI.")
@click.option("--demo-days", default=30, show_default=True, type=click.IntRange(min=1),
              help="Days of demo data written when the registry is empty.")
@click.option("--no-demo", is_flag=True, help="Never write demo data (nor feed it).")
@click.option("--no-feed", is_flag=True, help="No live 1m feed for the demo symbols.")
@_clean_errors
def dev(host: str, port: int, demo_days: int, no_demo: bool, no_feed: bool) -> None:
    """The pipeline locally, in the Dagster UI: migrations, demo data (when the registry is
    empty) and its live 1m feed, Dagster's code server, webserver and daemon.

    One dev per AGG_HOME; Ctrl-C stops everything. With demo data and no AGG_START_UTC,
    the day partitions start on the demo's first day.
    """
    started = time.monotonic()
    settings.validate()  # here, not later in each Dagster process with a traceback
    home = settings.agg_home()
    ui_url = devserver.http_url(host, port)
    with devserver.exclusive_home(home, ui_url):
        devserver.check_port_free(host, port)
        _console_logging()
        market_url = _prepare_databases(home)
        demo_start = None if no_demo else _demo_data(market_url, demo_days)
        if demo_start is not None and settings.START_VAR not in os.environ:
            os.environ[settings.START_VAR] = demo_start.isoformat()
        # the children inherit this process's environment; the user's own values win
        os.environ[settings.HOME_VAR] = str(home)
        settings.apply_dagster_process_env()
        dagster_home = home / "dagster_home"
        devserver.write_instance(dagster_home, _project_file("dagster.yaml"))
        os.environ["DAGSTER_HOME"] = str(dagster_home)
        location = devserver.project_code_location(_project_file("workspace.yaml"))
        code_port = devserver.free_port()
        workspace = devserver.write_workspace(dagster_home, location, code_port)
        symbols = _sync_registry(market_url)

        stop_feed = None
        with devserver.Supervisor(cwd=_project_file("workspace.yaml").parent, echo=click.echo,
                                  runs_in_flight=_runs_in_flight()) as supervisor:
            try:
                supervisor.start_code_server(location, code_port)
                supervisor.wait_for_port(code_port, "the code server")
                supervisor.start_webserver(workspace, host, port)
                supervisor.start_daemon(workspace)
                supervisor.wait_for_http(
                    devserver.http_url(devserver.probe_host(host), port) + "/server_info",
                    "the Dagster UI")
                feed = demo_start is not None and not no_feed
                if feed:
                    from agg_pipeline import demo_feed

                    _, stop_feed = demo_feed.start(market_url)
                click.echo(_summary(ui_url, market_url, symbols, demo_start, feed, no_demo,
                                    no_feed, time.monotonic() - started))
                supervisor.watch()
            except KeyboardInterrupt:
                pass
            finally:
                if stop_feed is not None:
                    stop_feed.set()


def _console_logging() -> None:
    """The project's INFO lines (the demo feed's, the embedded server's) on the console, in
    Dagster's format; other libraries' loggers stay at Python's default (warnings only)."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter(
        "%(asctime)s - %(name)s - %(levelname)s - %(message)s", datefmt="%Y-%m-%d %H:%M:%S %z"))
    logger = logging.getLogger("agg_pipeline")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


def _prepare_databases(home: Path) -> str:
    """The market-data database, migrated (and DAGSTER_POSTGRES_URL set for the embedded
    server); returns its URL."""
    if settings.configured_database_url():
        if not os.environ.get(settings.DAGSTER_STORAGE_URL_VAR):
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
        os.environ.setdefault(
            settings.DAGSTER_STORAGE_URL_VAR, server.database_url(embedded.DAGSTER_DATABASE)
        )
    _check_storage(os.environ[settings.DAGSTER_STORAGE_URL_VAR])
    applied = migrations.migrate(market_url, echo=click.echo)
    click.echo(f"market data: {connection.describe_url(market_url)} "
               f"({len(applied)} migration(s) applied)")
    return market_url


def _check_storage(url: str) -> None:
    """Dagster's storage URL is well formed and its server answers: checked here, before
    Dagster's processes each fail on it (SQLAlchemy would quote a mis-parsed password)."""
    try:
        connection.connect(connection.without_driver(url)).close()
    except connection.DatabaseConfigError as exc:
        raise click.ClickException(f"{settings.DAGSTER_STORAGE_URL_VAR}: {exc}") from None


def _demo_data(market_url: str, days: int) -> datetime | None:
    """Seed the demo when the registry is empty; midnight UTC of the demo's first day, or
    None when the database holds no demo data (then dev feeds nothing and leaves
    AGG_START_UTC alone). Read from the data, so a second start finds the same day."""
    from agg_pipeline import demo

    with connection.connect(market_url) as conn:
        empty = conn.execute(
            "SELECT NOT EXISTS (SELECT 1 FROM core_asset_registry_all)").fetchone()[0]
    if empty:
        click.echo("registry is empty: writing demo data")
        _seed(market_url, list(demo.DEFAULT_SYMBOLS), days)
    with connection.connect(market_url) as conn:
        first = demo.first_minute(conn)
    if first is None:
        return None
    return datetime.combine(first.astimezone(UTC).date(), datetime.min.time(), tzinfo=UTC)


def _sync_registry(market_url: str) -> list[str]:
    """Tasks and `symbols` partitions before the daemon starts, so that its first sensor
    tick can already build bars (registry_sync_sensor keeps them in step afterwards). The
    instance is created here first, before any child touches a fresh storage database."""
    import dagster as dg

    from agg_pipeline.defs.partitions import SYMBOLS_PARTITIONS_NAME
    from agg_pipeline.engine import tasks

    with connection.connect(market_url) as conn:
        result = tasks.sync_tasks(conn, settings.environment(),
                                  agg_start=settings.default_agg_start())
    for line in listing.capped([f"registry symbol {symbol!r} not synced: {problem}"
                                for symbol, problem in sorted(result.rejected.items())],
                               "registry symbols not synced"):
        click.echo(line)
    with dg.DagsterInstance.get() as instance:
        known = set(instance.get_dynamic_partitions(SYMBOLS_PARTITIONS_NAME))
        missing = [s for s in result.symbols if s not in known]
        if missing:
            instance.add_dynamic_partitions(SYMBOLS_PARTITIONS_NAME, missing)
    return result.symbols


def _runs_in_flight() -> Callable[[], int]:
    """Counts the instance's started, unfinished runs (dev lets them finish when it stops;
    queued runs stay queued for the next start)."""
    import dagster as dg

    started = dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED])
    instance = None

    def count() -> int:
        nonlocal instance
        instance = instance or dg.DagsterInstance.get()
        return len(instance.get_run_ids(started))

    return count


def _summary(ui_url: str, market_url: str, symbols: list[str], demo_start: datetime | None,
             feed: bool, no_demo: bool, no_feed: bool, seconds: float) -> str:
    storage = connection.describe_url(
        connection.without_driver(os.environ[settings.DAGSTER_STORAGE_URL_VAR]))
    start = settings.default_agg_start()
    if demo_start is not None:
        data = f"demo data from {demo_start:%Y-%m-%d}"
    else:
        data = "--no-demo" if no_demo else "no demo data"
    if feed:
        next_step = ("bars appear within ~30 s; the feed writes a bar per symbol every minute, "
                     "now and then a late correction or a missing minute")
    else:
        why = "--no-feed" if no_feed else "no demo data"
        next_step = f"bars appear within ~30 s of new 1m rows (no live feed: {why})"
    lines = [
        f"agg-pipeline dev is up ({seconds:.0f} s)",
        f"  UI          {ui_url}",
        f"  database    {connection.describe_url(market_url)}  (Dagster's storage: {storage})",
        f"  symbols     {_symbols_text(symbols)}  ({data})",
        f"  partitions  days from {start:%Y-%m-%d} (AGG_START_UTC)",
        f"  next        {next_step}",
        "  stop        Ctrl-C",
    ]
    return "\n".join(lines)


def _symbols_text(symbols: list[str]) -> str:
    """`8 symbols: DXY, EURUSD, ...`, or `1000 symbols: AAA, AAB, ... (+992 more)`."""
    return listing.summarise(symbols) if symbols else "none in the registry yet"


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
    """Start the embedded server (it keeps running between sessions)."""
    server = embedded.ensure_server()
    click.echo(f"running in {server.pgdata}")


@db.command("stop")
@_clean_errors
def db_stop() -> None:
    """Stop the embedded server."""
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
