"""Presence with Kamailio as the gateway's next hop (issue 5; SPEC §4, §7; RFC 3856, 3903, 6665).

A real Kamailio (``fixtures.kamailio`` with its presence server: registrar, presence server,
proxy) on 127.0.0.60 serves contoso.test; everything for fabrikam.test (the XMPP side) goes to
the gateway on 127.0.0.61, which has ``next_hop`` → Kamailio. SIPp UAs (alice on 127.0.0.62, bob
on 127.0.0.63) PUBLISH and SUBSCRIBE at Kamailio, never at the gateway. The edge is a real
ChannelEndpoint that records what the gateway sends (``fixtures.channel_peer.EdgePeer``); the
policy is a real snapshot (fabrikam.test Federated, gmail.test PublicUnverified; alice authorized
nurse@gmail.test).

* XMPP contact → local user: the gateway SUBSCRIBEs to alice at Kamailio (one subscription for
  all her XMPP subscribers), turns each NOTIFY's PIDF into presence (status only to Federated),
  refreshes in the dialog, fetches for a probe, un-SUBSCRIBEs when the last subscriber goes.
* Local user → XMPP contact: bob's SUBSCRIBE reaches the gateway record-routed by Kamailio; the
  gateway's NOTIFYs (SPEC §7 availability in PIDF) follow the route set back through Kamailio.

The watcher's sans-IO core (``WatchTable``) is tested on its own with an injected clock.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

import trio
from _sipp import require_sipp, run_sipp, sipp_command

from edgeproxy.app import run_app
from edgeproxy.config import load_config
from edgeproxy.gateway.presence_watch import (
    OFFLINE,
    REFRESH_MARGIN,
    Phase,
    PresenceEvent,
    WatchTable,
    route_request,
)
from edgeproxy.gateway.service import GatewayService
from edgeproxy.gateway.sip.message import Headers, SipRequest, SipResponse, response_to
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
from edgeproxy.policy.store import Store
from edgeproxy.tokenizer import Element
from edgeproxy.xmpp.stanza import parse_stanza
from fixtures.channel_peer import EdgePeer
from fixtures.edges import build_edge, run_edge
from fixtures.kamailio import require_kamailio, running_kamailio
from fixtures.ports import free_port

KAM_IP, GW_IP, ALICE_IP, BOB_IP = "127.0.0.60", "127.0.0.61", "127.0.0.62", "127.0.0.63"
EDGE_IP, PARTNER_IP = "127.0.0.64", "127.0.0.65"  # the whole-server test's S2S listeners
NS = "jabber:server"
REFRESH = 600  # the gateway settings' subscription refresh interval in these tests


def snapshot() -> PolicySnapshot:
    config = Configuration(
        gateway=GatewaySettings(dialback_secret="s", subscription_refresh_interval=REFRESH),
        partners=(
            Partner(domain="fabrikam.test", type=PartnerType.FEDERATED),
            Partner(domain="gmail.test", type=PartnerType.PUBLIC_UNVERIFIED),
        ),
        policies=(AccessPolicy(identity="global", xmpp=True, federation=True, public_cloud=True),),
        users=(
            User(sip="sip:alice@contoso.test", contacts=("nurse@gmail.test",)),
            User(sip="sip:bob@contoso.test"),
        ),
    )
    return build_snapshot(config, ["contoso.test"])


def show_and_status(element: Element) -> tuple[str | None, str | None]:
    show, status = element.find("show", NS), element.find("status", NS)
    return (show.text if show is not None else None, status.text if status is not None else None)


async def wait_for(predicate, step: float = 0.02) -> None:  # type: ignore[no-untyped-def]
    while not predicate():
        await trio.sleep(step)


@asynccontextmanager
async def presence_kamailio(
    tmp_path: Path, gateway_port: int, presence_max_expires: int = 3600
) -> AsyncIterator[int]:
    """Kamailio with its presence server on KAM_IP, relaying fabrikam.test to the gateway."""
    async with running_kamailio(
        tmp_path, KAM_IP, gateway_uri=f"sip:{GW_IP}:{gateway_port}", gateway_domain="fabrikam.test",
        presence=True, presence_max_expires=presence_max_expires,
    ) as port:  # fmt: skip
        yield port


@asynccontextmanager
async def lab(
    tmp_path: Path, presence_max_expires: int = 3600
) -> AsyncIterator[tuple[EdgePeer, GatewayService, str]]:
    """Kamailio, the gateway (next hop → Kamailio) and a recording edge; yields the edge, the
    service and Kamailio's host:port."""
    require_sipp()
    require_kamailio()
    gateway_port = free_port(GW_IP, udp_too=True)
    async with presence_kamailio(tmp_path, gateway_port, presence_max_expires) as kamailio_port:
        kam = f"{KAM_IP}:{kamailio_port}"
        async with trio.open_nursery() as nursery:
            edge = EdgePeer(fail_on_bounce=True)
            holder = snapshot()
            service = GatewayService(
                sip_domains=("contoso.test",),
                sip_host=GW_IP,
                sip_port=gateway_port,
                next_hop=f"sip:{kam}",
                policy=lambda: holder,
            )
            await edge.run_gateway(nursery, service, GW_IP)
            yield edge, service, kam
            nursery.cancel_scope.cancel()


