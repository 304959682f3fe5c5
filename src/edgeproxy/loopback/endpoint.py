"""One side of the loopback channel: a trio driver around ``reliable.Sender``/``Receiver``.

Theory of operation
-------------------
A :class:`ChannelEndpoint` lives as long as its process (edge or gateway) and outlives every
WebSocket connection. ``server.py`` (edge) and ``client.py`` (gateway) obtain connections and hand
each to :meth:`ChannelEndpoint.run_connection`, which:

1. **opens** the connection (``_open``, bounded as a whole by ``HELLO_TIMEOUT``) without touching
   any shared state: it exchanges ``Hello`` frames (a peer with another protocol version or the
   same role is refused) and then the **proofs of the channel secret** (issue 14, below);
2. only then, **authenticated**, calls the driver's ``on_authenticated`` (the edge's listener
   cancels the connection it replaces there) and takes the endpoint's connection lock — so an
   unauthenticated connection never affects the live one, which keeps carrying stanzas;
3. lets the sender re-queue what the peer has not processed (``Sender.on_connected``);
4. runs a send loop (batches within the peer's window, woken by ``submit``/acks) and a receive loop
   (decode strictly, hand fresh items to ``on_items``, then ack) until either ends.

The opening, step by step (protocol version 3, the opening as in version 2; ``loopback/auth.py``
defines the proof)::

    edge                                           gateway
      Hello(v3, edge, session_E, ..., nonce_E)  ->
                                                <- Hello(v3, gateway, session_G, ..., nonce_G)
      Auth(HMAC(secret, label | "edge" |        ->
                nonce_E | nonce_G | session_E | session_G))
                                                <- Auth(HMAC(secret, label | "gateway" |
                                                        nonce_E | nonce_G | session_E | session_G))
      each side checks the other's Auth (hmac.compare_digest) before anything else

Both sides send their Hello at once and their Auth as soon as they have the peer's Hello (one
round trip; neither waits for the other's verdict), and both verify: the edge knows it talks to
the gateway, the gateway that it talks to the real edge. Each nonce is ``NONCE_BYTES`` fresh
random bytes per connection, so a proof recorded on one connection is refused on any other (the
verifier's own nonce differs); the role in the MAC refuses a proof reflected back to its sender.
A proof that is wrong, empty or missing (another frame instead, or nothing within
``HELLO_TIMEOUT``) ends the opening with WebSocket close code 1008 (policy violation) and the
reason ``"channel authentication failed"``; the driver's ``on_refused(reason)`` hears of it (the
edge emits ``EP5003`` channel-refused) and ``statistics().refused`` counts it. Other refused
openings (a wrong version or role, a malformed first frame) are closed with 1002 and reported the
same way.

The Hello's resume fields (``peer_session``, ``received``) are read when it is sent, before the
lock: while a live connection still runs they may be behind by the items it handles meanwhile.
That only makes the peer re-send those items, which the receiver drops as duplicates.

An endpoint built without a secret (``secret=None``: in-process tests of other layers) sends an
empty proof and checks none; such an endpoint and one with a secret refuse each other. Both
processes always pass theirs (``ChannelDelivery`` requires it; the gateway loads it).

Backpressure: ``on_items`` is awaited before the next frame is read, so a slow consumer stops
reading, its window fills, and the far sender stops sending; producers then see ``submit``
refuse once ``max_queued`` items wait (SPEC §6 rule 5: the caller gets the item back, bounced).
A frame write that blocks longer than ``WRITE_TIMEOUT`` (the peer stopped reading with a window's
worth of bytes in flight) ends the connection: the peer reconnects and the unacked items are
re-sent, and while it stays away the outage bound applies.

Outage bound: while no connection is up, a watchdog counts time. Once the peer has been away for
``outage_bound`` seconds, everything still queued is handed to ``on_bounce`` with
``remote-server-timeout`` (SPEC §6: the stanza's sender gets an error, never silence), and until
the peer returns, new submissions are bounced at once with ``service-unavailable``. Bounce items
themselves are never bounced again (RFC 6120 §8.3.1: no error about an error); they are counted in
``statistics().lost_bounces``.

Ack on completion (``ack_on_complete=True``, the gateway): ``on_items`` only starts the handling;
the owner calls :meth:`ChannelEndpoint.complete` for each item once its outcome is final (the SIP
transaction completed, or the stanza was bounced), in any order. The ack loop then acks the
contiguous completed prefix. Items still being handled when the connection drops stay handed:
their re-sent copies are dropped as duplicates and acked when they complete. If the process dies
instead, they were never acked, so the sender re-sends them to its successor.

Nacks before acks (version 3): :meth:`ChannelEndpoint.nack` refuses an item from the peer with a
``Bounce`` whose ``ref`` is that item's sequence number. When the peer waits for the item's outcome
(``submit_answerable``: the gateway answers a SIP MESSAGE with it), the bounce resolves the wait
with its condition — and it must arrive before the ack that covers the item, or the wait would
resolve as delivered first. So an endpoint that has a nack not yet written does not ack in the
receive loop: it leaves the ack to the send loop (``_owed_ack``), which writes it right after the
nacks, and every later ack waits behind it. A connection that ends first loses only the owed ack
(the next Hello reports what was processed; the nack itself is an item and is re-sent — after the
Hello, so a wait already resolved by that Hello stays "delivered": the one case a nack does not
reach its waiter).

Failure boundaries (``ops.boundary``; the peer is trusted to speak the protocol, not to be
bug-free, and one bad input must never end the process):

* **per item** (``Surface.CHANNEL_ITEM``): each fresh item is handed to ``on_items`` on its own
  inside :func:`~edgeproxy.ops.boundary.contain`. An item whose handling raises is answered —
  by the owner's ``on_item_failed`` (the edge sends the local sender an error stanza), else with a
  *nack*: a ``Bounce`` item with ``internal-server-error`` back to the peer, which owns the
  stanza's sender and answers it (a failed ``Bounce`` item is only reported: no error about an
  error). The item then counts as processed (acked, completed): the channel goes on with the next
  item, and a re-send of the same poison item cannot happen.
* **per frame** (``Surface.CHANNEL_FRAME``): a frame that cannot be decoded, or breaks the
  protocol (a sequence gap, an ack for items never sent, a Hello or Auth mid-connection, a text
  message)
  is not attributable to any item: the connection is closed with WebSocket code 1002 and the
  reason, logged as a warning on both sides (expected refusals, not EP1007). The gateway
  reconnects with back-off and re-sends what is unacked, so nothing is lost; a peer that keeps
  sending the same bad frame keeps being refused. Anything else a frame's handling — or the send
  and ack loops — raises is contained: EP1007, the connection closed with 1011 and the reason,
  the listener and the endpoint go on.
* **before queueing**: an item the peer's decoder would refuse (``frames.item_problem``: a type
  longer than 1,024 characters from a partner, say) would otherwise become a poison frame,
  re-sent on every reconnect; ``submit`` bounces it to its sender with ``policy-violation``.

Cancellation: cancelling ``run_connection`` closes the connection; queued and in-flight items stay
in the sender for the next connection. The ack after a handled batch is sent in a shielded scope
(bounded by ``ACK_TIMEOUT``) so that a cancellation between "handled" and "acked" does not cause a
re-send to a peer that already handled the items.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

import trio
from trio_websocket import ConnectionClosed, WebSocketConnection

from edgeproxy.loopback.auth import AUTH_FAILED, ChannelAuthError, channel_proof, check_proof
from edgeproxy.loopback.frames import (
    DEFAULT_WINDOW,
    MAX_SHORT,
    NONCE_BYTES,
    PROTOCOL_VERSION,
    Ack,
    Auth,
    Bounce,
    FlowControl,
    Frame,
    FrameError,
    Hello,
    Item,
    Role,
    Routed,
    StanzaBatch,
    StanzaKind,
    decode_frame,
    encode_frame,
    item_problem,
)
from edgeproxy.loopback.reliable import DEFAULT_MAX_QUEUED, Receiver, Sender
from edgeproxy.ops.boundary import Surface, contain, describe

if TYPE_CHECKING:
    from edgeproxy.ops.telemetry import Telemetry

log = logging.getLogger(__name__)

#: Seconds for the whole opening (the peer's Hello and its proof) after the WebSocket handshake.
HELLO_TIMEOUT = 10.0
#: Seconds an ack may take to leave after its items were handled (shielded from cancellation).
ACK_TIMEOUT = 2.0
#: Longest one frame write may block (seconds), as the S2S streams' ``[limits] write-timeout``:
#: a peer that stops reading cannot hold the channel (issue 13).
WRITE_TIMEOUT = 30.0
#: With ``ack_on_complete``: after an ack, seconds before the next one, so that the items that
#: complete meanwhile share it (at 5,000 items/s, ~10 per ack instead of one). Far below any
#: timeout; the window (1,024 items) is never the limit at one ack per 2 ms.
ACK_COALESCE = 0.002
#: Seconds the peer may stay away before queued stanzas are bounced. Lync's own gateway gives up
#: on the edge after about 30 s; an S2S peer waits longer, so this bounds the user-visible delay.
DEFAULT_OUTAGE_BOUND = 30.0
#: WebSocket close codes (RFC 6455 §7.4.1): the peer broke the protocol / we failed internally.
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_INTERNAL_ERROR = 1011
#: ... and the peer did not prove the channel secret (1008 policy violation; issue 14).
CLOSE_POLICY_VIOLATION = 1008
#: A close frame's reason is at most 123 bytes of UTF-8 (RFC 6455 §5.5: 125-byte control payload).
MAX_CLOSE_REASON_BYTES = 123
#: Condition of the bounce for an item the peer would refuse (``frames.item_problem``).
UNSENDABLE_CONDITION = "policy-violation"

OnItems = Callable[[list[Item]], Awaitable[None]]
OnBounce = Callable[[list[Routed], str], None]
#: The owner's answer to an item whose handling raised (see "Failure boundaries").
OnItemFailed = Callable[[Item, BaseException], Awaitable[None]]
#: The driver hears of a refused opening (the reason); the edge emits EP5003.
OnRefused = Callable[[str], None]


@dataclass
class ChannelStatistics:
    connected: bool
    connections: int
    queued: int
    in_flight: int
    sent_items: int
    received_items: int
    duplicates_dropped: int
    bounced: int
    lost_bounces: int
    #: Openings refused (a wrong or missing proof, a wrong version or role).
    refused: int = 0


#: Called once with a stanza's outcome: None (acked by the peer) or the bounce condition.
OnOutcome = Callable[[str | None], None]


class _Waiter:
    """Who waits for one stanza's outcome: a task (``event``) or a callback (``on_outcome``)."""

    __slots__ = ("event", "outcome", "on_outcome")

    def __init__(self, on_outcome: OnOutcome | None = None) -> None:
        self.event = trio.Event()
        self.outcome: str | None = None
        self.on_outcome = on_outcome

    def settle(self, outcome: str | None) -> None:
        """The outcome is known: wake the task, call the callback (once; a failing callback is
        logged, never raised into the channel's loop)."""
        self.outcome = outcome
        self.event.set()
        on_outcome, self.on_outcome = self.on_outcome, None
        if on_outcome is not None:
            try:
                on_outcome(outcome)
            except Exception:
                log.exception("loopback: the owner of a stanza failed on its outcome")


