"""Presence through the gateway service with real SIPp user agents (SPEC §4, §7; RFC 3903,
RFC 3856, RFC 6665, RFC 8048).

The edge is a real ChannelEndpoint behind serve_loopback that records what the gateway sends;
the policy is a real snapshot: montague.example is Federated, gmail.test PublicUnverified, and
alice@contoso.test has authorized nurse@gmail.test. SIPp plays alice on 127.0.0.3.
"""

from __future__ import annotations

from pathlib import Path

import trio
from _sipp import ALICE_IP, every_user, run_sipp, sipp_command

from edgeproxy.gateway.service import GatewayService
from edgeproxy.policy.model import (
    AccessPolicy,
    Configuration,
    GatewaySettings,
    Partner,
    PartnerType,
    User,
)
from edgeproxy.policy.snapshot import PolicySnapshot, build_snapshot
from edgeproxy.tokenizer import Element
from edgeproxy.xmpp.stanza import parse_stanza
from fixtures.channel_peer import EdgePeer

NS = "jabber:server"
REFRESH = 120  # the gateway settings' subscription refresh interval in these tests


def snapshot() -> PolicySnapshot:
    config = Configuration(
        gateway=GatewaySettings(dialback_secret="s", subscription_refresh_interval=REFRESH),
        partners=(
            Partner(domain="montague.example", type=PartnerType.FEDERATED),
            Partner(domain="gmail.test", type=PartnerType.PUBLIC_UNVERIFIED),
        ),
        policies=(AccessPolicy(identity="global", xmpp=True, federation=True, public_cloud=True),),
        users=(User(sip="sip:alice@contoso.test", contacts=("nurse@gmail.test",)),),
    )
    return build_snapshot(config, ["contoso.test"])


def show_and_status(element: Element) -> tuple[str | None, str | None]:
    show, status = element.find("show", NS), element.find("status", NS)
    return (show.text if show is not None else None, status.text if status is not None else None)


async def start(nursery: trio.Nursery) -> tuple[EdgePeer, GatewayService, str]:
    edge = EdgePeer(fail_on_bounce=True)
    holder = snapshot()
    service = GatewayService(
        sip_domains=("contoso.test",), sip_host="127.0.0.1", sip_port=0, policy=lambda: holder,
        sip_users=every_user(),
    )
    sip_host, sip_port = await edge.run_gateway(nursery, service)
    return edge, service, f"{sip_host}:{sip_port}"


async def wait_for(predicate, step: float = 0.02) -> None:  # type: ignore[no-untyped-def]
    while not predicate():
        await trio.sleep(step)


async def register_alice(gw: str, tmp_path: Path) -> None:
    await run_sipp(
        sipp_command(
            "register.xml",
            ALICE_IP,
            "-key",
            "user",
            "alice",
            "-key",
            "domain",
            "contoso.test",
            "-key",
            "contact_host",
            ALICE_IP,
            "-key",
            "contact_port",
            "5999",
            "-key",
            "expires",
            "600",
            remote=gw,
        ),  # fmt: skip
        tmp_path / "reg.log",
    )


async def publish(gw: str, log: Path, basic: str, activity: str, note: str) -> str:
    return await run_sipp(
        sipp_command(
            "publish.xml",
            ALICE_IP,
            "-key",
            "user",
            "alice",
            "-key",
            "domain",
            "contoso.test",
            "-key",
            "basic",
            basic,
            "-key",
            "activity",
            activity,
            "-key",
            "note",
            note,
            remote=gw,
        ),  # fmt: skip
        log,
    )