async def publish(kam: str, log: Path, basic: str, activity: str, note: str, etag: str = "") -> str:
    """alice PUBLISHes at Kamailio (a modification of ``etag`` when given); returns the etag."""
    keys = ["-key", "user", "alice", "-key", "domain", "contoso.test", "-key", "basic", basic]
    keys += ["-key", "activity", activity, "-key", "note", note]
    scenario = "presence_publish.xml"
    if etag:
        keys += ["-key", "etag", etag]
        scenario = "presence_republish.xml"
    text = await run_sipp(sipp_command(scenario, ALICE_IP, *keys, remote=kam), log)
    return text.split("PUBLISHED etag=", 1)[1].split("|", 1)[0]


async def test_xmpp_subscribers_get_the_presence_published_at_kamailio(tmp_path: Path) -> None:
    with trio.fail_after(60):
        async with lab(tmp_path) as (edge, service, kam):
            watch = service.presence.watch
            assert watch is not None and watch.table is not None
            table = watch.table
            etag = await publish(kam, tmp_path / "pub1.log", "open", "busy", "In a meeting ☕")
            edge.presence("romeo@fabrikam.test/orchard", "alice@contoso.test", "subscribe")
            edge.presence("nurse@gmail.test/home", "alice@contoso.test", "subscribe")
            # Approved, then the presence Kamailio NOTIFYs (SPEC §7: RPID busy → 6500 → dnd);
            # the status note only to the Federated contact (SPEC §4).
            await wait_for(lambda: len(edge.to("romeo@fabrikam.test")) >= 2)
            await wait_for(lambda: len(edge.to("nurse@gmail.test")) >= 2)
            romeo, nurse = edge.to("romeo@fabrikam.test"), edge.to("nurse@gmail.test")
            assert [e.get("type") for e in romeo[:2]] == ["subscribed", None]
            assert [e.get("type") for e in nurse[:2]] == ["subscribed", None]
            assert romeo[1].get("from") == "alice@contoso.test"
            assert show_and_status(romeo[1]) == ("dnd", "In a meeting ☕")
            assert show_and_status(nurse[1]) == ("dnd", None)
            # One SIP subscription for both subscribers, established at Kamailio.
            assert list(table.subs) == ["alice@contoso.test"]
            sub = table.subs["alice@contoso.test"]
            await wait_for(lambda: sub.phase is Phase.ACTIVE)
            assert sub.remote_target is not None and f"{KAM_IP}:" in sub.remote_target
            # alice changes her publication: Kamailio NOTIFYs, both subscribers hear of it.
            await publish(kam, tmp_path / "pub2.log", "open", "away", "back soon", etag)
            await wait_for(lambda: len(edge.to("romeo@fabrikam.test")) >= 3)
            await wait_for(lambda: len(edge.to("nurse@gmail.test")) >= 3)
            assert show_and_status(edge.to("romeo@fabrikam.test")[2]) == ("xa", "back soon")
            assert show_and_status(edge.to("nurse@gmail.test")[2]) == ("xa", None)
            # A refresh inside the dialog (as the timer would send it): Kamailio accepts it.
            cseq = sub.cseq
            events, refresh = table.due(trio.current_time() + REFRESH)
            assert events == [] and len(refresh) == 1
            assert "tag=" in (refresh[0].request.headers.get("To") or "")
            watch._send(refresh)
            await wait_for(lambda: sub.cseq > cseq and sub.failures == 0 and sub.due is not None)
            await trio.sleep(0.3)
            assert table.subs["alice@contoso.test"] is sub and sub.phase is Phase.ACTIVE
            # A probe from a subscriber is answered from the subscription's state.
            edge.presence("nurse@gmail.test/home", "alice@contoso.test", "probe")
            await wait_for(lambda: len(edge.to("nurse@gmail.test")) >= 4)
            assert show_and_status(edge.to("nurse@gmail.test")[3]) == ("xa", None)
            # The last subscriber leaves: un-SUBSCRIBE, Kamailio's final NOTIFY ends the dialog.
            edge.presence("romeo@fabrikam.test/orchard", "alice@contoso.test", "unsubscribe")
            await trio.sleep(0.2)
            assert table.subs  # nurse still subscribes
            edge.presence("nurse@gmail.test/home", "alice@contoso.test", "unsubscribe")
            await wait_for(lambda: not table.subs and not table.dialogs)
            assert sub.phase is Phase.ENDING and sub.unsubscribed
            # A probe for a user nobody subscribes to: answered through a fetch (Expires 0).
            edge.presence("tybalt@fabrikam.test/street", "alice@contoso.test", "probe")
            await wait_for(lambda: bool(edge.to("tybalt@fabrikam.test")))
            [tybalt] = edge.to("tybalt@fabrikam.test")
            assert tybalt.get("type") is None and show_and_status(tybalt) == ("xa", "back soon")
            await wait_for(lambda: not table.dialogs)
            assert not table.subs and service.presence.remote == {}
    log = (tmp_path / "kamailio.log").read_text(errors="replace")
    assert "SUBSCRIBE sip:presence-gateway@127.0.0.61 -> sip:alice@contoso.test" in log
    gateway = "SUBSCRIBE sip:presence-gateway@127.0.0.61 -> "
    assert [line.split(gateway, 1)[1] for line in log.splitlines() if gateway in line] == [
        "sip:alice@contoso.test presence server (Expires 600)",  # the subscription
        f"sip:{kam} presence server (Expires 600)",  # the refresh, in the dialog
        f"sip:{kam} presence server (Expires 0)",  # un-SUBSCRIBE
        "sip:alice@contoso.test presence server (Expires 0)",  # the fetch
    ]


