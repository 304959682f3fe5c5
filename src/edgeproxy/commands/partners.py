"""``edgeproxy partner new | set | get | remove``: the XMPP federated partners.

``partner get DOMAIN --json`` → one partner object; ``partner get [--filter GLOB] --json`` → an
array of partner objects sorted by primary domain; ``partner new | set | remove --json`` → the
change as ``commands.common.change_json`` (``docs/cli-json.md``). Without ``--json`` a change is
its headline and its fields: every field of a new or removed partner, ``field: before → after``
for each field a ``set`` changed.

Additional domains are edited explicitly: ``--add-domain`` / ``--remove-domain`` (repeatable) and
``--clear-domains``; on ``partner set``, ``--additional-domain`` (which replaces the whole list)
is refused unless ``--replace-domains`` says that is meant.
"""

from __future__ import annotations

import argparse
import fnmatch
from collections.abc import Callable
from typing import Any

import msgspec

from edgeproxy.commands.common import (
    EXIT_OK,
    EXIT_USAGE,
    SubParsers,
    add_json_option,
    command_group,
    config_option_parent,
    error,
)
from edgeproxy.commands.records import (
    change_lines,
    print_all,
    print_change,
    print_one,
    read_configuration,
    session,
)
from edgeproxy.dns.srv import XMPP_SERVER_PORT
from edgeproxy.policy import operations as ops
from edgeproxy.policy.model import Negotiation, Partner, PartnerType
from edgeproxy.policy.validation import MAX_PORT, MIN_PORT, ChangeRefused

_UNSET = object()
#: The defaults of a new partner, as its help shows them.
_NEW = Partner(domain="")


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


def _choice(kind: type[PartnerType] | type[Negotiation]) -> Callable[[str], str]:
    """An argparse type reading a choice in our spelling or Lync's, in any case."""

    def parse(text: str) -> str:
        try:
            return kind.parse(text).value
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse.__name__ = kind.__name__  # argparse names the option's type in its error
    return parse


def _add_partner_options(p: argparse.ArgumentParser, *, new: bool) -> None:
    """The options of ``partner new`` (``new``) or ``partner set``; on ``set`` every default is
    "unchanged"."""

    def default(value: str) -> str:
        return f"default: {value}" if new else "default: unchanged"

    def lync(kind: type[PartnerType] | type[Negotiation]) -> str:
        return ", ".join(m.value for m in kind) + " (or Lync's " + ", ".join(
            m.lync for m in kind
        ) + "; any case)"

    p.add_argument(
        "--description", metavar="TEXT", help=f"notes about the partner ({default('empty')})"
    )
    if new:
        p.add_argument(
            "--additional-domain", "--add-domain",
            metavar="DOMAIN", action="append", dest="add_domains",
            help="another domain of this partner that may federate; repeat for each one "
            "(sub-domains are not implied: list corp.fabrikam.com too) (default: none)",
        )
    else:
        p.add_argument(
            "--add-domain", metavar="DOMAIN", action="append", dest="add_domains",
            help="add an additional domain; repeatable (default: none added)",
        )
        p.add_argument(
            "--remove-domain", metavar="DOMAIN", action="append", dest="remove_domains",
            help="remove an additional domain; repeatable; refused if the partner does not "
            "have it (default: none removed)",
        )
        p.add_argument(
            "--clear-domains", action="store_true",
            help="remove every additional domain (done before --add-domain) (default: off)",
        )
        p.add_argument(
            "--additional-domain", metavar="DOMAIN", action="append", dest="replacement",
            help="the new whole list of additional domains, one option per domain; needs "
            "--replace-domains, since it drops every domain not given "
            "(use --add-domain / --remove-domain to edit the list)",
        )
        p.add_argument(
            "--replace-domains", action="store_true",
            help="confirm that --additional-domain replaces the whole list (default: off)",
        )
    p.add_argument(
        "--type", type=_choice(PartnerType), metavar="TYPE",
        help=f"trust level: {lync(PartnerType)}. federated: contacts see status notes and may "
        "subscribe and send messages without the user's approval; public-verified: the same "
        "without status notes; public-unverified: only contacts the user added "
        f"({default(_NEW.type.value)})",
    )
    p.add_argument(
        "--tls", type=_choice(Negotiation), metavar="SETTING",
        help=f"TLS on streams with this partner: {lync(Negotiation)} "
        f"({default(_NEW.tls.value)})",
    )
    p.add_argument(
        "--sasl", type=_choice(Negotiation), metavar="SETTING",
        help="SASL EXTERNAL (certificate) authentication, which needs TLS: "
        f"{lync(Negotiation)} ({default(_NEW.sasl.value)})",
    )
    p.add_argument(
        "--dialback", action=argparse.BooleanOptionalAction, default=None,
        help="accept and use server dialback, the fallback where TLS or SASL is not required "
        f"({default('on' if _NEW.dialback else 'off')})",
    )
    p.add_argument(
        "--keepalive", action=argparse.BooleanOptionalAction, default=None,
        help="expect traffic from the partner within the gateway's keep-alive interval, and "
        f"send whitespace keep-alives ({default('on' if _NEW.keepalive else 'off')})",
    )
    p.add_argument(
        "--connection-limit", metavar="N", type=_optional_int,
        help="most simultaneous streams with this partner (an integer ≥ 1), instead of the "
        f"gateway's partner connection limit; none: the gateway's ({default('none')})",
    )
    p.add_argument(
        "--proxy-fqdn", metavar="HOST[:PORT]", type=_optional_str,
        help=f"connect to HOST (a DNS name), port PORT ({MIN_PORT}–{MAX_PORT}, else "
        f"{XMPP_SERVER_PORT}), "
        "instead of the "
        f"partner's SRV records; none: use DNS ({default('none')})",
    )
    add_json_option(p)


