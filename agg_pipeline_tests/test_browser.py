"""A real browser on `agg-pipeline dev`: find bars_5m, backfill demo partitions from the UI.

Debian's Chromium, driven by Playwright, does what an operator does on a fresh machine:
opens the catalog, finds bars_5m, opens "Materialize…", picks one demo symbol and a range of
two days, launches the backfill, follows the toast to the backfill's page and waits there
until it has succeeded. GraphQL and the market database then confirm what the UI showed.
The catalog shows an optional or synthetic asset's partitions only for the symbols using it.
A second test drives the README's backfill path: Jobs > backfill_bars > Launchpad, its config,
Launch run (one run over every demo symbol x two days).
Screenshots land in the test's tmp_path and in test-output/browser/ (CI artifacts).
"""

from __future__ import annotations

import re
import time
import urllib.parse
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from dagster import MultiPartitionKey

from agg_pipeline.db import connection, embedded
from agg_pipeline.defs.partitions import SYMBOL_DIMENSION, TIME_DIMENSION
from agg_pipeline_tests.browser import VIEWPORT, Screenshots, chromium_executable, launch
from agg_pipeline_tests.helpers import wait_for
from agg_pipeline_tests.processes import DevServer, start_dev

# the browser test always runs on its own embedded server: no point repeating it on
# AGG_TEST_DATABASE_URL (CI's second pass)
pytestmark = [pytest.mark.browser, pytest.mark.embedded_only]

DEMO_SYMBOLS = {"EURUSD", "USDJPY", "XAUUSD", "DXY"}
SYMBOL = "EURUSD"
# the demo symbols whose registry rows use each optional or synthetic asset (demo.py)
CATALOG_USERS = {"bars_15m": set(), "bars_4h": {"XAUUSD"}, "bars_1d": {"XAUUSD"},
                 "synthetic_bars_1m": {"DXY"}}
# 5 demo days always hold two consecutive UTC days with data, whatever the weekday (FX
# sessions close over the weekend); 3 do not on a Monday just after midnight.
DEMO_DAYS = "5"
MIN_ROWS_PER_DAY = 60
# a 5m window that ended this long before the backfill's run is surely final (the default
# confirmation delay is 60 s)
SETTLED = timedelta(minutes=15)
# the engine's rule for 5m from 1m (SPEC contract 4): fewer than 3 source bars, no bar
MIN_SOURCE_BARS = 3
PARTITIONS_TIMEOUT = 180  # registry_sync_sensor ticks every 60 s once the daemon is up
BACKFILL_TIMEOUT = 180
UI_TIMEOUT_MS = 60_000
IN_FLIGHT = {"REQUESTED", "CANCELING", "FAILING"}


@pytest.fixture
def chromium() -> str:
    """Checked before the dev server starts: without a browser there is nothing to do."""
    return chromium_executable()


@pytest.fixture
def dev_server(chromium, tmp_path):
    home = tmp_path / "home"
    # no live feed: the chosen days' source rows stay what the assertions read
    server = start_dev(home, "--demo-days", DEMO_DAYS, "--no-feed")
    try:
        yield server
    finally:
        stopping = time.monotonic()
        server.stop()
        embedded.stop_server(home)
        print(f"dev server and embedded PostgreSQL stopped in {time.monotonic() - stopping:.0f}s")


def wait_for_symbol_partitions(server: DevServer) -> dict[str, list[str]]:
    """The registry sync sensor (in the daemon) turns the demo symbols into partitions."""
    deadline = time.monotonic() + PARTITIONS_TIMEOUT
    symbols: list[str] = []
    while time.monotonic() < deadline:
        node = server.graphql("""{ assetNodeOrError(assetKey: {path: ["bars_5m"]}) {
            ... on AssetNode { partitionKeysByDimension { name partitionKeys } } } }""")
        dims = {d["name"]: d["partitionKeys"]
                for d in node["assetNodeOrError"]["partitionKeysByDimension"]}
        symbols = dims.get(SYMBOL_DIMENSION, [])
        if set(symbols) >= DEMO_SYMBOLS:
            return dims
        time.sleep(2)
    raise AssertionError(f"symbols partitions after {PARTITIONS_TIMEOUT}s: {symbols}\n"
                         f"{server.log()[-3000:]}")