async def test_the_watch_timer_refreshes_a_subscription_kamailio_shortened(tmp_path: Path) -> None:
    """Kamailio grants 4 s (its max_expires) of the 600 asked: the driver's own timer refreshes
    in the dialog at half of that, and the subscription stays up."""
    with trio.fail_after(60):
        async with lab(tmp_path, presence_max_expires=4) as (edge, service, kam):
            watch = service.presence.watch
            assert watch is not None and watch.table is not None
            await publish(kam, tmp_path / "pub.log", "open", "busy", "on a call")
            edge.presence("romeo@fabrikam.test/orchard", "alice@contoso.test", "subscribe")
            await wait_for(lambda: len(edge.to("romeo@fabrikam.test")) >= 2)
            sub = watch.table.subs["alice@contoso.test"]
            await wait_for(lambda: sub.expires_at is not None)
            assert sub.expires_at is not None and sub.due is not None
            assert sub.expires_at - sub.due == 2  # refresh at half of the 4 s granted
            await wait_for(lambda: sub.cseq >= 3)  # two refreshes sent by the timer
            await wait_for(lambda: sub.due is not None)  # ... and the second one answered
            assert watch.table.subs["alice@contoso.test"] is sub
            assert sub.phase is Phase.ACTIVE and sub.failures == 0
            # romeo got subscribed + the published presence; the refreshes repeat it, so
            # nothing new is sent — except "unavailable" once alice's publication, which
            # Kamailio's max_expires caps at 4 s too, has expired (a NOTIFY without body).
            romeo = edge.to("romeo@fabrikam.test")
            assert [e.get("type") for e in romeo[:2]] == ["subscribed", None]
            assert show_and_status(romeo[1]) == ("dnd", "on a call")
            assert [e.get("type") for e in romeo[2:]] in ([], ["unavailable"])
    log = (tmp_path / "kamailio.log").read_text(errors="replace")
    refreshes = f"SUBSCRIBE sip:presence-gateway@127.0.0.61 -> sip:{kam} presence server"
    assert log.count(refreshes) >= 2


