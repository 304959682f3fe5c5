"""Gateway side of the loopback channel: connect to the edge, reconnect with back-off.

Theory of operation
-------------------
The gateway owns one :class:`~edgeproxy.loopback.endpoint.ChannelEndpoint` and keeps a WebSocket
to the edge's internal address open. When the connection fails or cannot be made, it waits and
tries again with exponential back-off (``BACKOFF_INITIAL`` doubling up to ``BACKOFF_MAX``, with
±25 % jitter so that several gateways do not reconnect in step); a connection that completed its
Hello resets the back-off. Items queued meanwhile stay in the endpoint and go out (with the
un-acked ones, re-sent) on the next connection; if the edge stays away longer than the
endpoint's outage bound they are bounced to their senders.

Mutual TLS (``[edge] internal-tls``): with an ``ssl_context`` (``loopback.tls``) the TLS
handshake is run here before the WebSocket one, verifying the edge's certificate for
``server_hostname`` (default: the host connected to). With TLS 1.3 the *client* finishes its
handshake before the server has judged the client certificate: an edge refusing ours answers
with an alert on the first read. The stream handed to trio-websocket is therefore watched
(:class:`_Watched`): the first transport failure cancels the WebSocket opening handshake at once
(trio-websocket would otherwise wait for its timeout) and names OpenSSL's reason. A refused or
failed TLS handshake is logged as a warning — once per distinct reason, then at info level while
it repeats (the back-off retries go on) — which the event log carries as ``EP9002``.

Failure boundary: each connection attempt runs inside ``ops.boundary.contain``
(``Surface.CHANNEL_FRAME``, reported through ``endpoint.telemetry``): whatever one connection
raises beyond the expected connection errors is reported (EP1007) and followed by the back-off and
a new attempt, like any failed connection — the gateway never stops reconnecting.
"""

from __future__ import annotations

import logging
import random
import ssl

import trio
from trio_websocket import ConnectionClosed, HandshakeError, WebSocketConnection, wrap_client_stream

from edgeproxy.certs.handshake import send_pending_alert, tls_failure
from edgeproxy.loopback.endpoint import ChannelEndpoint
from edgeproxy.loopback.frames import MAX_FRAME_BYTES, FrameError
from edgeproxy.loopback.server import WS_HANDSHAKE_TIMEOUT, WS_MESSAGE_QUEUE
from edgeproxy.ops.boundary import Surface, contain

log = logging.getLogger(__name__)

#: First wait after a failed connection, seconds.
BACKOFF_INITIAL = 0.1
#: Longest wait between attempts, seconds (well under the outage bound, so a returning edge is
#: found before stanzas are bounced).
BACKOFF_MAX = 5.0
#: The resource path on the edge's WebSocket listener.
LOOPBACK_RESOURCE = "/loopback"


#: What ends one connection attempt (logged, then the back-off and a new attempt).
_CONNECTION_ERRORS = (
    OSError, HandshakeError, ConnectionClosed, FrameError, trio.TooSlowError,
    trio.BrokenResourceError, trio.ClosedResourceError,
)


class ChannelTlsError(Exception):
    """The TLS handshake with the edge failed or the edge refused our certificate."""


