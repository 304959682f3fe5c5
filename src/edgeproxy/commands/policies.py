"""``edgeproxy policy new | set | get | remove | grant``: external access policies, which say
whether a local user may exchange messages and presence with XMPP contacts (``xmpp``; the
``federation`` and ``public-cloud`` switches are kept for the directory).

The policy of a user is the user policy granted to it (``policy grant``), else the policy of its
site (``site:NAME``), else ``global``. ``policy get IDENTITY --json`` → one policy object;
``policy get --json`` → an array, global first. A change prints ``{"kind": "policy", …}``
(``policy grant``: ``{"kind": "user", …}``) with ``--json`` (``docs/cli-json.md``).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import msgspec

from edgeproxy.commands.common import (
    EXIT_USAGE,
    SubParsers,
    add_json_option,
    command_group,
    config_option_parent,
    error,
)
from edgeproxy.commands.records import (
    print_all,
    print_change,
    print_one,
    read_configuration,
    session,
    set_completer,
    stored_completer,
    user_names,
    user_record,
)
from edgeproxy.policy import operations as ops
from edgeproxy.policy.model import AccessPolicy, User
from edgeproxy.policy.validation import normalize_policy_identity

#: The ``kind`` of a policy change in ``--json`` output.
KIND = "policy"

IDENTITY_HELP = (
    "global (the policy of everyone else), site:NAME (the users of site NAME) or NAME "
    "(a user policy, given to users with policy grant)"
)


#: Tab completes the stored policies, the user policies (for ``grant``) and the users.
POLICIES = stored_completer(lambda c, _prefix: [p.identity for p in c.policies])
USER_POLICIES = stored_completer(
    lambda c, _prefix: [p.identity for p in c.policies if p.scope == "user"]
)
USERS = stored_completer(user_names)


def _policy_edit(args: argparse.Namespace) -> Callable[[AccessPolicy], AccessPolicy]:
    def edit(p: AccessPolicy) -> AccessPolicy:
        changes = {
            name: getattr(args, name)
            for name in ("xmpp", "federation", "public_cloud", "description")
            if getattr(args, name) is not None
        }
        return msgspec.structs.replace(p, **changes)

    return edit


def _policy_new(args: argparse.Namespace) -> int:
    with session(args) as (_config, store):
        policy = ops.new_policy(store, _policy_edit(args)(AccessPolicy(identity=args.identity)))
    return print_change(args.json, KIND, f"policy {policy.identity} created", None, policy)


def _policy_set(args: argparse.Namespace) -> int:
    seen: list[AccessPolicy] = []
    edit = _policy_edit(args)

    def remembering(p: AccessPolicy) -> AccessPolicy:
        seen.append(p)
        return edit(p)

    with session(args) as (_config, store):
        policy = ops.set_policy(store, args.identity, remembering)
    return print_change(args.json, KIND, f"policy {policy.identity} saved", seen[-1], policy)


def _policy_get(args: argparse.Namespace) -> int:
    policies = list(read_configuration(args).policies)
    if args.identity is None:
        return print_all(policies, args.json)
    identity = normalize_policy_identity(args.identity)
    return print_one([p for p in policies if p.identity == identity], f"policy {identity}", args.json)


def _policy_remove(args: argparse.Namespace) -> int:
    identity = normalize_policy_identity(args.identity)
    with session(args) as (_config, store):
        _generation, configuration = store.read()
        before = next((p for p in configuration.policies if p.identity == identity), None)
        ops.remove_policy(store, identity)
    return print_change(args.json, KIND, f"policy {identity} removed", before, None)


def _policy_grant(args: argparse.Namespace) -> int:
    if (args.policy is None) == (not args.none):
        error("policy grant: give either POLICY or --none")
        return EXIT_USAGE
    sip = ops.normalize_user(User(sip=args.user)).sip
    with session(args) as (config, store):
        _generation, configuration = store.read()
        before = next((user_record(u) for u in configuration.users if u.sip == sip), None)
        user = ops.grant_policy(
            store, config.edge.domains, sip, None if args.none else args.policy
        )
    headline = f"{user.sip}: policy {user.policy or '(none: site or global applies)'}"
    return print_change(args.json, "user", headline, before, user_record(user))


def _add_policy_options(p: argparse.ArgumentParser, *, new: bool) -> None:
    identity = p.add_argument("identity", metavar="IDENTITY", help=IDENTITY_HELP)
    if not new:
        set_completer(identity, POLICIES)
    unchanged = "" if new else "; unchanged if not given"
    p.add_argument(
        "--xmpp",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="the users may exchange messages and presence with XMPP contacts: the one switch "
        f"the gateway enforces (default: --no-xmpp){unchanged}",
    )
    p.add_argument(
        "--federation",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="the federation-access switch, kept and shown for the directory; XMPP traffic "
        f"depends on --xmpp only (default: --no-federation){unchanged}",
    )
    p.add_argument(
        "--public-cloud",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="the public-cloud-access switch, kept and shown for the directory; XMPP traffic "
        f"depends on --xmpp only (default: --no-public-cloud){unchanged}",
    )
    p.add_argument(
        "--description", metavar="TEXT", help=f"free text (default: empty){unchanged}"
    )
    add_json_option(p)


def register(sub: SubParsers) -> None:
    gsub = command_group(
        sub, "policy", "external access policies: which local users may exchange XMPP traffic"
    )
    new = gsub.add_parser(
        "new", parents=[config_option_parent()], help="add a site or user policy"
    )
    _add_policy_options(new, new=True)
    new.set_defaults(handler=_policy_new)
    set_ = gsub.add_parser(
        "set", parents=[config_option_parent()], help="change a policy (global included)"
    )
    _add_policy_options(set_, new=False)
    set_.set_defaults(handler=_policy_set)
    get = gsub.add_parser(
        "get", parents=[config_option_parent()], help="show one policy, or all of them"
    )
    set_completer(
        get.add_argument(
            "identity",
            metavar="IDENTITY",
            nargs="?",
            help=IDENTITY_HELP + " (default: every policy)",
        ),
        POLICIES,
    )
    add_json_option(get)
    get.set_defaults(handler=_policy_get)
    remove = gsub.add_parser(
        "remove",
        parents=[config_option_parent()],
        help="remove a site or user policy (refused while a user is granted it; global stays)",
    )
    set_completer(remove.add_argument("identity", metavar="IDENTITY", help=IDENTITY_HELP), POLICIES)
    add_json_option(remove)
    remove.set_defaults(handler=_policy_remove)
    grant = gsub.add_parser(
        "grant",
        parents=[config_option_parent()],
        help="give a user a user policy, or (--none) take it back so that the site or global "
        "policy applies",
    )
    set_completer(grant.add_argument("user", metavar="USER", help="the user's SIP address"), USERS)
    set_completer(
        grant.add_argument(
            "policy",
            metavar="POLICY",
            nargs="?",
            help="the user policy to grant (not with --none)",
        ),
        USER_POLICIES,
    )
    grant.add_argument(
        "--none",
        action="store_true",
        help="remove the user's grant: its site policy, else global, applies",
    )
    add_json_option(grant)
    grant.set_defaults(handler=_policy_grant)
