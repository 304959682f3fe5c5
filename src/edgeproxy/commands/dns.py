"""``edgeproxy dns records | check``."""

from __future__ import annotations

import argparse

from edgeproxy.commands.common import (
    EXIT_OK,
    EXIT_USAGE,
    SubParsers,
    command_group,
    config_option_parent,
    error,
    load_args_config,
)
from edgeproxy.config import EdgeConfig
from edgeproxy.dns.diagnose import PartnerTarget, diagnose
from edgeproxy.dns.partners import load_partners
from edgeproxy.dns.records import parse_pool, zone_lines
from edgeproxy.dns.resolver import Lookup, parse_resolver
from edgeproxy.findings import exit_status, warn


def partner_targets(args: argparse.Namespace, config: EdgeConfig) -> tuple[list[PartnerTarget], list[str]]:
    """Targets from the store plus ``--partner`` extras; and notes about the store."""
    listed = load_partners(config)
    targets = [PartnerTarget(d, p.proxy_fqdn) for p in listed.partners for d in p.domains]
    targets += [PartnerTarget(d.rstrip(".").lower()) for d in args.partner]
    notes = [listed.error] if listed.error else []
    return targets, notes


def lookup_from(args: argparse.Namespace) -> Lookup:
    nameserver = parse_resolver(args.resolver) if args.resolver else None
    return Lookup(nameserver, timeout=args.timeout)


def cmd_records(args: argparse.Namespace) -> int:
    config = load_args_config(args)
    try:
        pools = [parse_pool(p) for p in args.pool]
        lines = zone_lines(config, pools, ttl=args.ttl)
    except ValueError as exc:
        error(str(exc))
        return EXIT_USAGE
    print("\n".join(lines))
    return EXIT_OK


def cmd_check(args: argparse.Namespace) -> int:
    config = load_args_config(args)
    try:
        pools = [parse_pool(p) for p in args.pool]
        lookup = lookup_from(args)
    except ValueError as exc:
        error(str(exc))
        return EXIT_USAGE
    partners, notes = partner_targets(args, config)
    findings = diagnose(config, lookup, partners, pools=pools, reach=args.reach, timeout=args.timeout)
    findings += [warn("partners", n, "edgeproxy partner get") for n in notes]
    for f in findings:
        print(f.line())
    return exit_status(findings)


def add_resolver_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--resolver", metavar="IP:PORT", help="ask this nameserver (default: the system's)")
    parser.add_argument("--timeout", type=float, default=2.0, metavar="S", help="per lookup (default 2)")


def register(sub: SubParsers) -> None:
    ds = command_group(sub, "dns", "DNS records to publish, and checks of the published ones")
    parent = [config_option_parent()]

    rec = ds.add_parser("records", parents=parent, help="the SRV and A/AAAA records to publish (zone file)")
    rec.add_argument("--pool", action="append", default=[], metavar="FQDN:PRIORITY",
                     help="an edge pool and its SRV priority (repeatable; default: external FQDN:10)")
    rec.add_argument("--ttl", type=int, default=3600)
    rec.set_defaults(handler=cmd_records)

    chk = ds.add_parser("check", parents=parent, help="resolve our records and each partner's")
    add_resolver_options(chk)
    chk.add_argument("--pool", action="append", default=[], metavar="FQDN:PRIORITY",
                     help="pools our SRV records must point at (default: the external FQDN)")
    chk.add_argument("--partner", action="append", default=[], metavar="DOMAIN",
                     help="also check this partner domain (repeatable)")
    chk.add_argument("--reach", action="store_true", help="also try a TCP connection to each target")
    chk.set_defaults(handler=cmd_check)