async def test_sip_watcher_via_kamailio_gets_notifies_through_the_route_set(
    tmp_path: Path,
) -> None:
    logs: list[str] = []
    with trio.fail_after(60):
        async with lab(tmp_path) as (edge, service, kam):
            agent = service.presence

            async def bob() -> None:
                cmd = sipp_command(
                    "subscribe_via_proxy_uac.xml", BOB_IP,
                    "-key", "user", "bob", "-key", "domain", "contoso.test",
                    "-key", "contact", "romeo", "-key", "cdomain", "fabrikam.test",
                    "-key", "expires", "3600",
                    remote=kam,
                )  # fmt: skip
                logs.append(await run_sipp(cmd, tmp_path / "bob.log"))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(bob)
                # bob's SUBSCRIBE, relayed by Kamailio, became "bob adds romeo".
                await wait_for(lambda: bool(edge.to("romeo@fabrikam.test")))
                [subscribe] = edge.to("romeo@fabrikam.test")
                assert (subscribe.get("from"), subscribe.get("type")) == (
                    "bob@contoso.test",
                    "subscribe",
                )
                watcher = agent.watchers[("bob@contoso.test", "romeo@fabrikam.test")]
                assert len(watcher.route_set) == 1 and f"{KAM_IP}:" in watcher.route_set[0]
                await wait_for(lambda: watcher.cseq >= 1)
                # romeo's presence: NOTIFY with PIDF (SPEC §7: dnd → 6500 Busy → RPID busy).
                edge.presence(
                    "romeo@fabrikam.test/orchard", "bob@contoso.test", "",
                    "<show>dnd</show><status>in the orchard</status>",
                )  # fmt: skip
                await wait_for(lambda: watcher.cseq >= 2)
                # romeo refuses: the subscription ends (NOTIFY terminated;reason=rejected).
                edge.presence("romeo@fabrikam.test/orchard", "bob@contoso.test", "unsubscribed")
    [log] = logs
    kam_via = f"SIP/2.0/UDP {KAM_IP}:{kam.rsplit(':', 1)[1]};branch="
    assert "SUBSCRIBED expires=600|" in log  # the refresh interval
    rr = log.split("|rr=", 1)[1].split("|", 1)[0]
    assert rr.startswith(f"<sip:{KAM_IP}:") and ";lr" in rr  # Kamailio's Record-Route kept
    for n in (1, 2, 3):  # each NOTIFY came back through Kamailio (loose routing)
        line = log.split(f"NOTIFY{n} state=", 1)[1].split("\n", 1)[0]
        assert f"|via={kam_via}" in line, line
    assert "NOTIFY1 state=pending;expires=" in log
    assert "NOTIFY2 state=active;expires=" in log
    assert "|<basic>open|" in log and ":busy|" in log and "|<note>in the orchard|" in log
    assert "NOTIFY3 state=terminated;reason=rejected|" in log


