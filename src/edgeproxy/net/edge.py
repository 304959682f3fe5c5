"""``EdgeServer``: the S2S side of one edge — listener, router, outbound pool — in one nursery.

Theory of operation
-------------------
``run`` is ``nursery.start``-compatible and reports the bound listeners (port 0 in tests). The
listeners run in their own cancel scope so that ``stop_accepting`` closes them while the streams
go on. Outbound links are :class:`ObservedLink`: the pool's link plus what operations need (the
queue depth, outbound deliveries counted as each stanza is written, established/ended streams
reported to :class:`~edgeproxy.ops.telemetry.Telemetry`, the drain).

Graceful stop (SPEC §10, issue 7), driven by ``app.py``:

1. ``stop_accepting()`` — close the listening sockets; the pool refuses new links (a stanza for a
   partner without a link is bounced ``remote-server-timeout``).
2. ``drain(deadline)`` — wait until every outbound queue is written out (or its link failed and
   bounced it), at most until ``deadline``.
3. ``close_streams(grace)`` — every stream, both ways, ends with ``<system-shutdown/>``; then
   whatever is still queued (links that never connected) is bounced to its local sender.

Cancelling ``run`` aborts every stream without the closing handshake.
"""

from __future__ import annotations

import logging
from functools import partial

import trio

from edgeproxy.net.context import EdgeContext
from edgeproxy.net.listener import InboundHandler, serve_s2s
from edgeproxy.net.pool import Bounce, OutboundLink, OutboundPool, wait_any
from edgeproxy.net.router import Router
from edgeproxy.net.session import S2SSession
from edgeproxy.ops import events
from edgeproxy.ops.metrics import Flow, Verdict
from edgeproxy.ops.status import Direction
from edgeproxy.ops.telemetry import Telemetry
from edgeproxy.s2s import SendStanza
from edgeproxy.tokenizer import Element

log = logging.getLogger("edgeproxy.net.edge")

#: How often the drain looks at the outbound queues (seconds).
DRAIN_POLL = 0.02


def _element_name(raw: bytes) -> str:
    """``message`` / ``presence`` / ``iq`` from a stanza's first bytes (no prefix on S2S)."""
    end = next((i for i, b in enumerate(raw[1:40], 1) if b in b" />\t\r\n"), 0)
    return raw[1:end].decode("ascii", "replace") if end else "other"


class ObservedLink(OutboundLink):
    """An outbound link that reports to telemetry and can be drained (see the module docstring)."""

    def __init__(
        self, ctx: EdgeContext, local: str, remote: str, bounce: Bounce, telemetry: Telemetry
    ) -> None:
        self._telemetry = telemetry
        self._session: S2SSession | None = None
        self.session_started = trio.Event()
        self.bounced = 0
        self.bounce_condition: str | None = None

        async def counted_bounce(element: Element, condition: str) -> None:
            self.bounced += 1
            self.bounce_condition = condition
            await bounce(element, condition)

        super().__init__(ctx, local, remote, counted_bounce, telemetry)
        partner = telemetry.partner_of_domain(ctx.policy, remote)
        self.partner = partner

    @property  # type: ignore[override]
    def session(self) -> S2SSession | None:
        return self._session

    @session.setter
    def session(self, session: S2SSession | None) -> None:
        self._session = session
        if session is not None:
            session.on_stanza_sent = self._sent
            self.session_started.set()

    def _sent(self, event: SendStanza) -> None:
        self._telemetry.stanza(self.partner, Flow.OUT, _element_name(event.raw), Verdict.DELIVERED)

    def queue_depth(self) -> int:
        """Stanzas waiting to be written on this link."""
        return int(self._send.statistics().current_buffer_used)

    def close_queue(self) -> None:
        """Accept no more stanzas; the link still writes what is queued."""
        self._send.close()

    async def bounce_queued(self, condition: str) -> None:
        """Bounce everything still queued to its local sender."""
        await self._bounce_all(condition)

    async def watch(self) -> None:
        """Report the stream's establishment and end, failures and bounces (runs beside ``run``)."""
        await wait_any(self.session_started, self.done)
        session = self._session
        if session is not None:
            await wait_any(session.ready, session.closed)
            established = session.ready.is_set()
            if established:
                self._telemetry.stream_established(session, Direction.OUTBOUND, self.partner)
            await session.closed.wait()
            self._telemetry.stream_ended(session, Direction.OUTBOUND, self.partner, established=established)
            if not established and self.failure and session.error_received is None:
                self._telemetry.authentication_failed(self.remote, Direction.OUTBOUND, "partner row",
                                                      self.failure)
        await self.done.wait()
        if self.bounced:
            self._telemetry.emit(events.OUTBOUND_BOUNCED, count=self.bounced, domain=self.remote,
                                 condition=self.bounce_condition)