def symbol_partitions(server: DevServer, asset: str) -> set[str]:
    node = server.graphql("""query ($path: [String!]!) {
        assetNodeOrError(assetKey: {path: $path}) {
            ... on AssetNode { partitionKeysByDimension { name partitionKeys } } } }""",
                          {"path": [asset]})
    return {key for d in node["assetNodeOrError"]["partitionKeysByDimension"]
            if d["name"] == SYMBOL_DIMENSION for key in d["partitionKeys"]}


def wait_for_first_materialization(server: DevServer, asset: str) -> None:
    """The demo's first live run materialises `asset`. Until then Dagster's Materialize…
    asks "Are you sure?" for an upstream asset never materialised (synthetic_bars_1m, before
    bars_5m), which is not the dialog this test drives."""
    def materialized() -> bool:
        node = server.graphql("""query ($path: [String!]!) {
            assetNodeOrError(assetKey: {path: $path}) {
              ... on AssetNode { assetMaterializations(limit: 1) { timestamp } } } }""",
                              {"path": [asset]})
        return bool(node["assetNodeOrError"]["assetMaterializations"])

    wait_for(materialized, PARTITIONS_TIMEOUT, f"a first materialization of {asset}",
             lambda: server.log()[-3000:], interval=2)


def latest_two_days(market_url: str, symbol: str) -> tuple[date, date]:
    """The latest two consecutive UTC days that both hold demo 1m bars of `symbol`."""
    with connection.connect(market_url) as conn:
        rows = conn.execute(
            "SELECT (ts_utc AT TIME ZONE 'UTC')::date FROM data_bars "
            "WHERE canonical_symbol = %s AND timeframe = '1m' GROUP BY 1 "
            "HAVING count(*) >= %s ORDER BY 1 DESC", (symbol, MIN_ROWS_PER_DAY)).fetchall()
    days = {r[0] for r in rows}
    for day in sorted(days, reverse=True):
        if day - timedelta(days=1) in days:
            return day - timedelta(days=1), day
    raise AssertionError(f"no two consecutive days of demo data for {symbol}: {sorted(days)}")


def partition_key(symbol: str, day: date) -> str:
    """As Dagster spells a symbol x day key: dimensions in name order, day|symbol."""
    return str(MultiPartitionKey({SYMBOL_DIMENSION: symbol, TIME_DIMENSION: day.isoformat()}))


def backfill(server: DevServer, backfill_id: str) -> dict:
    data = server.graphql("""query ($id: String!) { partitionBackfillOrError(backfillId: $id) {
        __typename
        ... on PartitionBackfill { id status isAssetBackfill numPartitions partitionNames
            assetSelection { path } runs(limit: 20) { runId status tags { key value } } }
        ... on PythonError { message } } }""", {"id": backfill_id})
    found = data["partitionBackfillOrError"]
    assert found["__typename"] == "PartitionBackfill", found
    return found


def wait_for_backfill(server: DevServer, backfill_id: str) -> dict:
    deadline = time.monotonic() + BACKFILL_TIMEOUT
    found = backfill(server, backfill_id)
    while found["status"] in IN_FLIGHT and time.monotonic() < deadline:
        time.sleep(2)
        found = backfill(server, backfill_id)
    return found


def run_failure_messages(server: DevServer, run_id: str) -> list[str]:
    data = server.graphql("""query ($id: ID!) { logsForRun(runId: $id) {
        ... on EventConnection { events { __typename message
            ... on ExecutionStepFailureEvent { error { message } } } } } }""", {"id": run_id})
    events = data["logsForRun"].get("events", [])
    return [(e.get("error") or {}).get("message") or e["message"] for e in events
            if "Failure" in e["__typename"]]


def materializing_runs(server: DevServer, partitions: list[str]) -> dict[str, set[str]]:
    data = server.graphql("""query ($partitions: [String!]) {
        assetNodeOrError(assetKey: {path: ["bars_5m"]}) { ... on AssetNode {
            assetMaterializations(partitions: $partitions, limit: 100) { runId partition } } } }""",
                          {"partitions": partitions})
    runs: dict[str, set[str]] = {}
    for event in data["assetNodeOrError"]["assetMaterializations"]:
        runs.setdefault(event["partition"], set()).add(event["runId"])
    return runs