async def test_sip_watcher_ends_its_subscription_through_kamailio(tmp_path: Path) -> None:
    """bob's un-SUBSCRIBE goes through the route set to the gateway's Contact (Kamailio relays
    it by loose_route): the gateway answers, NOTIFYs "terminated" and unsubscribes on XMPP."""
    logs: list[str] = []
    with trio.fail_after(60):
        async with lab(tmp_path) as (edge, service, kam):
            agent = service.presence

            async def bob() -> None:
                cmd = sipp_command(
                    "subscribe_unsubscribe_via_proxy_uac.xml", BOB_IP,
                    "-key", "user", "bob", "-key", "domain", "contoso.test",
                    "-key", "contact", "romeo", "-key", "cdomain", "fabrikam.test",
                    "-key", "expires", "3600",
                    remote=kam,
                )  # fmt: skip
                logs.append(await run_sipp(cmd, tmp_path / "bob.log"))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(bob)
                await wait_for(lambda: bool(edge.to("romeo@fabrikam.test")))
                # SPEC §7: away → 15500 Away → RPID away.
                edge.presence(
                    "romeo@fabrikam.test/orchard", "bob@contoso.test", "", "<show>away</show>"
                )
                await wait_for(lambda: bool(logs))
            await wait_for(lambda: len(edge.to("romeo@fabrikam.test")) >= 2)
            assert agent.watchers == {}
    [log] = logs
    kam_via = f"SIP/2.0/UDP {KAM_IP}:{kam.rsplit(':', 1)[1]};branch="
    assert "NOTIFY2 state=active;expires=" in log and "|<basic>open|" in log and ":away|" in log
    assert "UNSUBSCRIBED expires=0|" in log
    final = log.split("NOTIFY3 state=", 1)[1].split("\n", 1)[0]
    assert final.startswith("terminated;reason=timeout|") and f"|via={kam_via}" in final
    types = [(e.get("from"), e.get("type")) for e in edge.to("romeo@fabrikam.test")]
    assert types == [("bob@contoso.test", "subscribe"), ("bob@contoso.test", "unsubscribe")]
    kamailio = (tmp_path / "kamailio.log").read_text(errors="replace")
    relayed = [line for line in kamailio.splitlines() if "SUBSCRIBE in dialog" in line]
    assert len(relayed) == 1 and f"-> sip:{GW_IP}:" in relayed[0]  # by loose_route


# -- the whole server: run_app with next-hop, a real S2S partner ------------------------------


async def start_partner(nursery: trio.Nursery) -> tuple[EdgeServer, MemoryDelivery, list, int]:  # type: ignore[type-arg]
    """fabrikam.test: a real edge (in-process, real sockets on 127.0.0.65) whose user romeo's
    stanzas we send through its router; what it receives lands in a MemoryDelivery."""
    holder = [
        build_snapshot(
            Configuration(gateway=GatewaySettings(dialback_secret="f")), ["fabrikam.test"]
        )
    ]
    delivery = MemoryDelivery()
    server = build_edge(lambda: holder[0], delivery, ConnectorSettings(attempt_delay=0.05, timeout=5))
    return server, delivery, holder, await run_edge(nursery, server, PARTNER_IP)


def s2s_partner(domain: str, host: str, port: int) -> Partner:
    return Partner(
        domain=domain, type=PartnerType.FEDERATED, proxy_fqdn=f"{host}:{port}",
        tls=Negotiation.NOT_SUPPORTED, sasl=Negotiation.NOT_SUPPORTED, dialback=True,
    )  # fmt: skip


