"""Alert payloads and their delivery: a structured log line always, a JSON POST to
AGG_ALERT_WEBHOOK_URL when it is set. The URL is a secret (it may carry `user:token@`): it
is never logged, and no error text built here contains it.

Deliveries run concurrently (at most MAX_PARALLEL at once) under one overall deadline, so a
slow or dead webhook cannot hold the alerts sensor past Dagster's 60 s limit: what was not
confirmed delivered by then is reported as such and retried by the caller on its next tick.
"""

from __future__ import annotations

import base64
import json
import logging
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import datetime

import psycopg
from psycopg.rows import dict_row

from agg_pipeline import settings
from agg_pipeline.db import queries
from agg_pipeline.engine import windows

TIMEOUT_SECONDS = 10  # one POST (each socket operation), never beyond the overall deadline
DELIVERY_BUDGET_SECONDS = 25.0  # all of a tick's POSTs: well under the sensor's 60 s
MAX_PARALLEL = 8  # POSTs in flight at once
NOT_ATTEMPTED = "not attempted: out of time"
TIMED_OUT = "no answer within the tick's delivery budget"

log = logging.getLogger("agg_pipeline.alerts")


@dataclass(frozen=True)
class Incident:
    key: str  # stable while the incident lasts: one alert per key until it clears
    kind: str  # check | run | task
    summary: str
    details: dict = field(default_factory=dict, compare=False)


def payload(incident: Incident, status: str, at: datetime) -> dict:
    """The JSON sent for an incident opening ("firing") or clearing ("resolved"). `text`
    makes it readable by chat webhooks (Slack, Mattermost) as it is."""
    icon = "🔴" if status == "firing" else "✅"
    return {
        "source": "agg_pipeline",
        "status": status,
        "incident": incident.key,
        "kind": incident.kind,
        "summary": incident.summary,
        "details": incident.details,
        "at": at.isoformat(),
        "text": f"{icon} agg_pipeline {status}: {incident.summary}",
    }


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect is a failed delivery: urllib would turn the POST into a body-less GET (a
    2xx then says nothing was delivered) and send the Authorization header to wherever the
    Location points."""

    def redirect_request(self, req: urllib.request.Request, fp: object, code: int, msg: str,
                         headers: object, newurl: str) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirects)


def _target(url: str) -> tuple[str, dict[str, str]]:
    """The URL without its `user:password@` part, and the Basic Authorization header that
    part stands for (urllib sends URL credentials nowhere: it would try to resolve them as
    part of the host)."""
    parts = urllib.parse.urlsplit(url)
    if "@" not in parts.netloc:
        return url, {}
    userinfo, _, host = parts.netloc.rpartition("@")
    user, _, password = userinfo.partition(":")
    token = f"{urllib.parse.unquote(user)}:{urllib.parse.unquote(password)}"
    header = "Basic " + base64.b64encode(token.encode()).decode("ascii")
    return urllib.parse.urlunsplit(parts._replace(netloc=host)), {"Authorization": header}


def post(line: str, url: str, timeout: float) -> str | None:
    """POST one JSON line. Returns an error text (never containing the URL or its
    credentials) when the webhook did not accept it, else None."""
    try:
        target, auth = _target(url)
        request = urllib.request.Request(target, data=line.encode(), method="POST",
                                         headers={"Content-Type": "application/json", **auth})
        with _OPENER.open(request, timeout=max(timeout, 0.1)) as response:
            status = response.status
    except urllib.error.HTTPError as exc:
        exc.close()
        return f"webhook answered HTTP {exc.code}"
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return f"webhook unreachable ({type(exc).__name__})"
    return None if 200 <= status < 300 else f"webhook answered HTTP {status}"


def deliver(message: dict, url: str | None = None) -> str | None:
    """Log the message; POST it when a webhook is configured. Returns an error text (never
    containing the URL) when the POST failed, else None."""
    return deliver_all([message], url)[0]


def deliver_all(messages: Sequence[dict], url: str | None = None, *,
                budget: float | None = None) -> list[str | None]:
    """Log every message, then POST them concurrently (MAX_PARALLEL at once) within `budget`
    seconds overall (DELIVERY_BUDGET_SECONDS). Returns, per message, None when the webhook
    accepted it, else why not. A POST still unanswered at the deadline counts as not
    delivered: it is retried, so a receiver may see an alert twice, but never loses one."""
    lines = [json.dumps(m, default=str, sort_keys=True) for m in messages]
    for line in lines:
        log.warning("alert %s", line)
    url = url if url is not None else settings.alert_webhook_url()
    if not url or not lines:
        return [None] * len(lines)
    deadline = time.monotonic() + (DELIVERY_BUDGET_SECONDS if budget is None else budget)
    results: list[str | None] = [NOT_ATTEMPTED] * len(lines)
    pool = ThreadPoolExecutor(max_workers=MAX_PARALLEL, thread_name_prefix="agg-alert")
    pending: dict[Future, int] = {}
    try:
        for index, line in enumerate(lines):
            pending[pool.submit(_post_before, line, url, deadline)] = index
        while pending and (left := deadline - time.monotonic()) > 0:
            done, _ = wait(pending, timeout=left, return_when=FIRST_COMPLETED)
            for future in done:
                results[pending.pop(future)] = future.result()
        for future, index in pending.items():
            if future.done() and not future.cancelled():  # finished just now
                results[index] = future.result()
            else:
                results[index] = TIMED_OUT if future.running() else NOT_ATTEMPTED
    finally:
        # never wait for a hung POST: its thread ends on its own socket timeout
        pool.shutdown(wait=False, cancel_futures=True)
    return results


def _post_before(line: str, url: str, deadline: float) -> str | None:
    left = deadline - time.monotonic()
    if left <= 0:
        return NOT_ATTEMPTED
    return post(line, url, min(TIMEOUT_SECONDS, left))


def hard_failed_tasks(conn: psycopg.Connection) -> list[Incident]:
    """Mandatory tasks in hard_failed: still scheduled, and loud (contract 11)."""
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(queries.query("hard_failed_tasks")).fetchall()
    return [
        Incident(
            key=f"task:{r['canonical_symbol']}/{r['timeframe']}", kind="task",
            summary=(f"task {r['canonical_symbol']} / {r['timeframe']} is hard_failed after "
                     f"{r['hard_fail_streak']} hard failures"),
            details={"last_error": (r["last_error"] or "")[:500],
                     "last_success": windows.utc_or_none(r["last_successful_at_utc"])},
        )
        for r in rows
    ]
