"""``edgeproxy dns records | check``.

``dns records`` prints the records to publish (zone-file lines, or ``--json``) and warns on
stderr (``edgeproxy: warning: …``) when an A/AAAA record would publish an address partners cannot
reach, or when the SRV port is a guess. ``dns check`` asks the nameserver given by
``--resolver``, else ``[dns] resolver`` (or its override ``$EDGEPROXY_DNS_RESOLVER``), else the
system's.
"""

from __future__ import annotations

import argparse
import dataclasses

from edgeproxy.commands.common import (
    EXIT_OK,
    EXIT_USAGE,
    SubParsers,
    add_json_option,
    command_group,
    config_option_parent,
    error,
    load_args_config,
)
from edgeproxy.commands.records import print_json
from edgeproxy.config import DNS_RESOLVER_ENV_VAR, EdgeConfig
from edgeproxy.dns.diagnose import PartnerTarget, diagnose
from edgeproxy.dns.partners import load_partners
from edgeproxy.dns.records import DEFAULT_PRIORITY, DEFAULT_TTL, parse_pool, publication, render
from edgeproxy.dns.resolver import Lookup, parse_resolver
from edgeproxy.findings import exit_status, warn
from edgeproxy.names import InvalidName, normalize_domain

DEFAULT_TIMEOUT = 2.0


def partner_targets(args: argparse.Namespace, config: EdgeConfig) -> tuple[list[PartnerTarget], list[str]]:
    """Targets from the store plus ``--partner`` extras; and notes about the store.
    ValueError for a ``--partner`` that is not a domain."""
    listed = load_partners(config)
    targets = [PartnerTarget(d, p.proxy_fqdn) for p in listed.partners for d in p.domains]
    for text in args.partner:
        try:
            targets.append(PartnerTarget(normalize_domain(text)))
        except InvalidName as exc:
            raise ValueError(f"--partner {exc.detail}") from None
    notes = [listed.error] if listed.error else []
    return targets, notes


def lookup_from(args: argparse.Namespace, config: EdgeConfig) -> Lookup:
    """``--resolver``, else the configuration's resolver, else the system's; ValueError naming
    the rule for a bad one."""
    if args.resolver:
        try:
            nameserver = parse_resolver(args.resolver)
        except ValueError as exc:
            raise ValueError(f"--resolver {exc}") from None
    else:
        nameserver = config.dns_resolver()
    return Lookup(nameserver, timeout=args.timeout)


def cmd_records(args: argparse.Namespace) -> int:
    config = load_args_config(args)
    try:
        pools = [parse_pool(p) for p in args.pool]
        plan = publication(config, pools, ttl=args.ttl)
    except ValueError as exc:
        error(str(exc))
        return EXIT_USAGE
    for warning in plan.warnings:
        error(f"warning: {warning}")
    if args.json:
        print_json(plan.to_json())
    else:
        print("\n".join(render(plan)))
    return EXIT_OK


def cmd_check(args: argparse.Namespace) -> int:
    config = load_args_config(args)
    try:
        pools = [parse_pool(p) for p in args.pool]
        lookup = lookup_from(args, config)
        partners, notes = partner_targets(args, config)
    except ValueError as exc:
        error(str(exc))
        return EXIT_USAGE
    findings = diagnose(config, lookup, partners, pools=pools, reach=args.reach, timeout=args.timeout)
    findings += [warn("partners", n, "edgeproxy partner get") for n in notes]
    if args.json:
        print_json({"resolver": lookup.describe(), "findings": [dataclasses.asdict(f) for f in findings]})
    else:
        for f in findings:
            print(f.line())
    return exit_status(findings)


def add_resolver_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--resolver", metavar="IP[:PORT]",
        help=f"ask this nameserver, port 53 when absent (default: [dns] resolver of the configuration, "
             f"overridden by ${DNS_RESOLVER_ENV_VAR}; else the system's resolver)",
    )
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, metavar="S",
                        help=f"seconds per lookup (default: {DEFAULT_TIMEOUT:g})")


def register(sub: SubParsers) -> None:
    ds = command_group(sub, "dns", "DNS records to publish, and checks of the published ones")
    parent = [config_option_parent()]

    rec = ds.add_parser("records", parents=parent, help="the SRV and A/AAAA records to publish (zone file)")
    rec.add_argument("--pool", action="append", default=[], metavar="FQDN:PRIORITY",
                     help="an edge pool (a DNS name) and its SRV priority 0..65535, lower = preferred "
                          f"(repeatable; default: the external FQDN with priority {DEFAULT_PRIORITY})")
    rec.add_argument("--ttl", type=int, default=DEFAULT_TTL, metavar="SECONDS",
                     help=f"TTL of every record in seconds (default: {DEFAULT_TTL})")
    add_json_option(rec)
    rec.set_defaults(handler=cmd_records)

    chk = ds.add_parser("check", parents=parent, help="resolve our records and each partner's")
    add_resolver_options(chk)
    chk.add_argument("--pool", action="append", default=[], metavar="FQDN:PRIORITY",
                     help="pools our SRV records must point at (repeatable; default: the external FQDN)")
    chk.add_argument("--partner", action="append", default=[], metavar="DOMAIN",
                     help="also check this partner domain (repeatable; default: only the stored partners)")
    chk.add_argument("--reach", action="store_true",
                     help="also try a TCP connection to each target (default: DNS only)")
    add_json_option(chk)
    chk.set_defaults(handler=cmd_check)