async def test_the_whole_server_with_kamailio_as_next_hop_carries_presence_to_a_partner(
    tmp_path: Path,
) -> None:
    """``edgeproxy serve`` (run_app, role both) with ``[gateway] next-hop`` = Kamailio: a
    fabrikam.test user subscribes over S2S and gets the presence alice PUBLISHed at Kamailio."""
    require_sipp()
    gateway_port = free_port(GW_IP, udp_too=True)
    received: list[Element] = []
    with trio.fail_after(60):
        async with presence_kamailio(tmp_path, gateway_port) as kamailio_port:
            kam = f"{KAM_IP}:{kamailio_port}"
            async with trio.open_nursery() as nursery:
                server, delivery, holder, partner_port = await start_partner(nursery)
                with Store.open(tmp_path / "state") as store, store.write() as tx:
                    tx.replace_all(
                        Configuration(
                            gateway=GatewaySettings(dialback_secret="c"),
                            partners=(s2s_partner("fabrikam.test", PARTNER_IP, partner_port),),
                            policies=(AccessPolicy(identity="global", xmpp=True, federation=True),),
                            users=(User(sip="sip:alice@contoso.test"),),
                        )
                    )
                config_path = tmp_path / "edgeproxy.toml"
                config_path.write_text(
                    '[edge]\ndomains = ["contoso.test"]\n'
                    f'listen = ["{EDGE_IP}:0"]\nstate-dir = "state"\n'
                    f'internal-listen = "{GW_IP}:0"\n'
                    '[tls]\ncertificate = "no/edge.pem"\nkey = "no/edge.key"\n'
                    f'[admin]\nlisten = "{EDGE_IP}:0"\n'
                    f'[gateway]\nsip-listen = ["{GW_IP}:{gateway_port}"]\n'
                    f'next-hop = "sip:{kam}"\n'
                )
                app = await nursery.start(
                    partial(run_app, load_config(config_path), role="both", signals=False)
                )
                assert app is not None
                edge_port = int(app.status().listeners[0].address.rpartition(":")[2])
                holder[0] = build_snapshot(
                    Configuration(
                        gateway=GatewaySettings(dialback_secret="f"),
                        partners=(s2s_partner("contoso.test", EDGE_IP, edge_port),),
                        policies=(AccessPolicy(identity="global", xmpp=True, federation=True),),
                        users=(User(sip="sip:romeo@fabrikam.test"),),
                    ),
                    ["fabrikam.test"],
                )
                await publish(kam, tmp_path / "pub.log", "open", "away", "gone fishing")

                def poll() -> list[Element]:
                    while True:
                        try:
                            item = delivery._receive.receive_nowait()  # noqa: SLF001 - test peek
                        except trio.WouldBlock:
                            return received
                        received.append(parse_stanza(item.raw))

                subscribe = Element(
                    "presence", NS, {"from": "romeo@fabrikam.test", "to": "alice@contoso.test",
                                     "type": "subscribe"},
                )  # fmt: skip
                await server.router.send_from_local(subscribe)
                await wait_for(lambda: len([e for e in poll() if e.name == "presence"]) >= 2)
                nursery.cancel_scope.cancel()
    subscribed, current = [e for e in received if e.name == "presence"][:2]
    assert (subscribed.get("from"), subscribed.get("type")) == ("alice@contoso.test", "subscribed")
    assert current.get("type") is None and current.get("from") == "alice@contoso.test"
    # RPID away → 15500 → xa (SPEC §7); the note is kept for a Federated partner (SPEC §4).
    assert show_and_status(current) == ("xa", "gone fishing")
    log = (tmp_path / "kamailio.log").read_text(errors="replace")
    assert "SUBSCRIBE sip:presence-gateway@127.0.0.61 -> sip:alice@contoso.test" in log


# -- the sans-IO core --------------------------------------------------------------------------

WATCHER = "sip:presence-gateway@127.0.0.61"
CONTACT = "sip:presence-gateway@127.0.0.61:5999"
KAMAILIO_CONTACT = "sip:127.0.0.60:5070"
PIDF = (
    b"<?xml version='1.0'?><presence xmlns='urn:ietf:params:xml:ns:pidf' "
    b"entity='sip:alice@contoso.test'><tuple id='t'><status><basic>open</basic></status>"
    b"</tuple><note>here</note></presence>"
)


def ok(request: SipRequest, expires: int, *, record_route: tuple[str, ...] = ()) -> SipResponse:
    response = response_to(request, 200, to_tag="kam")
    response.headers.add("Expires", str(expires))
    response.headers.add("Contact", f"<{KAMAILIO_CONTACT}>")
    for value in record_route:
        response.headers.add("Record-Route", value)
    return response


