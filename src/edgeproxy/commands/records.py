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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import msgspec

from edgeproxy.commands.common import EXIT_OK, error, load_args_config, refused
from edgeproxy.config import EdgeConfig
from edgeproxy.policy.model import Configuration
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


def read_configuration(args: argparse.Namespace) -> Configuration:
    """What the store holds now (for ``get`` and ``list``: the store is closed again)."""
    with session(args) as (_config, store):
        _generation, configuration = store.read()
    return configuration


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


def print_one(
    found: list[Any], name: str, as_json: bool, json: Callable[[Any], None] = print_json
) -> int:
    """``get NAME``: the record found, as JSON or as a record; refused (``no NAME``) without one."""
    if not found:
        return refused(f"no {name}")
    json(found[0]) if as_json else print_record(found[0])
    return EXIT_OK


def print_all(records: list[Any], as_json: bool, json: Callable[[Any], None] = print_json) -> int:
    """``get`` without a name: every record, as a JSON array or one record after the other."""
    json(records) if as_json else print_records(records)
    return EXIT_OK
