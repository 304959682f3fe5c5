"""Backpressure at the SIP transport's handler bound, over real sockets (issue 21 point 2).

``MAX_CONCURRENT_REQUESTS`` handler tasks run at once. Over TCP a request beyond it is not
refused: the connection is not read until a slot is given back, so a burst larger than the
bound gets every final answer and no 503. Over UDP a request beyond it is kept in its server
transaction (a retransmission is absorbed) and waits in a FIFO of ``MAX_WAITING_REQUESTS``;
beyond that it gets 503 with Retry-After, counted in ``edgeproxy_sip_busy_total``.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import pytest
import trio

from edgeproxy.gateway.sip import transport as sip_transport
from edgeproxy.gateway.sip.message import (
    SipParser,
    SipRequest,
    SipResponse,
    parse_datagram,
    response_to,
)
from edgeproxy.gateway.sip.transport import ServerContext, SipTransport
from edgeproxy.ops.telemetry import Telemetry

HOST = "127.0.0.1"
BOUND = 4


def options(n: int, transport: str = "UDP") -> bytes:
    """A request large enough for the 503 with Retry-After to be no larger (UDP_AMPLIFICATION_FACTOR)."""
    return (
        f"OPTIONS sip:bob@{HOST} SIP/2.0\r\n"
        f"Via: SIP/2.0/{transport} {HOST}:5060;branch=z9hG4bK-bp-{n};rport\r\n"
        "Max-Forwards: 70\r\n"
        f"Subject: {'x' * 200}\r\n"
        "From: <sip:alice@contoso.test>;tag=a\r\n"
        "To: <sip:bob@contoso.test>\r\n"
        f"Call-ID: bp-{n}\r\n"
        "CSeq: 1 OPTIONS\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


class Held:
    """A handler that holds every request until ``release`` is set, counting the calls; as the
    transport's ``take_now`` it records the order requests are taken in (their tasks start in
    no particular order)."""

    def __init__(self) -> None:
        self.release = trio.Event()
        self.calls: list[str] = []
        self.taken: list[str] = []

    def take_now(self, request: SipRequest, ctx: ServerContext) -> None:
        del ctx
        self.taken.append(request.call_id)

    async def __call__(self, request: SipRequest, ctx: ServerContext) -> None:
        self.calls.append(request.call_id)
        await self.release.wait()
        await ctx.respond(response_to(request, 200, to_tag="t"))


@pytest.fixture(autouse=True)
def bounds(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(sip_transport, "MAX_CONCURRENT_REQUESTS", BOUND)
    monkeypatch.setattr(sip_transport, "MAX_WAITING_REQUESTS", 3)
    yield


@asynccontextmanager
async def serving(handler: Held, telemetry: Telemetry | None = None) -> AsyncIterator[SipTransport]:
    async with trio.open_nursery() as nursery:
        transport = SipTransport(HOST, 0, handler, take_now=handler.take_now, telemetry=telemetry)
        await nursery.start(transport.serve)
        yield transport
        nursery.cancel_scope.cancel()


async def settle() -> None:
    await trio.sleep(0.3)  # real sockets: let the transport read what was sent


async def test_a_burst_over_tcp_beyond_the_bound_waits_and_is_all_answered() -> None:
    held = Held()
    burst = 10 * BOUND
    async with serving(held) as transport:
        stream = await trio.open_tcp_stream(HOST, transport.port)
        await stream.send_all(b"".join(options(n, "TCP") for n in range(burst)))
        await settle()
        assert len(held.calls) == BOUND  # the connection is not read further meanwhile
        assert transport.statistics()["server_transactions"] == BOUND
        held.release.set()
        parser = SipParser()
        answers: list[SipResponse] = []
        with trio.fail_after(10):
            while len(answers) < burst:
                parser.feed(await stream.receive_some(65536))
                while (message := parser.next_message()) is not None:
                    assert isinstance(message, SipResponse)
                    answers.append(message)
        assert [a.status for a in answers] == [200] * burst
        assert sorted(a.headers.get("Call-ID") or "" for a in answers) == sorted(f"bp-{n}" for n in range(burst))
        assert held.taken == [f"bp-{n}" for n in range(burst)]  # in the order sent
        assert transport.statistics()["busy"] == 0
        await stream.aclose()


@pytest.fixture
def ua() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((HOST, 0))
    sock.settimeout(5)
    yield sock
    sock.close()


async def receive(ua: socket.socket) -> SipResponse:
    with trio.fail_after(5):
        message = parse_datagram(await trio.to_thread.run_sync(ua.recv, 65535))
    assert isinstance(message, SipResponse)
    return message


async def test_over_udp_requests_beyond_the_bound_wait_up_to_the_fifo_then_get_503(ua: socket.socket) -> None:
    held = Held()
    telemetry = Telemetry()
    async with serving(held, telemetry) as transport:
        where = (HOST, transport.port)
        for n in range(BOUND + 3 + 2):  # the handlers, the FIFO, two beyond it
            ua.sendto(options(n), where)
        busy = [await receive(ua) for _ in range(2)]
        assert [(r.status, r.headers.get("Retry-After"), r.headers.get("Call-ID")) for r in busy] == [
            (503, "5", f"bp-{n}") for n in (BOUND + 3, BOUND + 4)
        ]
        assert len(held.calls) == BOUND
        statistics = transport.statistics()
        assert statistics["waiting_requests"] == 3
        assert statistics["server_transactions"] == BOUND + 3  # the waiting ones are in Trying
        assert statistics["busy"] == 2
        counted = telemetry.metrics.registry.get_sample_value(
            "edgeproxy_sip_busy_total", {"transport": "udp", "limit": "MAX_WAITING_REQUESTS"}
        )
        assert counted == 2
        ua.sendto(options(BOUND), where)  # a waiting request retransmitted: absorbed
        await settle()
        assert transport.statistics()["busy"] == 2
        held.release.set()
        done = sorted([(await receive(ua)).headers.get("Call-ID") or "" for _ in range(BOUND + 3)])
        assert done == sorted(f"bp-{n}" for n in range(BOUND + 3))
        assert held.taken == [f"bp-{n}" for n in range(BOUND + 3)]  # FIFO: in arrival order
        assert transport.statistics()["waiting_requests"] == 0
        ua.sendto(options(100), where)  # slots free again
        assert (await receive(ua)).status == 200