def notify(
    table: WatchTable, local: str, state: str, body: bytes = PIDF, tag: str = "kam"
) -> SipRequest:
    sub = table.dialogs[next(c for c, s in table.dialogs.items() if s.local == local)]
    headers = Headers()
    headers.add("From", f"<sip:{local}>;tag={tag}")
    headers.add("To", f"<{WATCHER}>;tag={sub.local_tag}")
    headers.add("Call-ID", sub.call_id)
    headers.add("CSeq", "7 NOTIFY")
    headers.add("Event", "presence")
    headers.add("Subscription-State", state)
    headers.add("Contact", f"<{KAMAILIO_CONTACT}>")
    if body:
        headers.add("Content-Type", "application/pidf+xml")
    return SipRequest("NOTIFY", CONTACT, headers, body)


def test_watch_table_subscribes_once_refreshes_and_unsubscribes() -> None:
    table = WatchTable(WATCHER, CONTACT, lambda: 600)
    [out] = table.want("alice@contoso.test", 0.0)
    assert table.want("alice@contoso.test", 0.0) == []  # shared by every subscriber
    request = out.request
    assert (request.method, request.uri, out.hop) == ("SUBSCRIBE", "sip:alice@contoso.test", None)
    assert request.headers.get("Expires") == "600" and request.headers.get("Event") == "presence"
    assert request.headers.get("Accept") == "application/pidf+xml"
    assert request.headers.get("Contact") == f"<{CONTACT}>"
    rr = ("<sip:127.0.0.59;lr>", "<sip:127.0.0.58;lr>")
    assert table.on_response(out, ok(request, 300, record_route=rr), 10.0) == ([], [])
    sub = table.subs["alice@contoso.test"]
    assert sub.phase is Phase.ACTIVE and sub.route_set == tuple(reversed(rr))
    assert sub.due == 10.0 + 300 - REFRESH_MARGIN
    result = table.on_notify(notify(table, "alice@contoso.test", "active;expires=300"), 11.0)
    assert result.status == 200
    [event] = result.events
    assert event.local == "alice@contoso.test" and event.info.available
    assert event.info.note == "here" and not event.fetch
    assert table.due(200.0) == ([], [])
    _, [refresh] = table.due(250.0)
    # In the dialog: to Kamailio's Contact, through the route set (loose routing).
    assert refresh.request.uri == KAMAILIO_CONTACT
    assert refresh.request.headers.get_all("Route") == list(reversed(rr))
    assert str(refresh.hop) == "sip:127.0.0.58;lr"
    assert refresh.request.headers.get("To") == "<sip:alice@contoso.test>;tag=kam"
    assert refresh.request.cseq == (2, "SUBSCRIBE")
    table.on_response(refresh, ok(refresh.request, 600), 251.0)
    assert sub.due == 251.0 + 600 - REFRESH_MARGIN and sub.failures == 0
    [unsubscribe] = table.release("alice@contoso.test", 300.0)
    assert unsubscribe.request.headers.get("Expires") == "0"
    assert table.subs == {} and sub.phase is Phase.ENDING
    final = table.on_notify(notify(table, "alice@contoso.test", "terminated;reason=timeout"), 301.0)
    assert final.status == 200 and final.events == [] and table.dialogs == {}
    assert table.on_notify(notify_for_gone(sub), 302.0).status == 481


def notify_for_gone(sub) -> SipRequest:  # type: ignore[no-untyped-def]
    headers = Headers()
    headers.add("From", "<sip:alice@contoso.test>;tag=kam")
    headers.add("To", f"<{WATCHER}>;tag={sub.local_tag}")
    headers.add("Call-ID", sub.call_id)
    headers.add("Subscription-State", "active")
    return SipRequest("NOTIFY", CONTACT, headers)


