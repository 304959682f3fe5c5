"""One pool connection over trio: frames in and out, the TLS handshake and the proofs.

The thin driver around :mod:`edgeproxy.pool.protocol`: ``Link`` reads frames with a
:class:`~edgeproxy.pool.protocol.FrameReader` (its limit raised only after the proofs, and only on
the member's side, to ``MAX_STORE_BYTES``), and :func:`open_as_primary` / :func:`open_as_member`
run the handshake of each side within ``HANDSHAKE_TIMEOUT``.
"""

from __future__ import annotations

import secrets
import ssl
from typing import Final

import trio

from edgeproxy.pool.protocol import (
    MAX_HANDSHAKE_FRAME,
    NONCE_BYTES,
    FrameReader,
    Hello,
    Message,
    PoolAuthError,
    PoolProtocolError,
    Proof,
    Refused,
    check_hello,
    check_proof,
    decode,
    encode,
    expect,
    proof,
)

#: Seconds for the TLS handshake and the Hello/Proof exchange together.
HANDSHAKE_TIMEOUT: Final = 10.0
#: Bytes asked of the socket at once.
RECEIVE_CHUNK: Final = 65536
#: What a refused proof is told (the reason stays in the refusing side's event).
AUTH_REFUSED: Final = "pool authentication failed"


class TlsRefused(Exception):
    """The TLS handshake failed (no or an untrusted certificate, a plain-text peer, …)."""


class Link:
    """Frames over one stream (a ``SocketStream`` or an ``SSLStream`` on it)."""

    def __init__(self, stream: trio.abc.Stream, limit: int = MAX_HANDSHAKE_FRAME) -> None:
        self.stream = stream
        self.reader = FrameReader(limit)
        self._ready: list[bytes] = []

    async def send(self, message: Message) -> None:
        await self.stream.send_all(encode(message))

    async def send_frame(self, frame: bytes) -> None:
        """Send a frame already encoded (a primary's snapshot, encoded once for every member)."""
        await self.stream.send_all(frame)

    async def receive(self) -> Message:
        """The next message; ``PoolProtocolError`` when the peer closed or sent a bad frame."""
        while not self._ready:
            data = await self.stream.receive_some(RECEIVE_CHUNK)
            if not data:
                where = f" in the middle of a frame ({self.reader.pending} bytes)" if self.reader.pending else ""
                raise PoolProtocolError(f"connection closed by the other side{where}")
            self._ready.extend(self.reader.feed(data))
        return decode(self._ready.pop(0))

    async def aclose(self) -> None:
        await trio.aclose_forcefully(self.stream)


async def _tls(stream: trio.SocketStream, context: ssl.SSLContext | None, *, server_side: bool,
               host: str | None = None) -> trio.abc.Stream:
    if context is None:
        return stream
    tls = trio.SSLStream(stream, context, server_side=server_side, server_hostname=host)
    try:
        await tls.do_handshake()
    except (trio.BrokenResourceError, ssl.SSLError) as exc:
        raise TlsRefused(_tls_reason(exc)) from None
    return tls


def _tls_reason(exc: BaseException) -> str:
    cause = exc if isinstance(exc, ssl.SSLError) else exc.__cause__ or exc.__context__
    if isinstance(cause, ssl.SSLCertVerificationError):
        return f"TLS handshake failed: certificate verify failed: {cause.verify_message}"
    if isinstance(cause, ssl.SSLError):
        return f"TLS handshake failed: {cause.reason or cause}"
    return f"TLS handshake failed: {cause or 'connection closed'}"


async def open_as_primary(stream: trio.SocketStream, context: ssl.SSLContext | None,
                          secret: bytes) -> Link:
    """The primary's side of an accepted connection, authenticated; ``TlsRefused``,
    ``PoolAuthError`` (the member is told ``Refused``), ``PoolProtocolError`` or
    ``trio.TooSlowError`` otherwise."""
    with trio.fail_after(HANDSHAKE_TIMEOUT):
        link = Link(await _tls(stream, context, server_side=True))
        member = check_hello(await link.receive(), "member")
        mine = Hello("primary", secrets.token_bytes(NONCE_BYTES))
        await link.send(mine)
        answer = await link.receive()
        expect(answer, Proof)
        assert isinstance(answer, Proof)
        try:
            check_proof(secret, "member", member, mine, answer.mac)
        except PoolAuthError:
            await link.send(Refused(AUTH_REFUSED))
            raise
        await link.send(Proof(proof(secret, "primary", member, mine)))
        return link


async def open_as_member(stream: trio.SocketStream, context: ssl.SSLContext | None, host: str,
                         secret: bytes, limit: int) -> Link:
    """The member's side of a connection to its primary, authenticated, reading frames up to
    ``limit`` bytes from then on; the same errors as :func:`open_as_primary`."""
    with trio.fail_after(HANDSHAKE_TIMEOUT):
        link = Link(await _tls(stream, context, server_side=False, host=host))
        mine = Hello("member", secrets.token_bytes(NONCE_BYTES))
        await link.send(mine)
        primary = check_hello(await link.receive(), "primary")
        await link.send(Proof(proof(secret, "member", mine, primary)))
        answer = await link.receive()
        expect(answer, Proof)
        assert isinstance(answer, Proof)
        check_proof(secret, "primary", mine, primary, answer.mac)
        link.reader.limit = limit
        return link
