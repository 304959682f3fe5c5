"""Non-INVITE SIP transactions as pure state machines with injected time (RFC 3261 §17).

Theory of operation
-------------------
The gateway only sends and receives non-INVITE requests (MESSAGE, SUBSCRIBE, NOTIFY, PUBLISH,
REGISTER, OPTIONS): INVITE is refused (SPEC §1: no audio/video). Each transaction is an object
whose methods take the current time and return *actions* for the driver (send these bytes again,
hand this response to the transaction user, the transaction timed out); ``deadline`` says when to
call ``on_timer`` next. No clock is read here, so the tests drive time by hand.

Client (§17.1.2, figure 6)
    Trying --1xx--> Proceeding; Trying/Proceeding --final--> Completed --Timer K--> Terminated.
    On an unreliable transport, Timer E retransmits the request: first after T1, doubling up to
    T2 while Trying, every T2 while Proceeding. Timer F (64·T1) ends the transaction with a
    timeout, which the user treats as a 408 (§8.1.3.1). Timer K is T4 on unreliable transports
    (to absorb response retransmissions) and zero on reliable ones.

Server (§17.2.2, figure 8)
    Trying --TU sends 1xx--> Proceeding; --TU sends final--> Completed --Timer J--> Terminated.
    A retransmitted request is absorbed in Trying, answered with the last provisional response in
    Proceeding and with the final response in Completed. Timer J is 64·T1 on unreliable
    transports and zero on reliable ones.

Bytes: a client transaction holds its request as the bytes sent (``message.OutgoingRequest``,
built once) and a server transaction its last response as the bytes sent, so a retransmission
is those bytes again and a transaction that lingers (Timer J: 32 s over UDP) keeps no parsed
message.

Timers of many transactions (:class:`TimerQueue`): every transaction's next deadline in one
heap, which the driver's one timer loop pops as they come due — no scan of every live
transaction per tick, no task or cancel scope per transaction.

Matching (§17.1.3, §17.2.3): responses match a client transaction by the top Via ``branch`` and
the CSeq method; requests match a server transaction by branch, sent-by and method
(:func:`server_key`). Only RFC 3261 branches (``z9hG4bK`` magic cookie) are supported; a request
without one is matched by Call-ID, CSeq and From tag instead (the §17.2.3 fallback, simplified).

Timer values (§17.1.1.1, table 4): T1 = 0.5 s (RTT estimate), T2 = 4 s, T4 = 5 s.
"""

from __future__ import annotations

import enum
import heapq
from dataclasses import dataclass
from typing import Generic, TypeVar

from edgeproxy.gateway.sip.message import OutgoingRequest, SipRequest, SipResponse
from edgeproxy.gateway.sip.uri import parse_name_addr, parse_via

T1 = 0.5
T2 = 4.0
T4 = 5.0
MAGIC_COOKIE = "z9hG4bK"


class State(enum.Enum):
    TRYING = "trying"
    PROCEEDING = "proceeding"
    COMPLETED = "completed"
    TERMINATED = "terminated"


