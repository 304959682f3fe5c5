"""Connection limits at the listener (SPEC §3); peer certificates are in test_peer_certificates."""

from __future__ import annotations

import trio
from _edges import partner, set_partners, start_edge

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


async def test_partner_connection_limit_refuses_the_extra_stream_with_resource_constraint() -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            contoso = await start_edge(nursery, "contoso.test", ("bob",), "s")
            set_partners(contoso, ("bob",), "s", partner("fabrikam.test", 1, connection_limit=1))
            first = await trio.open_tcp_stream("127.0.0.1", contoso.port)
            await first.send_all(HEADER)
            assert b"<stream:features>" in await read_all(first, b"</stream:features>")
            second = await trio.open_tcp_stream("127.0.0.1", contoso.port)
            await second.send_all(HEADER)
            data = await read_all(second, b"</stream:stream>")
            assert b"<resource-constraint xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>" in data
            await first.aclose()
            await second.aclose()
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