PARTITION_COUNTS = ("bars_inserted", "bars_updated", "bars_unchanged", "bars_soft_deleted",
                    "source_rows_read", "windows_seen")


def partition_value(page, label: str) -> int:
    """The value the partition's metadata table shows beside `label`."""
    from playwright.sync_api import expect

    row = page.get_by_role("row").filter(has=page.get_by_text(label, exact=True))
    expect(row).to_be_visible()
    return int(row.get_by_role("cell").nth(1).inner_text().replace(",", "").strip())


def latest_partition_metadata(server: DevServer, key: str) -> dict[str, int]:
    data = server.graphql("""query ($partitions: [String!]) {
        assetNodeOrError(assetKey: {path: ["bars_5m"]}) { ... on AssetNode {
            assetMaterializations(partitions: $partitions, limit: 1) { runId metadataEntries {
                label ... on IntMetadataEntry { intValue } } } } } }""", {"partitions": [key]})
    (latest,) = data["assetNodeOrError"]["assetMaterializations"]
    return {e["label"]: e["intValue"] for e in latest["metadataEntries"] if "intValue" in e}


def run_created_at(server: DevServer, run_id: str) -> datetime:
    data = server.graphql("""query ($id: ID!) { runOrError(runId: $id) {
        ... on Run { creationTime } } }""", {"id": run_id})
    return datetime.fromtimestamp(data["runOrError"]["creationTime"], UTC)


def open_ui(browser, url: str, community_dialog: bool):
    """A page of `url`, with Dagster's one-time "Join the Dagster community" dialog skipped
    when the server said it would show it."""
    from playwright.sync_api import expect

    page = browser.new_page(viewport=VIEWPORT)
    page.set_default_timeout(UI_TIMEOUT_MS)
    page.goto(url)
    if community_dialog:
        page.get_by_role("button", name="Skip").click()
        expect(page.get_by_text("Join the Dagster community")).to_be_hidden()
    return page


