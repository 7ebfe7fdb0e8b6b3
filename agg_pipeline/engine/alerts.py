"""Alert payloads and their delivery: a structured log line always, a JSON POST to
AGG_ALERT_WEBHOOK_URL when it is set. The URL is a secret: it is never logged."""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime

import psycopg
from psycopg.rows import dict_row

from agg_pipeline import settings
from agg_pipeline.db import queries
from agg_pipeline.engine import windows

TIMEOUT_SECONDS = 10

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


def deliver(message: dict, url: str | None = None) -> str | None:
    """Log the message; POST it when a webhook is configured. Returns an error text (never
    containing the URL) when the POST failed, else None."""
    line = json.dumps(message, default=str, sort_keys=True)
    log.warning("alert %s", line)
    url = url if url is not None else settings.alert_webhook_url()
    if not url:
        return None
    request = urllib.request.Request(url, data=line.encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS) as response:
            response.read()
    except urllib.error.HTTPError as exc:
        return f"webhook answered HTTP {exc.code}"
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return f"webhook unreachable ({type(exc).__name__})"
    return None


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
