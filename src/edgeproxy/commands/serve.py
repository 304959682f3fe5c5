"""``edgeproxy serve [--role both|edge|gateway]``: run the edge (``edgeproxy.app.EdgeApp``), the
gateway, or both (the default; the loopback channel still crosses loopback) in the foreground
(``edgeproxy.app.run_app``) until SIGTERM/SIGINT or ``edgeproxy stop``.

The event log goes to stderr: JSON lines, or readable lines on a terminal
(``EDGEPROXY_LOG_FORMAT=json|text`` overrides). Standard ``logging`` records of WARNING and above
are routed into the event log (``EP9002``) so that every line on stderr is an event; the plain
handlers installed before are removed. ``EDGEPROXY_DNS_RESOLVER=IP[:PORT]`` points outbound
SRV/A lookups at one nameserver (the lab).

``make run`` works out of the box (issue 14): on the embedded default configuration, the first
start creates the store with a demo user and shows its password once (``EP8008``).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

import trio

from edgeproxy.commands.common import EXIT_OK, SubParsers, config_option_parent, load_args_config
from edgeproxy.config import EMBEDDED_DEFAULT, EdgeConfig
from edgeproxy.ops.events import DEMO_USER_CREATED, EventLog, EventLogHandler, OutputFormat
from edgeproxy.ops.metrics import Metrics
from edgeproxy.policy import operations as ops
from edgeproxy.policy.store import STORE_FILE, Store
from edgeproxy.policy.validation import ChangeRefused


def _output_format() -> OutputFormat:
    value = os.environ.get("EDGEPROXY_LOG_FORMAT", "auto")
    return value if value in ("json", "text") else "auto"  # type: ignore[return-value]


def _demo_user_at_first_start(config: EdgeConfig) -> None:
    """When ``serve`` runs on the embedded default configuration and its store does not exist
    yet, create the store with the demo user ``sip:alice@contoso.test`` and a generated password,
    and show the password once in the event log (``EP8008 demo-user-created``). Nothing happens
    for an operator's own configuration (``--config`` or ``$EDGEPROXY_CONFIG``), nor for a store
    that exists already — also one that another command created first, or whose demo user was
    removed."""
    if config.source != EMBEDDED_DEFAULT or (config.state_dir / STORE_FILE).exists():
        return
    with Store.open(config.state_dir) as store:
        try:
            password = ops.create_demo_user(store, config.edge.domains)
        except ChangeRefused:  # a concurrent first start created it: it shows the password
            return
    with EventLog(sys.stderr, output=_output_format()) as log:
        log.emit(DEMO_USER_CREATED, user=ops.DEMO_USER, password=password)


async def serve(config: EdgeConfig, role: str = "both") -> None:
    """Run until SIGTERM/SIGINT or ``edgeproxy stop``; returns after the graceful shutdown."""
    from edgeproxy.app import run_app  # the server: only `serve` pays for importing it

    metrics = Metrics()
    event_log = EventLog(sys.stderr, output=_output_format(), on_emit=metrics.event_logged,
                         on_suppress=metrics.event_suppressed)
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    bridge = EventLogHandler(event_log)
    root.addHandler(bridge)
    # The bridge is the only handler and takes warnings and up: below that, no record is built
    # (an info line per stream or stanza would be made only to be dropped).
    level = root.level
    root.setLevel(bridge.level)
    try:
        await run_app(config, role=role, event_log=event_log, metrics=metrics)
    finally:
        root.removeHandler(bridge)
        root.setLevel(level)
        event_log.close()


def _serve(args: argparse.Namespace) -> int:
    config = load_args_config(args)
    _demo_user_at_first_start(config)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        trio.run(serve, config, args.role)
    except KeyboardInterrupt:
        return EXIT_OK
    return EXIT_OK


def register(sub: SubParsers) -> None:
    p = sub.add_parser(
        "serve", parents=[config_option_parent()], help="run the edge (S2S listener, loopback channel)"
    )
    p.add_argument(
        "--role", choices=("both", "edge", "gateway"), default="both",
        help="both (default): edge and gateway in one process; edge or gateway: one side only",
    )
    p.set_defaults(handler=_serve)
