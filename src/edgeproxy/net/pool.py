"""Outbound streams: one per (local domain, remote domain), reused; and dialback verification.

Theory of operation
-------------------
``OutboundPool.send`` queues a stanza on the link for its domain pair, creating the link (and
its tasks, in the nursery of ``OutboundPool.run``) on first use. The link connects
(``Connector``: SRV order, proxy FQDN), negotiates with an initiating
:class:`~edgeproxy.s2s.S2SConnection` (strongest method of the partner's row, SPEC §2.1) and
then writes queued stanzas in order. The queue is bounded (``LINK_QUEUE_BOUND``):
a full queue bounces the new stanza with ``resource-constraint``… as ``remote-server-timeout``
(the sender sees the server as slow). If the link cannot be set up, every queued stanza is
bounced to its (local) sender with ``remote-server-not-found`` (no route, refused) or
``remote-server-timeout`` (timeouts), SPEC §6 outbound; nothing is dropped silently.

What operations see of a link (the pool's ``telemetry``): its queue depth, each stanza counted
as delivered when it is written to the partner's stream, the stream's establishment and end
(``watch``, beside ``run``), and its bounces. The queue's room is signalled, not polled: the
writer wakes ``wait_for_room`` and ``wait_written`` as it takes a batch, and when the link ends.
Graceful stop (``net/edge.py``): ``accepting = False`` refuses new links, ``wait_written``
waits for the queues to be written, ``bounce_queued`` answers what is left.

``verify_dialback`` is the receiving server's half of XEP-0220 §2.2: a verification-only stream
to the originating domain's authoritative server carrying one ``db:verify``.

Failure boundary (``docs/design.md``): an unexpected exception on an outbound stream (the core,
the partner's certificate, a callback) ends that link only; what it still holds is bounced with
``internal-server-error`` and the failure is reported (EP1007, surface ``s2s-outbound``). A
verification stream that fails the same way gives an invalid verdict (surface
``dialback-verify``). Writes on both time out after ``[limits] write-timeout``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import trio

from edgeproxy.net.connector import ConnectFailed
from edgeproxy.net.context import EdgeContext
from edgeproxy.net.session import S2SSession
from edgeproxy.ops import events
from edgeproxy.ops.boundary import Surface, report
from edgeproxy.ops.metrics import BounceCause, Flow, Verdict
from edgeproxy.ops.status import Direction
from edgeproxy.ops.telemetry import Telemetry
from edgeproxy.policy import engine
from edgeproxy.s2s import (
    AuthenticationFailed,
    DialbackVerdict,
    DialbackVerifyNeeded,
    DialbackVerifyResponse,
    Event,
    LocalProtocolError,
    PeerCertificateRejected,
    Role,
    S2SConnection,
    SendStanza,
    State,
    StreamReady,
    VerifyRequest,
)
from edgeproxy.tokenizer import Element, Stanza

log = logging.getLogger("edgeproxy.net.pool")

#: Stanzas queued per domain pair while its stream connects (DESIGN principle 4).
LINK_QUEUE_BOUND = 256
#: Longest a sender that can be held back (``OutboundPool.wait_for_room``) waits for room in a
#: link's queue before sending anyway (and so being bounced): a partner that stops reading
#: must not hold the gateway channel for long.
ROOM_WAIT = 5.0
#: Queued stanzas a link writes with one ``send_all`` at most (the whole queue, in practice).
WRITE_BATCH = LINK_QUEUE_BOUND

#: A queued stanza as the pool holds it for a bounce: its tree, or the tokenizer's view of its
#: bytes (a stanza from the gateway is not parsed unless it is bounced).
Held = Element | Stanza
Bounce = Callable[[Held, str, BounceCause], Awaitable[None]]


async def wait_any(*events: trio.Event) -> None:
    """Return as soon as one of ``events`` is set."""
    async with trio.open_nursery() as nursery:
        for event in events:

            async def wait(event: trio.Event = event) -> None:
                await event.wait()
                nursery.cancel_scope.cancel()

            nursery.start_soon(wait)


def _element_name(raw: bytes) -> str:
    """``message`` / ``presence`` / ``iq`` from a stanza's first bytes (no prefix on S2S)."""
    end = next((i for i, b in enumerate(raw[1:40], 1) if b in b" />\t\r\n"), 0)
    return raw[1:end].decode("ascii", "replace") if end else "other"


