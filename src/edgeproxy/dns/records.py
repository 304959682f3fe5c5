"""The DNS records to publish for the edge, in zone-file syntax (SPEC §9, RFC 2782, RFC 6120 §3.2.1).

For every XMPP domain and every edge pool there is one ``_xmpp-server._tcp.<domain>.`` SRV record
pointing at the pool's FQDN on the port of the edge's external listener (``[edge] listen``; 5269
by default). Pools get distinct priorities, so partners send all traffic to the best (lowest)
priority and move to the next pool only when it fails — failover with no DNS change. The weight
only matters between records of equal priority, which we never publish, so it is a fixed nominal
value. A/AAAA records are written for this edge's external FQDN from the specific ``listen``
addresses in the configuration; a wildcard listener (``0.0.0.0`` / ``::``) says nothing about
the public address, so a placeholder comment is written instead. An address partners cannot
reach (loopback, private, link-local, documentation or reserved ranges) is published with a
warning.

Every record is a dnspython rdata (``dns.rdata.from_text``), so a line this module writes is one
dnspython reads back; pool names pass the domain rule of :mod:`edgeproxy.names` first.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import groupby
from typing import Any, Final

import dns.name
import dns.rdata
import dns.rdataclass
import dns.rdatatype

from edgeproxy.config import EdgeConfig
from edgeproxy.dns.srv import XMPP_SERVER_PORT, srv_name
from edgeproxy.names import InvalidName, listen_address, normalize_domain, quote

DEFAULT_PRIORITY: Final = 10
DEFAULT_WEIGHT: Final = 10
DEFAULT_TTL: Final = 3600
#: RFC 2782: priority and weight are 16-bit; RFC 2181 §8: a TTL is at most 2^31 - 1 seconds.
MAX_PRIORITY: Final = 65535
MAX_TTL: Final = 2**31 - 1

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class Pool:
    fqdn: str
    priority: int


def parse_pool(text: str) -> Pool:
    """``FQDN:PRIORITY`` (a DNS name, not an IP address: an SRV target is a name, RFC 2782; a
    priority 0..65535); ValueError naming the rule otherwise."""
    fqdn, sep, prio = text.strip().rpartition(":")
    if not sep or not fqdn or not prio.isascii() or not prio.isdigit() or int(prio) > MAX_PRIORITY:
        raise ValueError(f"--pool {quote(text)}: must be FQDN:PRIORITY with a priority from 0 to {MAX_PRIORITY}")
    try:
        name = normalize_domain(fqdn)
    except InvalidName as exc:
        raise ValueError(f"--pool {exc.detail}") from None
    return Pool(name, int(prio))


def default_pools(config: EdgeConfig) -> list[Pool]:
    return [Pool(config.edge.external_fqdn.rstrip(".").lower(), DEFAULT_PRIORITY)]


def validate_pools(pools: Sequence[Pool]) -> None:
    seen: dict[int, str] = {}
    for pool in pools:
        if pool.priority in seen:
            raise ValueError(
                f"pools {seen[pool.priority]} and {pool.fqdn} share priority {pool.priority}; "
                "each pool needs its own priority"
            )
        seen[pool.priority] = pool.fqdn
    if len({p.fqdn for p in pools}) != len(pools):
        raise ValueError("a pool is listed twice")


def listen_addresses(config: EdgeConfig) -> list[IPAddress]:
    """The specific (non-wildcard) IP addresses the external listeners bind."""
    result = []
    for hostport in config.edge.listen:
        host, _ = listen_address(hostport)
        try:
            addr = ipaddress.ip_address(host)
        except ValueError:
            continue
        if not addr.is_unspecified and addr not in result:
            result.append(addr)
    return result


def external_port(config: EdgeConfig) -> tuple[int, list[str]]:
    """The port partners connect to, from ``[edge] listen``, and warnings: with listeners on
    several ports the SRV records name the first; port 0 (any free port) cannot be published,
    so the standard 5269 is named."""
    ports = list(dict.fromkeys(listen_address(hp)[1] for hp in config.edge.listen))
    fixed = [p for p in ports if p != 0]
    if not fixed:
        return XMPP_SERVER_PORT, [
            f"[edge] listen has port 0 (any free port): the SRV records name the standard port {XMPP_SERVER_PORT}"
        ]
    warnings = []
    if len(fixed) > 1:
        warnings.append(
            f"[edge] listen has ports {', '.join(map(str, fixed))}: the SRV records name the first, {fixed[0]}"
        )
    return fixed[0], warnings


def address_warning(fqdn: str, addr: IPAddress) -> str | None:
    """Why publishing ``addr`` for ``fqdn`` would not let partners reach the edge, if so."""
    rtype = "A" if addr.version == 4 else "AAAA"
    if addr.is_loopback:
        kind = "a loopback address"
    elif not addr.is_global:
        kind = "not a public address (private, link-local, documentation or reserved range)"
    else:
        return None
    return (
        f"the {rtype} record of {fqdn} would publish {addr}, {kind}: partners on the internet"
        " cannot reach it; publish the public address (set [edge] listen to it, or fill it in by hand)"
    )


@dataclass(frozen=True)
class ZoneRecord:
    """One record to publish: absolute owner name, TTL and dnspython rdata (class IN)."""

    name: str
    ttl: int
    rdata: dns.rdata.Rdata
    #: the XMPP domain an SRV record serves (None for an address record)
    domain: str | None = None

    @property
    def type(self) -> str:
        return dns.rdatatype.to_text(self.rdata.rdtype)

    def line(self) -> str:
        """The zone-file line: ``NAME<TAB>TTL<TAB>IN<TAB>TYPE<TAB>RDATA``."""
        return f"{self.name}\t{self.ttl}\tIN\t{self.type}\t{self.rdata.to_text()}"

    def to_json(self) -> dict[str, Any]:
        """The ``dns records --json`` form of the record (``docs/cli-json.md``)."""
        out: dict[str, Any] = {
            "name": self.name, "ttl": self.ttl, "class": "IN", "type": self.type, "data": self.rdata.to_text(),
        }
        if self.type == "SRV":
            rd: Any = self.rdata
            out |= {"domain": self.domain, "priority": rd.priority, "weight": rd.weight, "port": rd.port,
                    "target": rd.target.to_text()}
        else:
            out["address"] = self.rdata.to_text()
        return out


def _record(owner: str, ttl: int, rdtype: str, text: str, domain: str | None = None) -> ZoneRecord:
    name = dns.name.from_text(owner).to_text()
    rdata = dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.from_text(rdtype), text)
    return ZoneRecord(name, ttl, rdata, domain)


@dataclass(frozen=True)
class Publication:
    """Everything ``dns records`` says: the records, what the admin must fill in, warnings."""

    fqdn: str
    port: int
    ttl: int
    records: list[ZoneRecord]
    #: address record types to fill in by hand (the listeners are wildcards)
    placeholders: list[str] = field(default_factory=list)
    #: pools whose A/AAAA records are published by that pool
    other_pools: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """The ``dns records --json`` document (``docs/cli-json.md``)."""
        name = dns.name.from_text(self.fqdn).to_text()
        return {
            "fqdn": self.fqdn,
            "port": self.port,
            "ttl": self.ttl,
            "records": [r.to_json() for r in self.records],
            "placeholders": [{"name": name, "ttl": self.ttl, "class": "IN", "type": t} for t in self.placeholders],
            "other-pools": self.other_pools,
            "warnings": self.warnings,
        }


def publication(
    config: EdgeConfig,
    pools: Sequence[Pool] | None = None,
    *,
    ttl: int = DEFAULT_TTL,
    weight: int = DEFAULT_WEIGHT,
) -> Publication:
    """The records to publish for ``config`` and ``pools`` (default: the external FQDN alone)."""
    if not 0 <= ttl <= MAX_TTL:
        raise ValueError(f"--ttl {ttl}: a TTL is from 0 to {MAX_TTL} seconds (RFC 2181 §8)")
    pools = list(pools) if pools else default_pools(config)
    validate_pools(pools)
    pools = sorted(pools, key=lambda p: p.priority)
    fqdn = config.edge.external_fqdn.rstrip(".").lower()
    port, warnings = external_port(config)
    records = [
        _record(srv_name(domain), ttl, "SRV", f"{pool.priority} {weight} {port} {pool.fqdn}.", domain)
        for domain in config.edge.domains
        for pool in pools
    ]
    addrs = listen_addresses(config)
    for addr in addrs:
        records.append(_record(fqdn, ttl, "A" if addr.version == 4 else "AAAA", str(addr)))
        warning = address_warning(fqdn, addr)
        if warning:
            warnings.append(warning)
    return Publication(
        fqdn=fqdn,
        port=port,
        ttl=ttl,
        records=records,
        placeholders=[] if addrs else ["A", "AAAA"],
        other_pools=[p.fqdn for p in pools if p.fqdn != fqdn],
        warnings=warnings,
    )


def render(plan: Publication) -> list[str]:
    """The zone-file text of a publication: comments, then one line per record."""
    lines = [
        "; edgeproxy: DNS records for XMPP federation (RFC 6120 §3.2.1, RFC 2782).",
        "; Publish each SRV record in the zone of its domain; lower priority = preferred pool.",
    ]
    srv = [r for r in plan.records if r.domain is not None]
    for domain, group in groupby(srv, key=lambda r: r.domain):
        lines.append(f"; {domain}")
        lines.extend(r.line() for r in group)
    lines.append(f"; address of this edge ({plan.fqdn})")
    lines.extend(r.line() for r in plan.records if r.domain is None)
    if plan.placeholders:
        lines.append(
            f"; {plan.fqdn}.\t{plan.ttl}\tIN\tA\t<public IPv4 address of this edge>   "
            "(edge.listen is a wildcard: fill in the address partners reach)"
        )
        lines.append(f"; {plan.fqdn}.\t{plan.ttl}\tIN\tAAAA\t<public IPv6 address, if any>")
    for pool in plan.other_pools:
        lines.append(f"; {pool}.\tA/AAAA: published by that pool (edgeproxy dns records there)")
    return lines


def zone_lines(
    config: EdgeConfig,
    pools: Sequence[Pool] | None = None,
    *,
    ttl: int = DEFAULT_TTL,
    weight: int = DEFAULT_WEIGHT,
) -> list[str]:
    """The zone-file lines of :func:`publication` (its warnings are not in them)."""
    return render(publication(config, pools, ttl=ttl, weight=weight))
