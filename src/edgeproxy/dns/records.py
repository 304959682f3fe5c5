"""The DNS records to publish for the edge, in zone-file syntax (SPEC §9, RFC 2782, RFC 6120 §3.2.1).

For every XMPP domain and every edge pool there is one ``_xmpp-server._tcp.<domain>.`` SRV record
pointing at the pool's FQDN on port 5269. Pools get distinct priorities, so partners send all
traffic to the best (lowest) priority and move to the next pool only when it fails — failover
with no DNS change. The weight only matters between records of equal priority, which we never
publish, so it is a fixed nominal value. A/AAAA records are written for this edge's external FQDN
from the specific ``listen`` addresses in the configuration; a wildcard listener (``0.0.0.0`` /
``::``) says nothing about the public address, so a placeholder comment is written instead.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

from edgeproxy.config import EdgeConfig
from edgeproxy.dns.srv import XMPP_SERVER_PORT, srv_name

DEFAULT_PRIORITY = 10
DEFAULT_WEIGHT = 10
DEFAULT_TTL = 3600


@dataclass(frozen=True)
class Pool:
    fqdn: str
    priority: int


def parse_pool(text: str) -> Pool:
    """``FQDN:PRIORITY`` (priority 0..65535)."""
    fqdn, sep, prio = text.rpartition(":")
    if not sep or not fqdn or not prio.isdigit() or not 0 <= int(prio) <= 65535:
        raise ValueError(f"--pool wants FQDN:PRIORITY with a priority 0..65535, not {text!r}")
    return Pool(fqdn.rstrip(".").lower(), int(prio))


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


def split_host_port(hostport: str) -> tuple[str, int]:
    host, _, port = hostport.rpartition(":")
    return host.strip("[]"), int(port)


def listen_addresses(config: EdgeConfig) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """The specific (non-wildcard) IP addresses the external listeners bind."""
    result = []
    for hostport in config.edge.listen:
        host, _ = split_host_port(hostport)
        try:
            addr = ipaddress.ip_address(host)
        except ValueError:
            continue
        if not addr.is_unspecified and addr not in result:
            result.append(addr)
    return result


def zone_lines(
    config: EdgeConfig,
    pools: Sequence[Pool] | None = None,
    *,
    ttl: int = DEFAULT_TTL,
    weight: int = DEFAULT_WEIGHT,
) -> list[str]:
    pools = list(pools) if pools else default_pools(config)
    validate_pools(pools)
    pools = sorted(pools, key=lambda p: p.priority)
    fqdn = config.edge.external_fqdn.rstrip(".").lower()
    lines = [
        "; edgeproxy: DNS records for XMPP federation (RFC 6120 §3.2.1, RFC 2782).",
        "; Publish each SRV record in the zone of its domain; lower priority = preferred pool.",
    ]
    for domain in config.edge.domains:
        lines.append(f"; {domain}")
        for pool in pools:
            lines.append(
                f"{srv_name(domain)}.\t{ttl}\tIN\tSRV\t{pool.priority} {weight} {XMPP_SERVER_PORT} {pool.fqdn}."
            )
    lines.append(f"; address of this edge ({fqdn})")
    addrs = listen_addresses(config)
    if addrs:
        for addr in addrs:
            rtype = "A" if addr.version == 4 else "AAAA"
            lines.append(f"{fqdn}.\t{ttl}\tIN\t{rtype}\t{addr}")
    else:
        lines.append(
            f"; {fqdn}.\t{ttl}\tIN\tA\t<public IPv4 address of this edge>   "
            "(edge.listen is a wildcard: fill in the address partners reach)"
        )
        lines.append(f"; {fqdn}.\t{ttl}\tIN\tAAAA\t<public IPv6 address, if any>")
    for pool in pools:
        if pool.fqdn != fqdn:
            lines.append(f"; {pool.fqdn}.\tA/AAAA: published by that pool (edgeproxy dns records there)")
    return lines
