"""The S2S listener: accepts partner connections, enforces the connection limits, runs inbound
sessions (receiving role), and plays the receiving and authoritative dialback roles.

Theory of operation
-------------------
``serve_s2s`` opens TCP listeners (``nursery.start``-compatible: it reports the listeners, so
tests may bind port 0) and runs an :class:`InboundHandler` task per connection; its accept loop
rides out EMFILE by backing off, as :func:`trio.serve_listeners` does.

Limits (SPEC §3 and ``[limits]``, ``docs/limits.md``), all checked before authentication:

* at accept, the total limit, then the *unauthenticated* connections from the peer's address
  (``preauth-per-ip``) and in total (``preauth-total``): a connection beyond one gets our header
  and stream error ``resource-constraint`` at once, in one write that does not wait, and is
  closed; nothing is read and no session is built (issue 21: a refusal must cost far less than
  an accepted stream) — except that at
  ``preauth-total`` the oldest unauthenticated connection is aborted to make room, so that a
  flood cannot keep a partner's new stream out. A stream stops counting as
  unauthenticated at its first authenticated domain pair.
* the per-partner limit (the partner's own, else the gateway's) is counted only once the partner
  has *authenticated* — a ``from`` that a stream merely claims takes no partner slot (issue 13:
  20 idle sockets claiming a partner locked the real partner out). A stream that claims a partner
  whose slots are already full is refused at its header (our header, features and the error in
  one write), before any TLS or dialback work.
* writes time out (``write-timeout``) and reads are shaped (``preauth-rate``, then
  ``inbound-rate``): see ``S2SSession``.

Dialback (XEP-0220): ``DialbackVerifyNeeded`` starts a verification task
(:func:`~edgeproxy.net.pool.verify_dialback`) whose verdict goes back on the stream. The core
deduplicates a repeated request for a pair already pending (no second connection) and bounds
the distinct pending pairs per stream (``dialback-per-stream``); here the verifications pending
for all streams from one address are bounded too (``dialback-per-ip``; beyond it the stream is
closed with ``resource-constraint``). ``db:verify`` requests (we are authoritative) are answered
by the core itself with the shared secret.

Failure boundary (``docs/design.md``): an unexpected exception while handling one connection
ends that connection only — the session answers ``internal-server-error`` and the failure is
reported (EP1007, ``edgeproxy_input_failures_total{surface="s2s-inbound"}``); a verification
task that fails gives an invalid verdict (``remote-connection-failed``) and is reported as
surface ``dialback-verify``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import logging
import os
import random
import socket
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import trio

from edgeproxy.net.context import EdgeContext
from edgeproxy.net.pool import verify_dialback
from edgeproxy.net.router import Router
from edgeproxy.net.session import S2SSession, Shaper, Timeouts
from edgeproxy.ops import events
from edgeproxy.ops.boundary import Surface, contain, report
from edgeproxy.ops.status import Direction
from edgeproxy.ops.telemetry import Telemetry
from edgeproxy.policy import engine
from edgeproxy.policy.model import Partner
from edgeproxy.s2s import (
    Authenticated,
    CloseStream,
    DialbackVerdict,
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

#: An unauthenticated stream's establishment deadline is drawn from the last tenth of the
#: timeout: a wave of streams admitted together (a flood refilling freed slots) then times out
#: over seconds, not in one burst that stalls every other stream (seen in the soak test).
ESTABLISHMENT_JITTER = 0.1
#: accept() errors that mean "out of descriptors or memory for now": accept again after
#: ``ACCEPT_RETRY`` seconds (``trio.serve_listeners``' list and pause).
ACCEPT_CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
ACCEPT_RETRY = 0.1


@dataclass
class ConnectionCounts:
    """Open inbound streams: in total, per partner (primary domain, authenticated streams only),
    and those not yet authenticated, in total and per source address."""

    total: int = 0
    per_partner: Counter[str] = field(default_factory=Counter)
    preauth: int = 0
    preauth_per_ip: Counter[str] = field(default_factory=Counter)
    #: Dialback verifications running for streams from each source address.
    dialback_per_ip: Counter[str] = field(default_factory=Counter)


def peer_ip(stream: trio.abc.Stream) -> str:
    """The source address of a socket stream (``?`` for other streams, e.g. in tests)."""
    sock = getattr(stream, "socket", None)
    try:
        return str(sock.getpeername()[0])  # type: ignore[union-attr]
    except (AttributeError, OSError, TypeError, ValueError, IndexError):
        return "?"


class _Preauth:
    """One connection's unauthenticated slot; ``release`` is idempotent."""

    def __init__(self, counts: ConnectionCounts, ip: str) -> None:
        self._counts, self.ip, self.held = counts, ip, True
        counts.preauth += 1
        counts.preauth_per_ip[ip] += 1

    def release(self) -> None:
        if self.held:
            self.held = False
            self._counts.preauth -= 1
            self._counts.preauth_per_ip[self.ip] -= 1
            if self._counts.preauth_per_ip[self.ip] <= 0:
                del self._counts.preauth_per_ip[self.ip]


