"""``edgeproxy user new | set | get | remove | set-password | clear-password | contact``: the local
(SIP) users of the gateway and the XMPP contacts each has authorized.

``user get SIP --json`` → one user object; ``user get --json`` → an array sorted by SIP address.
A user's SIP digest credentials are never shown: ``password-set`` and ``password-algorithms``
say whether it has a password and for which algorithms. ``user contact list USER --json`` →
``{"contacts": [...], "pending": [...]}``. Every command that changes a user prints the change
(``--json``: ``{"kind": "user", "before": …, "after": …, "warnings": […]}``; see
``docs/cli-json.md``). ``user set-password`` reads the password from a file or a prompt
(:mod:`edgeproxy.commands.secrets`).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

import msgspec

from edgeproxy.commands.common import (
    EXIT_OK,
    SubParsers,
    add_json_option,
    command_group,
    config_option_parent,
    refused,
)
from edgeproxy.commands.records import (
    print_all,
    print_change,
    print_json,
    print_one,
    print_ordered_json,
    read_configuration,
    session,
    set_completer,
    stored_completer,
    user_names,
    user_record,
)
from edgeproxy.commands.secrets import add_secret_options, read_secret
from edgeproxy.policy import operations as ops
from edgeproxy.policy.credentials import EMPTY_PASSWORD, credentials_for
from edgeproxy.policy.model import User
from edgeproxy.policy.store import Store
from edgeproxy.policy.validation import refuse, validate_user

#: ``user set-password --algorithms``: which digest hashes to store.
PASSWORD_ALGORITHMS = {"both": ("MD5", "SHA-256"), "md5": ("MD5",), "sha-256": ("SHA-256",)}

#: The ``kind`` of a user change in ``--json`` output.
KIND = "user"

SIP_HELP = "the user's SIP address (sip:alice@contoso.test, or alice@contoso.test)"

#: Tab completes the stored users' SIP addresses.
USERS = stored_completer(user_names)


def _normalized_sip(text: str) -> str:
    """The SIP address as the store keys it (``sip:`` added, domain lower-cased)."""
    return ops.normalize_user(User(sip=text)).sip


def _stored_user(store: Store, sip: str) -> dict[str, Any] | None:
    """The user ``sip`` as ``user get --json`` shows it now, or None."""
    _generation, configuration = store.read()
    found = [u for u in configuration.users if u.sip == sip]
    return user_record(found[0]) if found else None


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
    return print_change(args.json, KIND, f"user {user.sip} created", None, user_record(user))


def _user_set(args: argparse.Namespace) -> int:
    seen: list[User] = []
    edit = _user_edit(args)

    def remembering(u: User) -> User:
        seen.append(u)
        return edit(u)

    with session(args) as (config, store):
        user = ops.set_user(store, config.edge.domains, args.sip, remembering)
    return print_change(
        args.json, KIND, f"user {user.sip} saved", user_record(seen[-1]), user_record(user)
    )


def _user_get(args: argparse.Namespace) -> int:
    users = [user_record(u) for u in read_configuration(args).users]
    if args.sip is None:
        return print_all(users, args.json, print_ordered_json)
    sip = _normalized_sip(args.sip)
    return print_one([u for u in users if u["sip"] == sip], f"user {sip}", args.json, print_ordered_json)


def _user_set_password(args: argparse.Namespace) -> int:
    with session(args) as (config, store):
        sip = _normalized_sip(args.sip)
        before = _stored_user(store, sip)
        if before is None:  # before asking for it
            return refused(
                f"refused: no user {sip}: a password is set for an existing user only "
                "(create it with user new first)"
            )
        password = read_secret("password", args.password_file)
        if not password:
            return refused(EMPTY_PASSWORD)
        user = _set_password(store, config.edge.domains, sip, password, args.algorithms)
    algorithms = ", ".join(c.algorithm for c in user.credentials)
    return print_change(
        args.json,
        KIND,
        f"password of {user.sip} saved (digest hashes only: {algorithms})",
        before,
        user_record(user),
    )


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
    sip = _normalized_sip(args.sip)
    with session(args) as (_config, store):
        before = _stored_user(store, sip)
        had = ops.clear_password(store, sip)
        after = _stored_user(store, sip)
    headline = f"password of {sip} cleared" if had else f"{sip} had no password"
    return print_change(args.json, KIND, headline, before, after)


def _user_remove(args: argparse.Namespace) -> int:
    sip = _normalized_sip(args.sip)
    with session(args) as (_config, store):
        before = _stored_user(store, sip)
        ops.remove_user(store, sip)
    return print_change(args.json, KIND, f"user {sip} removed", before, None)


def _contact_add(args: argparse.Namespace) -> int:
    sip = _normalized_sip(args.user)
    with session(args) as (config, store):
        before = _stored_user(store, sip)
        approved = ops.add_contact(store, config.edge.domains, sip, args.jid)
        after = _stored_user(store, sip)
    headline = f"contact {args.jid} added" + (
        " (pending subscription request approved)" if approved else ""
    )
    return print_change(args.json, KIND, headline, before, after)


def _contact_remove(args: argparse.Namespace) -> int:
    sip = _normalized_sip(args.user)
    with session(args) as (config, store):
        before = _stored_user(store, sip)
        ops.remove_contact(store, config.edge.domains, sip, args.jid)
        after = _stored_user(store, sip)
    return print_change(args.json, KIND, f"contact {args.jid} removed", before, after)


def _contact_list(args: argparse.Namespace) -> int:
    sip = _normalized_sip(args.user)
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


def _add_user_options(p: argparse.ArgumentParser, *, new: bool) -> None:
    unchanged = "" if new else "; unchanged if not given"
    p.add_argument(
        "--name", metavar="TEXT", help=f"display name (default: empty){unchanged}"
    )
    p.add_argument(
        "--site",
        metavar="NAME",
        help="the site the user belongs to: the policy site:NAME applies when no user policy "
        f"is granted (default: none){unchanged}",
    )
    p.add_argument(
        "--sba",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="the user is homed on a survivable branch appliance and never federates "
        f"(default: --no-sba){unchanged}",
    )


def register(sub: SubParsers) -> None:
    gsub = command_group(sub, "user", "local SIP users and the XMPP contacts they authorized")
    new = gsub.add_parser(
        "new",
        parents=[config_option_parent()],
        help="create a user (then set its password with user set-password)",
    )
    new.add_argument("sip", metavar="SIP-ADDRESS", help=SIP_HELP + "; its domain must be ours")
    _add_user_options(new, new=True)
    add_json_option(new)
    new.set_defaults(handler=_user_new)

    set_ = gsub.add_parser(
        "set", parents=[config_option_parent()], help="change a user's name, site or SBA flag"
    )
    set_completer(set_.add_argument("sip", metavar="SIP-ADDRESS", help=SIP_HELP), USERS)
    _add_user_options(set_, new=False)
    add_json_option(set_)
    set_.set_defaults(handler=_user_set)

    remove = gsub.add_parser(
        "remove",
        parents=[config_option_parent()],
        help="remove a user with its contacts and password",
    )
    set_completer(remove.add_argument("sip", metavar="SIP-ADDRESS", help=SIP_HELP), USERS)
    add_json_option(remove)
    remove.set_defaults(handler=_user_remove)

    get = gsub.add_parser(
        "get", parents=[config_option_parent()], help="show one user, or all of them"
    )
    set_completer(
        get.add_argument(
            "sip", metavar="SIP-ADDRESS", nargs="?", help=SIP_HELP + " (default: every user)"
        ),
        USERS,
    )
    add_json_option(get)
    get.set_defaults(handler=_user_get)

    password = gsub.add_parser(
        "set-password",
        parents=[config_option_parent()],
        help="set a user's SIP password (prompted twice, or --password-file; never on the "
        "command line); only its digest hashes are stored",
        allow_abbrev=False,  # --password SECRET must not be taken for --password-file SECRET
    )
    set_completer(password.add_argument("sip", metavar="SIP-ADDRESS", help=SIP_HELP), USERS)
    add_secret_options(
        password, "--password", "the password", prompt="the prompt (no option)",
        default="a prompt that does not echo, asking twice",
    )
    password.add_argument(
        "--algorithms",
        choices=tuple(PASSWORD_ALGORITHMS),
        default="both",
        help="digest hashes to store (default: both; md5 for user agents that know only MD5 "
        "and take the first challenge, e.g. SIPp 3.6, baresip 1.0)",
    )
    add_json_option(password)
    password.set_defaults(handler=_user_set_password)

    clear = gsub.add_parser(
        "clear-password",
        parents=[config_option_parent()],
        help="remove a user's SIP password (it can no longer register)",
    )
    set_completer(clear.add_argument("sip", metavar="SIP-ADDRESS", help=SIP_HELP), USERS)
    add_json_option(clear)
    clear.set_defaults(handler=_user_clear_password)

    csub = command_group(
        gsub, "contact", "the XMPP contacts a user has authorized (and the pending requests)"
    )
    for name, handler, what in (
        (
            "add",
            _contact_add,
            "authorize an XMPP contact for a user (approves its pending subscription request)",
        ),
        ("remove", _contact_remove, "take an XMPP contact off a user's contact list"),
    ):
        p = csub.add_parser(name, parents=[config_option_parent()], help=what)
        set_completer(p.add_argument("user", metavar="USER", help=SIP_HELP), USERS)
        p.add_argument("jid", metavar="JID", help="the contact's bare JID (bob@example.org)")
        add_json_option(p)
        p.set_defaults(handler=handler)
    listing = csub.add_parser(
        "list",
        parents=[config_option_parent()],
        help="list a user's authorized contacts, then its pending subscription requests",
    )
    set_completer(listing.add_argument("user", metavar="USER", help=SIP_HELP), USERS)
    add_json_option(listing)
    listing.set_defaults(handler=_contact_list)
