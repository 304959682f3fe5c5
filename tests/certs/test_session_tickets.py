"""TLS 1.3 session tickets on S2S streams: the inbound side issues none (edgeproxy never resumes
an S2S session, and every ticket issued keeps a copy of the session for the connection's life)."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
import trio.testing

from edgeproxy.certs import selfsigned
from edgeproxy.certs.contexts import TlsRole, tls_context
from edgeproxy.certs.pem import certificates_pem, private_key_pem


def files(tmp: Path, ca: selfsigned.Authority, domain: str) -> tuple[Path, Path, Path]:
    key = selfsigned.new_ec_key()
    cert, key_file, trust = tmp / f"{domain}.crt", tmp / f"{domain}.key", tmp / "ca.crt"
    cert.write_bytes(certificates_pem([selfsigned.issue(ca, key.public_key(), [domain])]))
    key_file.write_bytes(private_key_pem(key))
    trust.write_bytes(certificates_pem([ca.certificate]))
    return cert, key_file, trust


async def client_session_after_exchange(server_role: TlsRole, tmp: Path) -> tuple[str | None, bool]:
    """Handshake an S2S client with a server of ``server_role``, exchange a byte each way (TLS 1.3
    tickets arrive after the handshake); the version and whether the client holds a ticket."""
    ca = selfsigned.make_authority("CA")
    server_ctx = tls_context(server_role, *files(tmp, ca, "contoso.test"))
    client_ctx = tls_context(TlsRole.S2S_CLIENT, *files(tmp, ca, "fabrikam.test"))
    left, right = trio.testing.memory_stream_pair()
    server = trio.SSLStream(left, server_ctx, server_side=True)
    client = trio.SSLStream(right, client_ctx, server_hostname=None)

    async def serve() -> None:
        await server.do_handshake()
        await server.send_all(b"s")
        assert await server.receive_some(1) == b"c"

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve)
            await client.do_handshake()
            assert await client.receive_some(1) == b"s"
            await client.send_all(b"c")
    session = client.session
    return client.version(), bool(session is not None and session.has_ticket)


@pytest.mark.trio
async def test_inbound_s2s_tls_issues_no_session_ticket(tmp_path: Path) -> None:
    version, ticket = await client_session_after_exchange(TlsRole.S2S_SERVER, tmp_path)
    assert version == "TLSv1.3"
    assert not ticket


@pytest.mark.trio
async def test_other_tls_servers_still_issue_tickets(tmp_path: Path) -> None:
    """The exchange above does see a ticket when the server issues one (the check can fail)."""
    version, ticket = await client_session_after_exchange(TlsRole.SIP_SERVER, tmp_path)
    assert version == "TLSv1.3"
    assert ticket
