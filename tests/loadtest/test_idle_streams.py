"""Authenticated inbound streams that stay quiet are established at once, and stay open.

Found by bench/compare.py's idle-stream runs: after the edge sent ``<db:result type='valid'/>``
(its dialback verdict, sent from the verification task), the core's ``Authenticated`` event waited
in the queue until the peer's next bytes. A partner that then stayed quiet was never "ready", and
the establishment timer closed its authenticated stream with ``connection-timeout``.
"""

from __future__ import annotations

from pathlib import Path

import trio

from edgeproxy.loadtest import LoadTest, parse_scenario
from edgeproxy.net.connector import ConnectorSettings
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
from fixtures.dnsmasq import start_dnsmasq, xmpp_server
from fixtures.edges import build_edge, run_edge
from fixtures.ports import free_port

EDGE_ADDR, SIM_ADDR, DNS_ADDR = "127.0.0.96", "127.0.0.97", "127.0.0.98"
SIMS = ("sim1.test", "sim2.test")
ESTABLISHMENT = 2  # seconds: the edge's stream establishment timeout in this test
IDLE = 4.0  # the harness holds its authenticated streams idle this long, then sends


async def test_quiet_authenticated_streams_outlive_the_establishment_timeout(tmp_path: Path) -> None:
    edge_port, sim_port = free_port(EDGE_ADDR), free_port(SIM_ADDR)
    records = xmpp_server("contoso.test", EDGE_ADDR, edge_port)
    for sim in SIMS:
        records += xmpp_server(sim, SIM_ADDR, sim_port)
    dns = start_dnsmasq(tmp_path / "dns", records, address=DNS_ADDR)
    try:
        test = LoadTest(parse_scenario(f"""
name = "quiet"
[target]
domain = "contoso.test"
host = "{EDGE_ADDR}"
port = {edge_port}
[partners]
domains = {list(SIMS)!r}
streams-per-domain = 2
listen-host = "{SIM_ADDR}"
listen-port = {sim_port}
[traffic]
stanzas = 8
idle = {IDLE}
duration = 10
drain = 5
[[traffic.mix]]
kind = "message"
to = "bob@contoso.test"
"""))
        nos = Negotiation.NOT_SUPPORTED
        config = Configuration(
            gateway=GatewaySettings(dialback_secret="edge-secret",
                                    stream_establishment_timeout=ESTABLISHMENT),
            partners=(Partner(domain=SIMS[0], additional_domains=SIMS[1:], tls=nos, sasl=nos,
                              dialback=True, type=PartnerType.FEDERATED),),
            policies=(AccessPolicy(identity="global", xmpp=True, federation=True),),
            users=(User(sip="sip:bob@contoso.test"),),
        )
        snapshot = build_snapshot(config, ["contoso.test"])
        edge = build_edge(lambda: snapshot, test.delivery_probe(),
                          ConnectorSettings(resolver=(dns.address, dns.port), timeout=10))
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                await test.start_listener(nursery)
                await run_edge(nursery, edge, EDGE_ADDR, edge_port)
                result = await test.run()
                nursery.cancel_scope.cancel()
    finally:
        dns.stop()
    streams = result["streams"]
    assert streams["ready"] == 4 and not streams["setup_errors"], streams
    # Every stream was still open after IDLE > ESTABLISHMENT seconds of silence: all 8 stanzas
    # were written and delivered, and no stream was closed with connection-timeout.
    assert (result["sent"], result["delivered"], result["unsent"]) == (8, 8, 0), result
    assert not any("connection-timeout" in e for e in streams["errors"]), streams["errors"]
