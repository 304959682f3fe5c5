"""The S2S listener: accepts partner connections, enforces the connection limits, runs inbound
sessions (receiving role), and plays the receiving and authoritative dialback roles.

Theory of operation
-------------------
``serve_s2s`` opens TCP listeners (``nursery.start``-compatible: it reports the listeners, so
tests may bind port 0) and runs one :func:`handle_inbound` task per connection with
:func:`trio.serve_listeners` (which also rides out EMFILE by backing off).

Limits (SPEC §3): the total limit is checked at accept — a connection beyond it gets stream
error ``resource-constraint`` without further work; the per-partner limit (the partner's own,
else the gateway's) is checked as soon as the partner is known (header ``from``, or the first
authenticated domain for peers that omit it).

Dialback (XEP-0220): ``DialbackVerifyNeeded`` starts a verification task
(:func:`~edgeproxy.net.pool.verify_dialback`) whose verdict goes back on the stream; pending
verifications per stream are bounded by the core (``MAX_PENDING_DIALBACK``). ``db:verify``
requests (we are authoritative) are answered by the core itself with the shared secret.
"""

from __future__ import annotations

import contextlib
import logging
from collections import Counter
from dataclasses import dataclass, field

import trio

from edgeproxy.net.context import EdgeContext
from edgeproxy.net.pool import verify_dialback
from edgeproxy.net.router import Router
from edgeproxy.net.session import S2SSession
from edgeproxy.ops.status import Direction
from edgeproxy.ops.telemetry import Telemetry
from edgeproxy.policy import engine
from edgeproxy.policy.model import Partner
from edgeproxy.s2s import (
    Authenticated,
    CloseStream,
    DialbackVerifyNeeded,
    Event,
    LocalProtocolError,
    PeerCertificateRejected,
    Role,
    S2SConnection,
    StanzaReceived,
    State,
    StreamOpened,
)

log = logging.getLogger("edgeproxy.net.listener")


@dataclass
class ConnectionCounts:
    """Open inbound streams, in total and per partner (primary domain)."""

    total: int = 0
    per_partner: Counter[str] = field(default_factory=Counter)


class InboundHandler:
    """Everything one edge needs to run its inbound streams."""

    def __init__(self, ctx: EdgeContext, router: Router, telemetry: Telemetry | None = None) -> None:
        self.ctx = ctx
        self.router = router
        self.telemetry = telemetry if telemetry is not None else Telemetry()
        self.counts = ConnectionCounts()
        self.sessions: set[S2SSession] = set()
        #: Partner (primary domain) of each established inbound session.
        self.partners: dict[S2SSession, str | None] = {}

    async def __call__(self, stream: trio.abc.Stream) -> None:
        snapshot = self.ctx.policy()
        conn = S2SConnection(Role.RECEIVING, policy=self.ctx.policy, secret=self.ctx.secret)
        if self.counts.total >= snapshot.gateway.connection_limit:
            log.warning("inbound connection refused: total limit %d", snapshot.gateway.connection_limit)
            self.telemetry.limit_reached("connection", snapshot.gateway.connection_limit)
            # Our header and the stream error at once (RFC 6120 §4.9.1.2); nothing is read.
            await _refuse(stream, conn, "resource-constraint", "total connection limit reached")
            return
        self.counts.total += 1
        partner_counted: list[Partner] = []
        try:
            async with trio.open_nursery() as nursery:
                session = S2SSession(
                    stream, conn, ssl_context=self.ctx.server_ssl,
                    timeouts=self.ctx.timeouts(None),
                    on_event=lambda s, e: self._on_event(s, e, nursery, partner_counted),
                )
                self.sessions.add(session)
                await session.run()
                nursery.cancel_scope.cancel()
        finally:
            self.sessions.discard(session)
            established = session in self.partners
            partner = self.partners.pop(session, None)
            if partner is None:
                partner = self.telemetry.partner_of(self.ctx.policy, session)
            self.telemetry.stream_ended(session, Direction.INBOUND, partner, established=established)
            self.counts.total -= 1
            for partner in partner_counted:
                self.counts.per_partner[partner.domain] -= 1
            log.info("inbound stream from %s ended: %s", conn.peer_from, session.close_reason)

    async def _count_partner(self, session: S2SSession, domain: str, counted: list[Partner]) -> None:
        snapshot = self.ctx.policy()
        partner = engine.partner_for_domain(snapshot, domain)
        if partner is None or any(p.domain == partner.domain for p in counted):
            return
        refused = engine.admit_stream(
            snapshot, partner, self.counts.total - 1, self.counts.per_partner[partner.domain]
        )
        if refused is not None:
            limit = engine.partner_connection_limit(snapshot, partner)
            self.telemetry.limit_reached("partner-connection", limit, partner.domain)
            await session.close(refused.condition, refused.rule)
            return
        self.counts.per_partner[partner.domain] += 1
        counted.append(partner)
        session.timeouts = self.ctx.timeouts(partner)

    async def _on_event(
        self, session: S2SSession, event: Event, nursery: trio.Nursery, counted: list[Partner]
    ) -> None:
        if isinstance(event, StanzaReceived):
            await self.router.inbound(session, event)
        elif isinstance(event, DialbackVerifyNeeded):
            nursery.start_soon(self._verify, session, event)
        elif isinstance(event, PeerCertificateRejected):
            log.warning("inbound %s: no SASL EXTERNAL, peer certificate rejected: %s", event.domain, event.reason)
        elif isinstance(event, StreamOpened) and event.from_:
            await self._count_partner(session, event.from_, counted)
        elif isinstance(event, Authenticated):
            log.info("inbound %s -> %s authenticated by %s", event.remote_domain, event.local_domain, event.method)
            if not counted:
                await self._count_partner(session, event.remote_domain, counted)
            if session not in self.partners and session.conn.state is not State.CLOSED:
                partner = self.telemetry.partner_of(self.ctx.policy, session)
                self.partners[session] = partner
                self.telemetry.stream_established(session, Direction.INBOUND, partner)

    async def _verify(self, session: S2SSession, need: DialbackVerifyNeeded) -> None:
        verdict = await verify_dialback(self.ctx, need)
        log.info("dialback %s -> %s: %s", need.originating, need.receiving, verdict)
        try:
            await session.send(verdict)
        except (LocalProtocolError, trio.BrokenResourceError, trio.ClosedResourceError):
            return
        await session.flush()
        await session.handle_pending_events()  # Authenticated: ready now, not at the peer's next byte


async def _send_quietly(stream: trio.abc.Stream, data: bytes) -> None:
    if data:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await stream.send_all(data)


async def _refuse(stream: trio.abc.Stream, conn: S2SConnection, condition: str, text: str) -> None:
    await _send_quietly(stream, conn.send(CloseStream(condition, text)))
    await stream.aclose()


async def serve_s2s(
    handler: InboundHandler,
    host: str | None,
    port: int,
    *,
    handler_nursery: trio.Nursery | None = None,
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Listen on ``host:port`` (port 0: any free port) and serve inbound S2S streams forever.

    With ``handler_nursery`` the streams run there, so that cancelling this task only stops
    accepting (graceful shutdown) instead of aborting every inbound stream.
    """
    listeners = await trio.open_tcp_listeners(port, host=host)
    task_status.started(listeners)
    await trio.serve_listeners(handler, listeners, handler_nursery=handler_nursery)
