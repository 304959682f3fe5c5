"""Real Prosody 0.12 (fabrikam.test) federating with edgeproxy (contoso.test) — issue 4 acceptance.

Each test starts its own dnsmasq (SRV + A records for both domains), Prosody on 127.0.0.22 and an
in-process edge on 127.0.0.10, then drives a real client logged in on Prosody.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import trio
from c2s import Client
from prosody import PASSWORD, free_port, start_prosody

from edgeproxy.net.connector import Connector, ConnectorSettings
from edgeproxy.net.context import EdgeContext
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
from edgeproxy.policy.snapshot import build_snapshot
from edgeproxy.tokenizer import Element
from edgeproxy.xmpp.namespaces import NS_SERVER
from fixtures.dnsmasq import host, srv, start_dnsmasq

EDGE_ADDR = "127.0.0.10"
PROSODY_ADDR = "127.0.0.22"
NOS = Negotiation.NOT_SUPPORTED


@dataclass
class Lab:
    edge: EdgeServer
    delivery: MemoryDelivery
    alice: Client


@asynccontextmanager
async def lab(tmp_path: Path, row: Partner, mode: str = "plain") -> AsyncIterator[Lab]:
    edge_port = free_port(EDGE_ADDR)
    p_s2s, p_c2s = free_port(PROSODY_ADDR), free_port(PROSODY_ADDR)
    dns = start_dnsmasq(tmp_path / "dns", [
        srv("_xmpp-server._tcp.contoso.test", "contoso.test", edge_port),
        host("contoso.test", EDGE_ADDR),
        srv("_xmpp-server._tcp.fabrikam.test", "fabrikam.test", p_s2s),
        host("fabrikam.test", PROSODY_ADDR),
    ])
    prosody = start_prosody("fabrikam.test", PROSODY_ADDR, (dns.address, dns.port), mode=mode,
                            c2s_port=p_c2s, s2s_port=p_s2s)
    try:
        config = Configuration(
            gateway=GatewaySettings(dialback_secret="interop-dialback-secret"),
            partners=(row,),
            policies=(AccessPolicy(identity="global", xmpp=True, federation=True),),
            users=(User(sip="sip:bob@contoso.test"),),
        )
        snapshot = build_snapshot(config, ["contoso.test"])
        delivery = MemoryDelivery()
        ctx = EdgeContext(
            policy=lambda: snapshot,
            connector=Connector(ConnectorSettings(resolver=(dns.address, dns.port), timeout=10)),
            delivery=delivery,
        )
        edge = EdgeServer(ctx)
        async with trio.open_nursery() as nursery:
            await nursery.start(edge.run, [(EDGE_ADDR, edge_port)])
            alice = await Client.login(PROSODY_ADDR, p_c2s, "alice", "fabrikam.test", PASSWORD)
            yield Lab(edge, delivery, alice)
            nursery.cancel_scope.cancel()
    except BaseException:
        print(prosody.log_text()[-6000:])
        raise
    finally:
        prosody.stop()
        dns.stop()


def tcp_dialback_row() -> Partner:
    return Partner(domain="fabrikam.test", tls=NOS, sasl=NOS, dialback=True, type=PartnerType.FEDERATED)


async def test_prosody_message_reaches_local_delivery_over_tcp_dialback(tmp_path: Path) -> None:
    with trio.fail_after(40):
        async with lab(tmp_path, tcp_dialback_row()) as env:
            await env.alice.send(
                "<message to='bob@contoso.test' type='chat' id='p1'><body>from prosody</body></message>"
            )
            got = await env.delivery.receive()
            assert (got.from_jid, got.to_jid) == ("alice@fabrikam.test/interop", "bob@contoso.test")
            assert b"<body>from prosody</body>" in got.raw

            # A local user's stanza reaches the partner user's client (Prosody verifies our key
            # by connecting back to contoso.test: our authoritative dialback role).
            await env.edge.router.send_from_local(Element(
                "message", NS_SERVER, {"from": "bob@contoso.test/sip", "to": "alice@fabrikam.test", "type": "chat"},
                [Element("body", NS_SERVER, {}, ["from the edge"])],
            ))
            reply = await env.alice.expect("message")
            assert reply.from_ == "bob@contoso.test/sip"
            assert b"from the edge" in reply.raw

            # Refusal: a local user that does not exist comes back as service-unavailable.
            await env.alice.send("<message to='nobody@contoso.test' type='chat' id='p2'><body>?</body></message>")
            error = await env.alice.expect("message")
            assert error.type == "error" and error.from_ == "nobody@contoso.test"
            assert b"service-unavailable" in error.raw

            # Presence subscription round trip: Federated partner → auto-approved.
            await env.alice.send("<presence to='bob@contoso.test' type='subscribe'/>")
            while (p := await env.alice.expect("presence")).type != "subscribed":
                pass
            assert p.from_ == "bob@contoso.test"
            sub = await env.delivery.receive()
            assert sub.kind == "presence" and sub.type == "subscribe"
