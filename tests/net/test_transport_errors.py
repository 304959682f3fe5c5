"""A peer's transport failure ends its own stream only: the edge goes on serving (DESIGN 4;
trio wraps even a nursery body's exception in an ExceptionGroup, so the session must catch the
transport errors group-aware)."""

from __future__ import annotations

import socket
import struct

import trio
from _edges import partner, set_partners, start_edge

HEADER = (
    b"<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams'"
    b" xmlns:db='jabber:server:dialback' from='fabrikam.test' to='contoso.test' version='1.0'>"
)


async def read_until(stream: trio.SocketStream, marker: bytes) -> bytes:
    data = b""
    while marker not in data:
        chunk = await stream.receive_some(4096)
        if not chunk:
            break
        data += chunk
    return data


async def still_serving(port: int) -> bool:
    probe = await trio.open_tcp_stream("127.0.0.1", port)
    await probe.send_all(HEADER)
    ok = b"</stream:features>" in await read_until(probe, b"</stream:features>")
    await probe.aclose()
    return ok


async def test_peer_reset_ends_only_its_stream_and_the_edge_keeps_serving() -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            contoso = await start_edge(nursery, "contoso.test", ("alice",), "s")
            set_partners(contoso, ("alice",), "s", partner("fabrikam.test", 9))
            peer = await trio.open_tcp_stream("127.0.0.1", contoso.port)
            await peer.send_all(HEADER)
            await read_until(peer, b"</stream:features>")
            # SO_LINGER 0: close() sends a TCP RST instead of a FIN.
            peer.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            peer.socket.close()
            await trio.sleep(0.2)
            assert await still_serving(contoso.port)
            nursery.cancel_scope.cancel()


async def test_garbage_instead_of_a_tls_handshake_ends_only_that_stream(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from edgeproxy.certs import selfsigned
    from edgeproxy.certs.contexts import TlsRole, tls_context
    from edgeproxy.certs.pem import certificates_pem, private_key_pem
    from edgeproxy.policy.model import Negotiation

    ca, key = selfsigned.make_authority("CA"), selfsigned.new_ec_key()
    (tmp_path / "c.pem").write_bytes(certificates_pem([selfsigned.issue(ca, key.public_key(), ["contoso.test"])]))
    (tmp_path / "c.key").write_bytes(private_key_pem(key))
    (tmp_path / "ca.pem").write_bytes(certificates_pem([ca.certificate]))
    args = (tmp_path / "c.pem", tmp_path / "c.key", tmp_path / "ca.pem")
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            contoso = await start_edge(nursery, "contoso.test", ("alice",), "s",
                                       tls_context(TlsRole.S2S_SERVER, *args), tls_context(TlsRole.S2S_CLIENT, *args))
            set_partners(contoso, ("alice",), "s", partner("fabrikam.test", 9, tls=Negotiation.REQUIRED))
            peer = await trio.open_tcp_stream("127.0.0.1", contoso.port)
            await peer.send_all(HEADER)
            await read_until(peer, b"</stream:features>")
            await peer.send_all(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
            assert b"<proceed" in await read_until(peer, b"/>")
            await peer.send_all(b"\x16\x03\x01\x00\x05hello, this is not a ClientHello" * 4)
            assert await read_until(peer, b"never") is not None  # the edge drops the connection
            await peer.aclose()
            assert await still_serving(contoso.port)
            nursery.cancel_scope.cancel()
