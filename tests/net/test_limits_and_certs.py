"""Connection limits at the listener (SPEC §3); peer certificates are in test_peer_certificates."""

from __future__ import annotations

import trio
from _edges import partner, set_partners, start_edge

from edgeproxy.s2s import wire

HEADER = (
    b"<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams'"
    b" xmlns:db='jabber:server:dialback' from='fabrikam.test' to='contoso.test' version='1.0'>"
)


async def read_all(stream: trio.SocketStream, marker: bytes) -> bytes:
    data = b""
    while marker not in data:
        chunk = await stream.receive_some(4096)
        if not chunk:
            break
        data += chunk
    return data


async def open_claiming_fabrikam(port: int) -> tuple[trio.SocketStream, str]:
    """A raw stream whose header claims fabrikam.test; returns it and our stream id."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(HEADER)
    features = await read_all(stream, b"</stream:features>")
    assert b"<stream:features>" in features
    stream_id = features.split(b" id='", 1)[1].split(b"'", 1)[0].decode()
    return stream, stream_id


async def dialback(stream: trio.SocketStream, stream_id: str, secret: str) -> bytes:
    """Authenticate fabrikam.test -> contoso.test with a correct key (XEP-0185); the edge checks
    it against the real fabrikam edge (authoritative, same secret)."""
    key = wire.dialback_key(secret, "contoso.test", "fabrikam.test", stream_id)
    await stream.send_all(wire.db_result_request(from_="fabrikam.test", to="contoso.test", key=key))
    return await read_all(stream, b"<db:result")


async def test_a_partner_at_its_connection_limit_is_refused_at_the_next_streams_header() -> None:
    """Issue 21: once the partner's authenticated streams fill its slots, the next stream
    claiming it is refused at its header with resource-constraint — before any TLS or dialback
    work (it would be refused after authenticating anyway)."""
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            contoso = await start_edge(nursery, "contoso.test", ("bob",), "s")
            fabrikam = await start_edge(nursery, "fabrikam.test", ("alice",), "fab-secret")
            set_partners(fabrikam, ("alice",), "fab-secret", partner("contoso.test", contoso.port))
            set_partners(contoso, ("bob",), "s", partner("fabrikam.test", fabrikam.port, connection_limit=1))
            first, first_id = await open_claiming_fabrikam(contoso.port)
            assert b"type='valid'" in await dialback(first, first_id, "fab-secret")
            second = await trio.open_tcp_stream("127.0.0.1", contoso.port)
            await second.send_all(HEADER)  # nothing more: no STARTTLS, no db:result
            data = await read_all(second, b"</stream:stream>")
            assert b"<resource-constraint xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>" in data
            assert contoso.server.telemetry.metrics.value(
                "edgeproxy_limit_reached_total", limit="partner-connection") == 1
            await first.aclose()
            await second.aclose()
            nursery.cancel_scope.cancel()


async def test_streams_that_only_claim_a_partner_take_none_of_its_slots() -> None:
    """Issue 13: idle sockets whose header says from='fabrikam.test' used to fill fabrikam's
    connection slots and lock the real partner out; a slot is taken only once authenticated."""
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            contoso = await start_edge(nursery, "contoso.test", ("bob",), "s")
            fabrikam = await start_edge(nursery, "fabrikam.test", ("alice",), "fab-secret")
            set_partners(fabrikam, ("alice",), "fab-secret", partner("contoso.test", contoso.port))
            set_partners(contoso, ("bob",), "s", partner("fabrikam.test", fabrikam.port, connection_limit=2))
            squatters = [await open_claiming_fabrikam(contoso.port) for _ in range(5)]
            real, real_id = await open_claiming_fabrikam(contoso.port)
            assert b"type='valid'" in await dialback(real, real_id, "fab-secret")
            for stream, _ in [*squatters, (real, real_id)]:
                await stream.aclose()
            nursery.cancel_scope.cancel()


async def test_total_connection_limit_refuses_at_accept() -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            contoso = await start_edge(nursery, "contoso.test", ("bob",), "s")
            set_partners(contoso, ("bob",), "s", partner("fabrikam.test", 1), connection_limit=1)
            first = await trio.open_tcp_stream("127.0.0.1", contoso.port)
            await first.send_all(HEADER)
            await read_all(first, b"</stream:features>")
            second = await trio.open_tcp_stream("127.0.0.1", contoso.port)
            data = await read_all(second, b"</stream:stream>")
            assert b"<resource-constraint " in data
            await first.aclose()
            nursery.cancel_scope.cancel()