def test_backfill_bars_5m_from_the_ui_in_chromium(chromium: str, dev_server: DevServer,
                                                   tmp_path: Path):
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=UI_TIMEOUT_MS)
    started = time.monotonic()
    dev_server.wait_until_loaded()
    home = dev_server.home
    market_url = embedded.ensure_server(home).database_url(embedded.MARKET_DATABASE)
    first_day, last_day = latest_two_days(market_url, SYMBOL)
    chosen = [partition_key(SYMBOL, first_day), partition_key(SYMBOL, last_day)]
    dims = wait_for_symbol_partitions(dev_server)
    symbols, days = dims[SYMBOL_DIMENSION], dims[TIME_DIMENSION]
    wait_for_first_materialization(dev_server, "synthetic_bars_1m")
    print(f"\nUI {dev_server.url} loaded, symbols {symbols} synced after "
          f"{time.monotonic() - started:.0f}s; backfilling {SYMBOL} {first_day}..{last_day}")
    # Dagster asks a new local user to join its community once (after a second); Skip.
    community_dialog = dev_server.graphql("{ shouldShowNux }")["shouldShowNux"]

    shots = Screenshots(tmp_path / "screenshots")
    with sync_playwright() as playwright:
        browser = launch(playwright, chromium)
        try:
            # -- the catalog lists bars_5m: open it
            page = open_ui(browser, f"{dev_server.url}/assets", community_dialog)
            asset_link = page.get_by_role("link").filter(
                has=page.get_by_text("bars_5m", exact=True))
            expect(asset_link).to_be_visible()
            # the synced symbols show as partitions: bars_1m per symbol, bars_5m per
            # symbol x day since agg_start_utc
            expect(page.get_by_text(f"{len(symbols)} partitions", exact=True)).to_be_visible()
            # (a UTC day that begins during the test adds a day partition per symbol)
            per_day = "|".join(f"{len(symbols) * n:,}" for n in (len(days), len(days) + 1))
            expect(page.get_by_text(re.compile(rf"^({per_day}) partitions$")).first
                   ).to_be_visible()
            shots.take(page, "catalog")
            asset_link.click()
            page.wait_for_url(re.compile(r"/assets/bars_5m(\?.*)?$"))
            # breadcrumb "Assets > bars_5m", and the asset's own description
            expect(page.get_by_role("listitem").filter(
                has=page.get_by_text("bars_5m", exact=True))).to_be_visible()
            expect(page.get_by_text("5m bars in derived_data_bars", exact=False)).to_be_visible()
            shots.take(page, "bars_5m asset")

            # -- Materialize…: one symbol, a range of two days, one run (single-run policy)
            page.get_by_role("button", name=re.compile(r"\bMaterialize(…|\.\.\.)$")).click()
            dialog = page.get_by_role("dialog")
            expect(dialog.get_by_text("Launch runs to materialize bars_5m")).to_be_visible()
            day_input = dialog.get_by_placeholder(re.compile(r"^ex: "))
            day_input.fill(f"[{first_day.isoformat()}...{last_day.isoformat()}]")
            day_input.press("Enter")
            dialog.get_by_text("Select a partition or create one").click()
            symbol_items = page.get_by_role("menuitem")
            for symbol in sorted(DEMO_SYMBOLS):
                expect(symbol_items.filter(has=page.get_by_text(symbol, exact=True))
                       ).to_be_visible()
            shots.take(page, "symbol partitions")
            symbol_items.filter(has=page.get_by_text(SYMBOL, exact=True)).click()
            page.keyboard.press("Escape")  # closes the symbol list, not the dialog
            expect(dialog.get_by_text("2 partitions", exact=True)).to_be_visible()
            expect(dialog.get_by_text("Backfills all partitions in a single run.")
                   ).to_be_visible()
            shots.take(page, "launch backfill dialog")
            dialog.get_by_role("button", name="Launch backfill").click()

            # -- the toast names the backfill and links to its page
            toast = page.get_by_text(re.compile(r"^Created backfill \w+$"))
            expect(toast).to_be_visible()
            backfill_id = toast.inner_text().split()[-1]
            print(f"backfill {backfill_id} launched from the UI")
            shots.take(page, "backfill created")
            page.get_by_role("link", name="View", exact=True).click()
            page.wait_for_url(re.compile(rf"/runs/b/{backfill_id}"))
            for key in chosen:
                expect(page.get_by_text(key, exact=True)).to_be_visible()
            status = page.get_by_text("Status", exact=True).locator("..")
            shots.take(page, "backfill page")

            # -- wait for the outcome (GraphQL), then the page must say so too
            found = wait_for_backfill(dev_server, backfill_id)
            runs = found["runs"]
            if found["status"] != "COMPLETED_SUCCESS":
                failures = {r["runId"]: run_failure_messages(dev_server, r["runId"])
                            for r in runs if r["status"] != "SUCCESS"}
                page.reload()
                shots.take(page, "backfill not successful")
                raise AssertionError(f"backfill {backfill_id}: {found['status']} after "
                                     f"{BACKFILL_TIMEOUT}s; runs {runs}; failures {failures}")
            if "Succeeded" not in status.inner_text():
                page.reload()
            expect(status).to_contain_text("Succeeded")
            expect(page.get_by_role("link", name="bars_5m")).to_be_visible()
            shots.take(page, "backfill succeeded")
            page.get_by_role("tab", name="Runs").click()
            assert len(runs) == 1, runs  # single-run backfill policy
            run = runs[0]
            expect(page.get_by_role("link", name=run["runId"][:8])).to_be_visible()
            expect(page.get_by_text("Success", exact=True)).to_be_visible()
            shots.take(page, "backfill run")

            # -- the catalog shows only what exists: an optional timeframe's or the
            # synthetic index's partitions are those of the symbols that use them
            for asset, users in CATALOG_USERS.items():
                page.goto(f"{dev_server.url}/assets/{asset}?view=partitions")
                for symbol in sorted(users):
                    expect(page.get_by_text(symbol, exact=True).first).to_be_visible()
                for symbol in sorted(set(symbols) - users):
                    expect(page.get_by_text(symbol, exact=True)).to_have_count(0)
                shots.take(page, f"{asset} partitions")

            # -- the first day's partition shows that day's own counts (SPEC contract 14)
            page.goto(f"{dev_server.url}/assets/bars_5m?view=partitions"
                      f"&partition={urllib.parse.quote(chosen[0])}")
            shown = {label: partition_value(page, label) for label in PARTITION_COUNTS}
            shots.take(page, "first day's partition", full_page=True)
        except Exception:
            shots.keep(dev_server.log_path, "dev.log")
            try:
                shots.take(page, "failure", full_page=True)
            except Exception as shot_error:  # keep the real failure in front
                print(f"no failure screenshot: {shot_error}")
            raise
        finally:
            browser.close()
    shots.keep(dev_server.log_path, "dev.log")

    # the catalog's partitions as Dagster holds them: exactly the symbols that use each
    assert {asset: symbol_partitions(dev_server, asset) for asset in CATALOG_USERS} \
        == CATALOG_USERS

    # -- what the UI launched: exactly the chosen partitions of bars_5m, one run, succeeded
    assert found["isAssetBackfill"] is True
    assert [a["path"] for a in found["assetSelection"]] == [["bars_5m"]]
    assert sorted(found["partitionNames"]) == sorted(chosen)
    assert found["numPartitions"] == 2
    tags = {t["key"]: t["value"] for t in run["tags"]}
    assert run["status"] == "SUCCESS"
    assert tags["dagster/backfill"] == backfill_id
    assert tags.get("dagster/from_ui") == "true"
    assert (tags["dagster/asset_partition_range_start"],
            tags["dagster/asset_partition_range_end"]) == (chosen[0], chosen[1])
    # the backfill's run materialised both partitions (the sensors' catch-up runs may have too)
    by_partition = materializing_runs(dev_server, chosen)
    for key in chosen:
        assert run["runId"] in by_partition.get(key, set()), (key, by_partition)

    # -- and derived_data_bars holds those 5m bars: every settled window with enough source
    # bars has exactly one active bar, and no bar lacks its source
    as_of = run_created_at(dev_server, run["runId"])
    start = datetime.combine(first_day, datetime.min.time(), tzinfo=UTC)
    end = datetime.combine(last_day + timedelta(days=1), datetime.min.time(), tzinfo=UTC)
    with connection.connect(market_url) as conn:
        bars = [r[0] for r in conn.execute(
            "SELECT ts_utc FROM derived_data_bars WHERE canonical_symbol = %s "
            "AND timeframe = '5m' AND deleted_at IS NULL AND ts_utc >= %s AND ts_utc < %s",
            (SYMBOL, start, end))]
        sourced = {r[0]: r[1] for r in conn.execute(
            "SELECT date_bin('5 minutes', ts_utc, %s) AS w, count(*) FROM data_bars "
            "WHERE canonical_symbol = %s AND timeframe = '1m' AND ts_utc >= %s "
            "AND ts_utc < %s GROUP BY 1", (start, SYMBOL, start, end))}
    assert len(bars) == len(set(bars)), "more than one active bar per window"
    settled = {w for w, n in sourced.items()
               if n >= MIN_SOURCE_BARS and w + timedelta(minutes=5) + SETTLED <= as_of}
    per_day = {d: sum(1 for b in bars if b.astimezone(UTC).date() == d)
               for d in (first_day, last_day)}
    assert all(per_day.values()), per_day
    assert settled, "no settled windows in the chosen days"
    assert settled <= set(bars), sorted(settled - set(bars))[:5]
    assert all(sourced.get(b, 0) >= MIN_SOURCE_BARS for b in bars)
    # -- the partition page showed the first day's own counts, as stored and as in the tables
    assert shown == {k: latest_partition_metadata(dev_server, chosen[0])[k]
                     for k in PARTITION_COUNTS}, shown
    day_start = datetime.combine(first_day, datetime.min.time(), tzinfo=UTC)
    with connection.connect(market_url) as conn:
        day_rows = conn.execute(
            "SELECT count(*) FROM data_bars WHERE canonical_symbol = %s AND timeframe = '1m' "
            "AND ts_utc >= %s AND ts_utc < %s",
            (SYMBOL, day_start, day_start + timedelta(days=1))).fetchone()[0]
    assert shown["source_rows_read"] == day_rows
    assert shown["windows_seen"] == 288
    assert shown["bars_inserted"] + shown["bars_updated"] + shown["bars_unchanged"] == (
        per_day[first_day]), (shown, per_day)
    print(f"backfill {backfill_id}: {found['status']}, 5m bars per day {per_day}; "
          f"{len(shots.saved)} screenshots; {time.monotonic() - started:.0f}s in all")


