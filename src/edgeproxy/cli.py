"""The ``edgeproxy`` command.

Every sub-command lives in the module of its concept and adds itself here through a
``register(subparsers)`` function; its handler is ``args.handler(args) -> int`` (exit status:
0 ok, 1 refused by validation or failed check, 2 usage error). Global options: ``--config PATH``
(else ``$EDGEPROXY_CONFIG``, else the embedded default) and ``--version``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from edgeproxy import __version__
from edgeproxy.config import EdgeConfig, default_config_text, load_config
from edgeproxy.errors import ConfigError

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_USAGE = 2
EMBEDDED_DEFAULT = "<embedded default>"  # EdgeConfig.source of the embedded default

def config_option_parent() -> argparse.ArgumentParser:
    """A parent parser so that ``--config`` is accepted after any sub-command too."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "--config",
        metavar="PATH",
        default=argparse.SUPPRESS,
        help="configuration file (default: $EDGEPROXY_CONFIG, else the embedded default)",
    )
    return parent


Registrar = Callable[["argparse._SubParsersAction[argparse.ArgumentParser]"], None]


def _demo_user_at_first_start(config: EdgeConfig) -> None:
    """``make run`` out of the box (issue 14): when ``serve`` runs on the embedded default
    configuration and its store does not exist yet, create the store with the demo user
    ``sip:alice@contoso.test`` and a generated password, and show the password once in the event
    log (``EP8008 demo-user-created``). Nothing happens for an operator's own configuration
    (``--config`` or ``$EDGEPROXY_CONFIG``), nor for a store that exists already — also one
    that another command created first, or whose demo user was removed."""
    import os

    from edgeproxy.ops import events
    from edgeproxy.policy import operations as ops
    from edgeproxy.policy.store import STORE_FILE, Store
    from edgeproxy.policy.validation import ChangeRefused

    if config.source != EMBEDDED_DEFAULT or (config.state_dir / STORE_FILE).exists():
        return
    with Store.open(config.state_dir) as store:
        try:
            password = ops.create_demo_user(store, config.edge.domains)
        except ChangeRefused:  # a concurrent first start created it: it shows the password
            return
    output = os.environ.get("EDGEPROXY_LOG_FORMAT", "auto")
    with events.EventLog(sys.stderr, output=output if output in ("json", "text") else "auto") as log:
        log.emit(events.DEMO_USER_CREATED, user=ops.DEMO_USER, password=password)


def _serve(args: argparse.Namespace) -> int:
    import logging

    import trio

    from edgeproxy.net.serve import serve

    config = load_config(args.config)
    _demo_user_at_first_start(config)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        trio.run(serve, config, args.role)
    except KeyboardInterrupt:
        return EXIT_OK
    return EXIT_OK


def _config_show_default(args: argparse.Namespace) -> int:
    sys.stdout.write(default_config_text())
    return EXIT_OK


def _config_check(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    print(f"configuration {config.source}: OK (domains: {', '.join(config.edge.domains)})")
    return EXIT_OK


def _register_core(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    serve = sub.add_parser("serve", parents=[config_option_parent()], help="run the edge (S2S listener, loopback channel)")
    serve.add_argument(
        "--role", choices=("both", "edge", "gateway"), default="both",
        help="both (default): edge and gateway in one process; edge or gateway: one side only",
    )
    serve.set_defaults(handler=_serve)
    config = sub.add_parser("config", help="the configuration file")
    config_sub = config.add_subparsers(dest="config_command", required=True, metavar="COMMAND")
    show = config_sub.add_parser("show-default", parents=[config_option_parent()], help="print the embedded default configuration")
    show.set_defaults(handler=_config_show_default)
    check = config_sub.add_parser("validate", parents=[config_option_parent()], help="load the configuration and report errors")
    check.set_defaults(handler=_config_check)


def _registrars() -> list[Registrar]:
    """Sub-command groups, in help order. Each module owns its own commands."""
    from edgeproxy import checks
    from edgeproxy.certs import commands as cert_commands
    from edgeproxy.dns import commands as dns_commands
    from edgeproxy.loadtest import commands as loadtest_commands
    from edgeproxy.ops import commands as ops_commands
    from edgeproxy.policy.commands import register as register_policy

    return [
        _register_core,
        cert_commands.register,
        dns_commands.register,
        checks.register,
        register_policy,
        ops_commands.register,  # status, stop, reload
        loadtest_commands.register,
    ]


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
    for register in _registrars():
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args))
    except ConfigError as exc:
        print(f"edgeproxy: {exc}", file=sys.stderr)
        return EXIT_REFUSED


if __name__ == "__main__":
    sys.exit(main())
