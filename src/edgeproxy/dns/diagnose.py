"""DNS checks for the CLI: are our SRV/A records right, can we find each partner?

Theory of operation (SPEC §9, RFC 6120 §3.2.1, RFC 2782):

* **Ours.** Each XMPP domain must publish ``_xmpp-server._tcp.<domain>`` SRV records whose targets
  are our pools (default: the external FQDN) on the port of our external listener (``[edge]
  listen``, 5269 by default), and the external FQDN must resolve
  (A/AAAA) — to one of our specific listen addresses when the configuration names one. One line
  per domain lists every fault of that domain's records: missing SRV, a target that is not us, a
  port other than the listener's, the "service not available" marker (target ``.``), a pool without record.
* **Partners.** We connect to a partner by its proxy FQDN (``host`` or ``host:port``, port 5269
  when absent) when one is set, else by SRV in RFC 2782
  order, else by the domain's own A/AAAA on 5269 (the RFC 6120 fallback). A partner is reachable
  by DNS when at least one target resolves.
* **Reach** (optional): a TCP connect to the first resolved address of each target.

A lookup that got no answer at all (timeout, SERVFAIL, REFUSED) is a WARN — we cannot tell — not a
FAIL about the records.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from edgeproxy.config import EdgeConfig
from edgeproxy.dns.records import Pool, default_pools, external_port, listen_addresses
from edgeproxy.dns.resolver import Lookup
from edgeproxy.dns.srv import XMPP_SERVER_PORT, connection_targets, order_records, srv_name
from edgeproxy.findings import Finding, fail, ok, warn
from edgeproxy.names import split_host_port

PUBLISH_HINT = "publish the records printed by `edgeproxy dns records`"


@dataclass(frozen=True)
class PartnerTarget:
    """What the DNS check needs to know about a partner."""

    domain: str
    proxy_fqdn: str | None = None


Connector = Callable[[str, int, float], str | None]  # returns None on success, else the error


def tcp_connect(host: str, port: int, timeout: float) -> str | None:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as exc:
        return exc.strerror or str(exc)


def _fmt_srv(records: Sequence[object]) -> str:
    return ", ".join(f"{r.priority} {r.weight} {r.port} {r.target}" for r in records)  # type: ignore[attr-defined]


def check_own_domain(domain: str, pools: Sequence[Pool], lookup: Lookup, port: int = XMPP_SERVER_PORT) -> Finding:
    """Our SRV records of ``domain``: pointing at ``pools`` on ``port``, one priority each."""
    check = f"dns {srv_name(domain)}"
    answer = lookup.srv(domain)
    if answer.outcome == "error":
        return warn(check, f"cannot check: {answer.detail}", "is the resolver right? try --resolver IP:PORT")
    if answer.outcome != "ok":
        return fail(
            check,
            f"missing SRV record ({answer.detail}); partners fall back to {domain}:{XMPP_SERVER_PORT}",
            PUBLISH_HINT,
        )
    ours = {p.fqdn for p in pools}
    faults: list[str] = []
    if len(answer.records) == 1 and answer.records[0].is_unavailable_marker:
        faults.append("target '.' says XMPP federation is not offered for this domain")
    for rec in answer.records:
        if rec.is_unavailable_marker:
            continue
        if rec.target not in ours:
            faults.append(f"target {rec.target} is not this edge (expected {', '.join(sorted(ours))})")
        if rec.port != port:
            faults.append(f"target {rec.target} has port {rec.port}, expected {port} ([edge] listen)")
    targets = {r.target for r in answer.records}
    for pool in pools:
        if pool.fqdn not in targets:
            faults.append(f"no SRV record for pool {pool.fqdn}")
    priorities = [r.priority for r in answer.records if r.target in ours]
    if len(priorities) != len(set(priorities)):
        faults.append("pools share a priority: there is no failover order")
    if faults:
        return fail(check, "; ".join(faults) + f" [records: {_fmt_srv(answer.records)}]", PUBLISH_HINT)
    return ok(check, _fmt_srv(answer.records))


def check_own_address(config: EdgeConfig, lookup: Lookup) -> Finding:
    fqdn = config.edge.external_fqdn.rstrip(".").lower()
    check = f"dns {fqdn}"
    answer = lookup.addresses(fqdn)
    if answer.outcome == "error":
        return warn(check, f"cannot check: {answer.detail}", "is the resolver right? try --resolver IP:PORT")
    if answer.outcome != "ok":
        return fail(check, f"no A/AAAA record ({answer.detail})", PUBLISH_HINT)
    listening = {str(a) for a in listen_addresses(config)}
    if listening and not listening.intersection(answer.values):
        return fail(
            check,
            f"resolves to {', '.join(answer.values)}, but this edge listens on {', '.join(sorted(listening))}",
            "fix the A/AAAA record, or edge.listen if the edge is behind NAT use 0.0.0.0",
        )
    return ok(check, f"resolves to {', '.join(answer.values)}")


def _reach(check: str, host: str, addresses: Sequence[str], port: int, connect: Connector, timeout: float) -> Finding:
    errors = []
    for addr in addresses:
        error = connect(addr, port, timeout)
        if error is None:
            return ok(check, f"TCP connect to {host} ({addr}) port {port} succeeded")
        errors.append(f"{addr}: {error}")
    return fail(check, f"cannot connect to {host} port {port}: {'; '.join(errors)}", "firewall or service down?")


def check_partner(
    partner: PartnerTarget, lookup: Lookup, *, reach: bool, connect: Connector, timeout: float
) -> list[Finding]:
    check = f"dns partner {partner.domain}"
    hint = "ask the partner to publish _xmpp-server._tcp SRV records, or set the partner's proxy FQDN"
    if partner.proxy_fqdn:
        host, port = split_host_port(partner.proxy_fqdn)
        candidates = [(host.rstrip(".").lower(), int(port) if port and port.isdigit() else XMPP_SERVER_PORT)]
        how = "proxy FQDN"
    else:
        answer = lookup.srv(partner.domain)
        if answer.outcome == "error":
            return [warn(check, f"cannot check: {answer.detail}", "is the resolver right? try --resolver IP:PORT")]
        if answer.outcome == "ok" and not order_records(answer.records):
            return [fail(check, "SRV target '.': the partner does not offer XMPP federation", hint)]
        candidates = connection_targets(partner.domain, answer.records if answer.outcome == "ok" else None)
        how = "SRV" if answer.outcome == "ok" else "no SRV record: A/AAAA fallback (RFC 6120 §3.2.1)"
    resolved: list[tuple[str, int, tuple[str, ...]]] = []
    unresolved: list[str] = []
    unanswered = 0
    for host, port in candidates:
        addrs = lookup.addresses(host)
        if addrs.outcome == "ok":
            resolved.append((host, port, addrs.values))
        else:
            unresolved.append(f"{host} ({addrs.detail})")
            unanswered += addrs.outcome == "error"
    if not resolved and unanswered == len(unresolved):
        return [warn(check, f"cannot check: {'; '.join(unresolved)}", "is the resolver right? try --resolver IP:PORT")]
    if not resolved:
        return [fail(check, f"{how}: no target resolves: {'; '.join(unresolved)}", hint)]
    detail = f"{how}: " + ", ".join(f"{h}:{p} ({', '.join(a)})" for h, p, a in resolved)
    findings = [ok(check, detail) if not unresolved else warn(check, f"{detail}; unresolved: {'; '.join(unresolved)}", hint)]
    if reach:
        host, port, addrs = resolved[0]
        findings.append(_reach(f"reach partner {partner.domain}", host, addrs, port, connect, timeout))
    return findings


def diagnose(
    config: EdgeConfig,
    lookup: Lookup,
    partners: Sequence[PartnerTarget] = (),
    *,
    pools: Sequence[Pool] | None = None,
    reach: bool = False,
    connect: Connector = tcp_connect,
    timeout: float = 3.0,
) -> list[Finding]:
    pools = list(pools) if pools else default_pools(config)
    port, _ = external_port(config)
    findings = [check_own_domain(d, pools, lookup, port) for d in config.edge.domains]
    own_address = check_own_address(config, lookup)
    findings.append(own_address)
    if reach and own_address.level == "OK":
        fqdn = config.edge.external_fqdn.rstrip(".").lower()
        findings.append(
            _reach(f"reach {fqdn}", fqdn, lookup.addresses(fqdn).values, port, connect, timeout)
        )
    for partner in partners:
        findings.extend(check_partner(partner, lookup, reach=reach, connect=connect, timeout=timeout))
    return findings