async def test_published_presence_reaches_subscribers_with_status_only_for_federated(
    tmp_path: Path,
) -> None:
    with trio.fail_after(40):
        async with trio.open_nursery() as nursery:
            edge, service, gw = await start(nursery)
            await register_alice(gw, tmp_path)
            edge.presence("romeo@montague.example/orchard", "alice@contoso.test", "subscribe")
            edge.presence("nurse@gmail.test/home", "alice@contoso.test", "subscribe")
            edge.presence("juliet@gmail.test/balcony", "alice@contoso.test", "subscribe")
            # Federated and authorized PublicUnverified: subscribed + current presence (offline).
            await wait_for(lambda: len(edge.to("romeo@montague.example")) >= 2)
            await wait_for(lambda: len(edge.to("nurse@gmail.test")) >= 2)
            assert [e.get("type") for e in edge.to("romeo@montague.example")] == [
                "subscribed",
                "unavailable",
            ]
            assert [e.get("type") for e in edge.to("nurse@gmail.test")] == [
                "subscribed",
                "unavailable",
            ]
            log = await publish(gw, tmp_path / "pub.log", "open", "busy", "In a meeting ☕")
            assert "PUBLISHED etag=" in log and "expires=120" in log  # capped at the interval
            await wait_for(lambda: len(edge.to("romeo@montague.example")) >= 3)
            await wait_for(lambda: len(edge.to("nurse@gmail.test")) >= 3)
            romeo, nurse = edge.to("romeo@montague.example")[2], edge.to("nurse@gmail.test")[2]
            assert romeo.get("type") is None and romeo.get("from") == "alice@contoso.test"
            assert show_and_status(romeo) == ("dnd", "In a meeting ☕")  # 6500 Busy → dnd
            assert show_and_status(nurse) == ("dnd", None)  # status never to public partners
            # SPEC §7 Away (RPID away → 15500 → xa) and a probe answered with it.
            await publish(gw, tmp_path / "pub2.log", "open", "away", "back soon")
            await wait_for(lambda: len(edge.to("romeo@montague.example")) >= 4)
            assert show_and_status(edge.to("romeo@montague.example")[3]) == ("xa", "back soon")
            edge.presence("nurse@gmail.test/home", "alice@contoso.test", "probe")
            await wait_for(lambda: len(edge.to("nurse@gmail.test")) >= 5)
            assert show_and_status(edge.to("nurse@gmail.test")[4]) == ("xa", None)
            # The stranger from a PublicUnverified partner got nothing: its request is pending.
            await trio.sleep(0.2)
            assert edge.to("juliet@gmail.test") == []
            assert ("alice@contoso.test", "juliet@gmail.test") in service.presence.pending
            nursery.cancel_scope.cancel()


