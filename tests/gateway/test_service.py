"""The gateway service end to end: edge endpoint ⇄ loopback channel ⇄ gateway ⇄ real SIPp UAs.

The edge side is a real ChannelEndpoint behind serve_loopback (what the edge process runs); it
records the stanzas the gateway sends it (``fixtures.channel_peer.EdgePeer``). SIP users are SIPp instances on 127.0.0.2/.3
registered at the gateway's built-in registrar.
"""

from __future__ import annotations

from pathlib import Path

import trio
from _sipp import (
    ALICE_IP,
    BOB_IP,
    bob_uas_registered,
    every_user,
    require_sipp,
    run_sipp,
    sipp_command,
)

from edgeproxy.gateway.service import GatewayService
from edgeproxy.loopback.frames import Item, Routed, StanzaKind
from edgeproxy.tokenizer import Element
from edgeproxy.xmpp.namespaces import NS_STANZAS
from edgeproxy.xmpp.stanza import parse_stanza
from fixtures.channel_peer import EdgePeer
from fixtures.ports import free_port
from fixtures.sipauth import authorization

NS = "jabber:server"


async def start(
    nursery: trio.Nursery, edge: EdgePeer | None = None, **options: float
) -> tuple[EdgePeer, GatewayService, str]:
    edge = edge if edge is not None else EdgePeer()
    service = GatewayService(
        sip_domains=("contoso.test",), sip_host="127.0.0.1", sip_port=0, **{"sip_users": every_user(), **options}  # type: ignore[arg-type]
    )
    sip_host, sip_port = await edge.run_gateway(nursery, service)
    return edge, service, f"{sip_host}:{sip_port}"


def error_condition(element: Element) -> str | None:
    error = element.find("error", NS)
    if error is None:
        return None
    for child in error.elements():
        if child.namespace == NS_STANZAS and child.name != "text":
            return child.name
    return None


async def wait_for(predicate, step: float = 0.02) -> None:  # type: ignore[no-untyped-def]
    while not predicate():
        await trio.sleep(step)


async def test_xmpp_message_reaches_a_registered_sip_ua_with_text_intact(tmp_path: Path) -> None:
    require_sipp()
    with trio.fail_after(40):
        async with trio.open_nursery() as nursery:
            edge, _, gw = await start(nursery)
            bob_port, got = await bob_uas_registered(nursery, gw, tmp_path)
            edge.send_message("bob@contoso.test", "Grüße, Bob ☃ &amp; &lt;3")
            await wait_for(lambda: bool(got))
            await trio.sleep(0.3)  # a failure reply would arrive now
            nursery.cancel_scope.cancel()
    log = got[0]
    assert f"GOT MESSAGE sip:bob@{BOB_IP}:{bob_port}|" in log
    assert "|from=sip:romeo@montague.example|to=sip:bob@contoso.test|" in log
    assert "|ctype=text/plain;charset=UTF-8|" in log
    assert "|body=Grüße, Bob ☃ & <3|" in log
    assert edge.received == []  # 200 absorbed: no error back


async def test_sip_message_reaches_the_edge_as_a_chat_stanza(tmp_path: Path) -> None:
    require_sipp()
    with trio.fail_after(40):
        async with trio.open_nursery() as nursery:
            edge, _, gw = await start(nursery)
            text = "こんにちは Juliet ☃"
            log = await run_sipp(
                sipp_command(
                    "message_uac.xml",
                    ALICE_IP,
                    "-s",
                    "juliet",
                    "-key",
                    "from_user",
                    "alice",
                    "-key",
                    "from_domain",
                    "contoso.test",
                    "-key",
                    "domain",
                    "montague.example",
                    "-key",
                    "text",
                    text,
                    remote=gw,
                ),  # fmt: skip
                tmp_path / "alice.log",
            )
            nursery.cancel_scope.cancel()
    assert "STATUS 200" in log  # answered once the edge acked the stanza
    [item] = edge.received
    assert (item.kind, item.from_, item.to, item.type) == (
        StanzaKind.MESSAGE,
        "alice@contoso.test",
        "juliet@montague.example",
        "chat",
    )
    element = parse_stanza(item.raw)
    assert element.find("body", NS).text.rstrip("\r\n") == text  # type: ignore[union-attr]


async def test_xmpp_message_to_an_unregistered_user_bounces_recipient_unavailable() -> None:
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            edge, _, _ = await start(nursery)
            edge.send_message("carol@contoso.test", "anyone?", id="c1")
            await wait_for(lambda: bool(edge.received))
            nursery.cancel_scope.cancel()
    [item] = edge.received
    assert (item.from_, item.to, item.type, item.id) == (
        "carol@contoso.test",
        "romeo@montague.example/orchard",
        "error",
        "c1",
    )
    assert error_condition(parse_stanza(item.raw)) == "recipient-unavailable"


