"""The harness against an in-process edgeproxy (contoso.test): row 17 (TCP dialback) for the
simulated domains, delivery seen through the edge's local delivery, bounces for unknown users,
and stanzas the delivery swallows reported as lost."""

from __future__ import annotations

from pathlib import Path

import trio

from edgeproxy.loadtest import LoadTest, parse_scenario
from edgeproxy.loadtest.sink import DeliveryProbe
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

EDGE_ADDR = "127.0.0.10"
SIM_ADDR = "127.0.0.31"
SIMS = ("sim1.test", "sim2.test")
NOS = Negotiation.NOT_SUPPORTED


def scenario_text(edge_port: int, sim_port: int, stanzas: int, rate: float = 0) -> str:
    return f"""
name = "edgeproxy-small"
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
stanzas = {stanzas}
rate = {rate}
duration = 20
drain = 3
[[traffic.mix]]
kind = "message"
to = "bob@contoso.test"
weight = 6
[[traffic.mix]]
kind = "presence"
to = "bob@contoso.test"
[[traffic.mix]]
kind = "message"
to = "nobody@contoso.test"
[[traffic.mix]]
kind = "message"
to = "carol@contoso.test"
"""


class SwallowingDelivery:
    """Hands everything to the harness' probe except stanzas for carol: those vanish."""

    def __init__(self, probe: DeliveryProbe) -> None:
        self.probe, self.swallowed = probe, 0

    async def deliver(self, item) -> None:  # type: ignore[no-untyped-def]
        if item.to_jid.startswith("carol@"):
            self.swallowed += 1
            return
        await self.probe.deliver(item)


async def run_against_edge(tmp_path: Path, stanzas: int, rate: float = 0) -> tuple[dict, SwallowingDelivery]:  # type: ignore[type-arg]
    edge_port, sim_port = free_port(EDGE_ADDR), free_port(SIM_ADDR)
    records = xmpp_server("contoso.test", EDGE_ADDR, edge_port)
    for sim in SIMS:
        records += xmpp_server(sim, SIM_ADDR, sim_port)
    dns = start_dnsmasq(tmp_path / "dns", records)
    try:
        test = LoadTest(parse_scenario(scenario_text(edge_port, sim_port, stanzas, rate)))
        row = Partner(domain=SIMS[0], additional_domains=SIMS[1:], tls=NOS, sasl=NOS, dialback=True,
                      type=PartnerType.FEDERATED)
        config = Configuration(
            gateway=GatewaySettings(dialback_secret="edge-secret"),
            partners=(row,),
            policies=(AccessPolicy(identity="global", xmpp=True, federation=True),),
            users=(User(sip="sip:bob@contoso.test"), User(sip="sip:carol@contoso.test")),
        )
        snapshot = build_snapshot(config, ["contoso.test"])
        delivery = SwallowingDelivery(test.delivery_probe())
        edge = build_edge(lambda: snapshot, delivery, ConnectorSettings(resolver=(dns.address, dns.port), timeout=10))
        async with trio.open_nursery() as nursery:
            await test.start_listener(nursery)
            await run_edge(nursery, edge, EDGE_ADDR, edge_port)
            result = await test.run()
            nursery.cancel_scope.cancel()
        return result, delivery
    finally:
        dns.stop()


async def test_harness_accounts_for_every_stanza_against_edgeproxy(tmp_path: Path) -> None:
    with trio.fail_after(40):
        result, delivery = await run_against_edge(tmp_path, stanzas=300)
    assert result["streams"]["ready"] == 4, result["streams"]  # type: ignore[index]
    assert result["sent"] == 300
    assert result["sent"] == result["delivered"] + result["bounced"] + result["lost"]
    # Mix cycle of 9: 7 deliverable (6 messages + 1 presence), 1 unknown user, 1 swallowed.
    # 300 = 33 × 9 + 3: residues 0-2 occur 34 times, the others 33 times.
    assert (result["delivered"], result["bounced"], result["lost"]) == (34 + 34 + 5 * 33, 34, 33)
    assert delivery.swallowed == 33
    assert result["latency_ms"]["p99"] is not None  # type: ignore[index]


async def test_lost_stanzas_are_listed_by_id(tmp_path: Path) -> None:
    with trio.fail_after(40):
        result, delivery = await run_against_edge(tmp_path, stanzas=90, rate=600)
    lost_ids = result["lost_ids"]
    assert isinstance(lost_ids, list) and len(lost_ids) == result["lost"] == delivery.swallowed == 10
    # carol is the 4th entry of the interleaved cycle: ids n with n % 9 == 3.
    assert all(int(i[2:]) % 9 == 3 for i in lost_ids)
