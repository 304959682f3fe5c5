"""The ``edgeproxy`` command: the parser of every sub-command, and ``main``.

Each sub-command lives in :mod:`edgeproxy.commands` and adds itself here through its module's
``register(subparsers)``; its handler is ``args.handler(args) -> int`` (exit status: 0 ok,
1 refused by validation or failed check, 2 usage error). Global options: ``--config PATH``
(else ``$EDGEPROXY_CONFIG``, else the embedded default) and ``--version``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from edgeproxy import __version__
from edgeproxy.commands import (
    certs,
    checks,
    config,
    dns,
    gateway,
    loadtest,
    ops,
    partners,
    policies,
    serve,
    users,
)
from edgeproxy.commands.common import EXIT_REFUSED, SubParsers, error
from edgeproxy.errors import ConfigError

#: Sub-command groups, in help order.
REGISTRARS: tuple[Callable[[SubParsers], None], ...] = (
    serve.register,
    config.register,
    certs.register,
    dns.register,
    checks.register,
    partners.register,
    gateway.register,
    policies.register,
    users.register,
    ops.register,  # status, stop, reload
    loadtest.register,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgeproxy",
        description="XMPP federation edge: S2S proxy, policy engine and XMPP-SIP gateway.",
    )
    parser.add_argument("--version", action="version", version=f"edgeproxy {__version__}")
    parser.add_argument(
        "--config",
        metavar="PATH",
        default=None,
        help="configuration file (default: $EDGEPROXY_CONFIG, else the embedded default)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for register in REGISTRARS:
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args))
    except ConfigError as exc:
        error(str(exc))
        return EXIT_REFUSED


if __name__ == "__main__":
    sys.exit(main())
