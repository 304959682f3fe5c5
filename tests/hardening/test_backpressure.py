"""Backpressure, not bounces (issue 21): a partner's burst larger than the queue to the gateway.

``edgeproxy serve`` (role ``edge``) runs on 127.0.6.1 with ``[gateway] max-queued = 20``; the
partner ``fabrikam.test`` is a real ``EdgeServer`` in this process on 127.0.6.2 (TCP dialback);
the test is the gateway (``fixtures.channel_peer``) and reads the channel without acking, as a
gateway that cannot keep up. Once 20 stanzas wait, the edge stops reading the partner's stream
instead of bouncing: nothing comes back to the partner while the gateway is slow, and when it
acks, the whole burst arrives, in order, none bounced. Only a stanza that waited longer than
``[gateway] queue-wait`` is bounced — counted in ``edgeproxy_bounces_total`` with cause
``gateway-queue-full`` and reported as EP7004 naming the domains.
"""

from __future__ import annotations

from pathlib import Path

import trio
from test_soak_abuse import (
    OURS,
    PARTNER,
    TCP_DIALBACK_ROW,
    PartnerEdge,
    partner_configuration,
    start_partner,
)

from edgeproxy.loopback.frames import Routed
from edgeproxy.policy.model import (
    AccessPolicy,
    Configuration,
    GatewaySettings,
    Partner,
    PartnerType,
)
from edgeproxy.policy.snapshot import build_snapshot
from edgeproxy.tokenizer import Element
from edgeproxy.xmpp.namespaces import NS_SERVER
from edgeproxy.xmpp.stanza import parse_stanza
from fixtures.channel_peer import GatewayPeer, gateway_peer
from fixtures.serve import ServeProcess, start_serve
from fixtures.sipauth import user as sip_user

EDGE_IP, PARTNER_IP = "127.0.6.1", "127.0.6.2"
MAX_QUEUED = 20
ALICE = f"alice@{OURS}"  # the local user the partner writes to
BOB = f"bob@{PARTNER}"


def edge_store(partner_port: int) -> Configuration:
    return Configuration(
        gateway=GatewaySettings(dialback_secret="contoso-backpressure-secret"),
        partners=(Partner(domain=PARTNER, type=PartnerType.FEDERATED,
                          proxy_fqdn=f"{PARTNER_IP}:{partner_port}", **TCP_DIALBACK_ROW),),
        policies=(AccessPolicy(identity="global", xmpp=True, federation=True),),
        users=(sip_user("alice"),),
    )


async def burst(partner: PartnerEdge, count: int) -> None:
    for n in range(1, count + 1):
        element = Element("message", NS_SERVER, {"from": f"{BOB}/bp", "to": ALICE, "type": "chat", "id": f"b{n}"},
                          [Element("body", NS_SERVER, {}, [f"burst {n}"])])
        await partner.server.router.send_from_local(element)


def ids(gw: GatewayPeer) -> list[str]:
    return [parse_stanza(i.raw).get("id") or "" for i in gw.items if isinstance(i, Routed)]


async def run(tmp_path: Path, queue_wait: float, scenario) -> ServeProcess:  # type: ignore[no-untyped-def]
    serve: ServeProcess | None = None
    try:
        async with trio.open_nursery() as nursery:
            partner = await start_partner(nursery, partner_configuration(None), PARTNER_IP)
            serve = await trio.to_thread.run_sync(lambda: start_serve(
                tmp_path / "edge", address=EDGE_IP, store=edge_store(partner.port), role="edge",
                gateway_extra=f"max-queued = {MAX_QUEUED}\nqueue-wait = {queue_wait}\n",
            ))
            partner.holder[0] = build_snapshot(partner_configuration(f"{EDGE_IP}:{serve.s2s_port}"), [PARTNER])
            async with gateway_peer(serve) as gw:
                await scenario(nursery, serve, partner, gw)
            nursery.cancel_scope.cancel()
    finally:
        if serve is not None:
            serve.stop()
    assert serve is not None
    return serve


async def test_a_burst_larger_than_the_queue_is_held_back_not_bounced(tmp_path: Path) -> None:
    count = 3 * MAX_QUEUED

    async def scenario(nursery, serve, partner, gw) -> None:  # type: ignore[no-untyped-def]
        nursery.start_soon(burst, partner, count)
        await gw.receive(lambda g: len(g.items) >= MAX_QUEUED, timeout=20, ack=False)
        with trio.move_on_after(1.5):  # the gateway stays slow: nothing more, nothing bounced
            await gw.receive(lambda g: len(g.items) > MAX_QUEUED, ack=False)
        assert len(gw.items) == MAX_QUEUED
        assert partner.got == []
        await gw.ack_all()
        await gw.receive(lambda g: len(g.items) >= count, timeout=20)
        assert ids(gw) == [f"b{n}" for n in range(1, count + 1)]  # all of it, in order, once
        await trio.sleep(0.3)
        assert partner.got == []  # no error came back
        assert await trio.to_thread.run_sync(serve.metric, "edgeproxy_bounces_total") == 0
        [limit] = [e for e in serve.events("EP6001") if e.get("limit") == "gateway-queue"][:1]
        assert limit["value"] == MAX_QUEUED

    with trio.fail_after(60):
        await run(tmp_path, 30.0, scenario)


async def test_only_a_stanza_that_waited_past_queue_wait_is_bounced_with_its_cause(tmp_path: Path) -> None:
    held = 3

    async def scenario(nursery, serve, partner, gw) -> None:  # type: ignore[no-untyped-def]
        nursery.start_soon(burst, partner, MAX_QUEUED + held)
        with trio.move_on_after(held * 0.5 + 3):  # the gateway never acks
            await gw.receive(lambda g: False, ack=False)
        assert len(gw.items) == MAX_QUEUED
        errors = [d for _, d in partner.got if d.type == "error"]
        assert len(errors) == held and all(b"service-unavailable" in d.raw for d in errors)
        assert {d.to_jid for d in errors} == {f"{BOB}/bp"}
        metric = await trio.to_thread.run_sync(
            lambda: serve.metric("edgeproxy_bounces_total", condition="service-unavailable",
                                 cause="gateway-queue-full"))
        assert metric == held
        bounced = serve.events("EP7004")
        assert len(bounced) == held
        assert {(e["cause"], e["from_domain"], e["to_domain"]) for e in bounced} == {
            ("gateway-queue-full", PARTNER, OURS)
        }

    with trio.fail_after(60):
        await run(tmp_path, 0.5, scenario)
