"""Sequencing, acknowledgement and re-sending for the loopback channel (sans-IO).

Theory of operation
-------------------
Each side of the channel has one :class:`Sender` and one :class:`Receiver`; they outlive the
WebSocket connections (the drivers in ``endpoint.py`` create one pair per process and hand it
every new connection). Nothing here does I/O, reads a clock or imports trio.

Sender
    ``submit`` gives the next item the next sequence number of this *session* (a random id drawn
    when the process starts) and appends it to the bounded queue ``unsent`` — or refuses it when
    ``max_queued`` items are already waiting, so the caller bounces it at once (nothing is
    dropped silently, SPEC §6 rule 5). ``next_batch`` moves up to a batch from ``unsent`` to
    ``in_flight``, never letting more than the peer's ``window`` items be in flight (flow
    control). A cumulative ``Ack(up_to)`` frees in-flight items. When a connection ends, the
    in-flight items are not lost: on the next connection the peer's ``Hello`` tells what it
    processed (``received``, valid only if its ``peer_session`` is our session), those are
    forgotten and the rest go back in front of ``unsent`` to be sent again, in order.

Receiver
    ``accept`` walks a batch and returns the items not seen yet: an item with
    ``seq <= processed`` is a duplicate of something re-sent after a reconnect and is dropped; a
    gap (``seq > processed + 1``) is a protocol error. ``processed`` advances only when the driver
    has handled the items (``mark_processed``), and that is what the ``Ack`` reports, so an item
    whose handling was interrupted by a lost connection is accepted again when re-sent. A
    ``Hello`` from a new peer session (the peer restarted) resets the expectation: the first item
    of the new session sets the base.

Guarantee: while both processes live, every item is handled exactly once, however often the
connection breaks. If the *receiving process* dies after handling items and before its ack
left, those items are re-sent to its successor (at-least-once for that window). A receiver
whose handling has an outcome of its own (the gateway's SIP transaction) acks on completion
(``complete``): then "handled" means "the outcome is final", and the re-sent copy must be
recognisable downstream as a retransmission (the gateway derives the SIP Call-ID and branch from
the sender's session and the sequence number, RFC 3261 §17.2.3). If the peer stays away past the
driver's bound, the sender's queue is drained and every item is bounced to its sender
(``drain``).
"""

from __future__ import annotations

from collections import deque

from edgeproxy.loopback.frames import (
    MAX_BATCH_BYTES,
    MAX_BATCH_ITEMS,
    Bounce,
    FrameError,
    Hello,
    Item,
    Routed,
    StanzaBatch,
    StanzaKind,
)

#: Items waiting for the peer (unsent plus in flight) per side. 10,000 stanzas is two seconds
#: of the 5,000 messages/s target: enough to ride out a gateway restart without bouncing.
DEFAULT_MAX_QUEUED = 10_000


