"""TLS on the socket's descriptor (certs.socket_tls.SocketTlsStream) against trio's SSLStream on
the other end, over real TCP on 127.0.0.1: the handshake, bytes both ways (large ones at the same
time, so that OpenSSL asks to wait for the socket), the peer certificate and chain the S2S verdict
reads, the end of a stream, and the errors the S2S session relies on."""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
import trio.testing
from cryptography import x509

from edgeproxy.certs import selfsigned
from edgeproxy.certs.contexts import TlsRole, tls_context
from edgeproxy.certs.openssl import peer_chain
from edgeproxy.certs.peer import peer_certificate_check
from edgeproxy.certs.pem import certificates_pem, private_key_pem
from edgeproxy.certs.socket_tls import SocketTlsStream

ADDR = "127.0.0.1"


def files(tmp: Path, ca: selfsigned.Authority, domain: str, *, with_ca: bool = False) -> tuple[Path, Path, Path]:
    key = selfsigned.new_ec_key()
    cert, key_file, trust = tmp / f"{domain}.crt", tmp / f"{domain}.key", tmp / "ca.crt"
    leaf = selfsigned.issue(ca, key.public_key(), [domain])
    cert.write_bytes(certificates_pem([leaf, ca.certificate] if with_ca else [leaf]))
    key_file.write_bytes(private_key_pem(key))
    trust.write_bytes(certificates_pem([ca.certificate]))
    return cert, key_file, trust


@asynccontextmanager
async def connected_pair(tmp: Path) -> AsyncIterator[tuple[SocketTlsStream, trio.SSLStream[trio.SocketStream]]]:
    """An S2S server on the socket's descriptor and an S2S client (trio.SSLStream) whose
    certificate (fabrikam.test) is sent with its CA; both handshaken."""
    ca = selfsigned.make_authority("CA")
    server_ctx = tls_context(TlsRole.S2S_SERVER, *files(tmp, ca, "contoso.test"))
    client_ctx = tls_context(TlsRole.S2S_CLIENT, *files(tmp, ca, "fabrikam.test", with_ca=True))
    listeners = await trio.open_tcp_listeners(0, host=ADDR)
    port = listeners[0].socket.getsockname()[1]
    client_transport = await trio.open_tcp_stream(ADDR, port)
    server_transport = await listeners[0].accept()
    server = SocketTlsStream(server_transport, server_ctx, server_side=True)
    client = trio.SSLStream(client_transport, client_ctx, server_hostname=None)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.do_handshake)
        nursery.start_soon(client.do_handshake)
    try:
        yield server, client
    finally:
        await server.aclose()
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await client.aclose()  # a test may have closed its transport already
        await listeners[0].aclose()


