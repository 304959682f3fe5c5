"""What the dashboard shows, computed from ``EdgeApp.status()`` (the status source), the event
log's recent warnings and the ``[tls]`` certificate: plain data for the template."""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from typing import Any

from cryptography import x509

from edgeproxy.certs.check import EXPIRY_WARNING_DAYS, days_left
from edgeproxy.certs.store import configured_paths
from edgeproxy.config import EdgeConfig
from edgeproxy.ops.events import EventLog
from edgeproxy.ops.status import EdgeStatus, StatusSource

#: Warnings the dashboard lists (newest first).
SHOWN_WARNINGS = 10


def certificate_view(config: EdgeConfig, now: dt.datetime) -> dict[str, Any]:
    """The ``[tls]`` certificate: subject, expiry, days left and a level (ok, warning, error)."""
    path = configured_paths(config).certificate
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError) as exc:
        return {"path": str(path), "problem": f"cannot be read: {getattr(exc, 'strerror', None) or exc}",
                "level": "error"}
    left = days_left(cert, now)
    level = "error" if cert.not_valid_after_utc < now else "warning" if left < EXPIRY_WARNING_DAYS else "ok"
    return {"path": str(path), "subject": cert.subject.rfc4514_string(),
            "not_after": f"{cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC", "days_left": left, "level": level,
            "problem": ""}


def streams_by_partner(status: EdgeStatus) -> list[tuple[str, list[Any]]]:
    """The streams grouped by partner (unknown partners last), each group by age."""
    groups: dict[str, list[Any]] = defaultdict(list)
    for stream in status.streams:
        groups[stream.partner or "(not yet authenticated)"].append(stream)
    return sorted(((p, sorted(s, key=lambda x: x.age_seconds)) for p, s in groups.items()),
                  key=lambda item: (item[0].startswith("("), item[0]))


def dashboard_view(config: EdgeConfig, status_source: StatusSource, event_log: EventLog | None,
                   now: dt.datetime) -> dict[str, Any]:
    """Everything the dashboard template needs."""
    status = status_source.status()
    warnings = list(reversed(event_log.recent_warnings()))[:SHOWN_WARNINGS] if event_log is not None else []
    return {
        "edge": status,
        "partners": streams_by_partner(status),
        "warnings": warnings,
        "certificate": certificate_view(config, now),
    }


def age(seconds: float) -> str:
    """``42 s``, ``3 min``, ``2 h 5 min``, ``3 d 4 h``."""
    s = int(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min"
    if s < 86400:
        return f"{s // 3600} h {s % 3600 // 60} min"
    return f"{s // 86400} d {s % 86400 // 3600} h"
