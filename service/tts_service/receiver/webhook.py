"""Alertmanager webhook (version 4) validation. Only what passes here reaches a decision, and only
validated alert names and node names leave it: alert text never reaches a shell or a playbook."""
from __future__ import annotations

import re

from ..cluster import NODE_RE
from .decision import Alert

ALERTNAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,99}$")
MAX_ALERTS = 1000


class WebhookError(ValueError):
    """The body is not an Alertmanager v4 notification this receiver accepts."""


def parse(body: object) -> list[Alert]:
    if not isinstance(body, dict):
        raise WebhookError("the body must be a JSON object (Alertmanager webhook version 4)")
    if str(body.get("version")) != "4":
        raise WebhookError(f"unsupported webhook version {str(body.get('version'))[:20]!r}; expected \"4\"")
    alerts = body.get("alerts")
    if not isinstance(alerts, list) or not alerts:
        raise WebhookError("'alerts' must be a non-empty list")
    if len(alerts) > MAX_ALERTS:
        raise WebhookError(f"{len(alerts)} alerts in one notification; at most {MAX_ALERTS}")
    parsed = []
    for i, alert in enumerate(alerts):
        if not isinstance(alert, dict):
            raise WebhookError(f"alert {i} is not an object")
        status = alert.get("status")
        if status not in ("firing", "resolved"):
            raise WebhookError(f"alert {i} has status {str(status)[:20]!r}; expected firing or resolved")
        labels = alert.get("labels")
        if not isinstance(labels, dict):
            raise WebhookError(f"alert {i} has no labels")
        name, node = labels.get("alertname"), labels.get("node")
        if not isinstance(name, str) or not ALERTNAME_RE.match(name):
            raise WebhookError(f"alert {i} has no valid alertname")
        if not isinstance(node, str) or not NODE_RE.match(node):
            raise WebhookError(f"alert {i} ({name}) has no valid node label")
        fingerprint = alert.get("fingerprint", "")
        parsed.append(Alert(name, node, status, fingerprint if isinstance(fingerprint, str) else ""))
    return parsed
