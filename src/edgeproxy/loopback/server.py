"""Edge side of the loopback channel: listen on ``[edge] internal-listen`` for the gateway.

Theory of operation
-------------------
The edge owns one :class:`~edgeproxy.loopback.endpoint.ChannelEndpoint` for its whole life and
serves WebSocket connections on the internal address (SPEC §1 and §10: Lync's port 23456,
127.0.0.1 by default; mutual TLS when the gateway runs on another host — pass an
``ssl.SSLContext`` with ``verify_mode = CERT_REQUIRED`` and the gateway's CA). At most one gateway
connection is active: a new one *replaces* the old (the old connection is cancelled first, and its
un-acked items are re-sent on the new one), because a gateway that reconnects after a network
hiccup must not wait for the dead connection's timeout.

``serve_loopback`` is a ``nursery.start``-able task: ``task_status.started`` gets the bound
``(host, port)`` (useful with port 0 in tests). It also runs the endpoint's outage watchdog, which
bounces stanzas queued for a gateway that stays away (SPEC §6 rule 5).
"""

from __future__ import annotations

import ssl

import trio
from trio_websocket import WebSocketRequest, serve_websocket

from edgeproxy.loopback.endpoint import ChannelEndpoint
from edgeproxy.loopback.frames import MAX_FRAME_BYTES

#: WebSocket messages queued inside trio-websocket per connection. The channel's own window is
#: the real flow control; this only decouples the socket reader from frame handling.
WS_MESSAGE_QUEUE = 4
#: Seconds for the WebSocket opening and closing handshakes on a loopback link.
WS_HANDSHAKE_TIMEOUT = 10.0


def split_host_port(value: str) -> tuple[str, int]:
    """``"127.0.0.1:23456"`` / ``"[::1]:23456"`` -> (host, port)."""
    host, _, port = value.rpartition(":")
    return host.strip("[]"), int(port)


async def serve_loopback(
    endpoint: ChannelEndpoint,
    host: str,
    port: int,
    *,
    ssl_context: ssl.SSLContext | None = None,
    task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Accept gateway connections forever; cancel to stop."""
    current: list[trio.CancelScope] = []

    async def handler(request: WebSocketRequest) -> None:
        ws = await request.accept()
        for scope in current:
            scope.cancel()  # a new gateway connection replaces the previous one
        with trio.CancelScope() as scope:
            current.append(scope)
            try:
                await endpoint.run_connection(ws)
            finally:
                current.remove(scope)

    async with trio.open_nursery() as nursery:
        await nursery.start(endpoint.watch_outage)
        server = await nursery.start(
            lambda task_status: serve_websocket(
                handler,
                host,
                port,
                ssl_context,
                message_queue_size=WS_MESSAGE_QUEUE,
                max_message_size=MAX_FRAME_BYTES,
                connect_timeout=WS_HANDSHAKE_TIMEOUT,
                disconnect_timeout=WS_HANDSHAKE_TIMEOUT,
                task_status=task_status,
            )
        )
        bound = server.listeners[0]  # trio_websocket.Endpoint(address, port, is_ssl)
        task_status.started((str(bound.address), bound.port))
