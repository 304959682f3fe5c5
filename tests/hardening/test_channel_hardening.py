"""Issue 13 on the loopback channel: no item, frame or connection from the gateway ends the edge.

The real-socket tests run ``edgeproxy serve --role edge`` as a child (``fixtures.serve``) and are
the gateway themselves, speaking the channel protocol frame by frame, proving the channel secret
the edge created in its state dir (``fixtures.channel_peer.gateway_peer``; issue 14). The
injected-failure tests run the channel in-process with a handler that raises, and check the
protocol's answer, event EP1007 with the right surface and that the next input is served.
Addresses: 127.0.0.60-61 (this file's share of the hardening range).
"""

from __future__ import annotations

import io
import json
import secrets
import sys
from collections.abc import Callable
from pathlib import Path

import msgspec
import pytest
import trio
from trio_websocket import ConnectionClosed, open_websocket

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from edgeproxy.loopback import reliable  # noqa: E402
from edgeproxy.loopback.client import LOOPBACK_RESOURCE, run_loopback_client  # noqa: E402
from edgeproxy.loopback.endpoint import CLOSE_INTERNAL_ERROR, CLOSE_PROTOCOL_ERROR, ChannelEndpoint  # noqa: E402
from edgeproxy.loopback.frames import (  # noqa: E402
    NONCE_BYTES,
    PROTOCOL_VERSION,
    Ack,
    Auth,
    Bounce,
    Hello,
    Item,
    Role,
    Routed,
    StanzaBatch,
    StanzaKind,
    decode_frame,
    encode_frame,
)
from edgeproxy.loopback.server import serve_loopback  # noqa: E402
from edgeproxy.net.channel_delivery import ChannelDelivery  # noqa: E402
from edgeproxy.ops.events import EventLog  # noqa: E402
from edgeproxy.ops.metrics import Metrics  # noqa: E402
from edgeproxy.ops.telemetry import Telemetry  # noqa: E402
from fixtures.channel_peer import gateway_peer, open_as_gateway  # noqa: E402
from fixtures.serve import ServeProcess, start_serve  # noqa: E402

ADDRESS = "127.0.0.60"
IN_PROCESS = "127.0.0.61"
ALICE = "alice@contoso.test"


def message(seq: int, body: str = "hi", to: str = "bob@nowhere.test") -> Routed:
    raw = f"<message from='{ALICE}' to='{to}' type='chat' id='m{seq}'><body>{body}</body></message>"
    return Routed(seq, StanzaKind.MESSAGE, ALICE, to, "chat", f"m{seq}", raw.encode())


def item(seq: int, raw: bytes) -> Routed:
    return Routed(seq, StanzaKind.MESSAGE, ALICE, "bob@nowhere.test", "chat", f"x{seq}", raw)


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> ServeProcess:
    serve = start_serve(tmp_path_factory.mktemp("channel"), address=ADDRESS, role="edge")
    yield serve
    serve.stop()


def assert_no_traceback(serve: ServeProcess) -> None:
    serve.assert_serving()
    assert "Traceback" not in serve.events_path.read_text(errors="replace")


# -- over a real socket, against `edgeproxy serve` --------------------------------------------


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (b"<foo xmlns='jabber:server' to='bob@nowhere.test'/>", "not a message, presence or iq"),
        (b"<stream:features xmlns:stream='http://etherx.jabber.org/streams'/>", "not a message"),
        (b"<message xmlns='jabber:client' to='bob@nowhere.test'><body>x</body></message>", "not a message"),
        (b"<message to='bob@nowhere.test'><body>unclosed", "not one well-formed stanza"),
        (b"\xff\xfe<message/>", "not one well-formed stanza"),
        (b"just text", "not one well-formed stanza"),
    ],
    ids=["unknown-element", "stream-element", "client-namespace", "unclosed", "bad-utf8", "text"],
)
async def test_an_item_that_is_not_a_stanza_is_nacked_and_the_next_item_is_served(
    edge: ServeProcess, raw: bytes, why: str
) -> None:
    async with gateway_peer(edge) as gw:
        await gw.send(StanzaBatch((item(1, raw), message(2))))
        # the refused item comes back as a bad-request nack; the next one is routed (here the
        # store is empty, so the outbound policy refuses alice: a nack too, with its condition)
        await gw.receive(lambda g: g.acked == 2 and len(g.items) >= 2)
    nacks = {i.ref: i for i in gw.items if isinstance(i, Bounce)}
    assert (nacks[1].condition, nacks[1].raw, nacks[1].from_) == ("bad-request", raw, ALICE)
    assert why in nacks[1].text
    assert nacks[2].condition == "forbidden" and b"m2" in nacks[2].raw  # §6: sender unknown
    assert_no_traceback(edge)


