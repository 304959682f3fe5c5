"""Issue 14 acceptance: an impostor on the internal port cannot take the channel over.

``edgeproxy serve`` (role both: the edge and its real gateway, with the built-in SIP registrar)
runs as a child on 127.0.0.80 (``fixtures.serve``). The partner ``fabrikam.test`` is a real
``EdgeServer`` in this process on 127.0.0.81 and alice's SIP UA a small UDP user agent on
127.0.0.83 (both reused from ``test_soak_abuse.py``). While they exchange messages both ways, an
impostor connects to the internal port from 127.0.0.82 and says Hello as the gateway — with a
proof made with a wrong secret, with an empty proof, and with a stanza batch for the partner
instead of a proof. Each time it is refused (close code 1008, "channel authentication failed",
event EP5003 naming it) and the real gateway's connection is never touched: no EP5002
channel-lost, one EP5001 channel-connected in all, every message delivered exactly once, nothing
bounced, and the impostor's stanza never reaches the partner. Addresses: 127.0.0.80-83.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path

import trio
from test_soak_abuse import (
    ALICE,
    BOB,
    PARTNER,
    TCP_DIALBACK_ROW,
    Exchange,
    SipUa,
    partner_configuration,
    start_partner,
)
from trio_websocket import ConnectionClosed, WebSocketConnection, wrap_client_stream

from edgeproxy.loopback.auth import AUTH_FAILED, channel_proof
from edgeproxy.loopback.client import LOOPBACK_RESOURCE
from edgeproxy.loopback.endpoint import CLOSE_POLICY_VIOLATION
from edgeproxy.loopback.frames import (
    MAX_FRAME_BYTES,
    Auth,
    Hello,
    Role,
    Routed,
    StanzaBatch,
    StanzaKind,
    encode_frame,
)
from edgeproxy.policy.model import (
    AccessPolicy,
    Configuration,
    GatewaySettings,
    Partner,
    PartnerType,
)
from edgeproxy.policy.snapshot import build_snapshot
from fixtures.channel_peer import hello, open_as_gateway, raw_opening
from fixtures.serve import ServeProcess, start_serve
from fixtures.sipauth import user as sip_user

EDGE_IP, PARTNER_IP, IMPOSTOR_IP, UA_IP = "127.0.0.80", "127.0.0.81", "127.0.0.82", "127.0.0.83"
INJECTED = "impostor-was-here"
RATE = 20.0
TEST_BOUND = 90.0


def edge_store(partner_port: int) -> Configuration:
    return Configuration(
        gateway=GatewaySettings(dialback_secret="contoso-impostor-secret"),
        partners=(Partner(domain=PARTNER, type=PartnerType.FEDERATED,
                          proxy_fqdn=f"{PARTNER_IP}:{partner_port}", **TCP_DIALBACK_ROW),),
        policies=(AccessPolicy(identity="global", xmpp=True, federation=True),),
        users=(sip_user(ALICE.partition("@")[0]),),  # issue 14: with the test SIP password
    )


# -- the impostor ----------------------------------------------------------------------------


def wrong_secret(ws_edge: Hello, me: Hello) -> list[object]:
    return [Auth(channel_proof(b"guessed-secret", Role.GATEWAY, ws_edge, me))]


def no_secret(ws_edge: Hello, me: Hello) -> list[object]:
    return [Auth(b"")]


def stanza_instead_of_proof(ws_edge: Hello, me: Hello) -> list[object]:
    raw = (f"<message xmlns='jabber:server' from='{ALICE}' to='{BOB}' type='chat' id='inj'>"
           f"<body>{INJECTED}</body></message>").encode()
    return [StanzaBatch((Routed(1, StanzaKind.MESSAGE, ALICE, BOB, "chat", "inj", raw),))]


IMPOSTORS: dict[str, Callable[[Hello, Hello], list[object]]] = {
    "wrong secret": wrong_secret,
    "no secret": no_secret,
    "a stanza instead of a proof": stanza_instead_of_proof,
}


async def impostor(serve: ServeProcess, then: Callable[[Hello, Hello], list[object]]) -> tuple[int, str]:
    """Connect from IMPOSTOR_IP, say Hello as the gateway, send what ``then`` says; the close."""
    stream = await trio.open_tcp_stream(serve.address, serve.internal_port, local_address=IMPOSTOR_IP)
    async with stream, trio.open_nursery() as nursery:
        ws: WebSocketConnection = await wrap_client_stream(nursery, stream, serve.address, LOOPBACK_RESOURCE,
                                                           max_message_size=MAX_FRAME_BYTES)
        me = hello()
        try:
            with trio.fail_after(10):
                edge = await raw_opening(ws, me)
                assert edge.role is Role.EDGE
                for frame in then(edge, me):
                    await ws.send_message(encode_frame(frame))  # type: ignore[arg-type]
                while True:
                    await ws.get_message()  # the edge's own Auth, then the close
        except ConnectionClosed as exc:
            nursery.cancel_scope.cancel()
            return exc.reason.code, exc.reason.reason or ""
    raise AssertionError("unreachable")


async def test_an_impostor_saying_hello_as_the_gateway_is_refused_while_messages_keep_flowing(
    tmp_path: Path,
) -> None:
    serve: ServeProcess | None = None
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        with trio.fail_after(TEST_BOUND):
            async with trio.open_nursery() as nursery:
                partner = await start_partner(nursery, partner_configuration(None), PARTNER_IP)
                serve = await trio.to_thread.run_sync(
                    lambda: start_serve(tmp_path / "edge", address=EDGE_IP, store=edge_store(partner.port))
                )
                partner.holder[0] = build_snapshot(partner_configuration(f"{EDGE_IP}:{serve.s2s_port}"), [PARTNER])
                await sock.bind((UA_IP, 0))
                ua = SipUa(sock, (serve.address, serve.sip_port))
                nursery.start_soon(ua.run)
                assert await ua.register() == 200
                exchange = Exchange(partner, ua)
                warm = await exchange.round(nursery, 5, RATE)  # streams both ways up
                await exchange.wait_delivered(warm, 15)

                closes: dict[str, tuple[int, str]] = {}
                numbers: list[int] = []

                async def messages() -> None:
                    numbers.extend(await exchange.round(nursery, 60, RATE))  # 3 s each way

                async with trio.open_nursery() as during:
                    during.start_soon(messages)
                    for name, then in IMPOSTORS.items():
                        await trio.sleep(0.5)
                        closes[name] = await impostor(serve, then)
                await exchange.wait_delivered(numbers, 15)
                report = exchange.check(warm + numbers)
                await trio.to_thread.run_sync(serve.assert_serving)
                nursery.cancel_scope.cancel()
    finally:
        sock.close()
        if serve is not None:
            serve.stop()

    assert closes == dict.fromkeys(IMPOSTORS, (CLOSE_POLICY_VIOLATION, AUTH_FAILED))
    refused = [e for e in serve.events("EP5003") if str(e.get("peer", "")).startswith(f"{IMPOSTOR_IP}:")]
    reasons = sorted(str(e["reason"]) for e in refused)
    assert len(refused) == len(IMPOSTORS) and all(r.startswith(AUTH_FAILED) for r in reasons), reasons
    # the real gateway's connection was never displaced
    assert len(serve.events("EP5001")) == 1 and serve.events("EP5002") == []
    assert not (report["x2s_lost"] or report["s2x_lost"] or report["x2s_dup"] or report["s2x_dup"]), report
    assert not report["s2x_bad_status"], report
    assert exchange.errors_to_bob() == []
    assert not any(INJECTED.encode() in item.raw for _, item in partner.got)
    assert "Traceback" not in serve.events_path.read_text(errors="replace")


async def test_a_fake_gateway_with_the_secret_is_served_so_the_secret_is_what_is_checked(tmp_path: Path) -> None:
    """The counterpart: with the edge's own secret (read from its state dir) the same raw client
    is accepted — the refusals above are about the proof, not about raw clients."""
    serve = await trio.to_thread.run_sync(lambda: start_serve(tmp_path / "edge", address=EDGE_IP, role="edge"))
    try:
        with trio.fail_after(20):
            stream = await trio.open_tcp_stream(serve.address, serve.internal_port, local_address=IMPOSTOR_IP)
            async with stream, trio.open_nursery() as nursery:
                ws = await wrap_client_stream(nursery, stream, serve.address, LOOPBACK_RESOURCE,
                                              max_message_size=MAX_FRAME_BYTES)
                edge = await open_as_gateway(ws, serve.channel_secret())
                assert edge.role is Role.EDGE
                await trio.to_thread.run_sync(lambda: serve.wait_for_event("EP5001"))
                await ws.aclose()
                nursery.cancel_scope.cancel()
    finally:
        serve.stop()
    assert serve.events("EP5003") == []
