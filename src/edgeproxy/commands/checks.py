"""``edgeproxy check``: the admin's checklist in one command (like ``prosodyctl check``).

The checks themselves live in :mod:`edgeproxy.ops.checks` (the Control Panel's Check page runs
them too); this is the command line: options, the running edge's ``/status`` for busy listener
addresses (:func:`admin_status`), and the report, one line per check, ``OK|WARN|FAIL <check>:
<detail> (hint: …)``, exit status 1 when any line is FAIL. ``--json`` prints the same lines as a
JSON array of ``{"check", "status", "message", "hint"}`` (docs/cli-json.md).
"""

from __future__ import annotations

import argparse

from edgeproxy.commands.common import (
    EXIT_REFUSED,
    EXIT_USAGE,
    SubParsers,
    add_json_option,
    config_option_parent,
    error,
    load_args_config,
)
from edgeproxy.config import EdgeConfig
from edgeproxy.dns.resolver import Lookup, parse_resolver
from edgeproxy.errors import ConfigError
from edgeproxy.findings import Finding, exit_status, fail
from edgeproxy.ops.checks import (  # noqa: F401 - run_checks and the others: the checks' old home
    STATUS_TIMEOUT,
    RunningStatus,
    findings_json,
    run_checks,
)
from edgeproxy.ops.status import EdgeStatus


def admin_status(config: EdgeConfig, timeout: float = STATUS_TIMEOUT) -> RunningStatus:
    """Asks the admin endpoint of ``config`` for ``/status`` once, when first called."""
    cache: list[EdgeStatus | None] = []

    def ask() -> EdgeStatus | None:
        if not cache:
            cache.append(_fetch_status(config, timeout))
        return cache[0]

    return ask


def _fetch_status(config: EdgeConfig, timeout: float) -> EdgeStatus | None:
    import http.client

    import msgspec

    from edgeproxy.commands.ops import AdminClient, NotRunning
    from edgeproxy.ops.status import decode_status

    try:
        reply = AdminClient(config, timeout=timeout).request("GET", "/status")
        return decode_status(reply.body) if reply.status == 200 else None
    except (NotRunning, OSError, http.client.HTTPException, msgspec.DecodeError, ValueError):
        return None


def _report(findings: list[Finding], as_json: bool) -> None:
    if as_json:
        print(findings_json(findings))
    else:
        for finding in findings:
            print(finding.line())


def cmd_check(args: argparse.Namespace) -> int:
    try:
        config = load_args_config(args)
    except ConfigError as exc:
        _report([fail("config", str(exc), "edgeproxy config validate; edgeproxy config show-default")], args.json)
        return EXIT_REFUSED
    lookup = None
    if not args.no_dns:
        try:
            lookup = Lookup(parse_resolver(args.resolver) if args.resolver else None, timeout=args.timeout)
        except ValueError as exc:
            error(f"--resolver: {exc}")
            return EXIT_USAGE
        if not args.resolver:
            try:  # the nameserver the edge asks: [dns] resolver, or its environment override
                lookup = Lookup(config.dns_resolver(), timeout=args.timeout)
            except ConfigError as exc:
                _report([fail("config", str(exc), "unset or fix the variable")], args.json)
                return EXIT_REFUSED
    findings = run_checks(config, lookup=lookup, running=admin_status(config))
    _report(findings, args.json)
    return exit_status(findings)


def register(sub: SubParsers) -> None:
    chk = sub.add_parser(
        "check", parents=[config_option_parent()],
        help="configuration, certificate, listeners, partners, DNS: OK/WARN/FAIL with hints",
        description="One line per check, OK, WARN or FAIL with a hint; exit status 1 when any "
        "line is FAIL. A listener address busy because this edgeproxy is running is OK.",
    )
    chk.add_argument("--resolver", metavar="IP:PORT",
                     help="the nameserver for the DNS checks (default: the configuration's [dns] resolver, "
                     "else the system's, /etc/resolv.conf)")
    chk.add_argument("--timeout", type=float, default=2.0, metavar="S",
                     help="seconds each DNS lookup may take (default 2)")
    chk.add_argument("--no-dns", action="store_true", help="skip the DNS checks (default: run them)")
    add_json_option(chk)
    chk.set_defaults(handler=cmd_check)
