"""What the command modules share: exit statuses, the ``--config`` option after a sub-command,
the configuration it names, the ``--json`` option and the shape of a change in JSON, and the one
form of a message on stderr: ``edgeproxy: …`` for an error, ``edgeproxy: warning: …`` for a
warning."""

from __future__ import annotations

import argparse
import sys
from typing import TypeAlias

from edgeproxy.config import EdgeConfig, load_config

EXIT_OK = 0
EXIT_REFUSED = 1  # refused by validation, or a failed check
EXIT_USAGE = 2  # a usage error (argparse exits with 2 too)

#: What each module's ``register(sub)`` adds its commands to.
SubParsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


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


def command_group(sub: SubParsers, name: str, help: str) -> SubParsers:
    """``edgeproxy NAME COMMAND …``: the group ``name`` under ``sub``, whose commands go into the
    returned sub-parsers (one of them is required)."""
    group = sub.add_parser(name, help=help)
    return group.add_subparsers(dest=f"{name}_command", required=True, metavar="COMMAND")


def load_args_config(args: argparse.Namespace) -> EdgeConfig:
    """The configuration ``--config`` names, else ``$EDGEPROXY_CONFIG``, else the embedded default."""
    return load_config(getattr(args, "config", None))


def error(message: str) -> None:
    """``edgeproxy: MESSAGE`` on stderr."""
    print(f"edgeproxy: {message}", file=sys.stderr)


#: How a warning starts, after ``edgeproxy: `` on stderr (and never inside a JSON warning).
WARNING_PREFIX = "warning: "


def warning(message: str) -> None:
    """``edgeproxy: warning: MESSAGE`` on stderr (a ``warning:`` already in MESSAGE is not
    repeated)."""
    error(WARNING_PREFIX + message.removeprefix(WARNING_PREFIX))


def refused(message: str) -> int:
    """``edgeproxy: MESSAGE`` on stderr; the exit status of a refusal."""
    error(message)
    return EXIT_REFUSED


def add_json_option(parser: argparse.ArgumentParser) -> None:
    """``--json``: the command's result as stable JSON on stdout (``docs/cli-json.md``)."""
    parser.add_argument(
        "--json",
        action="store_true",
        help="print the result as stable JSON on stdout (docs/cli-json.md) instead of text",
    )


def change_json(
    kind: str, before: object | None, after: object | None, warnings: tuple[str, ...] = ()
) -> dict[str, object]:
    """What a ``new``/``set``/``remove`` command prints with ``--json``: ``{"kind": …,
    "before": record or null, "after": record or null, "warnings": […]}`` (``before`` is null
    for ``new``, ``after`` null for ``remove``); records are encoded as by ``get --json``.
    A warning is its message without the ``warning:`` that stderr shows before it."""
    return {
        "kind": kind,
        "before": before,
        "after": after,
        "warnings": [w.removeprefix(WARNING_PREFIX) for w in warnings],
    }
