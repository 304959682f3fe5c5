"""``edgeproxy partner new | set | get | remove``: the XMPP federated partners (SPEC §2).

``partner get DOMAIN --json`` → one partner object; ``partner get [--filter GLOB] --json`` → an
array of partner objects sorted by primary domain (``docs/cli-json.md``).
"""

from __future__ import annotations

import argparse
import fnmatch
from collections.abc import Callable
from typing import Any

import msgspec

from edgeproxy.commands.common import EXIT_OK, SubParsers, command_group, config_option_parent
from edgeproxy.commands.records import (
    print_all,
    print_one,
    print_warnings,
    read_configuration,
    session,
)
from edgeproxy.policy import operations as ops
from edgeproxy.policy.model import Negotiation, Partner, PartnerType
from edgeproxy.policy.validation import ChangeRefused

_UNSET = object()


def _optional_int(text: str) -> int | None:
    """An integer, or ``none`` to clear the setting."""
    if text.lower() == "none":
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer (or none)") from None


def _optional_str(text: str) -> str | None:
    return None if text.lower() == "none" else text


def _add_partner_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--description", metavar="T")
    p.add_argument("--additional-domain", metavar="D", action="append", dest="additional_domains")
    p.add_argument("--type", choices=[t.value for t in PartnerType])
    p.add_argument("--tls", choices=[n.value for n in Negotiation])
    p.add_argument("--sasl", choices=[n.value for n in Negotiation])
    p.add_argument("--dialback", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--keepalive", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--connection-limit", metavar="N", type=_optional_int)
    p.add_argument("--proxy-fqdn", metavar="HOST", type=_optional_str)


def _partner_edit(args: argparse.Namespace) -> Callable[[Partner], Partner]:
    def edit(p: Partner) -> Partner:
        changes: dict[str, Any] = {}
        if args.description is not None:
            changes["description"] = args.description
        if args.type is not None:
            changes["type"] = PartnerType(args.type)
        if args.tls is not None:
            changes["tls"] = Negotiation(args.tls)
        if args.sasl is not None:
            changes["sasl"] = Negotiation(args.sasl)
        if args.dialback is not None:
            changes["dialback"] = args.dialback
        if args.keepalive is not None:
            changes["keepalive"] = args.keepalive
        if args.connection_limit is not _UNSET:
            changes["connection_limit"] = args.connection_limit
        if args.proxy_fqdn is not _UNSET:
            changes["proxy_fqdn"] = args.proxy_fqdn
        domains = list(p.additional_domains)
        if getattr(args, "clear_domains", False):
            domains = []
        if args.additional_domains:
            domains = [ops.partner_domain(d) for d in args.additional_domains]
        for d in getattr(args, "add_domains", None) or ():
            d = ops.partner_domain(d)
            if d not in domains:
                domains.append(d)
        for d in getattr(args, "remove_domains", None) or ():
            d = ops.partner_domain(d)
            if d not in domains:
                raise ChangeRefused(f"refused: {d} is not an additional domain of {p.domain}")
            domains.remove(d)
        changes["additional_domains"] = tuple(domains)
        return msgspec.structs.replace(p, **changes)

    return edit


def _partner_new(args: argparse.Namespace) -> int:
    with session(args) as (config, store):
        domain = ops.partner_domain(args.domain)
        partner = _partner_edit(args)(Partner(domain=domain))
        warnings = ops.new_partner(store, config.edge.domains, partner)
    print_warnings(warnings)
    print(f"partner {domain} created")
    return EXIT_OK


def _partner_set(args: argparse.Namespace) -> int:
    with session(args) as (config, store):
        partner, warnings = ops.set_partner(
            store, config.edge.domains, args.domain, _partner_edit(args)
        )
    print_warnings(warnings)
    print(f"partner {partner.domain} saved")
    return EXIT_OK


def _partner_get(args: argparse.Namespace) -> int:
    partners = list(read_configuration(args).partners)
    if args.domain is not None:
        domain = ops.partner_domain(args.domain)
        return print_one([p for p in partners if domain in p.domains], f"partner {domain}", args.json)
    if args.filter is not None:
        pattern = args.filter.lower()
        partners = [p for p in partners if any(fnmatch.fnmatchcase(d, pattern) for d in p.domains)]
    return print_all(partners, args.json)


def _partner_remove(args: argparse.Namespace) -> int:
    with session(args) as (_config, store):
        ops.remove_partner(store, args.domain)
    print(f"partner {ops.partner_domain(args.domain)} removed")
    return EXIT_OK


def register(sub: SubParsers) -> None:
    gsub = command_group(sub, "partner", "XMPP federated partners (SPEC §2)")
    new = gsub.add_parser("new", parents=[config_option_parent()], help="add a partner")
    new.add_argument("domain", metavar="DOMAIN")
    _add_partner_options(new)
    new.set_defaults(handler=_partner_new, connection_limit=_UNSET, proxy_fqdn=_UNSET)
    set_ = gsub.add_parser("set", parents=[config_option_parent()], help="change a partner")
    set_.add_argument("domain", metavar="DOMAIN")
    _add_partner_options(set_)
    set_.add_argument("--add-domain", metavar="D", action="append", dest="add_domains")
    set_.add_argument("--remove-domain", metavar="D", action="append", dest="remove_domains")
    set_.add_argument("--clear-domains", action="store_true")
    set_.set_defaults(handler=_partner_set, connection_limit=_UNSET, proxy_fqdn=_UNSET)
    get = gsub.add_parser("get", parents=[config_option_parent()], help="show partners")
    which = get.add_mutually_exclusive_group()
    which.add_argument("domain", metavar="DOMAIN", nargs="?")
    which.add_argument("--filter", metavar="GLOB")
    get.add_argument("--json", action="store_true")
    get.set_defaults(handler=_partner_get)
    remove = gsub.add_parser("remove", parents=[config_option_parent()], help="remove a partner")
    remove.add_argument("domain", metavar="DOMAIN")
    remove.set_defaults(handler=_partner_remove)
