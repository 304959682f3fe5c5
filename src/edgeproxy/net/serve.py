"""``edgeproxy serve [--role both|edge|gateway]``: run the edge (``edgeproxy.app.EdgeApp``), the
gateway, or both (the default; the loopback channel still crosses loopback) in the foreground
(``edgeproxy.app.run_app``).

The event log goes to stderr: JSON lines, or readable lines on a terminal
(``EDGEPROXY_LOG_FORMAT=json|text`` overrides). Standard ``logging`` records of WARNING and above
are routed into the event log (``EP9002``) so that every line on stderr is an event; the plain
handlers the CLI may have installed are removed. ``EDGEPROXY_DNS_RESOLVER=IP[:PORT]`` points
outbound SRV/A lookups at one nameserver (the lab).
"""

from __future__ import annotations

import logging
import os
import sys

from edgeproxy.app import run_app
from edgeproxy.config import EdgeConfig
from edgeproxy.ops.events import EventLog, EventLogHandler, OutputFormat
from edgeproxy.ops.metrics import Metrics


def _output_format() -> OutputFormat:
    value = os.environ.get("EDGEPROXY_LOG_FORMAT", "auto")
    return value if value in ("json", "text") else "auto"  # type: ignore[return-value]


async def serve(config: EdgeConfig, role: str = "both") -> None:
    """Run until SIGTERM/SIGINT or ``edgeproxy stop``; returns after the graceful shutdown."""
    metrics = Metrics()
    event_log = EventLog(sys.stderr, output=_output_format(), on_emit=metrics.event_logged,
                         on_suppress=metrics.event_suppressed)
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    bridge = EventLogHandler(event_log)
    root.addHandler(bridge)
    try:
        await run_app(config, role=role, event_log=event_log, metrics=metrics)
    finally:
        root.removeHandler(bridge)
        event_log.close()
