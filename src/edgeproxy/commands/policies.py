"""``edgeproxy policy new | set | get | remove | grant``: external access policies (SPEC §5).

``policy get IDENTITY --json`` → one policy object; ``policy get --json`` → an array, global
first (``docs/cli-json.md``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

import msgspec

from edgeproxy.commands.common import (
    EXIT_OK,
    EXIT_USAGE,
    SubParsers,
    command_group,
    config_option_parent,
)
from edgeproxy.commands.records import print_all, print_one, read_configuration, session
from edgeproxy.policy import operations as ops
from edgeproxy.policy.model import AccessPolicy
from edgeproxy.policy.validation import normalize_policy_identity


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
    print(f"policy {policy.identity} created")
    return EXIT_OK


def _policy_set(args: argparse.Namespace) -> int:
    with session(args) as (_config, store):
        policy = ops.set_policy(store, args.identity, _policy_edit(args))
    print(f"policy {policy.identity} saved")
    return EXIT_OK


def _policy_get(args: argparse.Namespace) -> int:
    policies = list(read_configuration(args).policies)
    if args.identity is None:
        return print_all(policies, args.json)
    identity = normalize_policy_identity(args.identity)
    return print_one([p for p in policies if p.identity == identity], f"policy {identity}", args.json)


def _policy_remove(args: argparse.Namespace) -> int:
    with session(args) as (_config, store):
        ops.remove_policy(store, args.identity)
    print(f"policy {normalize_policy_identity(args.identity)} removed")
    return EXIT_OK


def _policy_grant(args: argparse.Namespace) -> int:
    if (args.policy is None) == (not args.none):
        print("edgeproxy policy grant: give either POLICY or --none", file=sys.stderr)
        return EXIT_USAGE
    with session(args) as (config, store):
        user = ops.grant_policy(
            store, config.edge.domains, args.user, None if args.none else args.policy
        )
    print(f"{user.sip}: policy {user.policy or '(none: site or global applies)'}")
    return EXIT_OK


def _add_policy_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("identity", metavar="IDENTITY", help="global | site:NAME | NAME")
    p.add_argument("--xmpp", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--federation", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--public-cloud", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--description", metavar="T")


def register(sub: SubParsers) -> None:
    gsub = command_group(sub, "policy", "external access policies (SPEC §5)")
    new = gsub.add_parser("new", parents=[config_option_parent()], help="add a site or user policy")
    _add_policy_options(new)
    new.set_defaults(handler=_policy_new)
    set_ = gsub.add_parser("set", parents=[config_option_parent()], help="change a policy")
    _add_policy_options(set_)
    set_.set_defaults(handler=_policy_set)
    get = gsub.add_parser("get", parents=[config_option_parent()], help="show policies")
    get.add_argument("identity", metavar="IDENTITY", nargs="?")
    get.add_argument("--json", action="store_true")
    get.set_defaults(handler=_policy_get)
    remove = gsub.add_parser("remove", parents=[config_option_parent()], help="remove a policy")
    remove.add_argument("identity", metavar="IDENTITY")
    remove.set_defaults(handler=_policy_remove)
    grant = gsub.add_parser("grant", parents=[config_option_parent()], help="grant a user policy")
    grant.add_argument("user", metavar="USER")
    grant.add_argument("policy", metavar="POLICY", nargs="?")
    grant.add_argument("--none", action="store_true", help="remove the grant (site/global apply)")
    grant.set_defaults(handler=_policy_grant)
