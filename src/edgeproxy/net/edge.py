"""``EdgeServer``: the S2S side of one edge — listener, router, outbound pool — in one nursery.

Theory of operation
-------------------
``run`` is ``nursery.start``-compatible and reports the bound listeners (port 0 in tests). The
listeners run in their own cancel scope so that ``stop_accepting`` closes them while the streams
go on. The outbound pool (``net/pool.py``) reports its links to the same
:class:`~edgeproxy.ops.telemetry.Telemetry` (queue depth, deliveries, established/ended streams).

Graceful stop (SPEC §10, issue 7), driven by ``app.py``:

1. ``stop_accepting()`` — close the listening sockets; the pool refuses new links (a stanza for a
   partner without a link is bounced ``remote-server-timeout``).
2. ``drain(deadline)`` — wait until every outbound queue is written out (or its link failed and
   bounced it), at most until ``deadline``; the links signal it, nothing polls.
3. ``close_streams(grace)`` — every stream, both ways, ends with ``<system-shutdown/>``; then
   whatever is still queued (links that never connected) is bounced to its local sender.

Cancelling ``run`` aborts every stream without the closing handshake.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Sequence
from functools import partial

import trio

from edgeproxy.net.context import EdgeContext
from edgeproxy.net.listener import InboundHandler, serve_s2s
from edgeproxy.net.pool import Held, OutboundPool
from edgeproxy.net.router import Router
from edgeproxy.net.session import S2SSession
from edgeproxy.ops.metrics import BounceCause
from edgeproxy.ops.status import Direction
from edgeproxy.ops.telemetry import Telemetry

log = logging.getLogger("edgeproxy.net.edge")


class EdgeServer:
    """Built in dependency order: the pool (its bounces go to the router's ``bounce_local``),
    the router (with the pool), the inbound handler (with the router)."""

    def __init__(self, ctx: EdgeContext, telemetry: Telemetry | None = None) -> None:
        self.ctx = ctx
        self.telemetry = telemetry if telemetry is not None else Telemetry()
        self.pool = OutboundPool(ctx, self._bounce_local, self.telemetry)
        self.router = Router(ctx.policy, ctx.delivery, self.pool, self.telemetry)
        self.inbound = InboundHandler(ctx, self.router, self.telemetry)
        self.listeners: list[trio.SocketListener] = []
        self._accepting = trio.CancelScope()

    async def _bounce_local(self, element: Held, condition: str, cause: BounceCause) -> None:
        """The pool's bounce: an error to the stanza's local sender, through the router."""
        await self.router.bounce_local(element, condition, cause)

    async def run(
        self,
        listen: list[tuple[str | None, int]],
        *,
        sockets: Sequence[socket.socket] = (),
        task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve ``listen`` — or, when given, the listening ``sockets`` someone else made (an edge
        worker's share of the external listeners) — until cancelled."""
        async with trio.open_nursery() as nursery:
            await nursery.start(self.pool.run)
            listeners: list[trio.SocketListener] = []
            if sockets:
                listeners.extend(await nursery.start(self._serve, None, 0, nursery, sockets))
            else:
                for host, port in listen:
                    listeners.extend(await nursery.start(self._serve, host, port, nursery))
            self.listeners = listeners
            task_status.started(listeners)

    async def _serve(
        self, host: str | None, port: int, streams: trio.Nursery, sockets: Sequence[socket.socket] = (),
        *, task_status: trio.TaskStatus[list[trio.SocketListener]],
    ) -> None:
        """Accept inside ``_accepting`` (``stop_accepting`` cancels it); streams run in ``streams``."""
        with self._accepting:
            await serve_s2s(self.inbound, host, port, handler_nursery=streams, sockets=sockets,
                            task_status=task_status)

    # -- graceful stop ----------------------------------------------------------------------

    def stop_accepting(self) -> None:
        """Close the listening sockets and refuse new outbound links; streams go on."""
        self._accepting.cancel()
        self.pool.accepting = False

    async def drain(self, deadline: float) -> bool:
        """Wait (until ``deadline``, trio time) for every outbound queue to be written; True if so."""
        with trio.move_on_at(deadline):
            await self.pool.wait_written()
            return True
        return False

    def sessions(self) -> list[tuple[S2SSession, Direction]]:
        """Every open session, inbound and outbound."""
        found = [(s, Direction.INBOUND) for s in self.inbound.sessions if not s.closed.is_set()]
        for link in self.pool.links.values():
            if link.session is not None and not link.session.closed.is_set():
                found.append((link.session, Direction.OUTBOUND))
        return found

    async def close_streams(self, grace: float) -> int:
        """Close every stream with ``system-shutdown``, then bounce what is still queued.

        Waits at most ``grace`` seconds for the streams to end; returns how many stanzas were
        bounced meanwhile (by this call or by links ending).
        """
        bounced_before = self.telemetry.bounced
        with trio.move_on_after(grace):
            async with trio.open_nursery() as nursery:
                for session, _direction in self.sessions():
                    nursery.start_soon(partial(session.shutdown, grace=grace))
            for session, _direction in self.sessions():
                await session.closed.wait()
        await self.pool.bounce_queued("remote-server-timeout")
        return self.telemetry.bounced - bounced_before


def bound_port(listeners: list[trio.SocketListener]) -> int:
    return int(listeners[0].socket.getsockname()[1])