@pytest.mark.trio
async def test_handshake_then_bytes_both_ways(tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with connected_pair(tmp_path) as (server, client):
            assert server.version() == "TLSv1.3"
            await client.send_all(b"<stream:stream>")
            assert await server.receive_some(100) == b"<stream:stream>"
            await server.send_all(b"<features/>")
            assert await client.receive_some(100) == b"<features/>"


@pytest.mark.trio
async def test_large_transfers_in_both_directions_at_once(tmp_path: Path) -> None:
    """4 MiB each way at the same time: more than the socket buffers hold, so OpenSSL has to
    wait for the socket to drain and to fill, in both directions, while the other task waits."""
    size = 4 * 1024 * 1024
    up, down = bytes(range(256)) * (size // 256), bytes(reversed(range(256))) * (size // 256)

    async def receive_all(stream: trio.abc.ReceiveStream, expected: bytes) -> None:
        got = bytearray()
        while len(got) < len(expected):
            chunk = await stream.receive_some(65536)
            assert chunk, "stream ended early"
            got += chunk
        assert bytes(got) == expected

    with trio.fail_after(60):
        async with connected_pair(tmp_path) as (server, client), trio.open_nursery() as nursery:
            nursery.start_soon(client.send_all, up)
            nursery.start_soon(server.send_all, down)
            nursery.start_soon(receive_all, server, up)
            nursery.start_soon(receive_all, client, down)


@pytest.mark.trio
async def test_the_peer_certificate_and_chain_reach_the_s2s_verdict(tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with connected_pair(tmp_path) as (server, client):
            leaf = server.getpeercert(binary_form=True)
            assert leaf is not None
            names = x509.load_der_x509_certificate(leaf).extensions.get_extension_for_class(
                x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
            assert names == ["fabrikam.test"]
            # The CA the leaf was sent with (OpenSSL leaves the leaf out of a server's peer chain).
            issuer = x509.load_der_x509_certificate(leaf).issuer
            assert [x509.load_der_x509_certificate(c).subject for c in peer_chain(server) if c != leaf] == [issuer]
            check = peer_certificate_check(server)
            assert check("fabrikam.test") is None
            assert check("contoso.test") is not None and "name mismatch" in check("contoso.test")  # type: ignore[operator]
            del client


@pytest.mark.trio
async def test_close_notify_ends_the_stream_and_a_dropped_connection_breaks_it(tmp_path: Path) -> None:
    with trio.fail_after(20):
        (tmp_path / "a").mkdir()
        (tmp_path / "b").mkdir()
        async with connected_pair(tmp_path / "a") as (server, client):
            await client.aclose()  # close_notify, then the socket closes
            assert await server.receive_some(100) == b""
        async with connected_pair(tmp_path / "b") as (server, client):
            await client.transport_stream.aclose()  # TCP closed without close_notify
            with pytest.raises(trio.BrokenResourceError):
                await server.receive_some(100)


@pytest.mark.trio
async def test_closed_and_concurrent_use_are_refused(tmp_path: Path) -> None:
    outcome: list[type[BaseException]] = []

    async def receive_until_closed(stream: SocketTlsStream) -> None:
        try:
            await stream.receive_some(10)
        except trio.ClosedResourceError as exc:
            outcome.append(type(exc))

    with trio.fail_after(20):
        async with connected_pair(tmp_path) as (server, _client):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(receive_until_closed, server)
                await trio.testing.wait_all_tasks_blocked()
                with pytest.raises(trio.BusyResourceError):
                    await server.receive_some(10)
                await server.aclose()  # wakes the waiting receive with ClosedResourceError
            assert outcome == [trio.ClosedResourceError]
            with pytest.raises(trio.ClosedResourceError):
                await server.send_all(b"x")
            with pytest.raises(trio.ClosedResourceError):
                await server.receive_some(10)


@pytest.mark.trio
async def test_a_failed_handshake_raises_openssl_s_error_and_the_peer_reads_the_alert(tmp_path: Path) -> None:
    """The stream closes itself (its transport gave the descriptor away), after dropping the
    input nobody will read: a close with unread input would be a reset, losing the alert."""
    ca = selfsigned.make_authority("CA")
    server_ctx = tls_context(TlsRole.S2S_SERVER, *files(tmp_path, ca, "contoso.test"))
    listeners = await trio.open_tcp_listeners(0, host=ADDR)
    port = listeners[0].socket.getsockname()[1]
    with trio.fail_after(20):
        client = await trio.open_tcp_stream(ADDR, port)
        server = SocketTlsStream(await listeners[0].accept(), server_ctx, server_side=True)
        await client.send_all(b"\x16\x03\x01\x00\x05hello, this is not a ClientHello" * 4)
        with pytest.raises(ssl.SSLError):
            await server.do_handshake()
        received = b""
        while chunk := await client.receive_some(4096):  # a reset would raise here
            received += chunk
        assert received[:1] == b"\x15"  # a TLS alert record
        with pytest.raises(trio.ClosedResourceError):
            await server.receive_some(10)
        await server.aclose()
        await client.aclose()
        await listeners[0].aclose()


@pytest.mark.trio
async def test_a_send_cancelled_midway_leaves_the_stream_unable_to_send(tmp_path: Path) -> None:
    """OpenSSL may hold part of a record that only the same bytes can finish: after a send is
    cancelled while waiting for the socket (the peer does not read), the next one is refused."""
    with trio.fail_after(20):
        async with connected_pair(tmp_path) as (server, _client):
            with trio.move_on_after(0.5) as waited:
                await server.send_all(b"x" * (32 * 1024 * 1024))
            assert waited.cancelled_caught
            with pytest.raises(trio.BrokenResourceError):
                # longer than any record OpenSSL may hold: it would take it and send old bytes
                await server.send_all(bytes(range(256)) * 256)


@pytest.mark.trio
@pytest.mark.parametrize("kind", ["socket", "trio"])
async def test_the_verdict_releases_the_chain_openssl_kept_and_the_stream_goes_on(tmp_path: Path, kind: str) -> None:
    """After certs.peer's verdict the CA the client sent with its leaf is no longer held by
    OpenSSL (peer_chain reads nothing), the leaf still is, and the stream still carries bytes."""
    ca = selfsigned.make_authority("CA")
    server_ctx = tls_context(TlsRole.S2S_SERVER, *files(tmp_path, ca, "contoso.test"))
    client_ctx = tls_context(TlsRole.S2S_CLIENT, *files(tmp_path, ca, "fabrikam.test", with_ca=True))
    listeners = await trio.open_tcp_listeners(0, host=ADDR)
    port = listeners[0].socket.getsockname()[1]
    with trio.fail_after(20):
        client = trio.SSLStream(await trio.open_tcp_stream(ADDR, port), client_ctx, server_hostname=None)
        transport = await listeners[0].accept()
        server: trio.abc.Stream = (SocketTlsStream(transport, server_ctx, server_side=True) if kind == "socket"
                                   else trio.SSLStream(transport, server_ctx, server_side=True))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.do_handshake)  # type: ignore[attr-defined]
            nursery.start_soon(client.do_handshake)
        assert len(peer_chain(server)) == 1  # the CA, before the verdict
        check = peer_certificate_check(server)
        assert check("fabrikam.test") is None  # judged with the CA it was sent with
        assert peer_chain(server) == []
        assert server.getpeercert(binary_form=True) is not None  # type: ignore[attr-defined]
        await client.send_all(b"<iq/>")
        assert await server.receive_some(10) == b"<iq/>"
        await server.send_all(b"<iq/>")
        assert await client.receive_some(10) == b"<iq/>"
        await server.aclose()
        with contextlib.suppress(trio.BrokenResourceError):
            await client.aclose()
        await listeners[0].aclose()