class Sender:
    """Outbound half: sequence numbers, the bounded queue, the in-flight window."""

    def __init__(self, session: str, *, max_queued: int = DEFAULT_MAX_QUEUED) -> None:
        self.session = session
        self.max_queued = max_queued
        self.next_seq = 1
        self.unsent: deque[Item] = deque()
        self.in_flight: deque[Item] = deque()
        self.window = 0  # no sending until the peer's Hello grants a window
        self.batch_items = MAX_BATCH_ITEMS
        self.batch_bytes = MAX_BATCH_BYTES

    @property
    def queued(self) -> int:
        return len(self.unsent) + len(self.in_flight)

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
    ) -> Item | None:
        """Queue one stanza (or, with ``bounce=(condition, text)``, a bounce answering the peer's
        item ``ref``, 0 for none); None when full."""
        if self.queued >= self.max_queued:
            return None
        seq = self.next_seq
        item: Item
        if bounce is None:
            item = Routed(seq, kind, from_, to, type, id, raw)
        else:
            item = Bounce(seq, kind, from_, to, type, id, raw, bounce[0], bounce[1], ref)
        self.next_seq = seq + 1
        self.unsent.append(item)
        return item

    def next_batch(self) -> StanzaBatch | None:
        """The next batch to send, within the window and the batch limits; None if nothing."""
        room = min(self.window - len(self.in_flight), self.batch_items, len(self.unsent))
        if room <= 0:
            return None
        out: list[Item] = []
        size = 0
        while len(out) < room:
            item = self.unsent[0]
            size += len(item.raw)
            if out and size > self.batch_bytes:
                break
            out.append(self.unsent.popleft())
        self.in_flight.extend(out)
        return StanzaBatch(items=tuple(out))

    def on_ack(self, up_to: int) -> int:
        """Forget items up to ``up_to``; return how many were freed.

        Usually they are in flight. A peer that acks on completion (``ack_on_complete``) may
        ack items of a previous connection that went back to ``unsent`` and have not been
        re-sent yet: those are freed too. An ack beyond anything ever submitted is an error.
        """
        if up_to >= self.next_seq:
            raise FrameError(f"ack {up_to} for items never sent", "policy-violation")
        freed = 0
        while self.in_flight and self.in_flight[0].seq <= up_to:
            self.in_flight.popleft()
            freed += 1
        while not self.in_flight and self.unsent and self.unsent[0].seq <= up_to:
            self.unsent.popleft()
            freed += 1
        return freed

    def on_window(self, window: int) -> None:
        self.window = window

    def on_connected(self, peer: Hello) -> None:
        """A new connection: drop what the peer processed, queue the rest again in order."""
        self.window = peer.window
        if peer.peer_session == self.session:
            self.on_ack(min(peer.received, self.next_seq - 1))
        self.unsent.extendleft(reversed(self.in_flight))
        self.in_flight.clear()

    def on_disconnected(self) -> None:
        self.window = 0

    def drain(self) -> list[Item]:
        """Remove and return everything queued (in flight first), for bouncing."""
        items = list(self.in_flight) + list(self.unsent)
        self.in_flight.clear()
        self.unsent.clear()
        return items


class Receiver:
    """Inbound half: duplicate suppression and the cumulative ack value.

    ``handed`` is the last sequence number given to the handler, ``processed`` the end of the
    prefix the handler has finished (what acks report). They differ only while items are being
    handled — for long with ``ack_on_complete`` (each item completes on its own, in any order,
    ``complete``; the ack covers the contiguous completed prefix).
    """

    def __init__(self) -> None:
        self.peer_session = ""
        self.processed = 0
        self.handed = 0
        self._done: set[int] = set()
        self._base_unknown = True

    def on_connected(self, peer: Hello) -> None:
        if peer.session != self.peer_session:
            self.peer_session = peer.session
            self.processed = 0
            self.handed = 0
            self._done.clear()
            self._base_unknown = True

    def on_disconnected(self, *, handling_survives: bool) -> None:
        """A connection ended. Unless handling goes on without it, unfinished items are
        forgotten so that their re-sent copies are accepted again."""
        if not handling_survives:
            self.handed = self.processed

    def accept(self, batch: StanzaBatch) -> list[Item]:
        """The items of ``batch`` not handled yet, in order (duplicates dropped)."""
        items = batch.items
        if self._base_unknown:
            self.processed = self.handed = items[0].seq - 1
            self._base_unknown = False
        expected = max(self.processed, self.handed) + 1
        fresh: list[Item] = []
        for item in items:
            seq = item.seq
            if seq < expected:
                continue  # a duplicate re-sent after a reconnect
            if seq != expected:
                raise FrameError(
                    f"sequence gap: got {seq}, expected {expected}", "policy-violation"
                )
            fresh.append(item)
            expected += 1
        if fresh:
            self.handed = fresh[-1].seq
        return fresh

    def mark_processed(self, seq: int) -> None:
        if seq > self.processed:
            self.processed = seq
        if seq > self.handed:
            self.handed = seq

    def complete(self, seq: int) -> bool:
        """One handed item is finished; True if the completed prefix (``processed``) grew."""
        if seq <= self.processed:
            return False
        self._done.add(seq)
        advanced = False
        while self.processed + 1 in self._done:
            self._done.remove(self.processed + 1)
            self.processed += 1
            advanced = True
        return advanced