class OutboundLink:
    """The stream from ``local`` to ``remote``, its bounded queue and what telemetry sees of it."""

    def __init__(self, ctx: EdgeContext, local: str, remote: str, bounce: Bounce, telemetry: Telemetry) -> None:
        self.ctx, self.local, self.remote = ctx, local, remote
        self.telemetry = telemetry
        self.partner = telemetry.partner_of_domain(ctx.policy, remote)
        self._bounce = bounce
        self._send, self._recv = trio.open_memory_channel[tuple[bytes, Held]](LINK_QUEUE_BOUND)
        #: Woken whenever the queue shrinks (the writer took a batch, a bounce emptied it) and
        #: when the link ends: ``wait_for_room`` and ``wait_written`` park here.
        self._taken = trio.lowlevel.ParkingLot()
        self.session: S2SSession | None = None
        self.session_started = trio.Event()
        self.failure: str | None = None
        self.bounced = 0
        self.bounce_condition: str | None = None
        self.done = trio.Event()

    def queue_depth(self) -> int:
        """Stanzas waiting to be written on this link."""
        return int(self._send.statistics().current_buffer_used)

    def full(self) -> bool:
        return self.queue_depth() >= LINK_QUEUE_BOUND

    def offer(self, raw: bytes, element: Held) -> bool:
        try:
            self._send.send_nowait((raw, element))
        except (trio.WouldBlock, trio.ClosedResourceError):
            return False
        return True

    async def wait_for_room(self) -> None:
        """Wait while the queue is full and the link runs."""
        while self.full() and not self.done.is_set():
            await self._taken.park()

    async def wait_written(self) -> None:
        """Wait until the queue is empty (written, or bounced) or the link has ended."""
        while self.queue_depth() and not self.done.is_set():
            await self._taken.park()

    def close_queue(self) -> None:
        """Accept no more stanzas; the link still writes what is queued."""
        self._send.close()

    async def bounce_queued(self, condition: str) -> None:
        """Bounce everything still queued to its local sender (the edge is stopping)."""
        await self._bounce_all(condition, BounceCause.SHUTDOWN)

    async def _bounce_one(self, element: Held, condition: str, cause: BounceCause | None = None) -> None:
        """``cause`` None: the link's own failure (internal error, or the partner unreachable)."""
        self.bounced += 1
        self.bounce_condition = condition
        if cause is None:
            internal = condition == "internal-server-error"
            cause = BounceCause.INTERNAL_ERROR if internal else BounceCause.PARTNER_UNREACHABLE
        await self._bounce(element, condition, cause)

    async def _bounce_all(self, condition: str, cause: BounceCause | None = None) -> None:
        self._send.close()
        while True:
            try:
                _, element = self._recv.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel):
                self._taken.unpark_all()
                return
            await self._bounce_one(element, condition, cause)

    def _end(self) -> None:
        self.done.set()
        self._taken.unpark_all()

    def _sent(self, event: SendStanza) -> None:
        self.telemetry.stanza(self.partner, Flow.OUT, _element_name(event.raw), Verdict.DELIVERED)

    async def watch(self) -> None:
        """Report the stream's establishment and end, failures and bounces (runs beside ``run``)."""
        await wait_any(self.session_started, self.done)
        session = self.session
        if session is not None:
            await wait_any(session.ready, session.closed)
            established = session.ready.is_set()
            if established:
                self.telemetry.stream_established(session, Direction.OUTBOUND, self.partner)
            await session.closed.wait()
            self.telemetry.stream_ended(session, Direction.OUTBOUND, self.partner, established=established)
            if not established and self.failure and session.error_received is None:
                self.telemetry.authentication_failed(self.remote, Direction.OUTBOUND, "partner row", self.failure)
        await self.done.wait()
        if self.bounced:
            self.telemetry.emit(events.OUTBOUND_BOUNCED, count=self.bounced, domain=self.remote,
                                condition=self.bounce_condition)

    async def run(self) -> None:
        # except*: the errors come wrapped in ExceptionGroups from the nurseries below; a lost
        # stream must end this link only, never the edge (one peer can never crash the server).
        failed: BaseException | None = None
        try:
            await self._run()
        except* (trio.BrokenResourceError, trio.ClosedResourceError, LocalProtocolError) as group:
            self.failure = f"stream lost: {group.exceptions[0]!r}"
            log.warning("outbound %s -> %s: %s", self.local, self.remote, self.failure)
            await self._bounce_all("remote-server-timeout")
        except* Exception as group:
            failed = group
        finally:
            session = self.session
            if session is not None and session.failure is not None:
                report(self.telemetry, Surface.S2S_OUTBOUND, session.remote_address, session.failure,
                       "stream error internal-server-error")
            if session is not None and session.write_timed_out:
                self.telemetry.emit(events.WRITE_TIMEOUT, peer=session.remote_address,
                                    seconds=session.write_timeout, direction=Direction.OUTBOUND)
            if failed is None:
                self._end()
        if failed is not None:
            # The failure boundary: this link ends, its stanzas are answered, the edge goes on.
            self.failure = f"internal error: {failed!r}"
            report(self.telemetry, Surface.S2S_OUTBOUND, self.remote, failed, "queued stanzas bounced")
            try:
                await self._bounce_all("internal-server-error")
            finally:
                self._end()

    async def _run(self) -> None:
        snapshot = self.ctx.policy()
        partner = engine.partner_for_domain(snapshot, self.remote)
        if partner is None:
            await self._bounce_all("remote-server-not-found")
            return
        timeouts = self.ctx.timeouts(partner)
        try:
            stream = await self.ctx.connector.connect(self.remote, partner.proxy_fqdn)
        except ConnectFailed as exc:
            self.failure = str(exc)
            log.warning("outbound %s -> %s: %s", self.local, self.remote, exc)
            await self._bounce_all("remote-server-timeout" if exc.timeout else "remote-server-not-found")
            return
        conn = S2SConnection(
            Role.INITIATING, policy=self.ctx.policy, secret=self.ctx.secret,
            local_domain=self.local, remote_domain=self.remote,
        )
        failures: list[str] = []

        async def on_event(session: S2SSession, event: Event) -> None:
            if isinstance(event, AuthenticationFailed):
                failures.append(event.reason)
            elif isinstance(event, PeerCertificateRejected):
                log.warning("outbound %s -> %s: no SASL EXTERNAL, peer certificate rejected: %s",
                            self.local, event.domain, event.reason)
                self.telemetry.peer_certificate_rejected(session.remote_address, Direction.OUTBOUND,
                                                         event.domain, event.reason)

        session = S2SSession(
            stream, conn, ssl_context=self.ctx.client_ssl, timeouts=timeouts,
            on_event=on_event, expect_peer_traffic=False, write_timeout=self.ctx.limits.write_timeout,
            on_stanza_sent=self._sent,
        )
        self.session = session
        self.session_started.set()
        failed_with: str | None = None
        unsent: list[Held] = []  # taken from the queue but not written: bounced below
        async with trio.open_nursery() as nursery:
            nursery.start_soon(session.run)
            conn.initiate()
            await session.flush()
            with trio.move_on_after(timeouts.establishment):
                await wait_any(session.ready, session.closed)
            if not session.ready.is_set() or session.closed.is_set():
                self.failure = "; ".join(failures) or session.close_reason or "establishment timeout"
                log.warning("outbound %s -> %s failed: %s", self.local, self.remote, self.failure)
                timed_out = not session.closed.is_set()
                await session.close("connection-timeout" if timed_out else None)
                nursery.cancel_scope.cancel()
                failed_with = "remote-server-timeout" if timed_out else "remote-server-not-found"
            if failed_with is None:
                async with trio.open_nursery() as sender:

                    async def stop_when_closed() -> None:
                        await session.closed.wait()
                        sender.cancel_scope.cancel()

                    sender.start_soon(stop_when_closed)
                    async for raw, element in self._recv:
                        # everything queued meanwhile goes out in the same write
                        batch = [(raw, element)]
                        while len(batch) < WRITE_BATCH:
                            try:
                                batch.append(self._recv.receive_nowait())
                            except (trio.WouldBlock, trio.EndOfChannel):
                                break
                        self._taken.unpark_all()  # room in the queue
                        try:
                            await session.send_stanzas([SendStanza(r, self.local, self.remote) for r, _ in batch])
                        except (LocalProtocolError, trio.BrokenResourceError,
                                trio.ClosedResourceError) as exc:
                            # the stream closed under us (peer error, shutdown): bounce, end link
                            self.failure = f"stream lost: {exc!r}"
                            unsent.extend(e for _, e in batch)
                            break
                    sender.cancel_scope.cancel()
                await session.close()
        # Outside the (possibly cancelled) nursery: bouncing must not be cancelled.
        for element in unsent:
            await self._bounce_one(element, "remote-server-timeout")
        await self._bounce_all(failed_with or "remote-server-timeout")