async def test_the_reported_crash_an_unknown_element_no_longer_ends_the_edge(edge: ServeProcess) -> None:
    """The reproduction of issue 13: ``<foo/>`` as a message item ended ``edgeproxy serve``."""
    async with gateway_peer(edge) as gw:
        for seq in range(1, 51):
            await gw.send(StanzaBatch((item(seq, b"<foo xmlns='jabber:server'/>"),)))
        await gw.receive(lambda g: g.acked == 50 and len(g.items) == 50)
    assert {i.condition for i in gw.items if isinstance(i, Bounce)} == {"bad-request"}
    assert_no_traceback(edge)
    assert edge.metric("edgeproxy_input_failures_total", surface="channel-item") == 0


def _msgpack(value: object) -> bytes:
    return msgspec.msgpack.encode(value)


BAD_FRAMES: dict[str, Callable[[], object]] = {
    "garbage": lambda: b"\xc1\xc1\xc1",
    "empty": lambda: b"",
    "truncated-batch": lambda: encode_frame(StanzaBatch((message(1),)))[:-5],
    "unknown-tag": lambda: _msgpack(["nack", 1]),
    "wrong-type": lambda: _msgpack(["batch", "not a list"]),
    "unknown-kind": lambda: _msgpack(["batch", [["r", 1, "chat", ALICE, "b@x", "", "", b"<message/>"]]]),
    "empty-batch": lambda: _msgpack(["batch", []]),
    "seq-zero": lambda: _msgpack(["batch", [["r", 0, "message", ALICE, "b@x", "", "", b"<message/>"]]]),
    "type-too-long": lambda: encode_frame(StanzaBatch((Routed(1, StanzaKind.MESSAGE, ALICE, "b@x", "t" * 2000,
                                                              "", b"<message/>"),))),
    "invalid-utf8-tag": lambda: b"\x92\xa5\xff\xfe\xfd\xfc\xfb\x01",
    "deep-nesting": lambda: b"\x91" * 100_000 + b"\x01",
    "huge-array-header": lambda: b"\xdd\xff\xff\xff\xff",
    "text-message": lambda: "hello",
    "sequence-gap": lambda: encode_frame(StanzaBatch((message(5),))),
    "ack-never-sent": lambda: encode_frame(Ack(1_000_000)),
    "second-hello": lambda: encode_frame(Hello(PROTOCOL_VERSION, Role.GATEWAY, "x", "", 0, 1, b"n" * NONCE_BYTES)),
    "second-auth": lambda: encode_frame(Auth(b"m" * 32)),
}


@pytest.mark.parametrize("name", list(BAD_FRAMES))
async def test_a_frame_that_breaks_the_protocol_closes_the_connection_with_a_reason_and_the_gateway_reconnects(
    edge: ServeProcess, name: str
) -> None:
    session = secrets.token_hex(8)
    async with gateway_peer(edge, session) as gw:
        await gw.send(StanzaBatch((message(1),)))
        await gw.receive(lambda g: g.acked == 1)
        await gw.send(BAD_FRAMES[name]())  # type: ignore[arg-type]
        code, reason = await gw.closed()
    assert code == CLOSE_PROTOCOL_ERROR, reason
    assert reason  # says why
    # the same gateway session reconnects: the edge reports what it processed (so the gateway
    # re-sends only what is unacked) and serves the next item
    async with gateway_peer(edge, session) as gw:
        assert gw.hello.peer_session == session and gw.hello.received == 1
        await gw.send(StanzaBatch((message(2),)))
        await gw.receive(lambda g: g.acked == 2)
    assert_no_traceback(edge)
    assert edge.metric("edgeproxy_input_failures_total", surface="channel-frame") == 0


