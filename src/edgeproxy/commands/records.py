"""What the store commands (``partner``, ``gateway``, ``policy``, ``user``, ``config
export|import``) share: a session on the store, warnings, and printing records and changes.

Their names mirror Lync's ``*-CsXmppAllowedPartner``, ``*-CsXmppGatewayConfiguration`` and
``*-CsExternalAccessPolicy`` cmdlets. Exit status: 0 ok; 1 refused by validation (the rule is
printed on stderr, nothing is saved); 2 usage error. Warnings of the TLS × SASL × dialback
negotiation matrix are printed on stderr as ``edgeproxy: warning: …`` and the change is saved.

``--json`` output (stable; documented in ``docs/cli-json.md``) uses the field names of the models
in kebab-case and the enumeration values written as on the command line; without ``--json`` a
record is one ``name: value`` line per field, records separated by an empty line, and a change is
a headline followed by the fields it changed, ``  name: before → after``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import msgspec

from edgeproxy.commands.common import (
    EXIT_OK,
    change_json,
    load_args_config,
    refused,
    warning,
)
from edgeproxy.config import EdgeConfig
from edgeproxy.policy.model import Configuration, User
from edgeproxy.policy.store import STORE_FILE, Store

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


#: A shell-completion function as argcomplete calls it: ``(prefix, parsed_args, **kw)``.
Completer = Callable[..., list[str]]


def stored_completer(names: Callable[[Configuration, str], Iterable[str]]) -> Completer:
    """Completion of a name the store holds (a user, a policy …): the ``names(configuration,
    prefix)`` of the store of the configuration the command line names that start with the
    ``prefix`` typed. Nothing when there is no store yet (completing creates none) or anything
    fails: a completion never prints."""

    def complete(prefix: str, parsed_args: argparse.Namespace, **_kw: Any) -> list[str]:
        try:
            config = load_args_config(parsed_args)
            if not (Path(config.state_dir) / STORE_FILE).is_file():
                return []
            with Store.open(config.state_dir) as store:
                _generation, configuration = store.read()
            return sorted(n for n in names(configuration, prefix) if n.startswith(prefix))
        except Exception:  # noqa: BLE001 - a broken store must not break the shell's Tab
            return []

    return complete


def set_completer(action: argparse.Action, completer: Completer) -> None:
    """Attach ``completer`` to an argument (argcomplete reads the ``completer`` attribute)."""
    action.completer = completer  # type: ignore[attr-defined]


def user_names(configuration: Configuration, prefix: str) -> list[str]:
    """The users' SIP addresses as typed on the command line: with ``sip:`` once that is what
    was typed, else without it (``alice@contoso.test``)."""
    full = prefix.startswith("sip:")
    return [u.sip if full else u.sip.removeprefix("sip:") for u in configuration.users]


def print_warnings(warnings: tuple[str, ...]) -> None:
    """Each warning on stderr as ``edgeproxy: warning: …``."""
    for message in warnings:
        warning(message)


def user_record(user: User) -> dict[str, Any]:
    """A user as ``user get`` shows it: the model's fields in order, the credentials replaced by
    ``password-set`` and ``password-algorithms`` (the hashes are secrets)."""
    record: dict[str, Any] = msgspec.to_builtins(user)
    credentials = record.pop("credentials", [])
    record["password-set"] = bool(credentials)
    record["password-algorithms"] = sorted({c["algorithm"] for c in credentials})
    return record


def print_json(value: Any) -> None:
    """``value`` as indented JSON on stdout, the keys of its dicts sorted."""
    sys.stdout.write(msgspec.json.format(_json.encode(value), indent=2).decode() + "\n")


def print_ordered_json(value: Any) -> None:
    """Like ``print_json``, keeping the key order of the dicts (fields in model order)."""
    sys.stdout.write(msgspec.json.format(msgspec.json.encode(value), indent=2).decode() + "\n")


#: A record as the commands print it: a model (partner, policy, gateway) or a dict (a user).
Record = msgspec.Struct | dict[str, Any]

#: A hidden field's value in text output (``--json`` shows it).
HIDDEN = "(set, hidden; see --json)"
HIDDEN_CHANGE = "(changed, hidden; see --json)"


def record_fields(value: Record) -> list[tuple[str, Any]]:
    """The ``(name, value)`` pairs of a record, in order, named as in JSON."""
    if isinstance(value, dict):
        return list(value.items())
    return [(f.encode_name, getattr(value, f.name)) for f in msgspec.structs.fields(value)]


def text_value(item: Any) -> str:
    """A field's value as the text output shows it: lists joined with ``, ``, booleans
    ``true``/``false``, nothing (null, empty string or list) as ``-``."""
    if isinstance(item, tuple | list):
        return ", ".join(str(i) for i in item) if item else "-"
    if isinstance(item, bool):
        return "true" if item else "false"
    if item is None or item == "":
        return "-"
    return str(item)


def print_record(value: Record, *, hide: frozenset[str] = frozenset()) -> None:
    """One ``name: value`` line per field; the fields in ``hide`` show only that they are set."""
    for name, item in record_fields(value):
        print(f"{name}: {HIDDEN if name in hide else text_value(item)}")


def change_lines(
    before: Record | None, after: Record | None, *, hide: frozenset[str] = frozenset()
) -> list[str]:
    """The text lines of a change under its headline: every field of a new record
    (``  name: value``), each changed field of a changed one (``  name: before → after``, or
    ``  (nothing changed)``), nothing for a removed one."""
    if after is None:
        return []
    if before is None:
        return [
            f"  {name}: {HIDDEN if name in hide and item else text_value(item)}"
            for name, item in record_fields(after)
        ]
    old = dict(record_fields(before))
    lines = []
    for name, item in record_fields(after):
        previous = old.get(name)
        if msgspec.to_builtins(previous) == msgspec.to_builtins(item):
            continue
        if name in hide:
            lines.append(f"  {name}: {HIDDEN_CHANGE}")
        else:
            lines.append(f"  {name}: {text_value(previous)} → {text_value(item)}")
    return lines or ["  (nothing changed)"]


def print_change(
    as_json: bool,
    kind: str,
    headline: str,
    before: Record | None,
    after: Record | None,
    warnings: tuple[str, ...] = (),
    *,
    hide: frozenset[str] = frozenset(),
) -> int:
    """What a ``new``/``set``/``remove`` command prints: its warnings on stderr, then with
    ``--json`` the change as ``change_json`` (``before`` and ``after`` encoded as ``get --json``
    encodes them), else ``headline`` and :func:`change_lines`."""
    print_warnings(warnings)
    if as_json:
        print_ordered_json(change_json(kind, before, after, warnings))
        return EXIT_OK
    print(headline)
    for line in change_lines(before, after, hide=hide):
        print(line)
    return EXIT_OK


def print_records(values: list[Any], **kw: Any) -> None:
    """Records one after the other, separated by an empty line."""
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