class OutboundPool:
    """Links by (local, remote), run in the nursery of ``run``; refuses new links once not
    ``accepting``. ``bounce`` answers a stanza's local sender (the router's ``bounce_local``)."""

    def __init__(self, ctx: EdgeContext, bounce: Bounce, telemetry: Telemetry) -> None:
        self.ctx = ctx
        self._bounce = bounce
        self._telemetry = telemetry
        self.links: dict[tuple[str, str], OutboundLink] = {}
        self.accepting = True
        self._nursery: trio.Nursery | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the links until cancelled (``nursery.start``-compatible)."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    async def wait_for_room(self, local: str, remote: str) -> None:
        """Backpressure for a sender that can be held back (the gateway channel): wait, at most
        ``ROOM_WAIT`` s, while the running link for (local, remote) has a full queue — a burst
        from the gateway would otherwise be bounced (``send``) although the stream is up."""
        link = self.links.get((local, remote))
        if link is None or not link.full():
            return
        with trio.move_on_after(ROOM_WAIT):
            await link.wait_for_room()

    async def send(self, local: str, remote: str, raw: bytes, element: Held) -> None:
        link = self.links.get((local, remote))
        if link is None or link.done.is_set() or (
            link.session is not None and link.session.closed.is_set()
        ):
            if not self.accepting:
                await self._bounce(element, "remote-server-timeout", BounceCause.SHUTDOWN)
                return
            assert self._nursery is not None, "OutboundPool.run has not started"
            link = OutboundLink(self.ctx, local, remote, self._bounce, self._telemetry)
            self.links[(local, remote)] = link
            self._nursery.start_soon(link.run)
            self._nursery.start_soon(link.watch)
        if not link.offer(raw, element):
            await self._bounce(element, "remote-server-timeout", BounceCause.PARTNER_QUEUE_FULL)

    def queued(self) -> int:
        """Stanzas waiting on the running links."""
        return sum(link.queue_depth() for link in self.links.values() if not link.done.is_set())

    async def wait_written(self) -> None:
        """Wait until no running link has a stanza queued (cancel to bound it)."""
        while self.queued():
            for link in list(self.links.values()):
                await link.wait_written()

    async def bounce_queued(self, condition: str) -> None:
        """Close every link's queue and bounce what it still holds."""
        for link in list(self.links.values()):
            link.close_queue()
            await link.bounce_queued(condition)


