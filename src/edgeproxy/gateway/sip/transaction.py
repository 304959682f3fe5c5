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

Matching (§17.1.3, §17.2.3): responses match a client transaction by the top Via ``branch`` and
the CSeq method; requests match a server transaction by branch, sent-by and method
(:func:`server_key`). Only RFC 3261 branches (``z9hG4bK`` magic cookie) are supported; a request
without one is matched by Call-ID, CSeq and From tag instead (the §17.2.3 fallback, simplified).

Timer values (§17.1.1.1, table 4): T1 = 0.5 s (RTT estimate), T2 = 4 s, T4 = 5 s.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from edgeproxy.gateway.sip.message import SipRequest, SipResponse
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
    """Send this message again (request for a client, response for a server transaction)."""

    message: SipRequest | SipResponse


@dataclass(frozen=True, slots=True)
class Deliver:
    """Hand this response to the transaction user."""

    response: SipResponse


@dataclass(frozen=True, slots=True)
class TimedOut:
    """Timer F fired: no final response (the user acts as for a 408)."""


Action = Retransmit | Deliver | TimedOut


class ClientTransaction:
    """A non-INVITE client transaction (§17.1.2)."""

    def __init__(self, request: SipRequest, *, reliable: bool, now: float) -> None:
        self.request = request
        self.reliable = reliable
        self.state = State.TRYING
        self.branch = parse_via(request.headers.get("Via") or "").branch
        self.method = request.method
        self._interval = T1
        self._timer_e: float | None = None if reliable else now + T1
        self._timer_f: float | None = now + 64 * T1
        self._timer_k: float | None = None

    @property
    def key(self) -> tuple[str, str]:
        return (self.branch, self.method)

    @property
    def deadline(self) -> float | None:
        times = [t for t in (self._timer_e, self._timer_f, self._timer_k) if t is not None]
        return min(times) if times else None

    def on_response(self, response: SipResponse, now: float) -> list[Action]:
        if self.state in (State.COMPLETED, State.TERMINATED):
            return []  # a retransmitted final response is absorbed
        if response.status < 200:
            if self.state is State.TRYING:
                self.state = State.PROCEEDING
            return []  # provisional responses to non-INVITE are not passed up (kept simple)
        self.state = State.COMPLETED
        self._timer_e = self._timer_f = None
        self._timer_k = now + (0.0 if self.reliable else T4)
        if self.reliable:
            self.state = State.TERMINATED
            self._timer_k = None
        return [Deliver(response)]

    def on_timer(self, now: float) -> list[Action]:
        actions: list[Action] = []
        if self._timer_f is not None and now >= self._timer_f:
            self.state = State.TERMINATED
            self._timer_e = self._timer_f = None
            return [TimedOut()]
        if self._timer_e is not None and now >= self._timer_e:
            if self.state is State.TRYING:
                self._interval = min(2 * self._interval, T2)
            else:
                self._interval = T2
            self._timer_e = now + self._interval
            actions.append(Retransmit(self.request))
        if self._timer_k is not None and now >= self._timer_k:
            self.state = State.TERMINATED
            self._timer_k = None
        return actions

    def on_transport_error(self) -> list[Action]:
        """§17.1.4: the transport failed; the user treats it as a 503."""
        self.state = State.TERMINATED
        self._timer_e = self._timer_f = self._timer_k = None
        return [TimedOut()]


class ServerTransaction:
    """A non-INVITE server transaction (§17.2.2)."""

    def __init__(self, request: SipRequest, *, reliable: bool, now: float) -> None:
        self.request = request
        self.reliable = reliable
        self.state = State.TRYING
        self.last_response: SipResponse | None = None
        self._timer_j: float | None = None
        del now

    @property
    def deadline(self) -> float | None:
        return self._timer_j

    def on_request_retransmission(self) -> list[Action]:
        if self.state in (State.PROCEEDING, State.COMPLETED) and self.last_response is not None:
            return [Retransmit(self.last_response)]
        return []

    def send_response(self, response: SipResponse, now: float, *, retransmit: bool = True) -> None:
        """The transaction user answers; the driver sends ``response`` once itself.
        ``retransmit=False``: the response was withheld (the transport's UDP size rule), so a
        retransmitted request is absorbed instead of answered with it."""
        if self.state in (State.COMPLETED, State.TERMINATED):
            raise RuntimeError("final response already sent")
        self.last_response = response if retransmit else None
        if response.status < 200:
            self.state = State.PROCEEDING
            return
        self.state = State.COMPLETED
        if self.reliable:
            self.state = State.TERMINATED
        else:
            self._timer_j = now + 64 * T1

    def on_timer(self, now: float) -> list[Action]:
        if self._timer_j is not None and now >= self._timer_j:
            self._timer_j = None
            self.state = State.TERMINATED
        return []


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
