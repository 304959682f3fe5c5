"""The SIP transport over real UDP sockets (issue 21): answers already received are read before
anything is retransmitted, a burst of answers is drained at once, and datagrams the send buffer
could not take go out later, in order (the handler bound: ``test_sip_backpressure.py``).

The UA is a plain blocking socket driven by the test itself, so the test decides exactly what
is waiting on the transport's socket when the transport's tasks next run; time is a
``MockClock`` moved by hand (``mock_clock``), so Timer E is due exactly when the test says.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing

from edgeproxy.gateway.sip import transport as sip_transport
from edgeproxy.gateway.sip.message import (
    OutgoingRequest,
    SipRequest,
    parse_datagram,
    response_to,
    serialize,
)
from edgeproxy.gateway.sip.transaction import T1
from edgeproxy.gateway.sip.transport import Destination, ServerContext, SipTransport

HOST = "127.0.0.1"


def message(n: int) -> OutgoingRequest:
    branch = f"z9hG4bK-burst-{n}"
    data = (
        f"MESSAGE sip:bob@{HOST} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {HOST}:5060;branch={branch};rport\r\n"
        "Max-Forwards: 70\r\n"
        "From: <sip:alice@contoso.test>;tag=a\r\n"
        "To: <sip:bob@contoso.test>\r\n"
        f"Call-ID: burst-{n}\r\n"
        "CSeq: 1 MESSAGE\r\n"
        "Content-Length: 2\r\n\r\nhi"
    ).encode()
    return OutgoingRequest(data, branch, "MESSAGE")


def answer(ua: socket.socket, numbers: range) -> None:
    """Read the requests of ``numbers`` (already sent: the transport sends over UDP at once) and
    answer each 200, now: the answers wait on the transport's socket until one of its tasks
    reads. A request read again (a retransmission) fails the test."""
    for n in numbers:
        data, addr = ua.recvfrom(65535)
        request = parse_datagram(data)
        assert isinstance(request, SipRequest)
        assert request.call_id == f"burst-{n}", f"{request.call_id} retransmitted"
        ua.sendto(serialize(response_to(request, 200, to_tag="ua")), addr)


def nothing_more(ua: socket.socket) -> bool:
    ua.setblocking(False)
    try:
        ua.recvfrom(65535)
    except BlockingIOError:
        return True
    finally:
        ua.setblocking(True)
    return False


@asynccontextmanager
async def serving(handler: sip_transport.Handler | None = None) -> AsyncIterator[SipTransport]:
    async def refuse(request: SipRequest, ctx: ServerContext) -> None:
        await ctx.respond(response_to(request, 501, to_tag="t"))

    async with trio.open_nursery() as nursery:
        transport = SipTransport(HOST, 0, handler or refuse)
        await nursery.start(transport.serve)
        yield transport
        nursery.cancel_scope.cancel()


@pytest.fixture
def ua() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((HOST, 0))
    sock.settimeout(5)
    yield sock
    sock.close()


async def test_an_answer_waiting_on_the_socket_is_read_before_timer_e_fires(
    mock_clock: trio.testing.MockClock, ua: socket.socket
) -> None:
    # When Timer E comes due with the 200 already on the socket, the timer task and the UDP
    # reader are woken in one scheduler batch, in either order: the timer task reads the
    # socket first, so the transaction ends instead of retransmitting (reads before writes).
    async with serving() as transport:
        destination = Destination(HOST, ua.getsockname()[1], "udp")
        for n in range(20):
            pending = transport.begin_request(message(n), destination)
            answer(ua, range(n, n + 1))
            mock_clock.jump(T1)
            with trio.fail_after(5):
                assert (await transport.finish(pending)).status == 200
        assert nothing_more(ua), "a request was retransmitted although its 200 had arrived"


async def test_a_burst_of_answers_is_drained_at_once_without_retransmissions(
    mock_clock: trio.testing.MockClock, ua: socket.socket
) -> None:
    # A burst begun without a checkpoint (as the gateway begins a batch of stanzas) is sent at
    # once; all the answers are waiting when Timer E of every request comes due.
    burst = 100  # ~1.3 KB of buffer each (the kernel's truesize): within the UA's default 208 KiB
    async with serving() as transport:
        destination = Destination(HOST, ua.getsockname()[1], "udp")
        pendings = [transport.begin_request(message(n), destination) for n in range(burst)]
        answer(ua, range(burst))
        mock_clock.jump(T1)
        with trio.fail_after(5):
            statuses = [(await transport.finish(pending)).status for pending in pendings]
        assert statuses == [200] * burst
        assert nothing_more(ua)
        # A final response ends the transaction at once, over UDP too: nothing is kept for
        # Timer K (a retransmitted 200 matches nothing and is dropped, §18.1.2 — what
        # Completed's buffering would have done), so a burst leaves nothing behind.
        assert transport.statistics()["client_transactions"] == 0


class _FullFirst(socket.socket):
    """A UDP socket whose send buffer is 'full' for its first ``full`` sends."""

    full = 3

    def sendto(self, data: bytes, address: object) -> int:  # type: ignore[override]
        if self.full:
            self.full -= 1
            raise BlockingIOError
        return super().sendto(data, address)  # type: ignore[call-overload]


async def test_datagrams_the_send_buffer_cannot_take_are_sent_later_in_order(ua: socket.socket) -> None:
    async with serving() as transport:
        assert transport._udp is not None
        transport._udp = _FullFirst(fileno=transport._udp.detach())  # same descriptor
        destination = Destination(HOST, ua.getsockname()[1], "udp")
        for n in range(5):
            transport.begin_request(message(n), destination)
        with trio.fail_after(5):
            got = [parse_datagram(await trio.to_thread.run_sync(ua.recv, 65535)) for _ in range(5)]
        assert [request.call_id for request in got if isinstance(request, SipRequest)] == [
            f"burst-{n}" for n in range(5)
        ]
