"""``edgeproxy user new | set | get | remove | set-password | clear-password | contact``: local
users and their authorized XMPP contacts (SPEC §5).

``user get SIP --json`` → one user object; ``user get --json`` → an array sorted by SIP address.
A user's SIP digest credentials are never shown: ``password-set`` and ``password-algorithms``
say whether it has a password and for which algorithms. ``user contact list USER --json`` →
``{"contacts": [...], "pending": [...]}`` (``docs/cli-json.md``). ``user set-password`` reads
the password from a file or a prompt (:mod:`edgeproxy.commands.secrets`).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

import msgspec

from edgeproxy.commands.common import (
    EXIT_OK,
    SubParsers,
    command_group,
    config_option_parent,
    refused,
)
from edgeproxy.commands.records import (
    print_all,
    print_json,
    print_one,
    print_ordered_json,
    read_configuration,
    session,
)
from edgeproxy.commands.secrets import add_secret_options, read_secret
from edgeproxy.policy import operations as ops
from edgeproxy.policy.credentials import EMPTY_PASSWORD, credentials_for
from edgeproxy.policy.model import User
from edgeproxy.policy.store import Store
from edgeproxy.policy.validation import refuse, validate_user

#: ``user set-password --algorithms``: which digest hashes to store (issue 14).
PASSWORD_ALGORITHMS = {"both": ("MD5", "SHA-256"), "md5": ("MD5",), "sha-256": ("SHA-256",)}


def _user_edit(args: argparse.Namespace) -> Callable[[User], User]:
    def edit(u: User) -> User:
        changes = {
            name: getattr(args, name)
            for name in ("name", "site", "sba")
            if getattr(args, name) is not None
        }
        return msgspec.structs.replace(u, **changes)

    return edit


def _user_new(args: argparse.Namespace) -> int:
    with session(args) as (config, store):
        user = ops.new_user(store, config.edge.domains, _user_edit(args)(User(sip=args.sip)))
    print(f"user {user.sip} created")
    return EXIT_OK


def _user_set(args: argparse.Namespace) -> int:
    with session(args) as (config, store):
        user = ops.set_user(store, config.edge.domains, args.sip, _user_edit(args))
    print(f"user {user.sip} saved")
    return EXIT_OK


def _user_record(user: User) -> dict[str, Any]:
    """A user as ``user get`` shows it: the model's fields in order, the credentials replaced by
    ``password-set`` and ``password-algorithms`` (the hashes are secrets)."""
    record: dict[str, Any] = msgspec.to_builtins(user)
    credentials = record.pop("credentials", [])
    record["password-set"] = bool(credentials)
    record["password-algorithms"] = sorted({c["algorithm"] for c in credentials})
    return record


def _user_get(args: argparse.Namespace) -> int:
    users = [_user_record(u) for u in read_configuration(args).users]
    if args.sip is None:
        return print_all(users, args.json, print_ordered_json)
    sip = ops.normalize_user(User(sip=args.sip)).sip
    return print_one([u for u in users if u["sip"] == sip], f"user {sip}", args.json, print_ordered_json)


def _user_set_password(args: argparse.Namespace) -> int:
    with session(args) as (config, store):
        sip = ops.normalize_user(User(sip=args.sip)).sip
        _generation, configuration = store.read()
        if not any(u.sip == sip for u in configuration.users):  # before asking for it
            return refused(
                f"refused: no user {sip}: a password is set for an existing user only "
                "(create it with user new first)"
            )
        password = read_secret("password", args.password_file)
        if not password:
            return refused(EMPTY_PASSWORD)
        user = _set_password(store, config.edge.domains, sip, password, args.algorithms)
    algorithms = ", ".join(c.algorithm for c in user.credentials)
    print(f"password of {user.sip} saved (digest hashes only: {algorithms})")
    return EXIT_OK


def _set_password(store: Store, domains: Any, sip: str, password: str, algorithms: str) -> User:
    """``ops.set_password``, keeping only the credentials of ``algorithms`` (one transaction).
    MD5 only is for UAs that take the first challenge whatever its algorithm and know only MD5
    (the gateway offers only the algorithms a user has credentials for)."""
    if algorithms == "both":
        return ops.set_password(store, domains, sip, password)
    keep = PASSWORD_ALGORITHMS[algorithms]
    try:
        credentials = tuple(c for c in credentials_for(sip, password) if c.algorithm in keep)
    except ValueError as exc:
        raise refuse(str(exc)) from None
    with store.write() as tx:
        current = tx.user(sip)
        if current is None:
            raise refuse(f"no user {sip}")
        changed = msgspec.structs.replace(current, credentials=credentials)
        validate_user(changed, (p.identity for p in tx.policies()), domains)
        tx.put_user(changed)
    return changed


def _user_clear_password(args: argparse.Namespace) -> int:
    with session(args) as (_config, store):
        had = ops.clear_password(store, args.sip)
    sip = ops.normalize_user(User(sip=args.sip)).sip
    print(f"password of {sip} cleared" if had else f"{sip} had no password")
    return EXIT_OK


def _user_remove(args: argparse.Namespace) -> int:
    with session(args) as (_config, store):
        ops.remove_user(store, args.sip)
    print(f"user {args.sip} removed")
    return EXIT_OK


def _contact_add(args: argparse.Namespace) -> int:
    with session(args) as (config, store):
        approved = ops.add_contact(store, config.edge.domains, args.user, args.jid)
    print(
        f"contact {args.jid} added"
        + (" (pending subscription request approved)" if approved else "")
    )
    return EXIT_OK


def _contact_remove(args: argparse.Namespace) -> int:
    with session(args) as (config, store):
        ops.remove_contact(store, config.edge.domains, args.user, args.jid)
    print(f"contact {args.jid} removed")
    return EXIT_OK


def _contact_list(args: argparse.Namespace) -> int:
    sip = ops.normalize_user(User(sip=args.user)).sip
    found = [u for u in read_configuration(args).users if u.sip == sip]
    if not found:
        return refused(f"no user {sip}")
    user = found[0]
    if args.json:
        print_json({"contacts": list(user.contacts), "pending": list(user.pending)})
    else:
        for jid in user.contacts:
            print(jid)
        for jid in user.pending:
            print(f"{jid} (pending)")
    return EXIT_OK


def register(sub: SubParsers) -> None:
    gsub = command_group(sub, "user", "local users and their XMPP contacts (SPEC §5)")
    for name, handler, options in (
        ("new", _user_new, True),
        ("set", _user_set, True),
        ("remove", _user_remove, False),
    ):
        p = gsub.add_parser(name, parents=[config_option_parent()], help=f"{name} a user")
        p.add_argument("sip", metavar="SIP-ADDRESS")
        if options:
            p.add_argument("--name", metavar="N")
            p.add_argument("--site", metavar="S")
            p.add_argument("--sba", action=argparse.BooleanOptionalAction, default=None)
        p.set_defaults(handler=handler)
    get = gsub.add_parser("get", parents=[config_option_parent()], help="show users")
    get.add_argument("sip", metavar="SIP-ADDRESS", nargs="?")
    get.add_argument("--json", action="store_true")
    get.set_defaults(handler=_user_get)
    password = gsub.add_parser(
        "set-password",
        parents=[config_option_parent()],
        help="set a user's SIP password (prompted twice, or --password-file; never on argv)",
        allow_abbrev=False,  # --password SECRET must not be taken for --password-file SECRET
    )
    password.add_argument("sip", metavar="SIP-ADDRESS")
    add_secret_options(password, "--password", "the password", prompt="the prompt (no option)")
    password.add_argument(
        "--algorithms",
        choices=tuple(PASSWORD_ALGORITHMS),
        default="both",
        help="digest hashes to store (default both; md5 for user agents that know only MD5 "
        "and take the first challenge, e.g. SIPp 3.6, baresip 1.0)",
    )
    password.set_defaults(handler=_user_set_password)
    clear = gsub.add_parser(
        "clear-password", parents=[config_option_parent()], help="remove a user's SIP password"
    )
    clear.add_argument("sip", metavar="SIP-ADDRESS")
    clear.set_defaults(handler=_user_clear_password)
    csub = command_group(gsub, "contact", "a user's authorized XMPP contacts")
    for name, handler in (("add", _contact_add), ("remove", _contact_remove)):
        p = csub.add_parser(name, parents=[config_option_parent()], help=f"{name} a contact")
        p.add_argument("user", metavar="USER")
        p.add_argument("jid", metavar="JID")
        p.set_defaults(handler=handler)
    listing = csub.add_parser(
        "list", parents=[config_option_parent()], help="list contacts and pending"
    )
    listing.add_argument("user", metavar="USER")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(handler=_contact_list)