class InboundHandler:
    """Everything one edge needs to run its inbound streams."""

    def __init__(self, ctx: EdgeContext, router: Router, telemetry: Telemetry | None = None) -> None:
        self.ctx = ctx
        self.router = router
        self.telemetry = telemetry if telemetry is not None else Telemetry()
        self.counts = ConnectionCounts()
        self.sessions: set[S2SSession] = set()
        #: Unauthenticated connections, oldest first (the ones a newcomer may evict).
        self.preauth_order: dict[_Preauth, S2SSession | None] = {}
        #: Partner (primary domain) of each established inbound session.
        self.partners: dict[S2SSession, str | None] = {}

    async def __call__(self, stream: trio.SocketStream) -> None:
        """One accepted connection: refused on the spot when it breaks a limit, else its stream
        runs until it ends (and its slots are given back). The stream is closed on return."""
        ip = peer_ip(stream)
        await contain(Surface.S2S_INBOUND, ip, self.telemetry, lambda: self._handle(stream, ip),
                      answer=lambda _exc: _abort(stream), answer_name="connection closed")

    def _admit(self, stream: trio.SocketStream, ip: str, conn: S2SConnection) -> _Preauth | None:
        """Count a new connection in (its unauthenticated slot), or — when it breaks a limit —
        refuse it at once: our header and stream error ``resource-constraint`` (RFC 6120
        §4.9.1.2) in one write that does not wait, then closed; nothing is read. No checkpoint,
        no session: a flood over a limit costs little more than its accepts (issue 21)."""
        refusal = self._admission_refusal(ip)
        if refusal is not None:
            name, value, text = refusal
            log.debug("inbound connection from %s refused: %s", ip, text)  # EP6001 says it
            self.telemetry.limit_reached(name, value)
            conn.send(CloseStream("resource-constraint", text))
            _refuse_now(stream, conn.data_to_send())
            return None
        self.counts.total += 1
        preauth = _Preauth(self.counts, ip)
        self.preauth_order[preauth] = None
        return preauth

    def _admission_refusal(self, ip: str) -> tuple[str, int, str] | None:
        """(limit name, value, text) of the first limit a new connection from ``ip`` breaks."""
        snapshot, limits = self.ctx.policy(), self.ctx.limits
        if self.counts.total >= snapshot.gateway.connection_limit:
            return "connection", snapshot.gateway.connection_limit, "total connection limit reached"
        if self.counts.preauth_per_ip[ip] >= limits.preauth_per_ip:
            return "preauth-per-ip", limits.preauth_per_ip, "too many unauthenticated connections from your address"
        if self.counts.preauth >= limits.preauth_total and not self._evict_oldest_preauth():
            return "preauth-total", limits.preauth_total, "too many unauthenticated connections"
        return None

    def _evict_oldest_preauth(self) -> bool:
        """Make room among the unauthenticated connections: the oldest is aborted (a flood that
        fills ``preauth-total`` cannot keep a partner's new stream out, which authenticates in
        a fraction of the time a flood needs to cycle every slot). False if none can go."""
        for preauth, session in self.preauth_order.items():
            if session is not None and preauth.held:
                self.telemetry.limit_reached("preauth-total", self.ctx.limits.preauth_total)
                preauth.release()
                del self.preauth_order[preauth]
                session.abort("evicted: too many unauthenticated connections")
                return True
        return False

    async def _handle(self, stream: trio.SocketStream, ip: str) -> None:
        limits = self.ctx.limits
        conn = S2SConnection(Role.RECEIVING, policy=self.ctx.policy, secret=self.ctx.secret,
                             max_pending_dialback=limits.dialback_per_stream)
        preauth = self._admit(stream, ip, conn)
        if preauth is None:
            return
        partner_counted: list[Partner] = []
        session: S2SSession | None = None
        try:
            session = S2SSession(
                stream, conn, ssl_context=self.ctx.server_ssl,
                timeouts=_jittered(self.ctx.timeouts(None)),
                on_event=lambda s, e: self._on_event(s, e, partner_counted, preauth),
                write_timeout=limits.write_timeout,
                shaper=Shaper((limits.preauth_rate, limits.preauth_burst),
                              (limits.inbound_rate, limits.inbound_burst)),
            )
            self.sessions.add(session)
            if preauth.held:
                self.preauth_order[preauth] = session
            await session.run()
        finally:
            preauth.release()
            self.preauth_order.pop(preauth, None)
            self.counts.total -= 1
            for partner in partner_counted:
                self.counts.per_partner[partner.domain] -= 1
                if self.counts.per_partner[partner.domain] <= 0:  # a removed partner leaves nothing
                    del self.counts.per_partner[partner.domain]
            if session is not None:
                self._ended(session, conn)

    def _ended(self, session: S2SSession, conn: S2SConnection) -> None:
        self.sessions.discard(session)
        established = session in self.partners
        partner = self.partners.pop(session, None)
        if partner is None:
            partner = self.telemetry.partner_of(self.ctx.policy, session)
        if session.write_timed_out:
            self.telemetry.emit(events.WRITE_TIMEOUT, peer=session.remote_address,
                                seconds=session.write_timeout, direction=Direction.INBOUND)
        if session.failure is not None:
            report(self.telemetry, Surface.S2S_INBOUND, session.remote_address, session.failure,
                   "stream error internal-server-error")
        self.telemetry.stream_ended(session, Direction.INBOUND, partner, established=established)
        # debug: the event log says it (EP3006, EP7001…), and an INFO record per refused stream
        # was a sixth of the refusal's cost (serve's root logger is at INFO)
        log.debug("inbound stream from %s ended: %s", conn.peer_from, session.close_reason)

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

    async def _on_event(self, session: S2SSession, event: Event, counted: list[Partner], preauth: _Preauth) -> None:
        if isinstance(event, StanzaReceived):
            await self.router.inbound(session, event)
        elif isinstance(event, DialbackVerifyNeeded):
            limit = self.ctx.limits.dialback_per_ip
            if self.counts.dialback_per_ip[preauth.ip] >= limit:
                self.telemetry.limit_reached("dialback-per-ip", limit)
                await session.close("resource-constraint", "too many pending dialback verifications from your address")
                return
            self.counts.dialback_per_ip[preauth.ip] += 1
            session.start_soon(self._verify, session, event, preauth.ip)
        elif isinstance(event, PeerCertificateRejected):
            log.warning("inbound %s: no SASL EXTERNAL, peer certificate rejected: %s", event.domain, event.reason)
            self.telemetry.peer_certificate_rejected(session.remote_address, Direction.INBOUND,
                                                     event.domain, event.reason)
        elif isinstance(event, StreamOpened) and event.from_:
            # The claimed partner's *slot* is taken only once it has authenticated (below). But
            # when its authenticated streams already fill its slots, a new one would be refused
            # after authenticating anyway: refuse it now, at its header, before any TLS or
            # dialback work (a claim takes nothing from the real partner either way).
            snapshot = self.ctx.policy()
            partner = engine.partner_for_domain(snapshot, event.from_)
            if partner is None:
                return
            limit = engine.partner_connection_limit(snapshot, partner)
            if not counted and self.counts.per_partner[partner.domain] >= limit:
                refused = engine.admit_stream(snapshot, partner, self.counts.total - 1,
                                              self.counts.per_partner[partner.domain])
                if refused is not None:
                    self.telemetry.limit_reached("partner-connection", limit, partner.domain)
                    await session.close(refused.condition, refused.rule)
                    return
            # The claimed partner's own timers (keep-alive off) apply at once.
            if session.timeouts.keepalive is not None and not partner.keepalive:
                session.timeouts = self.ctx.timeouts(partner)
        elif isinstance(event, Authenticated):
            log.info("inbound %s -> %s authenticated by %s", event.remote_domain, event.local_domain, event.method)
            preauth.release()
            self.preauth_order.pop(preauth, None)
            if not counted:
                await self._count_partner(session, event.remote_domain, counted)
            if session not in self.partners and session.conn.state is not State.CLOSED:
                partner = self.telemetry.partner_of(self.ctx.policy, session)
                self.partners[session] = partner
                self.telemetry.stream_established(session, Direction.INBOUND, partner)

    async def _verify(self, session: S2SSession, need: DialbackVerifyNeeded, ip: str) -> None:
        verdicts: list[DialbackVerdict] = []

        async def ask() -> None:
            verdicts.append(await verify_dialback(self.ctx, need, self.telemetry))

        try:
            ok = await contain(Surface.DIALBACK_VERIFY, need.originating, self.telemetry, ask,
                               answer_name="invalid verdict (remote-connection-failed)")
        finally:
            self.counts.dialback_per_ip[ip] -= 1
            if self.counts.dialback_per_ip[ip] <= 0:
                del self.counts.dialback_per_ip[ip]
        verdict = verdicts[0] if ok and verdicts else DialbackVerdict(
            need.originating, need.receiving, False, "remote-connection-failed")
        log.info("dialback %s -> %s: %s", need.originating, need.receiving, verdict)
        try:
            await session.send(verdict)
        except (LocalProtocolError, trio.BrokenResourceError, trio.ClosedResourceError):
            return
        await session.flush()
        await session.handle_pending_events()  # Authenticated: ready now, not at the peer's next byte