async def test_junk_on_the_internal_port_does_not_end_the_edge(edge: ServeProcess) -> None:
    payloads = [
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 64,  # a TLS ClientHello
        b"GET /loopback HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: not-base64!!\r\nSec-WebSocket-Version: 13\r\n\r\n",
        b"GET /loopback HTTP/1.1\r\n" + b"X: " + b"a" * 100_000 + b"\r\n\r\n",
        b"\x00" * 4096,
        b"",
    ]
    for payload in payloads:
        stream = await trio.open_tcp_stream(edge.address, edge.internal_port)
        async with stream:
            try:
                await stream.send_all(payload)
                with trio.move_on_after(2):
                    while await stream.receive_some(65536):
                        pass
            except trio.BrokenResourceError:
                pass
    async with gateway_peer(edge) as gw:
        await gw.send(StanzaBatch((message(1),)))
        await gw.receive(lambda g: g.acked == 1)
    assert_no_traceback(edge)


# -- in process: an injected raising handler at each surface -----------------------------------


class Captured:
    """Telemetry with an event log we can read (JSON lines in memory)."""

    def __init__(self) -> None:
        self.out = io.StringIO()
        self.metrics = Metrics()
        self.log = EventLog(self.out, output="json")
        self.telemetry = Telemetry(self.metrics, self.log)

    def events(self, event_id: str) -> list[dict[str, object]]:
        self.log.flush()
        return [e for e in map(json.loads, self.out.getvalue().splitlines()) if e["id"] == event_id]

    def failures(self, surface: str) -> float:
        value = self.metrics.registry.get_sample_value("edgeproxy_input_failures_total", {"surface": surface})
        return value or 0.0


async def until(predicate: Callable[[], bool]) -> None:
    while not predicate():
        await trio.sleep(0.01)


async def test_an_edge_item_handler_that_raises_bounces_that_item_to_its_sender_and_serves_the_next() -> None:
    cap = Captured()
    secret = secrets.token_bytes(32)
    delivery = ChannelDelivery(cap.telemetry, secret=secret)

    class Router:
        sent: list[str] = []

        async def wait_for_room(self, local: str, remote: str) -> None:
            pass

        async def send_from_gateway(self, stanza: object, *, refused: object) -> None:
            if not self.sent:
                self.sent.append("raised")
                raise RuntimeError("injected")
            self.sent.append(stanza.id)  # type: ignore[attr-defined]

    to_gateway: list[Item] = []

    async def on_items(items: list[Item]) -> None:
        to_gateway.extend(items)

    gw = ChannelEndpoint(Role.GATEWAY, on_items=on_items, on_bounce=lambda items, condition: None, secret=secret)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            host, port = await nursery.start(delivery.run, IN_PROCESS, 0, Router())
            await nursery.start(run_loopback_client, gw, host, port)
            for seq in (1, 2):
                m = message(seq)
                gw.submit(m.kind, m.from_, m.to, m.type, m.id, m.raw)
            await until(lambda: Router.sent == ["raised", "m2"] and to_gateway)
            nursery.cancel_scope.cancel()
    error = to_gateway[0]
    assert isinstance(error, Routed) and error.type == "error" and error.to == ALICE
    assert b"internal-server-error" in error.raw and b"m1" in error.raw
    [event] = cap.events("EP1007")
    assert event["surface"] == "channel-item" and "RuntimeError: injected" in str(event["error"])
    assert cap.failures("channel-item") == 1


async def test_a_gateway_item_handler_that_raises_nacks_the_item_and_completes_it() -> None:
    """Gateway side (ack on completion): the failed item is nacked to the edge — whose owner then
    answers the XMPP sender — and completed, so the acks go on and the next item is handled."""
    cap = Captured()
    handled: list[str] = []
    bounces: list[Item] = []

    async def gateway_items(items: list[Item]) -> None:
        for it in items:
            if it.id == "m1":
                raise RuntimeError("injected")
            handled.append(it.id)
            gw.complete(it.seq)

    async def edge_items(items: list[Item]) -> None:
        bounces.extend(items)

    secret = secrets.token_bytes(32)
    gw = ChannelEndpoint(Role.GATEWAY, on_items=gateway_items, on_bounce=lambda i, c: None,
                         ack_on_complete=True, telemetry=cap.telemetry, secret=secret)
    edge = ChannelEndpoint(Role.EDGE, on_items=edge_items, on_bounce=lambda i, c: None, secret=secret)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            host, port = await nursery.start(serve_loopback, edge, IN_PROCESS, 0)
            await nursery.start(run_loopback_client, gw, host, port)
            for seq in (1, 2):
                m = message(seq, to=ALICE)
                edge.submit(m.kind, "bob@fabrikam.test", ALICE, m.type, m.id, m.raw)
            await until(lambda: handled == ["m2"] and bool(bounces) and edge.sender.queued == 0)
            nursery.cancel_scope.cancel()
    [nack] = bounces
    assert isinstance(nack, Bounce) and nack.condition == "internal-server-error" and nack.id == "m1"
    [event] = cap.events("EP1007")
    assert event["surface"] == "channel-item" and event["answer"] == "bounced"


