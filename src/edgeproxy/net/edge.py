"""``EdgeServer``: the S2S side of one edge — listener, router, outbound pool — in one nursery.

``run`` is ``nursery.start``-compatible and reports the bound listeners (port 0 in tests).
Cancelling it stops accepting and aborts every stream (graceful ``system-shutdown`` comes with
the service-control issue).
"""

from __future__ import annotations

import trio

from edgeproxy.net.context import EdgeContext
from edgeproxy.net.listener import InboundHandler, serve_s2s
from edgeproxy.net.pool import OutboundPool
from edgeproxy.net.router import Router


class EdgeServer:
    def __init__(self, ctx: EdgeContext) -> None:
        self.ctx = ctx
        self.router = Router(ctx.policy, ctx.delivery)
        self.inbound = InboundHandler(ctx, self.router)

    async def run(
        self,
        listen: list[tuple[str | None, int]],
        *,
        task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        async with trio.open_nursery() as nursery:
            self.router.pool = OutboundPool(self.ctx, nursery, self.router.bounce_local)
            listeners: list[trio.SocketListener] = []
            for host, port in listen:
                listeners.extend(await nursery.start(serve_s2s, self.inbound, host, port))
            task_status.started(listeners)


def bound_port(listeners: list[trio.SocketListener]) -> int:
    return int(listeners[0].socket.getsockname()[1])