def _jittered(timeouts: Timeouts) -> Timeouts:
    spread = 1.0 - random.random() * ESTABLISHMENT_JITTER
    return dataclasses.replace(timeouts, establishment=timeouts.establishment * spread)


async def _abort(stream: trio.abc.Stream) -> None:
    with trio.move_on_after(1):
        await stream.aclose()


def _refuse_now(stream: trio.SocketStream, data: bytes) -> None:
    """Write ``data`` without waiting, then close: a fresh connection's send buffer takes a
    refusal's few hundred bytes at once (should it not, the peer sees the close alone)."""
    with contextlib.suppress(OSError):
        os.write(stream.socket.fileno(), data)
    stream.socket.close()


async def serve_s2s(
    handler: InboundHandler,
    host: str | None,
    port: int,
    *,
    handler_nursery: trio.Nursery | None = None,
    sockets: Sequence[socket.socket] = (),
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Listen on ``host:port`` (port 0: any free port) and serve inbound S2S streams forever.

    ``sockets``: listening sockets made by someone else (an edge worker's share of the
    external listener, ``SO_REUSEPORT``: ``edgeproxy.workers``) to serve instead of opening
    ``host:port``. With ``handler_nursery`` the streams run there, so that cancelling this task
    only stops accepting (graceful shutdown) instead of aborting every inbound stream.
    """
    if sockets:
        listeners = [trio.SocketListener(trio.socket.from_stdlib_socket(sock)) for sock in sockets]
    else:
        listeners = await trio.open_tcp_listeners(port, host=host)
    async with trio.open_nursery() as nursery:
        for listener in listeners:
            nursery.start_soon(_accept_loop, handler, listener, handler_nursery or nursery)
        task_status.started(listeners)


async def _accept_loop(handler: InboundHandler, listener: trio.SocketListener, streams: trio.Nursery) -> None:
    """``trio.serve_listeners`` without its closing of each stream after the handler: ours
    always closes it, and a second, forced close cost a sixth of a refusal (issue 21)."""
    async with listener:
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:
                if exc.errno not in ACCEPT_CAPACITY_ERRNOS:
                    raise
                log.error("accept failed (%s); retrying in %g s", errno.errorcode[exc.errno], ACCEPT_RETRY)
                await trio.sleep(ACCEPT_RETRY)
                continue
            streams.start_soon(handler, stream)