async def test_a_frame_handler_that_raises_closes_the_connection_and_the_next_connection_is_served(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The receiver raising on a frame: EP1007 channel-frame, the connection closed with 1011 and
    the reason; the gateway reconnects, re-sends, and the item is delivered once."""
    cap = Captured()
    real_accept = reliable.Receiver.accept
    calls = []

    def accept(self: reliable.Receiver, batch: StanzaBatch) -> list[Item]:
        calls.append(batch)
        if len(calls) == 1:
            raise RuntimeError("injected")
        return real_accept(self, batch)

    monkeypatch.setattr(reliable.Receiver, "accept", accept)
    delivered: list[str] = []

    async def edge_items(items: list[Item]) -> None:
        delivered.extend(i.id for i in items)

    secret = secrets.token_bytes(32)
    edge = ChannelEndpoint(Role.EDGE, on_items=edge_items, on_bounce=lambda i, c: None, telemetry=cap.telemetry,
                           secret=secret)
    closes: list[tuple[int, str]] = []
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            host, port = await nursery.start(serve_loopback, edge, IN_PROCESS, 0)
            async with open_websocket(host, port, LOOPBACK_RESOURCE, use_ssl=False) as ws:
                session = secrets.token_hex(8)
                await open_as_gateway(ws, secret, session, window=64)
                await ws.send_message(encode_frame(StanzaBatch((message(1),))))
                try:
                    await ws.get_message()
                except ConnectionClosed as exc:
                    closes.append((exc.reason.code, exc.reason.reason or ""))
            async with open_websocket(host, port, LOOPBACK_RESOURCE, use_ssl=False) as ws:
                hello = await open_as_gateway(ws, secret, session, window=64)
                assert hello.received == 0  # item 1 was not processed
                await ws.send_message(encode_frame(StanzaBatch((message(1),))))
                assert decode_frame(await ws.get_message()) == Ack(1)
            nursery.cancel_scope.cancel()
    assert closes == [(CLOSE_INTERNAL_ERROR, "RuntimeError: injected")]
    assert delivered == ["m1"]
    [event] = cap.events("EP1007")
    assert event["surface"] == "channel-frame" and event["answer"] == "connection closed (1011)"
    assert cap.failures("channel-frame") == 1


# -- before queueing: no poison frames --------------------------------------------------------


@pytest.mark.parametrize(
    "fields",
    [
        {"type": "t" * 2000},
        {"from_": "a" * 4000 + "@x"},
        {"raw": b""},
        {"raw": b"x" * 300_000},
        {"kind": "chat"},
    ],
    ids=["long-type", "long-from", "empty", "oversized", "bad-kind"],
)
def test_an_item_the_peer_would_refuse_is_bounced_at_submit_not_sent(fields: dict[str, object]) -> None:
    """Refused as a frame, such an item would be re-sent on every reconnect and stop the channel."""
    bounced: list[tuple[Routed, str]] = []
    endpoint = ChannelEndpoint(Role.EDGE, on_items=lambda items: None,  # type: ignore[arg-type, return-value]
                               on_bounce=lambda items, condition: bounced.extend((i, condition) for i in items))
    values: dict[str, object] = {"kind": StanzaKind.MESSAGE, "from_": "bob@fabrikam.test", "to": ALICE,
                                 "type": "chat", "id": "", "raw": b"<message/>", **fields}
    assert not endpoint.submit(values["kind"], values["from_"], values["to"], values["type"],  # type: ignore[arg-type]
                               values["id"], values["raw"])  # type: ignore[arg-type]
    assert endpoint.sender.queued == 0
    assert [condition for _, condition in bounced] == ["policy-violation"]
