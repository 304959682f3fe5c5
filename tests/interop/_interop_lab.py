"""The interop lab: a real XMPP server federating with an edgeproxy edge in this process.

``lab(tmp_path, row, mode, server)`` starts, for one test: dnsmasq (on its default address) with
the S2S SRV and A records of both domains; the server (``PROSODY``: Prosody 0.12 serving
fabrikam.test on 127.0.0.22, or ``EJABBERD``: ejabberd 23.01 serving litware.test on 127.0.0.23;
``fixtures.xmpp_servers``) in ``mode`` (plain | starttls | secure: then with a certificate from
the lab's CA); the edge for contoso.test on ``EDGE_ADDR`` (partner ``row``, none when None; the
user bob; the lab's certificate unless plain); and alice of the server's domain logged in on
the server (a ``fixtures.c2s.Client``). It yields a :class:`Lab`; on the way out everything is
stopped, and if the body raised the tail of the server's log is printed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import trio

from edgeproxy.net.connector import ConnectorSettings
from edgeproxy.net.delivery import MemoryDelivery
from edgeproxy.net.edge import EdgeServer
from edgeproxy.policy.model import AccessPolicy, Configuration, GatewaySettings, Partner, User
from edgeproxy.policy.snapshot import build_snapshot
from fixtures.c2s import Client
from fixtures.dnsmasq import start_dnsmasq, xmpp_server
from fixtures.edges import build_edge, run_edge, s2s_contexts
from fixtures.pki import write_domain_certificates
from fixtures.ports import free_port
from fixtures.xmpp_servers import PASSWORD, Ejabberd, Prosody, start_ejabberd, start_prosody

EDGE_ADDR = "127.0.0.10"
EDGE_DOMAIN = "contoso.test"


@dataclass(frozen=True)
class Server:
    """Which XMPP server the edge federates with, for which domain, on which address."""

    domain: str
    address: str


PROSODY = Server("fabrikam.test", "127.0.0.22")
EJABBERD = Server("litware.test", "127.0.0.23")


@dataclass
class Lab:
    edge: EdgeServer
    delivery: MemoryDelivery
    alice: Client
    edge_port: int


@asynccontextmanager
async def lab(
    tmp_path: Path, row: Partner | None, mode: str = "plain", server: Server = PROSODY
) -> AsyncIterator[Lab]:
    """The lab (see the module docstring)."""
    certs = None
    if mode != "plain":
        certs = write_domain_certificates(tmp_path / "certs", (EDGE_DOMAIN, server.domain), "Interop Lab CA")
    edge_port = free_port(EDGE_ADDR)
    s2s, c2s = free_port(server.address), free_port(server.address)
    dns = start_dnsmasq(tmp_path / "dns", [
        *xmpp_server(EDGE_DOMAIN, EDGE_ADDR, edge_port),
        *xmpp_server(server.domain, server.address, s2s),
    ])  # fmt: skip
    resolver = (dns.address, dns.port)
    peer: Prosody | Ejabberd | None = None
    try:
        peer_certs = certs[server.domain] if certs else None
        if server is PROSODY:
            peer = start_prosody(server.domain, server.address, resolver, mode=mode,
                                 c2s_port=c2s, s2s_port=s2s, certs=peer_certs)
        else:
            peer = start_ejabberd(server.domain, server.address, resolver,
                                  {EDGE_DOMAIN: EDGE_ADDR, server.domain: server.address},
                                  mode=mode, c2s_port=c2s, s2s_port=s2s, certs=peer_certs)
        config = Configuration(
            gateway=GatewaySettings(dialback_secret="interop-dialback-secret"),
            partners=(row,) if row is not None else (),
            policies=(AccessPolicy(identity="global", xmpp=True, federation=True),),
            users=(User(sip=f"sip:bob@{EDGE_DOMAIN}"),),
        )
        snapshot = build_snapshot(config, [EDGE_DOMAIN])
        delivery = MemoryDelivery()
        edge = build_edge(lambda: snapshot, delivery, ConnectorSettings(resolver=resolver, timeout=10),
                          tls=s2s_contexts(*certs[EDGE_DOMAIN]) if certs else (None, None))
        async with trio.open_nursery() as nursery:
            await run_edge(nursery, edge, EDGE_ADDR, edge_port)
            alice = await Client.login(server.address, c2s, "alice", server.domain, PASSWORD)
            yield Lab(edge, delivery, alice, edge_port)
            nursery.cancel_scope.cancel()
    except BaseException:
        if peer is not None:
            print(peer.log_text()[-6000:])
        raise
    finally:
        if peer is not None:
            peer.stop()
        dns.stop()