@dataclass(slots=True)
class Answerable:
    """A stanza queued by :meth:`ChannelEndpoint.submit_answerable` (seq None: refused)."""

    seq: int | None
    waiter: _Waiter


class ChannelEndpoint:
    """The long-lived state of one side of the channel (see the module docstring)."""

    def __init__(
        self,
        role: Role,
        *,
        on_items: OnItems,
        on_bounce: OnBounce,
        max_queued: int = DEFAULT_MAX_QUEUED,
        window: int = DEFAULT_WINDOW,
        outage_bound: float = DEFAULT_OUTAGE_BOUND,
        ack_on_complete: bool = False,
        telemetry: Telemetry | None = None,
        on_item_failed: OnItemFailed | None = None,
        secret: bytes | None = None,
    ) -> None:
        self.role = role
        #: Where contained failures are reported (EP1007); may be set after construction.
        self.telemetry = telemetry
        #: The channel's shared secret (``loopback/auth.py``; issue 14), proven after the Hello;
        #: None: no proof sent, none checked (see the module docstring).
        self.secret = secret
        self._on_item_failed = on_item_failed
        self.ack_on_complete = ack_on_complete
        self._ack_wake = trio.Event()
        self.session = secrets.token_hex(8)
        self.sender = Sender(self.session, max_queued=max_queued)
        self.receiver = Receiver()
        self.window = window
        self.outage_bound = outage_bound
        self._on_items = on_items
        self._on_bounce = on_bounce
        self._wake = trio.Event()
        self._connected = False
        self._connection_lock = trio.Lock()
        self._away_since: float | None = None
        self._outage_expired = False
        self._connected_event = trio.Event()
        self._disconnected_event = trio.Event()
        self._disconnected_event.set()
        #: Set (and renewed) when an ack frees queued items and when a connection ends.
        self._acked = trio.Event()
        # submit_and_wait callers: seq -> [outcome, event]; outcome None = acked by the peer.
        self._waiters: dict[int, _Waiter] = {}
        #: The sequence number of the last nack queued (see "Nacks before acks").
        self._last_nack = 0
        #: An ack the send loop owes the peer once the nacks before it are written.
        self._owed_ack: int | None = None
        self._counts = dict.fromkeys(
            ("connections", "sent", "received", "duplicates", "bounced", "lost_bounces", "refused"), 0
        )

    # -- producer side ------------------------------------------------------------------------

    def submit(
        self,
        kind: StanzaKind,
        from_: str,
        to: str,
        type: str,
        id: str,
        raw: bytes,
        *,
        bounce: tuple[str, str] | None = None,
        ref: int = 0,
    ) -> bool:
        """Queue a stanza (or a bounce, answering the peer's item ``ref``) for the peer; False if
        it was bounced instead."""
        queued = self._enqueue(kind, from_, to, type, id, raw, bounce, ref)
        if isinstance(queued, str):
            self._bounce_new(kind, from_, to, type, id, raw, bounce, queued)
            return False
        if ref:
            self._last_nack = queued.seq
        return True

    async def submit_and_wait(
        self, kind: StanzaKind, from_: str, to: str, type: str, id: str, raw: bytes
    ) -> str | None:
        """Queue a stanza and wait until the peer acks it (None) or it is bounced (the condition).

        For senders that can still be answered directly (a SIP transaction): ``on_bounce`` is
        not called for these items. Cancellation stops the wait; the item stays queued.
        """
        return await self.outcome(self.submit_answerable(kind, from_, to, type, id, raw))

    def submit_answerable(
        self,
        kind: StanzaKind,
        from_: str,
        to: str,
        type: str,
        id: str,
        raw: bytes,
        on_outcome: OnOutcome | None = None,
    ) -> Answerable:
        """Queue a stanza now (no checkpoint: callers keep their order) for :meth:`outcome`, or
        for ``on_outcome``, called once with it (None: acked; else the bounce condition) —
        before this returns when the stanza is refused at once."""
        waiter = _Waiter(on_outcome)
        queued = self._enqueue(kind, from_, to, type, id, raw, None, 0)
        if isinstance(queued, str):
            waiter.settle(queued)
            return Answerable(None, waiter)
        self._waiters[queued.seq] = waiter
        return Answerable(queued.seq, waiter)

    def _enqueue(
        self, kind: StanzaKind, from_: str, to: str, type: str, id: str, raw: bytes,
        bounce: tuple[str, str] | None, ref: int,
    ) -> Item | str:
        """The queued item, or the condition it must be bounced with instead: one the peer's
        decoder would refuse, the peer away past the outage bound, the queue full."""
        problem = item_problem(kind, from_, to, type, id, raw, bounce)
        if problem is not None:
            log.warning("loopback: stanza from %.200s not sent, the peer would refuse it: %s", from_, problem)
            return UNSENDABLE_CONDITION
        if self._outage_expired:
            return "service-unavailable"
        item = self.sender.submit(kind, from_, to, type, id, raw, bounce=bounce, ref=ref)
        if item is None:
            return "service-unavailable"
        self._wake.set()
        return item

    async def outcome(self, answerable: Answerable) -> str | None:
        """Wait until the peer acks a stanza (None) or it is bounced (the condition)."""
        try:
            await answerable.waiter.event.wait()
        finally:
            if answerable.seq is not None:
                self._waiters.pop(answerable.seq, None)
        return answerable.waiter.outcome

    def complete(self, seq: int) -> None:
        """With ``ack_on_complete``: the item ``seq`` from the peer has its final outcome."""
        if self.receiver.complete(seq):
            self._ack_wake.set()

    def nack(self, item: Item, condition: str, text: str = "") -> None:
        """Refuse an item from the peer: a ``Bounce`` item with ``condition`` goes back to it (the
        peer owns the stanza's sender and answers it). A refused ``Bounce`` is only logged."""
        if isinstance(item, Bounce):
            self._counts["lost_bounces"] += 1
            log.warning("loopback: bounce item %d from the peer for %.200s dropped (%s)", item.seq, item.from_, condition)
            return
        self.submit(item.kind, item.from_, item.to, item.type, item.id, item.raw,
                    bounce=(condition, text[:MAX_SHORT]), ref=item.seq)

    def _nack_unsent(self) -> bool:
        """Is a nack still waiting in the sender's queue (not written yet)?"""
        unsent = self.sender.unsent
        return bool(unsent) and unsent[0].seq <= self._last_nack

    def _answer_waiter(self, bounce: Bounce) -> bool:
        """The peer nacked one of our items that a sender waits for: give it the condition."""
        waiter = self._waiters.pop(bounce.ref, None)
        if waiter is None:
            return False
        self._counts["bounced"] += 1
        waiter.settle(bounce.condition)
        return True

    def _resolve_acked(self, up_to: int) -> None:
        # The waiters are in submission order, which is seq order: the acked ones come first.
        waiters = self._waiters
        if waiters:
            acked = list(itertools.takewhile(lambda seq: seq <= up_to, waiters))
            for seq in acked:
                waiters.pop(seq).settle(None)

    def _bounce_new(
        self,
        kind: StanzaKind,
        from_: str,
        to: str,
        type: str,
        id: str,
        raw: bytes,
        bounce: tuple[str, str] | None,
        condition: str = "service-unavailable",
    ) -> None:
        if bounce is not None:
            self._counts["lost_bounces"] += 1
            log.warning("loopback: bounce for %.200s lost (%s)", from_, condition)
            return
        self._counts["bounced"] += 1
        # ``kind`` may be what item_problem refused: the owner's bounce reads only ``raw``
        self._on_bounce([Routed(1, kind, from_, to, type, id, raw)], condition)

    def _bounce_items(self, items: list[Item], condition: str) -> None:
        if self._waiters:
            kept = []
            for item in items:
                waiter = self._waiters.pop(item.seq, None)
                if waiter is None:
                    kept.append(item)
                else:
                    waiter.settle(condition)
            items = kept
        routed = [item for item in items if isinstance(item, Routed)]
        lost = len(items) - len(routed)
        if lost:
            self._counts["lost_bounces"] += lost
            log.warning("loopback: %d bounces lost (peer away)", lost)
        if routed:
            self._counts["bounced"] += len(routed)
            self._on_bounce(routed, condition)

    # -- outage watchdog ----------------------------------------------------------------------

    async def watch_outage(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Bounce queued items once the peer has been away for ``outage_bound`` seconds."""
        if self._away_since is None and not self._connected:
            self._away_since = trio.current_time()
        task_status.started()
        while True:
            if self._connected or self._away_since is None:
                await trio.sleep(self.outage_bound / 4)
                continue
            deadline = self._away_since + self.outage_bound
            now = trio.current_time()
            if now < deadline:
                await trio.sleep(min(deadline - now, self.outage_bound / 4))
                continue
            if not self._outage_expired:
                log.warning(
                    "loopback: peer away for %.1f s, bouncing queued stanzas", self.outage_bound
                )
            self._outage_expired = True
            drained = self.sender.drain()
            if drained:
                self._bounce_items(drained, "remote-server-timeout")
            self._signal_acked()  # whoever waits for room: submit now bounces at once
            await trio.sleep(self.outage_bound / 4)

    # -- one connection -----------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """A connection to the peer is up (its Hello and proof were accepted)."""
        return self._connected

    async def wait_connected(self) -> None:
        await self._connected_event.wait()

    async def wait_disconnected(self) -> None:
        """Return once no connection is up (at once if none is)."""
        await self._disconnected_event.wait()

    def has_room(self) -> bool:
        """Would :meth:`submit` queue one more item (rather than bounce it as queue-full)?"""
        return self.sender.queued < self.sender.max_queued

    @property
    def outage_expired(self) -> bool:
        """The peer has been away longer than ``outage_bound``: submissions bounce at once."""
        return self._outage_expired

    async def wait_for_room(self) -> None:
        """Return once the queue has room for one more item, or the peer has been away past the
        outage bound (then :meth:`submit` bounces at once). Cancel it to bound the wait."""
        while not self.has_room() and not self._outage_expired:
            await self.wait_acked()

    async def wait_acked(self) -> None:
        """Return at the peer's next ack that frees queued items, or when the connection ends."""
        await self._acked.wait()

    def _signal_acked(self) -> None:
        self._acked.set()
        self._acked = trio.Event()

    async def run_connection(
        self,
        ws: WebSocketConnection,
        *,
        on_authenticated: Callable[[], None] | None = None,
        on_refused: OnRefused | None = None,
    ) -> None:
        """Serve one WebSocket connection until it closes (see the module docstring).

        ``on_authenticated`` is called once the peer has proven the secret, before this
        connection takes over from any other; ``on_refused`` with the reason when the opening is
        refused. Raises nothing but cancellation: an unexpected failure is contained (EP1007,
        the connection closed with 1011).
        """
        peer = _peer_of(ws, self.role)
        answer = partial(_close, ws, CLOSE_INTERNAL_ERROR)
        try:
            opened: list[Hello] = []
            if not await contain(
                Surface.CHANNEL_FRAME, peer, self.telemetry, partial(self._open, ws, peer, on_refused, opened),
                answer=answer, answer_name="connection closed (1011)",
            ) or not opened:
                return
            if on_authenticated is not None:
                on_authenticated()
            async with self._connection_lock:
                try:
                    await contain(
                        Surface.CHANNEL_FRAME, peer, self.telemetry,
                        partial(self._run_connection, ws, peer, opened[0]),
                        answer=answer, answer_name="connection closed (1011)",
                    )
                finally:
                    self._owed_ack = None  # the next Hello reports what was processed
                    if self._connected:
                        self._connected = False
                        self._connected_event = trio.Event()
                        self._disconnected_event.set()
                        self._signal_acked()
                        self.sender.on_disconnected()
                        self.receiver.on_disconnected(handling_survives=self.ack_on_complete)
                        self._away_since = trio.current_time()
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(0.5):
                await ws.aclose()

    async def _open(
        self, ws: WebSocketConnection, peer: str, on_refused: OnRefused | None, opened: list[Hello]
    ) -> None:
        """Hellos, then proofs (module docstring); the peer's Hello goes to ``opened`` when it
        has proven the secret. Touches no shared state: a live connection goes on meanwhile."""
        ours = Hello(
            PROTOCOL_VERSION,
            self.role,
            self.session,
            self.receiver.peer_session,
            self.receiver.processed,
            self.window,
            secrets.token_bytes(NONCE_BYTES),
        )
        their: Hello | None = None
        try:
            with trio.fail_after(HELLO_TIMEOUT):
                await _send_frame(ws, encode_frame(ours))
                their = _check_hello(decode_frame(await _get_bytes(ws)), self.role)
                edge, gateway = (ours, their) if self.role is Role.EDGE else (their, ours)
                mac = b"" if self.secret is None else channel_proof(self.secret, self.role, edge, gateway)
                await _send_frame(ws, encode_frame(Auth(mac)))
                proof = decode_frame(await _get_bytes(ws))
            if not isinstance(proof, Auth):
                raise ChannelAuthError(f"{AUTH_FAILED}: {type(proof).__name__} instead of the proof")
            if self.secret is not None:
                check_proof(self.secret, their.role, edge, gateway, proof.mac)
        except ChannelAuthError as exc:
            await self._refuse_opening(ws, peer, on_refused, CLOSE_POLICY_VIOLATION, str(exc), AUTH_FAILED)
            return
        except FrameError as exc:
            reason = f"handshake refused: {exc}"
            await self._refuse_opening(ws, peer, on_refused, CLOSE_PROTOCOL_ERROR, reason, reason)
            return
        except trio.TooSlowError:
            if their is not None and self.secret is not None:
                reason = f"{AUTH_FAILED}: no proof within {HELLO_TIMEOUT:g} s"
                await self._refuse_opening(ws, peer, on_refused, CLOSE_POLICY_VIOLATION, reason, AUTH_FAILED)
            else:
                log.warning("loopback: handshake with %s failed: no Hello in time", peer)
            return
        except ConnectionClosed as exc:
            log.warning("loopback: handshake with %s failed: %s", peer, exc)
            return
        opened.append(their)

    async def _refuse_opening(
        self, ws: WebSocketConnection, peer: str, on_refused: OnRefused | None, code: int, reason: str, told: str
    ) -> None:
        """Refuse an opening: counted, reported (``on_refused``, else a warning), closed with
        ``code`` and ``told`` (what the peer learns)."""
        self._counts["refused"] += 1
        if on_refused is not None:
            log.info("loopback: refused the connection with %s: %s", peer, reason)
            on_refused(reason)
        else:
            log.warning("loopback: refused the connection with %s: %s", peer, reason)
        await _close(ws, code, told)

    async def _run_connection(self, ws: WebSocketConnection, peer: str, their: Hello) -> None:
        send_lock = trio.Lock()
        self.receiver.on_connected(their)
        self.sender.on_connected(their)
        if their.peer_session == self.session:
            self._resolve_acked(their.received)
            self._signal_acked()  # the Hello acked what the peer processed meanwhile
        self._connected = True
        self._outage_expired = False
        self._away_since = None
        self._counts["connections"] += 1
        self._connected_event.set()
        self._disconnected_event = trio.Event()
        self._wake.set()
        try:
            async with trio.open_nursery() as nursery:

                async def send_loop() -> None:
                    # A failed send does not end the connection by itself: the receive loop
                    # goes on reading acks already on the way until the close arrives.
                    with contextlib.suppress(ConnectionClosed):
                        await self._send_loop(ws, send_lock)

                async def receive_loop() -> None:
                    await self._receive_loop(ws, send_lock, peer)
                    nursery.cancel_scope.cancel()

                nursery.start_soon(send_loop)
                nursery.start_soon(receive_loop)
                if self.ack_on_complete:
                    nursery.start_soon(self._ack_loop, ws, send_lock)
        except* ConnectionClosed as group:
            log.info("loopback: connection with %s ended: %s", peer, describe(group))
        except* trio.TooSlowError:
            log.warning("loopback: %s did not read for %g s; connection closed", peer, WRITE_TIMEOUT)

    async def _send_loop(self, ws: WebSocketConnection, lock: trio.Lock) -> None:
        while True:
            if self._owed_ack is not None and not self._nack_unsent():
                up_to, self._owed_ack = self._owed_ack, None
                async with lock:
                    await _send_frame(ws, encode_frame(Ack(up_to)))
            batch = self.sender.next_batch()
            if batch is None:
                await self._wake.wait()
                self._wake = trio.Event()
                continue
            async with lock:
                await _send_frame(ws, encode_frame(batch))
            self._counts["sent"] += len(batch.items)

    async def _receive_loop(self, ws: WebSocketConnection, lock: trio.Lock, peer: str) -> None:
        """Read and handle frames until the connection ends or a frame ends it."""
        ended: list[BaseException] = []

        async def handle(frame: Frame) -> None:
            try:
                await self._on_frame(ws, lock, peer, frame)
            except (ConnectionClosed, FrameError) as exc:  # expected ends, not failures
                ended.append(exc)

        while True:
            try:
                frame = decode_frame(await _get_bytes(ws))
            except ConnectionClosed as exc:
                _log_closed(peer, exc)
                return
            except FrameError as exc:
                await _refuse(ws, peer, str(exc))
                return
            contained = await contain(
                Surface.CHANNEL_FRAME, peer, self.telemetry, partial(handle, frame),
                answer=partial(_close, ws, CLOSE_INTERNAL_ERROR), answer_name="connection closed (1011)",
            )
            if not contained:
                self._unreported(f"a frame from {peer}")
                return
            if ended:
                if isinstance(ended[0], FrameError):
                    await _refuse(ws, peer, str(ended[0]))
                else:
                    _log_closed(peer, ended[0])
                return

    async def _on_frame(self, ws: WebSocketConnection, lock: trio.Lock, peer: str, frame: Frame) -> None:
        if isinstance(frame, StanzaBatch):
            fresh = self.receiver.accept(frame)
            self._counts["duplicates"] += len(frame.items) - len(fresh)
            for item in fresh:
                if isinstance(item, Bounce) and item.ref and self._answer_waiter(item):
                    if self.ack_on_complete:
                        self.complete(item.seq)
                    continue
                await self._handle_item(item, peer)
            self._counts["received"] += len(fresh)
            if self.ack_on_complete:
                return  # the ack loop acks what completes
            self.receiver.mark_processed(frame.items[-1].seq)
            if self._owed_ack is not None or self._nack_unsent():
                # Nacks before acks: the send loop acks once the nacks are written.
                self._owed_ack = self.receiver.processed
                self._wake.set()
                return
            with trio.CancelScope(shield=True), trio.move_on_after(ACK_TIMEOUT):
                async with lock:
                    await _send_frame(ws, encode_frame(Ack(self.receiver.processed)))
        elif isinstance(frame, Ack):
            if self.sender.on_ack(frame.up_to):
                self._resolve_acked(frame.up_to)
                self._signal_acked()
                self._wake.set()
        elif isinstance(frame, FlowControl):
            self.sender.on_window(frame.window)
            self._wake.set()
        else:
            raise FrameError(f"{type(frame).__name__} in the middle of a connection", "policy-violation")

    async def _handle_item(self, item: Item, peer: str) -> None:
        """One item inside its failure boundary; a failed item is answered and counts as done."""
        handled = await contain(
            Surface.CHANNEL_ITEM, peer, self.telemetry, partial(self._on_items, [item]),
            answer=partial(self._item_failed, item),
            answer_name="bounced" if isinstance(item, Routed) else "dropped (error about an error)",
        )
        if not handled:
            self._unreported(f"item {item.seq} from {peer}")
            if self.ack_on_complete:
                self.complete(item.seq)

    def _unreported(self, what: str) -> None:
        """Without telemetry (a driver not given one) a contained failure still reaches the log."""
        if self.telemetry is None:
            log.warning("loopback: handling %s failed (contained; the stack is at debug level)", what)

    async def _item_failed(self, item: Item, exc: BaseException) -> None:
        if self._on_item_failed is not None:
            await self._on_item_failed(item, exc)
        else:
            self.nack(item, "internal-server-error")

    async def _ack_loop(self, ws: WebSocketConnection, lock: trio.Lock) -> None:
        """Ack the completed prefix whenever it grows (``ack_on_complete``)."""
        acked = self.receiver.processed  # the Hello reported it
        while True:
            up_to = self.receiver.processed
            if up_to == acked:
                await self._ack_wake.wait()
                self._ack_wake = trio.Event()
                continue
            try:
                async with lock:
                    await _send_frame(ws, encode_frame(Ack(up_to)))
            except ConnectionClosed:
                return
            acked = up_to
            await trio.sleep(ACK_COALESCE)

    def statistics(self) -> ChannelStatistics:
        c = self._counts
        return ChannelStatistics(
            connected=self._connected,
            connections=c["connections"],
            queued=self.sender.queued,
            in_flight=len(self.sender.in_flight),
            sent_items=c["sent"],
            received_items=c["received"],
            duplicates_dropped=c["duplicates"],
            bounced=c["bounced"],
            lost_bounces=c["lost_bounces"],
            refused=c["refused"],
        )


def _check_hello(frame: Frame, role: Role) -> Hello:
    """The peer's first frame as a Hello we can talk to; ``FrameError`` otherwise."""
    if not isinstance(frame, Hello):
        raise FrameError("first frame is not a Hello", "policy-violation")
    if frame.version != PROTOCOL_VERSION:
        raise FrameError(f"unsupported loopback version {frame.version}", "unsupported-version")
    if frame.role == role:
        raise FrameError(f"peer has our own role {frame.role}", "policy-violation")
    if len(frame.nonce) != NONCE_BYTES:
        raise FrameError(f"a nonce of {len(frame.nonce)} bytes, not {NONCE_BYTES}", "policy-violation")
    return frame


def _peer_of(ws: WebSocketConnection, role: Role) -> str:
    """``gateway 127.0.0.1:40123``: the peer's role (the other one) and address, for events."""
    other = Role.GATEWAY if role is Role.EDGE else Role.EDGE
    try:
        remote = ws.remote
        return f"{other.value} {remote.address}:{remote.port}"  # type: ignore[union-attr]
    except Exception:  # noqa: BLE001 - a name for the log only (a unix socket, a closed one)
        return other.value


async def _send_frame(ws: WebSocketConnection, data: bytes) -> None:
    """One frame, within ``WRITE_TIMEOUT`` (``trio.TooSlowError`` ends the connection)."""
    with trio.fail_after(WRITE_TIMEOUT):
        await ws.send_message(data)


def _close_reason(reason: str) -> str:
    return reason.encode()[:MAX_CLOSE_REASON_BYTES].decode(errors="ignore")


async def _close(ws: WebSocketConnection, code: int, exc: BaseException | str) -> None:
    """Close with ``code`` and a reason (bounded; the close handshake bounded by ACK_TIMEOUT)."""
    reason = exc if isinstance(exc, str) else describe(exc)
    with trio.CancelScope(shield=True), trio.move_on_after(ACK_TIMEOUT):
        await ws.aclose(code, _close_reason(reason))


async def _refuse(ws: WebSocketConnection, peer: str, reason: str) -> None:
    """The peer broke the protocol: say why in the log and in the close frame (1002)."""
    log.warning("loopback: closing the connection with %s: %s", peer, reason)
    await _close(ws, CLOSE_PROTOCOL_ERROR, reason)


def _log_closed(peer: str, exc: BaseException) -> None:
    reason = getattr(exc, "reason", None)
    code = getattr(reason, "code", None)
    if code in (CLOSE_PROTOCOL_ERROR, CLOSE_INTERNAL_ERROR):
        log.warning("loopback: %s closed the connection: %s %s", peer, code, getattr(reason, "reason", ""))
    else:
        log.info("loopback: %s closed the connection: %s", peer, reason)


async def _get_bytes(ws: WebSocketConnection) -> bytes:
    message = await ws.get_message()
    if isinstance(message, str):
        raise FrameError("text WebSocket message on the loopback channel", "policy-violation")
    return message


__all__ = [
    "CLOSE_INTERNAL_ERROR",
    "CLOSE_POLICY_VIOLATION",
    "CLOSE_PROTOCOL_ERROR",
    "DEFAULT_OUTAGE_BOUND",
    "Bounce",
    "ChannelEndpoint",
    "ChannelStatistics",
    "OnBounce",
    "OnItemFailed",
    "OnItems",
    "OnRefused",
]