LAUNCHPAD_CONFIG = """ops:
  backfill_bars_op:
    config:
      first_day: "{first}"
      last_day: "{last}"
      symbols: []
      timeframes: ["5m", "1h"]
"""


def job_runs(server: DevServer, job: str) -> list[dict]:
    data = server.graphql("""query ($job: String!) {
        runsOrError(filter: {pipelineName: $job}) { ... on Runs { results {
            runId status tags { key value } } } } }""", {"job": job})
    return data["runsOrError"]["results"]


def test_backfill_every_symbol_from_the_launchpad_in_chromium(chromium: str,
                                                              dev_server: DevServer,
                                                              tmp_path: Path):
    """The README's backfill: Jobs > backfill_bars > Launchpad, the config, Launch run: one
    backfill_bars run and one aggregate_bars run over every demo symbol x two days, every
    partition materialised by it. (Written without a browser at hand: the config is set on
    the launchpad's CodeMirror editor through its own API, not typed key by key.)"""
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=UI_TIMEOUT_MS)
    dev_server.wait_until_loaded()
    market_url = embedded.ensure_server(dev_server.home).database_url(embedded.MARKET_DATABASE)
    first_day, last_day = latest_two_days(market_url, SYMBOL)
    symbols = wait_for_symbol_partitions(dev_server)[SYMBOL_DIMENSION]
    community_dialog = dev_server.graphql("{ shouldShowNux }")["shouldShowNux"]
    shots = Screenshots(tmp_path / "screenshots")
    with sync_playwright() as playwright:
        browser = launch(playwright, chromium)
        try:
            # the job's page (the README's Jobs > backfill_bars), then its Launchpad tab
            page = open_ui(browser,
                           f"{dev_server.url}/locations/agg_pipeline/jobs/backfill_bars",
                           community_dialog)
            page.get_by_role("tab", name="Launchpad").click()
            editor = page.locator(".CodeMirror").first
            expect(editor).to_be_visible()
            editor.evaluate("(node, text) => node.CodeMirror.setValue(text)",
                            LAUNCHPAD_CONFIG.format(first=first_day, last=last_day))
            shots.take(page, "launchpad config")
            page.get_by_role("button", name="Launch run").click()
            runs = wait_for(lambda: [r for r in job_runs(dev_server, "backfill_bars")
                                     if r["status"] in ("SUCCESS", "FAILURE", "CANCELED")],
                            BACKFILL_TIMEOUT, "the backfill_bars run to end",
                            lambda: dev_server.log()[-3000:], interval=2)
            shots.take(page, "launched run")
        except Exception:
            shots.keep(dev_server.log_path, "dev.log")
            try:
                shots.take(page, "failure", full_page=True)
            except Exception as shot_error:
                print(f"no failure screenshot: {shot_error}")
            raise
        finally:
            browser.close()
    [launched] = runs
    assert launched["status"] == "SUCCESS", run_failure_messages(dev_server, launched["runId"])
    assert {t["key"]: t["value"] for t in launched["tags"]}.get("dagster/from_ui") == "true"
    built = [r for r in job_runs(dev_server, "aggregate_bars")
             if {t["key"]: t["value"] for t in r["tags"]}.get("agg/launched_by")
             == launched["runId"]]
    assert [r["status"] for r in built] == ["SUCCESS"], built  # one run, every symbol
    keys = [partition_key(s, d) for s in symbols for d in (first_day, last_day)]
    by_partition = materializing_runs(dev_server, keys)
    assert all(built[0]["runId"] in by_partition.get(k, set()) for k in keys), by_partition
