"""What the store commands (``partner``, ``gateway``, ``policy``, ``user``, ``config
export|import``) share: a session on the store, the matrix warnings, and printing records.

Their names mirror Lync's ``*-CsXmppAllowedPartner``, ``*-CsXmppGatewayConfiguration`` and
``*-CsExternalAccessPolicy`` cmdlets (issue 3 §5). Exit status: 0 ok; 1 refused by validation
(the rule is printed on stderr, nothing is saved); 2 usage error (argparse). Warnings of the
negotiation matrix (SPEC §2.1) are printed on stderr as ``edgeproxy: warning: …`` and the change
is saved.

``--json`` output (stable; documented in ``docs/cli-json.md``) uses the field names of the models
in kebab-case and the enumeration values written as on the command line; without ``--json`` a
record is one ``name: value`` line per field, records separated by an empty line.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import msgspec

from edgeproxy.commands.common import error, load_args_config
from edgeproxy.config import EdgeConfig
from edgeproxy.policy.store import Store

_json = msgspec.json.Encoder(order="deterministic")


@contextmanager
def session(args: argparse.Namespace) -> Iterator[tuple[EdgeConfig, Store]]:
    """The configuration and its store, closed on the way out."""
    config = load_args_config(args)
    store = Store.open(config.state_dir)
    try:
        yield config, store
    finally:
        store.close()


def print_warnings(warnings: tuple[str, ...]) -> None:
    for warning in warnings:
        error(warning)


def print_json(value: Any) -> None:
    sys.stdout.write(msgspec.json.format(_json.encode(value), indent=2).decode() + "\n")


def print_ordered_json(value: Any) -> None:
    """Like ``print_json``, keeping the key order of the dicts (fields in model order)."""
    sys.stdout.write(msgspec.json.format(msgspec.json.encode(value), indent=2).decode() + "\n")


def print_record(
    value: msgspec.Struct | dict[str, Any], *, hide: frozenset[str] = frozenset()
) -> None:
    if isinstance(value, dict):
        items = list(value.items())
    else:
        items = [(f.encode_name, getattr(value, f.name)) for f in msgspec.structs.fields(value)]
    for name, item in items:
        if name in hide:
            item = "(set, hidden; see --json)"
        elif isinstance(item, tuple | list):
            item = ", ".join(item) if item else "-"
        elif isinstance(item, bool):
            item = "true" if item else "false"
        elif item is None or item == "":
            item = "-"
        print(f"{name}: {item}")


def print_records(values: list[Any], **kw: Any) -> None:
    for i, value in enumerate(values):
        if i:
            print()
        print_record(value, **kw)