async def test_publish_from_an_unregistered_user_is_forbidden(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            _, service, gw = await start(nursery)
            cmd = sipp_command(
                "publish.xml", ALICE_IP,
                "-key", "user", "alice", "-key", "domain", "contoso.test",
                "-key", "basic", "open", "-key", "activity", "busy", "-key", "note", "x",
                remote=gw,
            )  # fmt: skip
            result = await trio.run_process(cmd, check=False, capture_stdout=True)
            assert result.returncode != 0  # 403 instead of the expected 200
            assert service.presence.publications == {}
            nursery.cancel_scope.cancel()


async def test_sip_subscribe_adds_the_contact_approves_pending_and_gets_notifies(
    tmp_path: Path,
) -> None:
    with trio.fail_after(40):
        async with trio.open_nursery() as nursery:
            edge, service, gw = await start(nursery)
            agent = service.presence
            await register_alice(gw, tmp_path)
            await publish(gw, tmp_path / "pub.log", "open", "unknown", "at my desk")
            edge.presence("juliet@gmail.test/balcony", "alice@contoso.test", "subscribe")
            await wait_for(lambda: bool(agent.pending))
            logs: list[str] = []

            async def alice() -> None:
                cmd = sipp_command(
                    "subscribe_uac.xml", ALICE_IP,
                    "-key", "user", "alice", "-key", "domain", "contoso.test",
                    "-key", "contact", "juliet", "-key", "cdomain", "gmail.test",
                    "-key", "expires", "3600",
                    remote=gw,
                )  # fmt: skip
                logs.append(await run_sipp(cmd, tmp_path / "sub.log"))

            nursery.start_soon(alice)
            await wait_for(lambda: bool(agent.watchers))
            start_time = trio.current_time()
            # "The user adds the contact": the pending request is approved, with presence
            # (Available, no status for a public partner), and our subscribe goes out.
            await wait_for(lambda: len(edge.to("juliet@gmail.test")) >= 3)
            juliet = edge.to("juliet@gmail.test")
            assert [e.get("type") for e in juliet] == ["subscribed", None, "subscribe"]
            assert show_and_status(juliet[1]) == (None, None)
            assert agent.pending == set()
            # The contact's presence becomes a NOTIFY with PIDF (SPEC §7: away → RPID away).
            edge.presence(
                "juliet@gmail.test/balcony", "alice@contoso.test", "",
                "<show>away</show><status>on the balcony</status>",
            )  # fmt: skip
            watcher = next(iter(agent.watchers.values()))
            await wait_for(lambda: watcher.cseq >= 2)
            # The same presence again (a contact's server re-broadcasting, or a NOTIFY that
            # waited behind another and finds the state unchanged) is no news: no NOTIFY.
            await agent.from_xmpp(parse_stanza(
                b"<presence from='juliet@gmail.test/balcony' to='alice@contoso.test'>"
                b"<show>away</show><status>on the balcony</status></presence>"
            ))  # fmt: skip
            assert watcher.cseq == 2
            # Refresh by the gateway settings' interval, on an injected clock: a probe to the
            # contact at one interval; past the granted expiry, NOTIFY terminated (timeout).
            await agent.refresh(start_time - 1)  # the baseline (the loop's first tick is later)
            before = len(edge.to("juliet@gmail.test"))
            await agent.refresh(start_time + REFRESH - 2)
            await trio.sleep(0.2)
            types = [e.get("type") for e in edge.to("juliet@gmail.test")[before:]]
            assert "probe" not in types  # not due yet
            await agent.refresh(start_time + REFRESH - 1)  # one interval after the baseline
            await wait_for(lambda: "probe" in [e.get("type") for e in edge.to("juliet@gmail.test")])
            await agent.refresh(start_time + 2 * REFRESH + 1)
            await wait_for(lambda: bool(logs))
            assert agent.watchers == {}
            nursery.cancel_scope.cancel()
    log = logs[0]
    assert "SUBSCRIBED expires=120" in log  # granted at most the refresh interval
    assert "NOTIFY1 state=pending;expires=" in log
    assert "NOTIFY2 state=active;expires=" in log
    assert "|<basic>open|" in log and ":away|" in log and "|<note>on the balcony|" in log
    assert "NOTIFY3 state=terminated;reason=timeout|" in log


async def test_sip_subscribe_to_a_domain_that_is_not_a_partner_is_refused(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            edge, service, gw = await start(nursery)
            cmd = sipp_command(
                "subscribe_uac.xml", ALICE_IP,
                "-key", "user", "alice", "-key", "domain", "contoso.test",
                "-key", "contact", "eve", "-key", "cdomain", "stranger.example",
                "-key", "expires", "3600",
                remote=gw,
            )  # fmt: skip
            result = await trio.run_process(cmd, check=False, capture_stderr=True)
            assert b"received 'SIP/2.0 404" in result.stderr  # remote-server-not-found → 404
            assert service.presence.watchers == {}
            await trio.sleep(0.1)
            assert edge.received == []  # no subscribe went out
            nursery.cancel_scope.cancel()


async def test_a_subscribe_that_does_not_prove_the_user_adds_no_contact(tmp_path: Path) -> None:
    """Issue 14 / SPEC §4: a SUBSCRIBE counts as "alice adds juliet" only when alice sent it. One
    from someone who claims to be alice with the wrong password is refused (403 after the 407
    challenge); juliet's pending request stays pending and nothing is approved."""
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            edge, service, gw = await start(nursery)
            agent = service.presence
            edge.presence("juliet@gmail.test/balcony", "alice@contoso.test", "subscribe")
            await wait_for(lambda: bool(agent.pending))
            cmd = sipp_command(
                "subscribe_uac.xml", ALICE_IP,
                "-key", "user", "alice", "-key", "domain", "contoso.test",
                "-key", "contact", "juliet", "-key", "cdomain", "gmail.test",
                "-key", "expires", "3600", "-au", "alice", "-ap", "not-alices-password",
                "-auth_uri", "juliet@gmail.test",  # SIPp adds the "sip:"
                remote=gw,
            )  # fmt: skip
            result = await trio.run_process(cmd, check=False, capture_stderr=True)
            assert result.returncode != 0
            assert b"SIP/2.0 403" in result.stderr, result.stderr.decode()[:400]
            await trio.sleep(0.2)
            assert agent.pending  # still waiting for alice
            assert agent.watchers == {}
            assert [e.get("type") for e in edge.to("juliet@gmail.test")] == []  # nothing approved
            nursery.cancel_scope.cancel()