def _edited_domains(p: Partner, args: argparse.Namespace) -> tuple[str, ...]:
    """The additional domains after the options: cleared or replaced first, then removals,
    then additions (an addition already listed is kept once)."""
    domains = list(p.additional_domains)
    if getattr(args, "clear_domains", False):
        domains = []
    replacement = getattr(args, "replacement", None)
    if replacement:
        domains = [ops.partner_domain(d) for d in replacement]
    for d in getattr(args, "remove_domains", None) or ():
        d = ops.partner_domain(d)
        if d not in domains:
            raise ChangeRefused(f"refused: {d} is not an additional domain of {p.domain}")
        domains.remove(d)
    for d in args.add_domains or ():
        d = ops.partner_domain(d)
        if d not in domains:
            domains.append(d)
    return tuple(domains)


def _partner_edit(args: argparse.Namespace) -> Callable[[Partner], Partner]:
    def edit(p: Partner) -> Partner:
        changes: dict[str, Any] = {"additional_domains": _edited_domains(p, args)}
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
        return msgspec.structs.replace(p, **changes)

    return edit


def _partner_new(args: argparse.Namespace) -> int:
    with session(args) as (config, store):
        domain = ops.partner_domain(args.domain)
        partner, warnings = ops.new_partner(
            store, config.edge.domains, _partner_edit(args)(Partner(domain=domain))
        )
    return print_change(
        args.json, "partner", f"partner {partner.domain} created", None, partner, warnings
    )


def _partner_set(args: argparse.Namespace) -> int:
    if args.replacement and not args.replace_domains:
        error(
            "--additional-domain on partner set replaces the whole list of additional domains: "
            "add --replace-domains to confirm, or use --add-domain / --remove-domain to edit it"
        )
        return EXIT_USAGE
    if args.replace_domains and not args.replacement:
        error(
            "--replace-domains needs the new list as --additional-domain DOMAIN options "
            "(to remove every additional domain use --clear-domains)"
        )
        return EXIT_USAGE
    with session(args) as (config, store):
        before, after, warnings = ops.set_partner(
            store, config.edge.domains, args.domain, _partner_edit(args)
        )
    return print_change(
        args.json, "partner", f"partner {after.domain} saved", before, after, warnings
    )


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
        removed = ops.remove_partner(store, args.domain)
    headline = f"partner {removed.domain} removed"
    print_change(args.json, "partner", headline, removed, None)
    if not args.json:
        for line in change_lines(None, removed):
            print(line)
    return EXIT_OK


def register(sub: SubParsers) -> None:
    gsub = command_group(sub, "partner", "XMPP federated partners")
    domain_help = "the partner's primary domain, which identifies it (e.g. fabrikam.com)"
    new = gsub.add_parser(
        "new", parents=[config_option_parent()], help="add a partner",
        description="Add an XMPP federated partner (a domain that is no partner's cannot "
        "federate at all).",
    )
    new.add_argument("domain", metavar="DOMAIN", help=domain_help)
    _add_partner_options(new, new=True)
    new.set_defaults(handler=_partner_new, connection_limit=_UNSET, proxy_fqdn=_UNSET)
    set_ = gsub.add_parser(
        "set", parents=[config_option_parent()], help="change a partner",
        description="Change an existing partner: only the options given change.",
    )
    set_.add_argument("domain", metavar="DOMAIN", help=domain_help)
    _add_partner_options(set_, new=False)
    set_.set_defaults(handler=_partner_set, connection_limit=_UNSET, proxy_fqdn=_UNSET)
    get = gsub.add_parser("get", parents=[config_option_parent()], help="show partners")
    which = get.add_mutually_exclusive_group()
    which.add_argument(
        "domain", metavar="DOMAIN", nargs="?",
        help="show the partner that has this domain, primary or additional (default: all)",
    )
    which.add_argument(
        "--filter", metavar="GLOB",
        help="show the partners with a domain matching GLOB, e.g. '*.fabrikam.com' "
        "(default: all)",
    )
    add_json_option(get)
    get.set_defaults(handler=_partner_get)
    remove = gsub.add_parser("remove", parents=[config_option_parent()], help="remove a partner")
    remove.add_argument("domain", metavar="DOMAIN", help=domain_help)
    add_json_option(remove)
    remove.set_defaults(handler=_partner_remove)
