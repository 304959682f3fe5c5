"""Gateway timers (SPEC §3) on an S2SSession, with trio's autojump clock and memory streams."""

from __future__ import annotations

import pytest
import trio
import trio.testing
from _edges import snapshot

from edgeproxy.net.session import S2SSession, Timeouts
from edgeproxy.policy.model import Negotiation, Partner
from edgeproxy.s2s import DialbackVerdict, DialbackVerifyNeeded, Event, Role, S2SConnection

HEADER = (
    b"<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' "
    b"xmlns:db='jabber:server:dialback' from='fabrikam.test' to='contoso.test' version='1.0'>"
)
NOS = Negotiation.NOT_SUPPORTED


@pytest.fixture
def autojump_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


def receiving_session(stream: trio.abc.Stream) -> S2SSession:
    snap = snapshot("contoso.test", (Partner(domain="fabrikam.test", tls=NOS, sasl=NOS),), (), "s")
    conn = S2SConnection(Role.RECEIVING, policy=lambda: snap, secret="s")

    async def on_event(session: S2SSession, event: Event) -> None:
        if isinstance(event, DialbackVerifyNeeded):  # pretend the authoritative server said yes
            await session.send(DialbackVerdict(event.originating, event.receiving, True))

    return S2SSession(stream, conn, ssl_context=None, timeouts=Timeouts(), on_event=on_event)


async def read_until(stream: trio.abc.Stream, marker: bytes) -> tuple[bytes, float]:
    data = b""
    while marker not in data:
        chunk = await stream.receive_some(65536)
        if not chunk:
            break
        data += chunk
    return data, trio.current_time()


async def test_stream_not_authenticated_within_establishment_timeout_is_closed(autojump_clock) -> None:  # type: ignore[no-untyped-def]
    ours, peer = trio.testing.memory_stream_pair()
    session = receiving_session(ours)
    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(session.run)
        await peer.send_all(HEADER)
        data, when = await read_until(peer, b"</stream:stream>")
    assert b"<connection-timeout xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>" in data
    assert when - start == pytest.approx(60, abs=1)


async def test_keepalives_are_sent_and_a_silent_peer_is_closed(autojump_clock) -> None:  # type: ignore[no-untyped-def]
    ours, peer = trio.testing.memory_stream_pair()
    session = receiving_session(ours)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(session.run)
        await peer.send_all(HEADER + b"<db:result from='fabrikam.test' to='contoso.test'>k</db:result>")
        data, start = await read_until(peer, b"type='valid'/>")
        await trio.sleep(150)
        await peer.send_all(b" ")  # the peer's own keep-alive
        # Our whitespace keep-alive arrives 300 s after we last wrote.
        data, when = await read_until(peer, b" ")
        assert data == b" " and when - start == pytest.approx(300, abs=1)
        # Then the peer falls silent: 300 s after its last byte the stream is closed.
        data, when = await read_until(peer, b"</stream:stream>")
    assert b"<connection-timeout " in data and b"keep-alive" in data
    assert when - start == pytest.approx(450, abs=1)


async def test_stream_without_stanzas_is_closed_cleanly_after_inactivity_timeout(autojump_clock) -> None:  # type: ignore[no-untyped-def]
    ours, peer = trio.testing.memory_stream_pair()
    session = receiving_session(ours)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(session.run)
        await peer.send_all(HEADER + b"<db:result from='fabrikam.test' to='contoso.test'>k</db:result>")
        _, start = await read_until(peer, b"type='valid'/>")
        await peer.send_all(b"<message from='a@fabrikam.test' to='b@contoso.test'/>")
        stanza_time = trio.current_time()

        async def whitespace() -> None:
            while True:
                await trio.sleep(200)
                await peer.send_all(b" ")

        nursery.start_soon(whitespace)
        data, when = await read_until(peer, b"</stream:stream>")
        nursery.cancel_scope.cancel()
    assert b"<stream:error>" not in data
    assert when - stanza_time == pytest.approx(600, abs=1)
    assert session.close_reason == "inactivity timeout"
