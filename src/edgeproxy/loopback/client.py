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
"""

from __future__ import annotations

import logging
import random
import ssl

import trio
from trio_websocket import HandshakeError, open_websocket

from edgeproxy.loopback.endpoint import ChannelEndpoint
from edgeproxy.loopback.frames import MAX_FRAME_BYTES, FrameError
from edgeproxy.loopback.server import WS_HANDSHAKE_TIMEOUT, WS_MESSAGE_QUEUE

log = logging.getLogger(__name__)

#: First wait after a failed connection, seconds.
BACKOFF_INITIAL = 0.1
#: Longest wait between attempts, seconds (well under the outage bound, so a returning edge is
#: found before stanzas are bounced).
BACKOFF_MAX = 5.0
#: The resource path on the edge's WebSocket listener.
LOOPBACK_RESOURCE = "/loopback"


async def run_loopback_client(
    endpoint: ChannelEndpoint,
    host: str,
    port: int,
    *,
    ssl_context: ssl.SSLContext | None = None,
    backoff_initial: float = BACKOFF_INITIAL,
    backoff_max: float = BACKOFF_MAX,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Stay connected to the edge forever; cancel to stop (queued items stay in ``endpoint``)."""
    delay = backoff_initial
    async with trio.open_nursery() as nursery:
        await nursery.start(endpoint.watch_outage)
        task_status.started()
        while True:
            connections_before = endpoint.statistics().connections
            try:
                async with open_websocket(
                    host,
                    port,
                    LOOPBACK_RESOURCE,
                    use_ssl=ssl_context or False,
                    message_queue_size=WS_MESSAGE_QUEUE,
                    max_message_size=MAX_FRAME_BYTES,
                    connect_timeout=WS_HANDSHAKE_TIMEOUT,
                    disconnect_timeout=WS_HANDSHAKE_TIMEOUT,
                ) as ws:
                    await endpoint.run_connection(ws)
            except (OSError, HandshakeError, FrameError, trio.TooSlowError) as exc:
                log.info("loopback: cannot connect to %s:%d: %s", host, port, exc)
            if endpoint.statistics().connections > connections_before:
                delay = backoff_initial
            await trio.sleep(delay * random.uniform(0.75, 1.25))
            delay = min(delay * 2, backoff_max)