@dataclass(frozen=True, slots=True)
class Retransmit:
    """Send these bytes again (the request of a client, the last response of a server
    transaction)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Deliver:
    """Hand this response to the transaction user."""

    response: SipResponse


@dataclass(frozen=True, slots=True)
class TimedOut:
    """Timer F fired: no final response (the user acts as for a 408)."""


Action = Retransmit | Deliver | TimedOut


class ClientTransaction:
    """A non-INVITE client transaction (§17.1.2) for ``request``: a parsed request, or the bytes
    of one built by a template (``OutgoingRequest``)."""

    __slots__ = ("outgoing", "key", "reliable", "state", "deadline", "_interval", "_timer_e", "_timer_f", "_timer_k")

    def __init__(self, request: SipRequest | OutgoingRequest, *, reliable: bool, now: float) -> None:
        self.outgoing = request if isinstance(request, OutgoingRequest) else OutgoingRequest.of(request)
        #: The §17.1.3 matching key: the top Via's branch and the method.
        self.key = (self.outgoing.branch, self.outgoing.method)
        self.reliable = reliable
        self.state = State.TRYING
        self._interval = T1
        self._timer_e: float | None = None if reliable else now + T1
        self._timer_f: float | None = now + 64 * T1
        self._timer_k: float | None = None
        #: When ``on_timer`` is to be called next (the earliest timer running), or None.
        self.deadline: float | None = self._timer_f if self._timer_e is None else self._timer_e

    def _rearm(self) -> None:
        times = [t for t in (self._timer_e, self._timer_f, self._timer_k) if t is not None]
        self.deadline = min(times) if times else None

    def on_response(self, response: SipResponse, now: float) -> list[Action]:
        if self.state is State.COMPLETED or self.state is State.TERMINATED:
            return []  # a retransmitted final response is absorbed
        if response.status < 200:
            if self.state is State.TRYING:
                self.state = State.PROCEEDING
            return []  # provisional responses to non-INVITE are not passed up (kept simple)
        self._timer_e = self._timer_f = None
        if self.reliable:
            self.state = State.TERMINATED
        else:
            self.state = State.COMPLETED
            self._timer_k = now + T4
        self.deadline = self._timer_k
        return [Deliver(response)]

    def on_timer(self, now: float) -> list[Action]:
        actions: list[Action] = []
        if self._timer_f is not None and now >= self._timer_f:
            self.state = State.TERMINATED
            self._timer_e = self._timer_f = self.deadline = None
            return [TimedOut()]
        if self._timer_e is not None and now >= self._timer_e:
            if self.state is State.TRYING:
                self._interval = min(2 * self._interval, T2)
            else:
                self._interval = T2
            self._timer_e = now + self._interval
            actions.append(Retransmit(self.outgoing.data))
        if self._timer_k is not None and now >= self._timer_k:
            self.state = State.TERMINATED
            self._timer_k = None
        self._rearm()
        return actions

    def on_transport_error(self) -> list[Action]:
        """§17.1.4: the transport failed; the user treats it as a 503."""
        self.state = State.TERMINATED
        self._timer_e = self._timer_f = self._timer_k = self.deadline = None
        return [TimedOut()]


class ServerTransaction:
    """A non-INVITE server transaction (§17.2.2). It keeps no copy of its request: only the
    bytes of its last response, to answer a retransmitted request with."""

    __slots__ = ("reliable", "state", "last_sent", "deadline")

    def __init__(self, request: SipRequest, *, reliable: bool, now: float) -> None:
        del request, now  # (the request's key is the table's; nothing else is needed)
        self.reliable = reliable
        self.state = State.TRYING
        #: The last response's bytes as sent; None before one, or when it was withheld.
        self.last_sent: bytes | None = None
        #: Timer J, once the final response is sent over an unreliable transport.
        self.deadline: float | None = None

    def on_request_retransmission(self) -> list[Action]:
        if (self.state is State.PROCEEDING or self.state is State.COMPLETED) and self.last_sent is not None:
            return [Retransmit(self.last_sent)]
        return []

    def send_response(self, response: SipResponse, now: float, sent: bytes | None = None) -> None:
        """The transaction user answers with ``response``; the driver sends it once itself, as
        ``sent``, and a retransmitted request is answered with those bytes again. ``sent`` None:
        the response was not sent (withheld by the transport's UDP size rule), so a
        retransmitted request is absorbed instead."""
        if self.state is State.COMPLETED or self.state is State.TERMINATED:
            raise RuntimeError("final response already sent")
        self.last_sent = sent
        if response.status < 200:
            self.state = State.PROCEEDING
            return
        if self.reliable:
            self.state = State.TERMINATED
        else:
            self.state = State.COMPLETED
            self.deadline = now + 64 * T1

    def on_timer(self, now: float) -> list[Action]:
        if self.deadline is not None and now >= self.deadline:
            self.deadline = None
            self.state = State.TERMINATED
        return []


Transaction = ClientTransaction | ServerTransaction
Owner = TypeVar("Owner")


class TimerQueue(Generic[Owner]):
    """The next deadline of many transactions in one heap, each with what its driver keeps for
    it (``owner``).

    :meth:`schedule` after anything that may have moved a transaction's deadline (created,
    answered, fired); :meth:`due` pops the transactions whose deadline has come. An entry
    whose transaction has since moved or dropped its deadline is skipped when it comes up, and
    :meth:`due` drops such entries in one pass once they make up most of the heap (a
    transaction over TCP answered in a millisecond leaves its Timer F entry 32 s ahead)."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Transaction, Owner]] = []
        self._pushed = 0
        self._compact_at = 1024

    def __len__(self) -> int:
        return len(self._heap)

    def schedule(self, tx: Transaction, owner: Owner) -> None:
        deadline = tx.deadline
        if deadline is not None:
            self._pushed += 1
            heapq.heappush(self._heap, (deadline, self._pushed, tx, owner))

    def due(self, now: float) -> list[tuple[Transaction, Owner]]:
        """The transactions whose deadline is ``now`` or earlier, each once, earliest first:
        call ``on_timer`` on each, then :meth:`schedule` it again."""
        heap = self._heap
        out: list[tuple[Transaction, Owner]] = []
        seen: set[int] = set()
        while heap and heap[0][0] <= now:
            deadline, _, tx, owner = heapq.heappop(heap)
            if tx.deadline == deadline and id(tx) not in seen:
                seen.add(id(tx))
                out.append((tx, owner))
        if len(heap) >= self._compact_at:
            heap[:] = [entry for entry in heap if entry[2].deadline == entry[0]]
            heapq.heapify(heap)
            self._compact_at = max(1024, 2 * len(heap))
        return out


def server_key(request: SipRequest) -> tuple[str, ...]:
    """The §17.2.3 matching key of a request."""
    via = parse_via(request.headers.get("Via") or "")
    method = request.method
    if via.branch.startswith(MAGIC_COOKIE):
        return (via.branch, f"{via.host}:{via.port or ''}", method)
    from_tag = parse_name_addr(request.headers.get("From") or "").tag or ""
    return (request.call_id, str(request.cseq[0]), from_tag, method)


def client_key(response: SipResponse) -> tuple[str, str]:
    via = parse_via(response.headers.get("Via") or "")
    return (via.branch, response.cseq[1])