class _Watched(trio.abc.Stream):
    """A stream that remembers its first failure and cancels ``scope`` when it happens."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.failure: BaseException | None = None
        self.scope: trio.CancelScope | None = None

    def _failed(self, exc: BaseException) -> None:
        if self.failure is None:
            self.failure = exc
            if self.scope is not None:
                self.scope.cancel()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        try:
            await self.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self._failed(exc)
            raise

    async def wait_send_all_might_not_block(self) -> None:
        await self.stream.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        try:
            data = await self.stream.receive_some(max_bytes)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self._failed(exc)
            raise
        if not data:
            self._failed(trio.BrokenResourceError("the edge closed the connection"))
        return data

    async def aclose(self) -> None:
        await self.stream.aclose()


async def _connect(
    endpoint: ChannelEndpoint, host: str, port: int, ssl_context: ssl.SSLContext | None, server_hostname: str | None
) -> None:
    """One connection: TCP, TLS if configured, WebSocket, then the channel until it ends."""
    stream = await trio.open_tcp_stream(host, port)
    watched = _Watched(stream)
    try:
        if ssl_context is not None:
            tls = trio.SSLStream(stream, ssl_context, server_hostname=server_hostname or host)
            try:
                with trio.fail_after(WS_HANDSHAKE_TIMEOUT):
                    await tls.do_handshake()
            except (trio.BrokenResourceError, trio.TooSlowError) as exc:
                await send_pending_alert(tls)
                raise ChannelTlsError(tls_failure(exc)) from None
            watched = _Watched(tls)
        try:
            ws = await _websocket(endpoint, watched, host)
        except BaseExceptionGroup as group:  # a nursery's: re-raise the first expected failure
            expected, rest = group.split(_CONNECTION_ERRORS)
            if rest is not None or expected is None:
                raise
            first: BaseException = expected
            while isinstance(first, BaseExceptionGroup):
                first = first.exceptions[0]
            raise first from None
        if ws is None:
            if watched.failure is not None and ssl_context is not None:
                raise ChannelTlsError(f"the edge refused the connection: {tls_failure(watched.failure)}")
            if watched.failure is not None:
                raise HandshakeError(f"WebSocket opening handshake failed: {watched.failure}")
            raise trio.TooSlowError("WebSocket opening handshake timed out")
    finally:
        await trio.aclose_forcefully(watched.stream)


async def _websocket(endpoint: ChannelEndpoint, watched: _Watched, host: str) -> WebSocketConnection | None:
    """The WebSocket over ``watched`` and the channel on it; None if the opening failed."""
    async with trio.open_nursery() as nursery:
        ws: WebSocketConnection | None = None
        with trio.move_on_after(WS_HANDSHAKE_TIMEOUT) as scope:
            watched.scope = scope
            try:
                ws = await wrap_client_stream(
                    nursery,
                    watched,  # type: ignore[arg-type]  # any trio Stream works
                    host,
                    LOOPBACK_RESOURCE,
                    message_queue_size=WS_MESSAGE_QUEUE,
                    max_message_size=MAX_FRAME_BYTES,
                )
            except (ConnectionClosed, trio.BrokenResourceError, trio.ClosedResourceError):
                ws = None
        watched.scope = None
        if watched.failure is not None:
            ws = None
        if ws is not None:
            await endpoint.run_connection(ws)
        nursery.cancel_scope.cancel()  # the connection's reader task
    return ws


async def run_loopback_client(
    endpoint: ChannelEndpoint,
    host: str,
    port: int,
    *,
    ssl_context: ssl.SSLContext | None = None,
    server_hostname: str | None = None,
    backoff_initial: float = BACKOFF_INITIAL,
    backoff_max: float = BACKOFF_MAX,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Stay connected to the edge forever; cancel to stop (queued items stay in ``endpoint``)."""
    delay = backoff_initial
    last_tls_problem: str | None = None

    async def attempt() -> None:
        nonlocal last_tls_problem
        try:
            await _connect(endpoint, host, port, ssl_context, server_hostname)
        except ChannelTlsError as exc:
            level = logging.INFO if str(exc) == last_tls_problem else logging.WARNING
            log.log(level, "loopback: TLS with the edge at %s:%d failed: %s (retrying)", host, port, exc)
            last_tls_problem = str(exc)
        except _CONNECTION_ERRORS as exc:
            log.info("loopback: cannot connect to %s:%d: %s", host, port, exc)

    async with trio.open_nursery() as nursery:
        await nursery.start(endpoint.watch_outage)
        task_status.started()
        while True:
            connections_before = endpoint.statistics().connections
            await contain(Surface.CHANNEL_FRAME, f"edge {host}:{port}", endpoint.telemetry, attempt,
                          answer_name="reconnecting")
            if endpoint.statistics().connections > connections_before:
                delay = backoff_initial
                last_tls_problem = None
            await trio.sleep(delay * random.uniform(0.75, 1.25))
            delay = min(delay * 2, backoff_max)
