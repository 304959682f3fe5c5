"""Edge side of the loopback channel: listen on ``[edge] internal-listen`` for the gateway.

Theory of operation
-------------------
The edge owns one :class:`~edgeproxy.loopback.endpoint.ChannelEndpoint` for its whole life and
serves WebSocket connections on the internal address (SPEC §1 and §10: Lync's port 23456,
127.0.0.1 by default). At most one gateway connection is active: a new one *replaces* the old
(the old connection is cancelled first, and its un-acked items are re-sent on the new one),
because a gateway that reconnects after a network hiccup must not wait for the dead
connection's timeout — but only once the new one has **proven the channel secret** (issue 14):
the replacement happens in the endpoint's ``on_authenticated`` callback, after the Hellos and
the proofs (``endpoint.py``). Until then the new connection touches nothing shared; one that
fails to authenticate is closed (1008) and reported to ``on_refused`` (EP5003) while the live
connection goes on carrying stanzas. So any local user may still open the port, but only the
holder of ``<state-dir>/channel.secret`` can take the channel over.

Mutual TLS (``[edge] internal-tls``, a gateway on another host): with an ``ssl_context``
(``loopback.tls.edge_channel_context``: client certificate required) each TCP connection first
completes a TLS handshake of its own — done here, not inside trio-websocket, so that a refused
handshake (no client certificate, an unknown CA, a plain-text client) is *seen*: it is reported
to ``on_refused(peer, reason)`` (the edge emits ``EP5003`` channel-refused) and the connection
closed at once. Reports of the same peer host and reason are repeated at most once per
``REFUSAL_REPORT_INTERVAL`` (a gateway retrying with back-off must not flood the event log),
with the number held back. Refused openings (a wrong or missing proof, a wrong version or role)
are reported through the same limiter.

``serve_loopback`` is a ``nursery.start``-able task: ``task_status.started`` gets the bound
``(host, port)`` (useful with port 0 in tests). It also runs the endpoint's outage watchdog, which
bounces stanzas queued for a gateway that stays away (SPEC §6 rule 5).

Bounded: ``MAX_CONNECTIONS`` connections at once (handshaking or open). When all are taken, a
new connection evicts the oldest one that has not authenticated yet (it is closed), and is closed
itself only when every slot holds an authenticated connection: a local user who opens sixteen
silent connections cannot keep the real gateway from reconnecting (each of them would otherwise
hold its slot for the whole opening timeout).

Failure boundary: each accepted connection runs inside ``ops.boundary.contain``
(``Surface.CHANNEL_FRAME``): a connection ending (closed, reset, refused frame) is normal; anything
else one connection raises — a malformed opening handshake trio-websocket did not map, a bug — is
reported (EP1007 through ``endpoint.telemetry``) and ends that connection only, never the listener.
Frames and items are contained inside the endpoint (``loopback/endpoint.py``).
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from functools import partial

import trio
from trio_websocket import ConnectionClosed, wrap_server_stream

from edgeproxy.certs.handshake import send_pending_alert, tls_failure
from edgeproxy.loopback.endpoint import ChannelEndpoint
from edgeproxy.loopback.frames import MAX_FRAME_BYTES, FrameError
from edgeproxy.ops.boundary import Surface, contain

#: WebSocket messages queued inside trio-websocket per connection. The channel's own window is
#: the real flow control; this only decouples the socket reader from frame handling.
WS_MESSAGE_QUEUE = 4
#: Seconds for the TLS handshake, and for the WebSocket opening and closing handshakes.
WS_HANDSHAKE_TIMEOUT = 10.0
#: Connections the internal listener holds at once: one gateway, its replacement, and a few
#: strays; unauthenticated connections beyond it are closed on accept (bounded memory).
MAX_CONNECTIONS = 16
#: Seconds before a refusal of the same peer host for the same reason is reported again.
REFUSAL_REPORT_INTERVAL = 60.0

RefusalReport = Callable[[str, str], None]
_CONNECTION_ENDS = (ConnectionClosed, FrameError, trio.BrokenResourceError, trio.ClosedResourceError)


class _RefusalLimiter:
    """Pass on the first refusal per (peer host, reason) in each ``REFUSAL_REPORT_INTERVAL``."""

    MAX_KEYS = 256  # distinct (host, reason) pairs remembered; older ones are forgotten

    def __init__(self, report: RefusalReport | None) -> None:
        self._report = report
        self._last: dict[tuple[str, str], tuple[float, int]] = {}

    def __call__(self, host: str, port: int, reason: str) -> None:
        if self._report is None:
            return
        now = trio.current_time()
        key = (host, reason)
        last = self._last.get(key)
        if last is not None and now - last[0] < REFUSAL_REPORT_INTERVAL:
            self._last[key] = (last[0], last[1] + 1)
            return
        held = f" ({last[1]} more since the last report)" if last is not None and last[1] else ""
        if len(self._last) >= self.MAX_KEYS:
            self._last.pop(next(iter(self._last)))
        self._last[key] = (now, 0)
        self._report(f"{host}:{port}", reason + held)


async def serve_loopback(
    endpoint: ChannelEndpoint,
    host: str,
    port: int,
    *,
    ssl_context: ssl.SSLContext | None = None,
    on_refused: RefusalReport | None = None,
    task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Accept gateway connections forever; cancel to stop."""
    current: list[trio.CancelScope] = []
    #: connections that have not authenticated yet, oldest first (the ones a newcomer evicts)
    opening: list[trio.CancelScope] = []
    slots = trio.Semaphore(MAX_CONNECTIONS)
    refused = _RefusalLimiter(on_refused)

    async def handle(stream: trio.SocketStream) -> None:
        try:
            peer_host, peer_port = stream.socket.getpeername()[:2]
        except OSError:  # gone before we looked
            await trio.aclose_forcefully(stream)
            return
        try:
            await contain(
                Surface.CHANNEL_FRAME, f"{peer_host}:{peer_port}", endpoint.telemetry,
                partial(handle_one, stream, peer_host, peer_port), answer_name="connection closed",
            )
        finally:
            await trio.aclose_forcefully(stream)

    async def handle_one(stream: trio.SocketStream, peer_host: str, peer_port: int) -> None:
        if slots.value == 0:
            if not opening:
                refused(peer_host, peer_port, f"{MAX_CONNECTIONS} connections already open")
                await trio.aclose_forcefully(stream)
                return
            opening.pop(0).cancel()  # the oldest unauthenticated connection makes room
        with trio.CancelScope() as mine:
            async with slots:
                opening.append(mine)  # only slot holders are evicted: that frees a slot
                try:
                    await serve_slot(stream, peer_host, peer_port, mine)
                finally:
                    if mine in opening:
                        opening.remove(mine)

    async def serve_slot(
        stream: trio.SocketStream, peer_host: str, peer_port: int, mine: trio.CancelScope
    ) -> None:
        transport: trio.abc.Stream = stream
        if ssl_context is not None:
            tls = trio.SSLStream(stream, ssl_context, server_side=True)
            try:
                with trio.fail_after(WS_HANDSHAKE_TIMEOUT):
                    await tls.do_handshake()
            except (trio.BrokenResourceError, trio.TooSlowError) as exc:
                refused(peer_host, peer_port, f"TLS handshake failed: {tls_failure(exc)}")
                await send_pending_alert(tls)
                await trio.aclose_forcefully(stream)
                return
            transport = tls
        try:
            await _serve_connection(transport, partial(refused, peer_host, peer_port), mine)
        except* _CONNECTION_ENDS:
            pass  # a connection ending is not a failure (the rest reaches the boundary)
        finally:
            await trio.aclose_forcefully(transport)

    async def _serve_connection(
        transport: trio.abc.Stream, on_refused: Callable[[str], None], mine: trio.CancelScope
    ) -> None:
        async with trio.open_nursery() as nursery:
            ws = None
            with trio.move_on_after(WS_HANDSHAKE_TIMEOUT):
                try:
                    request = await wrap_server_stream(
                        nursery, transport, message_queue_size=WS_MESSAGE_QUEUE, max_message_size=MAX_FRAME_BYTES
                    )
                    ws = await request.accept()
                except (ConnectionClosed, trio.BrokenResourceError, trio.ClosedResourceError):
                    ws = None  # the peer went away during the opening handshake
            if ws is not None:
                with trio.CancelScope() as scope:

                    def take_over() -> None:
                        # authenticated: no longer evictable, and it replaces the previous one
                        if mine in opening:
                            opening.remove(mine)
                        for other in current:
                            other.cancel()
                        current.append(scope)

                    try:
                        await endpoint.run_connection(ws, on_authenticated=take_over, on_refused=on_refused)
                    finally:
                        if scope in current:
                            current.remove(scope)
            nursery.cancel_scope.cancel()  # the connection's reader task

    async with trio.open_nursery() as nursery:
        await nursery.start(endpoint.watch_outage)
        listeners = await trio.open_tcp_listeners(port, host=host)
        nursery.start_soon(trio.serve_listeners, handle, listeners)
        bound = listeners[0].socket.getsockname()
        task_status.started((str(bound[0]), bound[1]))
