"""``S2SSession``: moves bytes between a trio stream and one sans-IO ``S2SConnection``.

Theory of operation
-------------------
One task reads (at most ``MAX_READ`` bytes at a time: the tokenizer bounds what it buffers), feeds
the core, writes what the core produced and hands every event to the owner's ``on_event``
callback — except :class:`~edgeproxy.s2s.StartTls`, which the session handles itself: it writes
the pending bytes (``<proceed/>``), wraps the transport in TLS (server side inbound, client side
outbound) — :class:`~edgeproxy.certs.socket_tls.SocketTlsStream` on a socket, OpenSSL on the
descriptor itself, else :class:`trio.SSLStream` — runs the handshake and tells the core (RFC 6120
§5.4.3.3). A failed handshake sends the peer OpenSSL's alert (``SocketTlsStream``: OpenSSL wrote
it already) and keeps the reason (``certs.handshake``, as SIP and the loopback channel do).

A second task enforces the gateway timers (SPEC §3, values from the store):

* **establishment** — the stream must be authenticated (receiving: one domain pair; initiating:
  :class:`~edgeproxy.s2s.StreamReady`) within ``establishment`` seconds, else stream error
  ``connection-timeout`` (RFC 6120 §4.9.3.4);
* **keep-alive** — when the partner has keep-alive enabled we write a whitespace keep-alive
  (RFC 6120 §4.6.1) after ``keepalive`` seconds without writing, and on an inbound stream the
  peer must show traffic (any byte, whitespace counts) within ``keepalive`` seconds, else
  ``connection-timeout``;
* **inactivity** — no stanza in either direction for ``inactivity`` seconds closes the stream
  cleanly (``</stream:stream>``, no error).

Limits (issue 13, ``[limits]``, ``docs/limits.md``): every write — waiting for the send lock
included — must finish within ``write_timeout`` seconds, else the stream is aborted (event
``EP6003``; a peer that does not read cannot hold the session, its slot or the establishment
timer's ``close()`` forever). With a ``shaper`` (inbound streams) the reader waits after each
read until the byte rate is back under the limit — ``preauth-rate`` until the stream is
authenticated, ``inbound-rate`` after.

Failure boundary (``docs/design.md``): any exception other than a transport error while
handling this stream's input (the core, an event callback, the policy) ends this stream only:
the peer gets stream error ``internal-server-error``, ``failure`` keeps the exception and the
owner reports it (``ops.boundary.report``, EP1007).

Writes are serialised by a lock (several tasks may send on one stream). Cancellation: cancelling
``run`` aborts the stream without a closing handshake; ``close`` does the polite thing and
``shutdown`` closes with ``<system-shutdown/>`` (graceful stop, SPEC §10) and still routes what
the peer sent before it read that, until its closing tag (RFC 6120 §4.4).

For operations (``edgeproxy status``, metrics) the session keeps what it saw: the remote address,
the first authentication method, the TLS version or handshake failure, stanza counts both ways and
the stream-error condition sent or received.
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio

from edgeproxy.certs.handshake import send_pending_alert, tls_failure
from edgeproxy.certs.peer import peer_certificate_check
from edgeproxy.certs.socket_tls import SocketTlsStream
from edgeproxy.net.shaper import TokenBucket
from edgeproxy.ops.boundary import describe
from edgeproxy.policy.model import AuthMethod
from edgeproxy.s2s import (
    CloseStream,
    Event,
    Role,
    S2SConnection,
    StanzaReceived,
    StartTls,
    State,
    StreamClosed,
    StreamReady,
    wire,
)
from edgeproxy.s2s.events import Authenticated, KeepAlive, SendStanza, StreamErrorReceived, ToPeer

#: Largest read from the socket at once (bytes). 64 KiB: one TLS record is at most 16 KiB.
MAX_READ = 65536
#: A TLS handshake must finish within this (seconds); it is also bounded by establishment.
TLS_HANDSHAKE_TIMEOUT = 30.0
#: After our ``</stream:stream>``, how long the peer has to answer with its own (RFC 6120 §4.4)
#: before the transport is closed anyway (seconds).
CLOSE_GRACE = 10.0
#: Default of ``[limits] write-timeout`` (seconds one write may block).
WRITE_TIMEOUT = 30.0
#: How long the stream error that answers an internal failure may take to write (seconds).
FAILURE_ANSWER_TIMEOUT = 2.0


@dataclass(frozen=True)
class Timeouts:
    """Gateway timers for one stream (SPEC §3); ``keepalive`` None when the partner has it off."""

    establishment: float = 60.0
    inactivity: float = 600.0
    keepalive: float | None = 300.0


@dataclass(frozen=True)
class Shaper:
    """Byte rates (bytes/s, burst bytes) for an inbound stream; 0 = no limit (``[limits]``)."""

    preauth: tuple[int, int]
    authenticated: tuple[int, int]


OnEvent = Callable[["S2SSession", Event], Awaitable[None]]
OnStanzaSent = Callable[[SendStanza], None]


class S2SSession:
    """One S2S stream over a trio stream; see the module docstring."""

    def __init__(
        self,
        stream: trio.abc.Stream,
        conn: S2SConnection,
        *,
        ssl_context: ssl.SSLContext | None,
        timeouts: Timeouts,
        on_event: OnEvent,
        expect_peer_traffic: bool = True,
        write_timeout: float = WRITE_TIMEOUT,
        shaper: Shaper | None = None,
        on_stanza_sent: OnStanzaSent | None = None,
    ) -> None:
        """``on_stanza_sent``: called after each stanza is written (the pool counts outbound
        deliveries with it)."""
        self.stream: trio.abc.Stream = stream
        self.conn = conn
        self._ssl_context = ssl_context
        self.timeouts = timeouts
        self._on_event = on_event
        self._expect_peer_traffic = expect_peer_traffic
        self._send_lock = trio.Lock()
        #: Events are handled in order by one task at a time (the reader, or a driver action's
        #: task through :meth:`handle_pending_events`).
        self._event_lock = trio.Lock()
        self.ready = trio.Event()  # authenticated / ready for use
        self.closed = trio.Event()
        self.close_reason: str | None = None
        self._nursery: trio.Nursery | None = None
        now = trio.current_time()
        self._started = now
        self._last_rx = now
        self._last_tx = now
        self._last_stanza = now
        self.started_at = now
        self.remote_address = _peer_address(stream)
        self.auth_method: AuthMethod | None = None
        self.tls_version: str | None = None
        self.tls_failure: str | None = None
        self.stanzas_in = 0
        self.stanzas_out = 0
        self.error_sent: str | None = None
        self.error_received: str | None = None
        self.on_stanza_sent = on_stanza_sent
        self._linger = False
        self.write_timeout = write_timeout
        #: Set when a write did not finish within ``write_timeout`` (the stream was aborted).
        self.write_timed_out = False
        self._shaper = shaper
        self._bucket = TokenBucket(*shaper.preauth, now) if shaper is not None else None
        self._shaped_authenticated = False
        #: Seconds the reader waited for the byte rate (for tests and status).
        self.shaped_seconds = 0.0
        #: The exception that ended this stream at the failure boundary (None: it did not).
        self.failure: BaseException | None = None

    # -- writing ------------------------------------------------------------------------------

    async def send_bytes(self, data: bytes) -> None:
        """Write ``data`` (serialised with other writers) within ``write_timeout``; a write that
        does not finish aborts the stream and raises ``trio.BrokenResourceError``."""
        if not data:
            return
        with trio.move_on_after(self.write_timeout) as scope:
            async with self._send_lock:
                await self.stream.send_all(data)
        if scope.cancelled_caught:
            self._write_timeout()
            raise trio.BrokenResourceError(f"write timeout: the peer did not read for {self.write_timeout:g} s")
        self._last_tx = trio.current_time()

    def _write_timeout(self) -> None:
        if not self.write_timed_out:
            self.write_timed_out = True
            self.close_reason = self.close_reason or f"write timeout ({self.write_timeout:g} s)"
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    async def flush(self) -> None:
        data = self.conn.data_to_send()
        if self.conn.state is State.CLOSED:
            # The stream is over (e.g. the peer sent a stream error and went away): our closing
            # tag may find the socket gone, and the events that say why must still be handled.
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await self.send_bytes(data)
            return
        await self.send_bytes(data)

    async def send_stanzas(self, events: list[SendStanza]) -> None:
        """Several stanzas through the core, written at once (one system call, not one per
        stanza: an outbound link drains its queue this way). Raises like :meth:`send`; then
        none of ``events`` counts as sent."""
        for event in events:  # one domain pair: the first raises, or none does
            self.conn.send(event)
        data = self.conn.data_to_send()
        self._last_stanza = trio.current_time()
        self.stanzas_out += len(events)
        await self.send_bytes(data)
        if self.on_stanza_sent is not None:
            for event in events:
                self.on_stanza_sent(event)

    async def send(self, event: ToPeer) -> None:
        """Send a driver action through the core (raises LocalProtocolError if not allowed)."""
        self.conn.send(event)
        data = self.conn.data_to_send()
        if isinstance(event, SendStanza):
            self._last_stanza = trio.current_time()
            self.stanzas_out += 1
        await self.send_bytes(data)
        if isinstance(event, SendStanza) and self.on_stanza_sent is not None:
            self.on_stanza_sent(event)

    async def close(self, condition: str | None = None, text: str | None = None) -> None:
        """Close politely (stream error first if ``condition``); the reader ends the session."""
        if self.conn.state is State.CLOSED:
            return
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await self.send(CloseStream(condition, text))
        if condition is not None:
            self.close_reason = f"{condition}: {text}" if text else condition
            self.error_sent = self.error_sent or condition
        if self._nursery is not None and not self.closed.is_set():
            # After a stream error nothing more is read (RFC 6120 §4.9.1.1); after a clean
            # close the peer gets CLOSE_GRACE seconds to send its own closing tag.
            if condition is not None:
                self._nursery.cancel_scope.cancel()
            else:
                try:
                    self._nursery.start_soon(self._abort_after, CLOSE_GRACE)
                except RuntimeError:  # the session is already ending (its nursery is closed)
                    self._nursery.cancel_scope.cancel()

    async def shutdown(self, text: str = "the server is shutting down", grace: float = 2.0) -> None:
        """Graceful stop: stream error ``system-shutdown`` (RFC 6120 §4.9.3.22) and our closing
        tag, then the peer's closing tag is waited for (§4.4) at most ``grace`` seconds.

        What the peer sent before it read them is still taken and routed — a partner writes
        stanzas until it reads the error, and dropping them would lose them silently (it has
        handed them over) — and after the peer's closing tag anything more is read and
        discarded: closing a socket with unread data makes the kernel send a reset, which can
        destroy the error before the peer has read it.
        """
        if self.conn.state is State.CLOSED:
            return
        self._linger = True
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await self.send(CloseStream("system-shutdown", text, finish=True))
        self.close_reason = f"system-shutdown: {text}"
        self.error_sent = self.error_sent or "system-shutdown"
        if self._nursery is not None:
            try:
                self._nursery.start_soon(self._abort_after, grace)
            except RuntimeError:  # the session is already ending
                return

    def abort(self, reason: str) -> None:
        """End the stream now, without a closing handshake (an evicted unauthenticated stream:
        writing it an error could block on a peer that does not read)."""
        self.close_reason = self.close_reason or reason
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    def start_soon(self, task: Callable[..., Awaitable[object]], *args: object) -> None:
        """Run ``task(*args)`` beside the running stream: cancelled when the stream ends, and
        its failure ends the stream like one of the stream's own (the failure boundary)."""
        if self._nursery is None:
            raise RuntimeError("the session is not running")
        self._nursery.start_soon(task, *args)

    async def _abort_after(self, delay: float) -> None:
        await trio.sleep(delay)
        assert self._nursery is not None
        self._nursery.cancel_scope.cancel()

    # -- running ------------------------------------------------------------------------------

    async def run(self) -> None:
        """Run until the stream ends; the transport is closed on return."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._timers)
                try:
                    await self._read_loop()
                finally:
                    nursery.cancel_scope.cancel()
        except* (trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError, trio.TooSlowError) as group:
            # except*: trio nurseries wrap even their body's exception in an ExceptionGroup, and
            # a plain except would let one peer's reset or bad TLS handshake end the whole edge.
            self.close_reason = self.close_reason or f"transport error: {group.exceptions[0]!r}"
        except* Exception as group:
            # The failure boundary (module docstring): this stream ends, nothing else does.
            self.failure = group
            self.close_reason = f"internal error: {describe(group)}"
            await self._answer_failure()
        finally:
            self.closed.set()
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                await self.stream.aclose()

    async def _answer_failure(self) -> None:
        """Stream error ``internal-server-error`` after an internal failure, best effort."""
        if self.conn.state is State.CLOSED and not self._linger:
            return
        try:
            self.conn.send(CloseStream("internal-server-error", None))
            data = self.conn.data_to_send()
        except Exception:  # noqa: BLE001 - the core itself may be what failed
            data = wire.stream_error("internal-server-error") + wire.CLOSE
        self.error_sent = self.error_sent or "internal-server-error"
        with trio.move_on_after(FAILURE_ANSWER_TIMEOUT):
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError, trio.BusyResourceError):
                await self.stream.send_all(data)

    async def _shape(self, n: int) -> None:
        """Wait until reading ``n`` more bytes keeps the stream under its byte rate."""
        bucket, shaper = self._bucket, self._shaper
        if bucket is None or shaper is None:
            return
        if self.ready.is_set() and not self._shaped_authenticated:
            self._shaped_authenticated = True
            bucket.set_rate(*shaper.authenticated)
        delay = bucket.delay_after(n, trio.current_time())
        if delay > 0:
            self.shaped_seconds += delay
            await trio.sleep(delay)

    async def _read_loop(self) -> None:
        while self.conn.state is not State.CLOSED or self._linger:
            data = await self.stream.receive_some(MAX_READ)
            if self._bucket is not None:  # inbound streams only
                await self._shape(len(data))
            if self._linger and self.conn.state is State.CLOSED:
                if not data:
                    return
                continue  # after shutdown(): discard until the peer closes
            self._last_rx = trio.current_time()
            self.conn.receive_data(data)
            if self.ready.is_set():
                # The core's answers go out before a handler runs (one may wait, e.g. for room
                # in the gateway's queue).
                await self.flush()
            # Before that no handler waits: the core's answer to this chunk goes out with the
            # first event's (a refusal at the header is one write: header, features, error).
            if await self._drain_events():
                return
            await self.flush()
        await self._drain_events()

    async def handle_pending_events(self) -> None:
        """Handle the events a driver action queued in the core (e.g. ``Authenticated`` after
        :meth:`send` of a dialback verdict): the reader only looks after the peer's next bytes,
        and an authenticated peer may stay quiet (the establishment timer would then close it)."""
        await self._drain_events()

    async def _drain_events(self) -> bool:
        """Handle queued events; True when the stream is over."""
        async with self._event_lock:
            return await self._drain_events_in_order()

    async def _drain_events_in_order(self) -> bool:
        while (event := self.conn.next_event()) is not None:
            if isinstance(event, StartTls):
                await self._start_tls(event.server_side)
                continue
            if isinstance(event, StanzaReceived):
                self._last_stanza = trio.current_time()
                self.stanzas_in += 1
            elif isinstance(event, StreamErrorReceived):
                self.error_received = event.condition
            if isinstance(event, Authenticated) and self.auth_method is None:
                self.auth_method = event.method
            if isinstance(event, StreamReady) or (
                isinstance(event, Authenticated) and self.conn.role is Role.RECEIVING
            ):
                self.ready.set()
            await self._on_event(self, event)
            await self.flush()
            if isinstance(event, StreamClosed):
                if event.error:
                    self.error_sent = self.error_sent or event.error
                if event.error and not self.close_reason:
                    self.close_reason = f"{event.error}: {event.reason}"
                elif not self.close_reason:
                    self.close_reason = event.reason
                return True
        return False

    async def _start_tls(self, server_side: bool) -> None:
        await self.flush()
        if self._ssl_context is None:
            await self.close("internal-server-error", "no TLS context configured")
            return
        # On a socket (every real stream) OpenSSL reads and writes the descriptor itself
        # (certs.socket_tls: ~4.5 KiB less per idle TLS stream than trio.SSLStream's two memory
        # BIOs); any other transport (tests' in-memory streams) keeps trio.SSLStream.
        stream_type = SocketTlsStream if isinstance(self.stream, trio.SocketStream) else trio.SSLStream
        tls = stream_type(self.stream, self._ssl_context, server_side=server_side, server_hostname=None)
        try:
            with trio.fail_after(TLS_HANDSHAKE_TIMEOUT):
                await tls.do_handshake()
        except (ssl.SSLError, trio.BrokenResourceError, trio.TooSlowError) as exc:
            self.tls_failure = tls_failure(exc)
            await send_pending_alert(tls)
            raise
        self.stream = tls
        self.tls_version = tls.version()
        self.conn.tls_established(peer_certificate_check(tls))
        await self.flush()

    async def _timers(self) -> None:
        t = self.timeouts
        while True:
            now = trio.current_time()
            deadlines = [self._last_stanza + t.inactivity]
            if not self.ready.is_set():
                deadlines.append(self._started + t.establishment)
            if t.keepalive is not None:
                deadlines.append(self._last_tx + t.keepalive)
                if self._expect_peer_traffic and self.ready.is_set():
                    deadlines.append(self._last_rx + t.keepalive)
            await trio.sleep_until(max(now, min(deadlines)))
            now = trio.current_time()
            if not self.ready.is_set() and now >= self._started + t.establishment:
                await self.close("connection-timeout", "stream establishment timeout")
                return
            if now >= self._last_stanza + t.inactivity:
                await self.close()
                self.close_reason = "inactivity timeout"
                return
            if t.keepalive is not None:
                if self._expect_peer_traffic and self.ready.is_set() and (
                    now >= self._last_rx + t.keepalive
                ):
                    await self.close("connection-timeout", "no traffic within keep-alive interval")
                    return
                if now >= self._last_tx + t.keepalive:
                    await self.send(KeepAlive())


def _peer_address(stream: trio.abc.Stream) -> str:
    """``ip:port`` of the peer of a socket stream (``?`` for other streams, e.g. in tests)."""
    sock = getattr(stream, "socket", None)
    try:
        host, port = sock.getpeername()[:2]  # type: ignore[union-attr]
    except (AttributeError, OSError, TypeError, ValueError):
        return "?"
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