async def verify_dialback(
    ctx: EdgeContext, need: DialbackVerifyNeeded, telemetry: Telemetry | None = None
) -> DialbackVerdict:
    """Ask the originating domain's authoritative server about a key (XEP-0220 §2.2)."""

    def verdict(valid: bool, error: str | None = None) -> DialbackVerdict:
        return DialbackVerdict(need.originating, need.receiving, valid, error)

    snapshot = ctx.policy()
    partner = engine.partner_for_domain(snapshot, need.originating)
    if partner is None:
        return verdict(False, "remote-server-not-found")
    timeouts = ctx.timeouts(partner)
    try:
        stream = await ctx.connector.connect(need.originating, partner.proxy_fqdn)
    except ConnectFailed as exc:
        log.warning("dialback verify for %s: %s", need.originating, exc)
        return verdict(False, "remote-server-timeout" if exc.timeout else "remote-server-not-found")
    conn = S2SConnection(
        Role.INITIATING, policy=ctx.policy, secret=ctx.secret, local_domain=need.receiving,
        remote_domain=need.originating, authenticate=False,
    )
    answer: list[DialbackVerifyResponse] = []
    answered = trio.Event()

    async def on_event(session: S2SSession, event: Event) -> None:
        if isinstance(event, StreamReady):
            if session.conn.state is not State.OPEN:
                # The authoritative server closed the stream (e.g. resource-constraint) before
                # we could ask: no answer, the verdict below says so. (Sending anyway raised
                # LocalProtocolError, which ended the process before the failure boundary.)
                return
            await session.send(VerifyRequest(need.receiving, need.originating, need.stream_id, need.key))
        elif isinstance(event, DialbackVerifyResponse) and event.stream_id == need.stream_id:
            answer.append(event)
            answered.set()
            await session.close()

    session = S2SSession(
        stream, conn, ssl_context=ctx.client_ssl, timeouts=timeouts, on_event=on_event,
        expect_peer_traffic=False, write_timeout=ctx.limits.write_timeout,
    )
    async with trio.open_nursery() as nursery:
        nursery.start_soon(session.run)
        conn.initiate()
        await session.flush()
        with trio.move_on_after(timeouts.establishment):
            await wait_any(answered, session.closed)
        nursery.cancel_scope.cancel()
    if session.failure is not None:
        report(telemetry, Surface.DIALBACK_VERIFY, session.remote_address, session.failure,
               "invalid verdict (remote-connection-failed)")
    if not answer:
        log.warning("dialback verify for %s: %s", need.originating, session.close_reason)
        return verdict(False, "remote-server-timeout")
    return verdict(answer[0].valid, answer[0].error and "remote-connection-failed")
