# PYTHON_ARGCOMPLETE_OK
"""The ``edgeproxy`` command: the parser of every sub-command, and ``main``.

Each sub-command lives in :mod:`edgeproxy.commands` and adds itself here through its module's
``register(subparsers)``; its handler is ``args.handler(args) -> int`` (exit status: 0 ok,
1 refused by validation or failed check, 2 usage error). Global options: ``--config PATH``
(else ``$EDGEPROXY_CONFIG``, else the embedded default) and ``--version``.

Shell completion: the marker comment on the first line lets argcomplete's global completion
find this module, and ``main`` answers a completion request (``docs/cli.md``). Usage errors are
printed like every other error, ``edgeproxy: …`` on stderr, after the usage line.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from edgeproxy import version_text
from edgeproxy.commands import (
    admin,
    certs,
    checks,
    config,
    dns,
    gateway,
    loadtest,
    ops,
    partners,
    policies,
    pool,
    serve,
    users,
)
from edgeproxy.commands.common import EXIT_REFUSED, EXIT_USAGE, SubParsers, error
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
    pool.register,  # the edge pool: status, secret
    ops.register,  # status, stop, reload
    admin.register,  # the Control Panel's passwords
    loadtest.register,
)

DESCRIPTION = (
    "XMPP federation edge: a server-to-server proxy for XMPP partners, the policy that decides "
    "who may federate, and the gateway between XMPP and SIP users."
)

EPILOG = (
    "Exit status: 0 ok; 1 refused (nothing saved), failed or not found; 2 usage error. "
    "Errors are printed on stderr as 'edgeproxy: ...', warnings as 'edgeproxy: warning: ...'. "
    "Commands with --json print stable JSON (docs/cli-json.md). "
    "Run 'edgeproxy COMMAND --help' for a command's options."
)

#: The environment variable a completion request sets (argcomplete's protocol).
COMPLETION_REQUEST = "_ARGCOMPLETE"


class EdgeproxyArgumentParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors say ``edgeproxy: …`` like every other error
    (argparse's own form is ``PROG: error: …``); the sub-parsers inherit the class."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"edgeproxy: {message} (see: {self.prog} --help)\n")


class VersionAction(argparse.Action):
    """``--version``: print ``version_text()`` as it is (argparse's own action re-wraps it to
    the terminal's width) and exit; the tokenizer is only asked when the option is given."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS,
                 default: object = argparse.SUPPRESS, help: str | None = None) -> None:
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: object, option_string: str | None = None) -> None:
        print(version_text())
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    """The parser of the whole command line, every sub-command registered."""
    parser = EdgeproxyArgumentParser(prog="edgeproxy", description=DESCRIPTION, epilog=EPILOG)
    parser.add_argument(
        "--version",
        action=VersionAction,
        help="print the version and exit",
    )
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


def complete(parser: argparse.ArgumentParser) -> None:
    """Answer a shell's completion request and exit; nothing without one (argcomplete is
    imported only then, so an ordinary run does not pay for it)."""
    if COMPLETION_REQUEST in os.environ:
        import argcomplete

        argcomplete.autocomplete(parser)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` (default: ``sys.argv[1:]``); return its exit status."""
    parser = build_parser()
    complete(parser)
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args))
    except ConfigError as exc:
        error(str(exc))
        return EXIT_REFUSED
    except BrokenPipeError:
        # Whoever read standard output has gone (``edgeproxy user get | head -1``): nothing to
        # say, and nothing more to flush there at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_REFUSED
    except OSError as exc:  # a state directory or file that cannot be used, a port taken, …
        error(os_error_text(exc))
        return EXIT_REFUSED


def os_error_text(exc: OSError) -> str:
    """An operating-system error as one line: ``PATH: reason`` when it names a file."""
    reason = exc.strerror or str(exc)
    if exc.filename is not None:
        return f"{exc.filename}: {reason}"
    return reason


if __name__ == "__main__":
    sys.exit(main())