class ObservedPool(OutboundPool):
    """The outbound pool with :class:`ObservedLink` links; refuses new links once stopping."""

    def __init__(
        self, ctx: EdgeContext, nursery: trio.Nursery, bounce: Bounce, telemetry: Telemetry
    ) -> None:
        super().__init__(ctx, nursery, bounce)
        self._telemetry = telemetry
        self.accepting = True

    async def send(self, local: str, remote: str, raw: bytes, element: Element) -> None:
        link = self.links.get((local, remote))
        if link is None or link.done.is_set() or (
            link.session is not None and link.session.closed.is_set()
        ):
            if not self.accepting:
                await self._bounce(element, "remote-server-timeout")
                return
            link = ObservedLink(self.ctx, local, remote, self._bounce, self._telemetry)
            self.links[(local, remote)] = link
            self._nursery.start_soon(link.run)
            self._nursery.start_soon(link.watch)
        if not link.offer(raw, element):
            await self._bounce(element, "remote-server-timeout")

    def observed_links(self) -> list[ObservedLink]:
        return [link for link in self.links.values() if isinstance(link, ObservedLink)]


class EdgeServer:
    def __init__(self, ctx: EdgeContext, telemetry: Telemetry | None = None) -> None:
        self.ctx = ctx
        self.telemetry = telemetry if telemetry is not None else Telemetry()
        self.router = Router(ctx.policy, ctx.delivery, self.telemetry)
        self.inbound = InboundHandler(ctx, self.router, self.telemetry)
        self.listeners: list[trio.SocketListener] = []
        self._accepting = trio.CancelScope()

    @property
    def pool(self) -> ObservedPool:
        pool = self.router.pool
        assert isinstance(pool, ObservedPool), "EdgeServer.run has not started"
        return pool

    async def run(
        self,
        listen: list[tuple[str | None, int]],
        *,
        task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        async with trio.open_nursery() as nursery:
            self.router.pool = ObservedPool(self.ctx, nursery, self.router.bounce_local, self.telemetry)
            listeners: list[trio.SocketListener] = []
            for host, port in listen:
                listeners.extend(await nursery.start(self._serve, host, port, nursery))
            self.listeners = listeners
            task_status.started(listeners)

    async def _serve(
        self, host: str | None, port: int, streams: trio.Nursery,
        *, task_status: trio.TaskStatus[list[trio.SocketListener]],
    ) -> None:
        """Accept inside ``_accepting`` (``stop_accepting`` cancels it); streams run in ``streams``."""
        with self._accepting:
            await serve_s2s(self.inbound, host, port, handler_nursery=streams, task_status=task_status)

    # -- graceful stop ----------------------------------------------------------------------

    def stop_accepting(self) -> None:
        """Close the listening sockets and refuse new outbound links; streams go on."""
        self._accepting.cancel()
        if self.router.pool is not None:
            self.pool.accepting = False

    def queued(self) -> int:
        return sum(link.queue_depth() for link in self.pool.observed_links() if not link.done.is_set())

    async def drain(self, deadline: float) -> bool:
        """Wait (until ``deadline``, trio time) for every outbound queue to be written; True if so."""
        with trio.move_on_at(deadline):
            while self.queued():
                await trio.sleep(DRAIN_POLL)
            return True
        return False

    def sessions(self) -> list[tuple[S2SSession, Direction]]:
        """Every open session, inbound and outbound."""
        found = [(s, Direction.INBOUND) for s in self.inbound.sessions if not s.closed.is_set()]
        for link in self.pool.observed_links():
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
        for link in self.pool.observed_links():
            link.close_queue()
            await link.bounce_queued("remote-server-timeout")
        return self.telemetry.bounced - bounced_before


def bound_port(listeners: list[trio.SocketListener]) -> int:
    return int(listeners[0].socket.getsockname()[1])
