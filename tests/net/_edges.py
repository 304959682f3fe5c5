"""Two real edges (contoso.test, fabrikam.test) on loopback sockets, for the driver tests."""

from __future__ import annotations

from dataclasses import dataclass

import trio

from edgeproxy.net.connector import ConnectorSettings
from edgeproxy.net.delivery import MemoryDelivery
from edgeproxy.net.edge import EdgeServer
from edgeproxy.policy.model import (
    AccessPolicy,
    Configuration,
    GatewaySettings,
    Negotiation,
    Partner,
    PartnerType,
    User,
)
from edgeproxy.policy.snapshot import PolicySnapshot, build_snapshot
from fixtures.edges import build_edge, run_edge


@dataclass
class RunningEdge:
    domain: str
    server: EdgeServer
    delivery: MemoryDelivery
    port: int
    holder: list[PolicySnapshot]


def snapshot(domain: str, partners: tuple[Partner, ...], users: tuple[str, ...], secret: str,
             **gateway: int) -> PolicySnapshot:
    config = Configuration(
        gateway=GatewaySettings(dialback_secret=secret, **gateway),
        partners=partners,
        policies=(AccessPolicy(identity="global", xmpp=True, federation=True),),
        users=tuple(User(sip=f"sip:{u}@{domain}") for u in users),
    )
    return build_snapshot(config, [domain])


def partner(domain: str, port: int, tls: Negotiation = Negotiation.NOT_SUPPORTED,
            sasl: Negotiation = Negotiation.NOT_SUPPORTED, dialback: bool = True,
            **kw: object) -> Partner:
    return Partner(domain=domain, tls=tls, sasl=sasl, dialback=dialback,
                   type=PartnerType.FEDERATED, proxy_fqdn=f"127.0.0.1:{port}", **kw)  # type: ignore[arg-type]


async def start_edge(nursery: trio.Nursery, domain: str, users: tuple[str, ...], secret: str,
                     server_ssl=None, client_ssl=None) -> RunningEdge:  # type: ignore[no-untyped-def]
    holder = [snapshot(domain, (), users, secret)]
    delivery = MemoryDelivery()
    server = build_edge(lambda: holder[0], delivery, ConnectorSettings(attempt_delay=0.05, timeout=5),
                        tls=(server_ssl, client_ssl))
    return RunningEdge(domain, server, delivery, await run_edge(nursery, server, "127.0.0.1"), holder)


def set_partners(edge: RunningEdge, users: tuple[str, ...], secret: str, *partners: Partner,
                 **gateway: int) -> None:
    edge.holder[0] = snapshot(edge.domain, partners, users, secret, **gateway)
