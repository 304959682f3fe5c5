"""A scripted partner server: the library's initiating :class:`S2SConnection` over a real socket,
driven step by step by a test (or the S2S benchmark), with every raw byte from the edge kept.

Unlike the edge's own pool, it lets the script write arbitrary bytes once the stream is
authenticated (a spoofed ``from``, say) and then read what the edge answers. Dialback keys are
made by the core from ``secret``: the edge verifies them with the authoritative server of the
peer's domain, so a test runs a real edge with the same secret for that domain (XEP-0220 §2.2).
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field

import trio

from edgeproxy.policy.snapshot import PolicySnapshot
from edgeproxy.s2s import (
    AuthenticationFailed,
    Event,
    Role,
    S2SConnection,
    StartTls,
    StreamClosed,
    StreamReady,
)


class ScriptedStreamError(Exception):
    pass


@dataclass
class ScriptedStream:
    stream: trio.abc.Stream
    conn: S2SConnection
    ssl_context: ssl.SSLContext | None = None
    raw: bytearray = field(default_factory=bytearray)
    events: list[Event] = field(default_factory=list)
    eof: bool = False

    async def send_raw(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def next_event(self) -> Event:
        """The core's next event, reading from the edge as needed (TLS handled here)."""
        while True:
            event = self.conn.next_event()
            if event is not None:
                self.events.append(event)
                if isinstance(event, StartTls):
                    await self._start_tls()
                    continue
                return event
            if self.eof:
                raise ScriptedStreamError("connection closed by the edge")
            try:
                data = await self.stream.receive_some(65536)
            except trio.BrokenResourceError:
                data = b""
            self.eof = not data
            self.raw += data
            self.conn.receive_data(data)
            out = self.conn.data_to_send()
            if out and not self.eof:
                await self.stream.send_all(out)

    async def _start_tls(self) -> None:
        context = self.ssl_context
        if context is None:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        await self.stream.send_all(self.conn.data_to_send())
        tls = trio.SSLStream(self.stream, context, server_hostname=None)
        await tls.do_handshake()
        self.stream = tls
        self.conn.tls_established(None)
        await self.stream.send_all(self.conn.data_to_send())

    async def until_closed(self) -> list[Event]:
        """Read until the stream is over; returns every event seen on the stream."""
        while not isinstance(await self.next_event(), StreamClosed):
            pass
        return self.events

    async def transport_closed(self) -> bool:
        """True once the edge has closed the TCP connection: EOF after its last bytes, or a
        reset (our own ``</stream:stream>`` may arrive after the edge closed its socket)."""
        while not self.eof:
            try:
                data = await self.stream.receive_some(65536)
            except trio.BrokenResourceError:
                data = b""
            self.eof = not data
            self.raw += data
        return True


async def open_scripted_stream(
    host: str,
    port: int,
    *,
    local: str,
    remote: str,
    policy: PolicySnapshot,
    secret: str,
    ssl_context: ssl.SSLContext | None = None,
) -> ScriptedStream:
    """Connect as ``local`` to the edge serving ``remote`` and authenticate with the method the
    peer's own policy row prefers (STARTTLS and dialback here); returns the ready stream."""
    sock = await trio.open_tcp_stream(host, port)
    conn = S2SConnection(
        Role.INITIATING, policy=lambda: policy, secret=secret, local_domain=local, remote_domain=remote
    )
    peer = ScriptedStream(sock, conn, ssl_context)
    conn.initiate()
    await sock.send_all(conn.data_to_send())
    while True:
        event = await peer.next_event()
        if isinstance(event, StreamReady):
            return peer
        if isinstance(event, (AuthenticationFailed, StreamClosed)):
            raise ScriptedStreamError(f"stream setup failed: {event}")
