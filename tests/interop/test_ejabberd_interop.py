"""Real ejabberd 23.01 (litware.test) federating with edgeproxy (contoso.test) — issue 4."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import trio
from c2s import Client
from ejabberd import start_ejabberd
from prosody import PASSWORD, free_port
from test_prosody_interop import EDGE_ADDR, Lab, federate_both_ways, lab_certificates

from edgeproxy.net.connector import Connector, ConnectorSettings
from edgeproxy.net.context import EdgeContext
from edgeproxy.net.delivery import MemoryDelivery
from edgeproxy.net.edge import EdgeServer
from edgeproxy.net.tls import client_context, server_context
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
from fixtures.dnsmasq import host, srv, start_dnsmasq

EJABBERD_ADDR = "127.0.0.23"
DOMAINS = ("contoso.test", "litware.test")
NOS, REQ = Negotiation.NOT_SUPPORTED, Negotiation.REQUIRED


@asynccontextmanager
async def ejabberd_lab(tmp_path: Path, row: Partner, mode: str = "plain") -> AsyncIterator[Lab]:
    certs = lab_certificates(tmp_path / "certs", DOMAINS) if mode != "plain" else None
    edge_port = free_port(EDGE_ADDR)
    e_s2s, e_c2s = free_port(EJABBERD_ADDR), free_port(EJABBERD_ADDR)
    dns = start_dnsmasq(tmp_path / "dns", [
        srv("_xmpp-server._tcp.contoso.test", "contoso.test", edge_port),
        host("contoso.test", EDGE_ADDR),
        srv("_xmpp-server._tcp.litware.test", "litware.test", e_s2s),
        host("litware.test", EJABBERD_ADDR),
    ])
    server = None
    try:
        server = start_ejabberd(
            "litware.test", EJABBERD_ADDR, (dns.address, dns.port),
            {"contoso.test": EDGE_ADDR, "litware.test": EJABBERD_ADDR},
            mode=mode, c2s_port=e_c2s, s2s_port=e_s2s,
            certs=certs["litware.test"] if certs else None,
        )
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
            server_ssl=server_context(*certs["contoso.test"]) if certs else None,
            client_ssl=client_context(*certs["contoso.test"]) if certs else None,
        )
        edge = EdgeServer(ctx)
        async with trio.open_nursery() as nursery:
            await nursery.start(edge.run, [(EDGE_ADDR, edge_port)])
            alice = await Client.login(EJABBERD_ADDR, e_c2s, "alice", "litware.test", PASSWORD)
            yield Lab(edge, delivery, alice, edge_port)
            nursery.cancel_scope.cancel()
    except BaseException:
        if server is not None:
            print(server.log_text()[-6000:])
        raise
    finally:
        if server is not None:
            server.stop()
        dns.stop()


async def test_ejabberd_federates_over_tcp_dialback_row_17(tmp_path: Path, caplog) -> None:  # type: ignore[no-untyped-def]
    caplog.set_level("INFO", logger="edgeproxy")
    row = Partner(domain="litware.test", tls=NOS, sasl=NOS, dialback=True, type=PartnerType.FEDERATED)
    with trio.fail_after(60):
        async with ejabberd_lab(tmp_path, row) as env:
            await federate_both_ways(env, "litware.test")
    assert "authenticated by tcp-dialback" in caplog.text


async def test_ejabberd_federates_over_starttls_and_dialback_row_13(tmp_path: Path, caplog) -> None:  # type: ignore[no-untyped-def]
    caplog.set_level("INFO", logger="edgeproxy")
    row = Partner(domain="litware.test", tls=REQ, sasl=NOS, dialback=True, type=PartnerType.FEDERATED)
    with trio.fail_after(60):
        async with ejabberd_lab(tmp_path, row, mode="starttls") as env:
            await federate_both_ways(env, "litware.test")
            link = env.edge.router.pool.links[("contoso.test", "litware.test")]
            assert link.session is not None and link.session.conn.tls_active
    assert "authenticated by tls-dialback" in caplog.text


async def test_ejabberd_federates_over_starttls_and_sasl_external_row_2(tmp_path: Path, caplog) -> None:  # type: ignore[no-untyped-def]
    caplog.set_level("INFO", logger="edgeproxy")
    row = Partner(domain="litware.test", tls=REQ, sasl=REQ, dialback=False, type=PartnerType.FEDERATED)
    with trio.fail_after(60):
        async with ejabberd_lab(tmp_path, row, mode="secure") as env:
            await federate_both_ways(env, "litware.test")
    assert "authenticated by sasl-over-tls" in caplog.text