async def test_oversized_xmpp_message_is_refused_with_policy_violation(tmp_path: Path) -> None:
    require_sipp()
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            edge, _, gw = await start(nursery)
            await run_sipp(
                sipp_command(
                    "register.xml",
                    ALICE_IP,
                    "-key",
                    "user",
                    "bob",
                    "-key",
                    "domain",
                    "contoso.test",
                    "-key",
                    "contact_host",
                    BOB_IP,
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
            edge.send_message("bob@contoso.test", "x" * 2000, id="big")
            await wait_for(lambda: bool(edge.received))
            nursery.cancel_scope.cancel()
    [item] = edge.received
    assert item.id == "big"
    assert error_condition(parse_stanza(item.raw)) == "policy-violation"


async def test_sip_failure_response_becomes_an_xmpp_error(tmp_path: Path) -> None:
    """bob is registered at a TCP contact where nothing listens: 503 → service-unavailable."""
    require_sipp()
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            edge, service, gw = await start(nursery)
            await run_sipp(
                sipp_command(
                    "register.xml",
                    ALICE_IP,
                    "-key",
                    "user",
                    "bob",
                    "-key",
                    "domain",
                    "contoso.test",
                    "-key",
                    "contact_host",
                    BOB_IP,
                    "-key",
                    "contact_port",
                    f"{free_port(BOB_IP, udp_too=True)};transport=tcp",
                    "-key",
                    "expires",
                    "600",
                    remote=gw,
                ),  # fmt: skip
                tmp_path / "reg.log",
            )
            edge.send_message("bob@contoso.test", "hello?", id="x1")
            await wait_for(lambda: bool(edge.received))
            nursery.cancel_scope.cancel()
    [item] = edge.received
    assert error_condition(parse_stanza(item.raw)) == "service-unavailable"


async def test_messages_from_one_sender_reach_the_sip_ua_in_the_order_sent(tmp_path: Path) -> None:
    """RFC 6120 §10.1: stanzas are processed in order; a burst from one sender to one recipient
    arrives at the SIP UA in the order the edge sent it (trio starts tasks in no fixed order)."""
    count = 40
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            edge, _, gw = await start(nursery)
            _, got = await bob_uas_registered(nursery, gw, tmp_path, count)
            for n in range(count):
                edge.send_message("bob@contoso.test", f"line {n}", id=f"m{n}")
            await wait_for(lambda: bool(got))
            nursery.cancel_scope.cancel()
    bodies = [line.split("|body=")[1].split("|")[0] for line in got[0].splitlines() if "|body=" in line]
    assert bodies == [f"line {n}" for n in range(count)]
    assert edge.received == []


def _sip_message(n: int, host: str, port: int, challenge: str | None = None) -> bytes:
    """MESSAGE ``line n``; with ``challenge`` (the gateway's 407, issue 14) answered with
    nonce count n + 1 — the counts of one nonce must increase, in the order they are read."""
    body = f"line {n}".encode()
    auth = ""
    if challenge is not None:
        value = authorization(challenge, method="MESSAGE", uri="sip:juliet@montague.example",
                              username="alice", nc=n + 1)
        auth = f"Proxy-Authorization: {value}\r\n"
    return (
        f"MESSAGE sip:juliet@montague.example SIP/2.0\r\n"
        f"Via: SIP/2.0/TCP {host}:{port};branch=z9hG4bKorder{n}{'a' if challenge else ''}\r\n"
        f"{auth}"
        f"From: <sip:alice@contoso.test>;tag=order{n}\r\n"
        f"To: <sip:juliet@montague.example>\r\n"
        f"Call-ID: order-{n}@{host}\r\n"
        f"CSeq: 1 MESSAGE\r\n"
        f"Max-Forwards: 70\r\n"
        f"Content-Type: text/plain;charset=UTF-8\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


async def test_sip_messages_read_together_reach_the_edge_in_the_order_sent() -> None:
    """Several MESSAGEs from one sender arriving in one TCP read (a busy connection) are queued
    for the XMPP side in the order they were written, not the order their tasks happen to run."""
    count = 40
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            edge, _, gw = await start(nursery)
            host, port = gw.rsplit(":", 1)
            stream = await trio.open_tcp_stream(host, int(port))
            local = stream.socket.getsockname()
            # one challenge (issue 14), then every MESSAGE answers it, all in one write
            await stream.send_all(_sip_message(0, local[0], local[1]))
            first = b""
            while b"\r\n\r\n" not in first:
                first += await stream.receive_some(65536)
            assert first.startswith(b"SIP/2.0 407 "), first
            challenge = next(line.split(b":", 1)[1].strip().decode() for line in first.split(b"\r\n")
                             if line.lower().startswith(b"proxy-authenticate:"))
            await stream.send_all(
                b"".join(_sip_message(n, local[0], local[1], challenge) for n in range(count)))
            received = b""
            while received.count(b"SIP/2.0 200") < count:
                received += await stream.receive_some(65536)
            await stream.aclose()
            nursery.cancel_scope.cancel()
    bodies = [parse_stanza(item.raw).find("body", NS).text for item in edge.received]  # type: ignore[union-attr]
    assert bodies == [f"line {n}" for n in range(count)]


class StuckEdge(EdgePeer):
    """An edge that takes stanzas from the channel but never finishes with them (no ack)."""

    async def on_items(self, items: list[Item]) -> None:
        self.received.extend(i for i in items if isinstance(i, Routed))
        await trio.sleep_forever()


async def test_a_sip_message_the_edge_does_not_take_in_time_is_answered_202_accepted(
    tmp_path: Path,
) -> None:
    """RFC 3428 §7: the stanza is queued for the XMPP side but the edge has not acked it
    within the answer wait: the SIP sender gets 202 Accepted (delivery pending), not a timeout."""
    with trio.fail_after(40):
        async with trio.open_nursery() as nursery:
            edge, _, gw = await start(nursery, StuckEdge(), answer_wait=0.5)
            log = await run_sipp(
                sipp_command(
                    "message_uac.xml", ALICE_IP, "-s", "juliet",
                    "-key", "from_user", "alice", "-key", "from_domain", "contoso.test",
                    "-key", "domain", "montague.example", "-key", "text", "still there?",
                    remote=gw,
                ),  # fmt: skip
                tmp_path / "alice.log",
            )
            nursery.cancel_scope.cancel()
    assert "STATUS 202" in log
    assert [item.to for item in edge.received] == ["juliet@montague.example"]


async def _send_authenticated_messages(gw: str, count: int) -> tuple[trio.SocketStream, bytes]:
    """Open a TCP connection to the gateway, get the 407 challenge, then write ``count``
    authenticated MESSAGEs in one write; the stream and what was read so far."""
    host, port = gw.rsplit(":", 1)
    stream = await trio.open_tcp_stream(host, int(port))
    local = stream.socket.getsockname()
    await stream.send_all(_sip_message(0, local[0], local[1]))
    first = b""
    while b"\r\n\r\n" not in first:
        first += await stream.receive_some(65536)
    challenge = next(line.split(b":", 1)[1].strip().decode() for line in first.split(b"\r\n")
                     if line.lower().startswith(b"proxy-authenticate:"))
    await stream.send_all(
        b"".join(_sip_message(n, local[0], local[1], challenge) for n in range(count)))
    return stream, b""


async def test_sip_messages_answered_from_the_edges_acks_give_back_every_handler_slot() -> None:
    """A MESSAGE towards XMPP waits for the edge's ack without a task of its own: when the
    answers are out, every handler slot the requests held is free again and nothing is left
    waiting for an answer."""
    count = 300
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            edge, service, gw = await start(nursery)
            stream, received = await _send_authenticated_messages(gw, count)
            while received.count(b"SIP/2.0 200") < count:
                received += await stream.receive_some(65536)
            stats = service.sip.statistics()
            await stream.aclose()
            nursery.cancel_scope.cancel()
    assert received.count(b"SIP/2.0 ") == count  # one answer each, all 200
    assert len(edge.received) == count
    assert stats["handlers_busy"] == 0
    assert not service._unanswered


class HeldEdge(EdgePeer):
    """An edge that holds the stanzas it takes (no ack) until ``release`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.release = trio.Event()

    async def on_items(self, items: list[Item]) -> None:
        self.received.extend(i for i in items if isinstance(i, Routed))
        await self.release.wait()


async def test_messages_answered_202_give_back_their_slots_and_a_late_ack_answers_nothing_more() -> None:
    """The edge keeps the stanzas past the answer wait: each sender gets one 202, the handler
    slots are free again, and the ack that comes after (the edge took them after all) sends no
    second answer."""
    count = 50
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            held = HeldEdge()
            edge, service, gw = await start(nursery, held, answer_wait=0.3)
            stream, received = await _send_authenticated_messages(gw, count)
            while received.count(b"SIP/2.0 202") < count:
                received += await stream.receive_some(65536)
            stats = service.sip.statistics()
            held.release.set()  # the edge finishes with them now: the acks come back
            await wait_for(lambda: not service.channel._waiters)
            with trio.move_on_after(0.5):
                while True:
                    received += await stream.receive_some(65536)
            await stream.aclose()
            nursery.cancel_scope.cancel()
    assert received.count(b"SIP/2.0 ") == count  # the 202s, and nothing after them
    assert stats["handlers_busy"] == 0
    assert not service._unanswered