def test_watch_table_terminated_notifies_and_failures() -> None:
    table = WatchTable(WATCHER, CONTACT, lambda: 600)
    local = "alice@contoso.test"
    [out] = table.want(local, 0.0)
    # A NOTIFY before the 2xx makes the dialog (RFC 6665 §4.1.2.4); no body while active:
    # nothing published (offline).
    result = table.on_notify(notify(table, local, "active;expires=600", body=b""), 1.0)
    assert result.events == [PresenceEvent(local, OFFLINE)]
    sub = table.subs[local]
    assert sub.phase is Phase.ACTIVE and sub.remote_tag == "kam"
    table.on_response(out, ok(out.request, 600), 1.1)
    # deactivated: resubscribe at once (a new dialog).
    table.on_notify(notify(table, local, "terminated;reason=deactivated", body=b""), 5.0)
    assert sub.phase is Phase.WAITING and sub.due == 5.0
    _, [again] = table.due(5.0)
    fresh = table.subs[local]
    assert fresh is not sub and again.request.call_id != sub.call_id and again.hop is None
    assert sub.call_id not in table.dialogs
    # The retry fails (503 with Retry-After): subscribers learn "offline", retry then.
    busy = response_to(again.request, 503)
    busy.headers.add("Retry-After", "42")
    events, more = table.on_response(again, busy, 6.0)
    assert events == [PresenceEvent(local, OFFLINE)] and more == []
    assert fresh.phase is Phase.WAITING and fresh.due == 48.0
    _, [third] = table.due(48.0)
    third_sub = table.subs[local]
    table.on_response(third, ok(third.request, 600), 49.0)
    # probation: after its retry-after.
    table.on_notify(notify(table, local, "terminated;reason=probation;retry-after=90"), 50.0)
    assert third_sub.phase is Phase.WAITING and third_sub.due == 140.0
    _, [fourth] = table.due(140.0)
    table.on_response(fourth, ok(fourth.request, 600), 141.0)
    # rejected: dropped for good (offline); a new subscriber tries again.
    rejected = table.on_notify(notify(table, local, "terminated;reason=rejected", body=b""), 150.0)
    assert rejected.events == [PresenceEvent(local, OFFLINE)]
    assert table.subs[local].phase is Phase.DROPPED and table.next_due() is None
    assert len(table.want(local, 151.0)) == 1


def test_watch_table_release_while_subscribing_and_fetch() -> None:
    table = WatchTable(WATCHER, CONTACT, lambda: 600)
    local = "alice@contoso.test"
    [out] = table.want(local, 0.0)
    assert table.release(local, 0.5) == []  # no dialog yet
    events, [unsubscribe] = table.on_response(out, ok(out.request, 600), 1.0)
    assert events == [] and unsubscribe.request.headers.get("Expires") == "0"
    assert unsubscribe.request.uri == KAMAILIO_CONTACT
    table.on_response(unsubscribe, ok(unsubscribe.request, 0), 1.5)
    assert table.dialogs and table.subs == {}
    table.due(1.5 + 40)  # no final NOTIFY came: forgotten after FINAL_NOTIFY_WAIT
    assert table.dialogs == {}
    # Fetch (probe without subscription): SUBSCRIBE Expires 0, its NOTIFY answers.
    [fetch] = table.fetch(local, 2.0)
    assert table.fetch(local, 2.0) == []  # one at a time per user
    assert fetch.request.headers.get("Expires") == "0" and fetch.sub.fetch
    table.on_response(fetch, ok(fetch.request, 0), 2.1)
    result = table.on_notify(notify(table, local, "terminated;reason=timeout"), 2.2)
    [event] = result.events
    assert event.fetch and event.info.available and table.dialogs == {}
    # A fetch whose NOTIFY carries no document: offline.
    [fetch] = table.fetch(local, 3.0)
    result = table.on_notify(notify(table, local, "terminated;reason=timeout", body=b""), 3.1)
    assert result.events == [PresenceEvent(local, OFFLINE, True)]


def test_route_request_loose_and_strict() -> None:
    target = "sip:bob@127.0.0.63:5062"
    assert route_request(target, ())[0:2] == (target, [])
    uri, routes, hop = route_request(target, ("<sip:127.0.0.60:5070;lr;ftag=x>",))
    assert (uri, routes, (hop.host, hop.port)) == (
        target,
        ["<sip:127.0.0.60:5070;lr;ftag=x>"],
        ("127.0.0.60", 5070),
    )
    uri, routes, hop = route_request(target, ("<sip:127.0.0.60:5070>", "<sip:127.0.0.59;lr>"))
    assert uri == "sip:127.0.0.60:5070" and routes == ["<sip:127.0.0.59;lr>", f"<{target}>"]
