"""The gateway as a presence watcher at the SIP next hop (RFC 6665, RFC 3856; issue 5).

Theory of operation
-------------------
With ``[gateway] next-hop`` set, our SIP users register and PUBLISH at the next hop (an existing
SIP server such as Kamailio with its presence server), not at the gateway. To give a local
user's approved XMPP subscribers that user's presence, the gateway subscribes to it there, as a
watcher (the RFC 8048 §4 gateway role; SPEC §7 "the gateway owns and refreshes SIP
subscriptions"):

One subscription per local user
    :meth:`WatchTable.want` opens it when the user gets their first XMPP subscriber; every
    other subscriber shares it. :meth:`WatchTable.release` (last subscriber gone) sends the
    un-SUBSCRIBE (``Expires: 0``). The initial SUBSCRIBE (``Event: presence``,
    ``Accept: application/pidf+xml``) goes to the next hop with the user's AOR as Request-URI;
    its From is the gateway's watcher identity (``WATCHER_USER`` at our SIP address: the
    presence server must authorize it, e.g. Kamailio's ``presence_xml force_active``).

Dialog (RFC 3261 §12, RFC 6665 §4.1.2.4)
    The 2xx gives the remote tag, the remote target (Contact) and the route set (Record-Route,
    reversed); a NOTIFY arriving before the 2xx establishes the dialog itself (route set from its
    Record-Route, in order). In-dialog requests follow the route set (:func:`route_request`:
    loose routing, §12.2.1.1, with the strict-router fallback).

NOTIFY (RFC 6665 §4.1.3)
    Matched by Call-ID and our tag (else 481), always answered 200. A PIDF body becomes a
    :class:`PresenceEvent`; an ``active`` NOTIFY without body means the user published nothing
    (offline); ``pending`` without body says nothing. ``Subscription-State: terminated`` ends
    the dialog: ``deactivated``/``timeout`` (and no reason) → resubscribe at once, or after the
    back-off when the previous attempt also failed; ``probation``/``giveup`` → after
    ``retry-after`` or the back-off; ``rejected``/``noresource``/``invariant`` → dropped (the
    subscribers get "offline"; a new subscriber tries again).

Refresh and back-off
    A subscription is refreshed ``REFRESH_MARGIN`` s before the granted expiry, or at half of
    it when that is later (a short grant); the requested expiry is the subscription refresh interval (SPEC §3), so the
    next hop's view is refreshed at least that often. A failed SUBSCRIBE (other than 423, which
    is retried with ``Min-Expires``) is retried after ``RETRY_BASE`` · 2^n s, at most
    ``RETRY_MAX`` (or the response's ``Retry-After``); subscribers learn "offline" while
    nothing is known. 481 to a refresh: the dialog is gone, a new one is opened at once. A
    refresh that succeeds resets the back-off. Due times live in a heap (stale entries are
    skipped when they surface), so a tick costs O(log n) per due subscription.

Fetch (RFC 6665 §4.4.3)
    A probe for a user with no subscription is answered through a fetch: SUBSCRIBE with
    ``Expires: 0``, whose single NOTIFY carries the current state (``PresenceEvent.fetch``).

:class:`WatchTable` is the sans-IO core (time injected; it returns requests to send and events);
:class:`PresenceWatcher` is the thin trio driver on the gateway's ``SipTransport``.
"""

from __future__ import annotations

import contextlib
import enum
import heapq
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import trio

from edgeproxy.gateway.sip.message import (
    Headers,
    SipParseError,
    SipRequest,
    SipResponse,
    parse_uint_or,
    response_to,
)
from edgeproxy.gateway.sip.transport import (
    Destination,
    ServerContext,
    SipTransport,
    destination_for,
    peer_of,
    surface_of,
)
from edgeproxy.gateway.sip.uri import SipUri, parse_name_addr, parse_uri, split_header_list
from edgeproxy.gateway.translate import (
    DEFAULT_SUBSCRIPTION_EXPIRES,
    PIDF_CONTENT_TYPE,
    PresenceInfo,
    TranslationError,
    jid_to_sip_uri,
    parse_pidf,
)
from edgeproxy.ops.boundary import contain

log = logging.getLogger(__name__)

#: The user part of the gateway's watcher identity (From of its SUBSCRIBEs).
WATCHER_USER = "presence-gateway"
#: Refresh this long before the granted expiry: more than Timer F (64·T1 = 32 s, RFC 3261
#: §17.1.2.2), so that a refresh that times out still leaves time for a new SUBSCRIBE.
REFRESH_MARGIN = 60
#: Back-off after a failed SUBSCRIBE: RETRY_BASE · 2^(failures-1) s, capped at RETRY_MAX.
RETRY_BASE = 5.0
RETRY_MAX = 900.0
#: Largest Min-Expires (423) we follow: RFC 3856 §6.4's default hour.
MAX_MIN_EXPIRES = 3600
#: How long a fetch or an un-SUBSCRIBE waits for its final NOTIFY: Timer F (64·T1, RFC 3261
#: §17.1.2.2), the time the notifier's NOTIFY transaction may take.
FINAL_NOTIFY_WAIT = 32.0
#: Bounds (DESIGN principle 4): users watched at once, fetches in flight.
MAX_SUBSCRIPTIONS = 100_000
MAX_FETCHES = 1_000
#: RFC 6665 §4.1.3: reasons after which re-subscribing is pointless.
FINAL_REASONS = frozenset({"rejected", "noresource", "invariant"})
OFFLINE = PresenceInfo(False, None, None, 18500)


class Phase(enum.Enum):
    SUBSCRIBING = "subscribing"  # initial SUBSCRIBE sent, no dialog yet
    ACTIVE = "active"  # dialog established
    WAITING = "waiting"  # no dialog; a new SUBSCRIBE goes out at ``due``
    ENDING = "ending"  # un-SUBSCRIBE sent (or to be sent once the dialog exists)
    DROPPED = "dropped"  # terminated for good (rejected, noresource, invariant)


@dataclass
class Subscription:
    local: str  # the local user's bare JID
    aor: str  # the presentity's SIP AOR
    call_id: str
    local_tag: str
    fetch: bool = False
    phase: Phase = Phase.SUBSCRIBING
    cseq: int = 0
    remote_tag: str | None = None
    remote_target: str | None = None
    route_set: tuple[str, ...] = ()
    due: float | None = None  # when the driver must refresh / retry
    expires_at: float | None = None
    failures: int = 0
    unsubscribed: bool = False  # the un-SUBSCRIBE went out


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A SUBSCRIBE to send (without Via: the driver adds it); ``hop`` None → the next hop."""

    sub: Subscription
    request: SipRequest
    hop: SipUri | None
    expires: int


@dataclass(frozen=True, slots=True)
class PresenceEvent:
    local: str
    info: PresenceInfo
    fetch: bool = False


@dataclass
class NotifyResult:
    status: int
    events: list[PresenceEvent] = field(default_factory=list)
    outgoing: list[Outgoing] = field(default_factory=list)


def route_request(target: str, route_set: tuple[str, ...]) -> tuple[str, list[str], SipUri]:
    """Request-URI, Route header values and the URI to send to, for an in-dialog request
    (RFC 3261 §12.2.1.1): loose routing when the first route has ``lr``, else the strict
    router gets the remote target as the last Route."""
    if not route_set:
        return target, [], parse_uri(target)
    first = parse_name_addr(route_set[0]).uri
    if first.param("lr") is not None:
        return target, list(route_set), first
    return str(first), [*route_set[1:], f"<{target}>"], first


def record_routes(message: SipRequest | SipResponse) -> list[str]:
    """Every Record-Route entry of a message, top first (unparsable ones left out)."""
    entries: list[str] = []
    for value in message.headers.get_all("Record-Route"):
        for entry in split_header_list(value):
            try:
                parse_name_addr(entry)
            except SipParseError:
                log.info("presence: unparsable Record-Route %r ignored", entry[:80])
                continue
            entries.append(entry)
    return entries


def is_presence_event(request: SipRequest) -> bool:
    """Whether the request's Event header names the presence package (RFC 3856 §6.1, RFC 6665
    §8.2.1: parameters dropped, compared case-insensitively)."""
    return (request.headers.get("Event") or "").split(";")[0].strip().lower() == "presence"


def retry_after(value: str | None, default: float) -> float:
    """Delta-seconds of a Retry-After / Expires / Min-Expires value (comment and parameters
    dropped, §20.33), ``default`` when absent or not ASCII digits."""
    text = (value or "").split(";")[0].split("(")[0]
    seconds = parse_uint_or(text, -1)
    return float(seconds) if seconds >= 0 else default


class WatchTable:
    """The sans-IO core: subscriptions by local user (see the module docstring)."""

    def __init__(
        self,
        watcher_uri: str,
        contact: str,
        interval: Callable[[], int] = lambda: DEFAULT_SUBSCRIPTION_EXPIRES,
    ) -> None:
        self.watcher_uri = watcher_uri
        self.contact = contact
        self.interval = interval
        self.subs: dict[str, Subscription] = {}  # local user → their shared subscription
        self.dialogs: dict[str, Subscription] = {}  # Call-ID → subscription (incl. fetches)
        self.fetches: dict[str, Subscription] = {}  # local user → their fetch in flight
        self._timers: list[tuple[float, int, str]] = []  # heap of (due, seq, Call-ID)
        self._seq = 0

    # -- the agent's side ----------------------------------------------------------------------

    def want(self, local: str, now: float) -> list[Outgoing]:
        """``local`` has XMPP subscribers: make sure a subscription exists (idempotent)."""
        sub = self.subs.get(local)
        if sub is not None and sub.phase is not Phase.DROPPED:
            return []
        if sub is None and len(self.subs) >= MAX_SUBSCRIPTIONS:
            log.warning("presence watch: %d subscriptions, %s not watched", len(self.subs), local)
            return []
        if sub is not None:
            self._forget(sub)
        sub = self._new(local)
        self.subs[local] = sub
        return [self._initial(sub)]

    def release(self, local: str, now: float) -> list[Outgoing]:
        """``local``'s last subscriber is gone: un-SUBSCRIBE (RFC 6665 §4.1.2.3)."""
        sub = self.subs.pop(local, None)
        if sub is None:
            return []
        if sub.phase is Phase.ACTIVE:
            sub.phase = Phase.ENDING
            return self._end(sub, now)
        if sub.phase is Phase.SUBSCRIBING:
            sub.phase = Phase.ENDING  # un-SUBSCRIBE once the 2xx (or a NOTIFY) makes the dialog
            return []
        self._forget(sub)
        return []

    def fetch(self, local: str, now: float) -> list[Outgoing]:
        """One-time state of ``local`` (a probe with no subscription): SUBSCRIBE Expires 0."""
        if local in self.fetches:
            return []  # one in flight already answers every prober
        if len(self.fetches) >= MAX_FETCHES:
            return []
        sub = self._new(local, fetch=True)
        self.fetches[local] = sub
        return [self._initial(sub, expires=0)]

    # -- SIP results ---------------------------------------------------------------------------

    def on_response(
        self, out: Outgoing, response: SipResponse, now: float
    ) -> tuple[list[PresenceEvent], list[Outgoing]]:
        sub = out.sub
        if self.dialogs.get(sub.call_id) is not sub:
            return [], []  # ended meanwhile
        status = response.status
        if status < 200:
            return [], []
        tag, target = "", None
        if status < 300 and sub.remote_tag is None:
            try:
                tag = parse_name_addr(response.headers.get("To") or "").tag or ""
                contact = response.headers.get("Contact")
                target = str(parse_name_addr(contact).uri) if contact else None
            except SipParseError as exc:  # a 2xx we cannot follow: handled as a failure
                log.info("presence watch: unusable 2xx to SUBSCRIBE %s: %s", sub.aor, exc)
                status = 502
        if status < 300:
            was_active = sub.phase is Phase.ACTIVE
            if sub.remote_tag is None:
                sub.remote_tag = tag
                sub.route_set = tuple(reversed(record_routes(response)))
                if target is not None:
                    sub.remote_target = target
            if sub.fetch or out.expires == 0:
                # The final NOTIFY carries the state (fetch) or ends the dialog; without one,
                # the entry is dropped after FINAL_NOTIFY_WAIT.
                self._schedule(sub, now + FINAL_NOTIFY_WAIT)
                return [], []
            if sub.phase is Phase.ENDING:  # released while the SUBSCRIBE was in flight
                return [], self._end(sub, now)
            # A notifier may shorten the expiry, never lengthen it (RFC 6665 §4.2.1.1).
            granted = min(retry_after(response.headers.get("Expires"), out.expires), out.expires)
            self._granted(sub, int(granted), now)
            if was_active:
                sub.failures = 0  # a refresh went through
            sub.phase = Phase.ACTIVE
            return [], []
        if status == 423 and out.expires and sub.phase is not Phase.ENDING:
            minimum = retry_after(response.headers.get("Min-Expires"), 0)
            if 0 < minimum <= MAX_MIN_EXPIRES:
                if sub.remote_tag is None:
                    return [], [self._initial(sub, expires=int(minimum))]
                return [], [self._in_dialog(sub, int(minimum))]
        # Failed: the dialog (if any) is gone for us; retry later (fetches and endings stop).
        log.info("presence watch: SUBSCRIBE %s → %s %s", sub.aor, status, response.reason)
        if sub.fetch or sub.phase is Phase.ENDING:
            self._forget(sub)
            return ([PresenceEvent(sub.local, OFFLINE, True)] if sub.fetch else []), []
        in_dialog = sub.remote_tag is not None
        self._restart_later(sub, now, immediately=in_dialog and status == 481, response=response)
        return ([PresenceEvent(sub.local, OFFLINE)] if not in_dialog else []), []

    def on_notify(self, request: SipRequest, now: float) -> NotifyResult:
        try:
            to = parse_name_addr(request.headers.get("To") or "")
            from_ = parse_name_addr(request.headers.get("From") or "")
        except SipParseError:
            return NotifyResult(400)
        sub = self.dialogs.get(request.call_id)
        if sub is None or to.tag != sub.local_tag:
            return NotifyResult(481)
        if sub.remote_tag is None:  # NOTIFY before the 2xx (RFC 6665 §4.1.2.4)
            sub.remote_tag = from_.tag or ""
            sub.route_set = tuple(record_routes(request))
        elif from_.tag != sub.remote_tag:
            return NotifyResult(481)  # another dialog (a fork): not ours
        contact = request.headers.get("Contact")
        if contact:
            with contextlib.suppress(SipParseError):  # target refresh (RFC 6665 §4.1.2.4)
                sub.remote_target = str(parse_name_addr(contact).uri)
        state, params = _subscription_state(request.headers.get("Subscription-State") or "")
        result = NotifyResult(200)
        info = _body_info(request, state)
        if info is not None and sub.phase is not Phase.ENDING:
            result.events.append(PresenceEvent(sub.local, info, sub.fetch))
        if state != "terminated":
            if sub.phase is Phase.SUBSCRIBING and not sub.fetch:
                sub.phase = Phase.ACTIVE
                if (granted := parse_uint_or(params.get("expires"), -1)) >= 0:
                    self._granted(sub, granted, now)
            elif sub.phase is Phase.ENDING:
                result.outgoing.extend(self._end(sub, now))  # released before the dialog
            elif (
                (expires := parse_uint_or(params.get("expires"), -1)) >= 0
                and sub.phase is Phase.ACTIVE
                and (sub.expires_at is None or now + expires < sub.expires_at)
            ):
                self._granted(sub, expires, now)  # the notifier shortened it
            return result
        # terminated (RFC 6665 §4.1.3)
        if sub.fetch or sub.phase is Phase.ENDING or self.subs.get(sub.local) is not sub:
            if sub.fetch and info is None:
                result.events.append(PresenceEvent(sub.local, OFFLINE, True))
            self._forget(sub)
            return result
        reason = params.get("reason", "")
        if reason in FINAL_REASONS:
            self._forget(sub)
            sub.phase = Phase.DROPPED
            self._schedule(sub, None)
            result.events.append(PresenceEvent(sub.local, OFFLINE))
            return result
        wait: float | None = None
        if reason in ("probation", "giveup"):
            wait = retry_after(params.get("retry-after"), self._backoff(sub.failures + 1))
        self._restart_later(sub, now, immediately=sub.failures == 0 and wait is None, wait=wait)
        return result

    def due(self, now: float) -> tuple[list[PresenceEvent], list[Outgoing]]:
        """Refreshes and retries due at ``now``; fetches and endings whose NOTIFY never came
        are dropped (a fetch then answers "offline")."""
        events: list[PresenceEvent] = []
        out: list[Outgoing] = []
        while self._timers and self._timers[0][0] <= now:
            when, _, call_id = heapq.heappop(self._timers)
            sub = self.dialogs.get(call_id)
            if sub is None or sub.due != when:
                continue  # stale entry: rescheduled or forgotten since
            sub.due = None
            if sub.fetch or sub.phase is Phase.ENDING:
                self._forget(sub)
                if sub.fetch:
                    events.append(PresenceEvent(sub.local, OFFLINE, True))
            elif sub.phase is Phase.ACTIVE:
                out.append(self._in_dialog(sub, self.interval()))
            elif sub.phase is Phase.WAITING:
                self._forget(sub)
                if self.subs.get(sub.local) is sub:
                    fresh = self._new(sub.local)
                    fresh.failures = sub.failures
                    self.subs[sub.local] = fresh
                    out.append(self._initial(fresh))
        return events, out

    def next_due(self) -> float | None:
        while self._timers:
            when, _, call_id = self._timers[0]
            sub = self.dialogs.get(call_id)
            if sub is not None and sub.due == when:
                return when
            heapq.heappop(self._timers)  # stale
        return None

    # -- internals -----------------------------------------------------------------------------

    def _new(self, local: str, *, fetch: bool = False) -> Subscription:
        sub = Subscription(
            local=local,
            aor=jid_to_sip_uri(local),
            call_id=f"{secrets.token_hex(10)}@edgeproxy-watch",
            local_tag=secrets.token_hex(5),
            fetch=fetch,
        )
        self.dialogs[sub.call_id] = sub
        return sub

    def _end(self, sub: Subscription, now: float) -> list[Outgoing]:
        """The un-SUBSCRIBE of a released subscription, once (RFC 6665 §4.1.2.3)."""
        if sub.unsubscribed or sub.remote_tag is None:
            return []
        sub.unsubscribed = True
        self._schedule(sub, now + FINAL_NOTIFY_WAIT)
        return [self._in_dialog(sub, 0)]

    def _schedule(self, sub: Subscription, when: float | None) -> None:
        """Set ``sub.due``; the heap keeps old entries, skipped when they no longer match."""
        sub.due = when
        if when is not None:
            self._seq += 1
            heapq.heappush(self._timers, (when, self._seq, sub.call_id))

    def _forget(self, sub: Subscription) -> None:
        self.dialogs.pop(sub.call_id, None)
        if self.fetches.get(sub.local) is sub:
            del self.fetches[sub.local]

    def _granted(self, sub: Subscription, granted: int, now: float) -> None:
        granted = max(granted, 1)
        sub.expires_at = now + granted
        self._schedule(sub, now + max(granted - REFRESH_MARGIN, granted / 2))

    def _backoff(self, failures: int) -> float:
        return min(RETRY_BASE * 2 ** max(failures - 1, 0), RETRY_MAX)

    def _restart_later(
        self,
        sub: Subscription,
        now: float,
        *,
        immediately: bool,
        wait: float | None = None,
        response: SipResponse | None = None,
    ) -> None:
        sub.failures += 1
        if wait is None:
            wait = 0.0 if immediately else self._backoff(sub.failures)
            if response is not None and not immediately:
                wait = retry_after(response.headers.get("Retry-After"), wait)
        sub.phase, sub.expires_at = Phase.WAITING, None
        self._schedule(sub, now + min(wait, RETRY_MAX))

    def _headers(self, sub: Subscription, expires: int, to: str) -> Headers:
        sub.cseq += 1
        headers = Headers()
        headers.add("Max-Forwards", "70")
        headers.add("From", f"<{self.watcher_uri}>;tag={sub.local_tag}")
        headers.add("To", to)
        headers.add("Call-ID", sub.call_id)
        headers.add("CSeq", f"{sub.cseq} SUBSCRIBE")
        headers.add("Contact", f"<{self.contact}>")
        headers.add("Event", "presence")
        headers.add("Accept", PIDF_CONTENT_TYPE)
        headers.add("Expires", str(expires))
        return headers

    def _initial(self, sub: Subscription, *, expires: int | None = None) -> Outgoing:
        expires = self.interval() if expires is None else expires
        headers = self._headers(sub, expires, f"<{sub.aor}>")
        return Outgoing(sub, SipRequest("SUBSCRIBE", sub.aor, headers), None, expires)

    def _in_dialog(self, sub: Subscription, expires: int) -> Outgoing:
        uri, routes, hop = route_request(sub.remote_target or sub.aor, sub.route_set)
        headers = self._headers(sub, expires, f"<{sub.aor}>;tag={sub.remote_tag}")
        for route in routes:
            headers.add("Route", route)
        # Without a remote target (no Contact in the 2xx) the next hop gets it, as the first time.
        next_hop = hop if (sub.remote_target or sub.route_set) else None
        return Outgoing(sub, SipRequest("SUBSCRIBE", uri, headers), next_hop, expires)


def _subscription_state(value: str) -> tuple[str, dict[str, str]]:
    state, *raw = value.split(";")
    params: dict[str, str] = {}
    for item in raw:
        key, _, val = item.partition("=")
        params[key.strip().lower()] = val.strip()
    return state.strip().lower(), params


def _body_info(request: SipRequest, state: str) -> PresenceInfo | None:
    """The presence a NOTIFY carries; None when it says nothing."""
    ctype = (request.headers.get("Content-Type") or "").split(";")[0].strip().lower()
    if request.body.strip():
        if ctype != PIDF_CONTENT_TYPE:
            log.info("presence watch: NOTIFY body of type %r ignored", ctype)
            return None
        try:
            return parse_pidf(request.body)
        except TranslationError as exc:
            log.info("presence watch: bad PIDF in NOTIFY: %s", exc)
            return None
    # RFC 3856 §6.6.2 / Kamailio: an active NOTIFY with no document: nothing published.
    return OFFLINE if state == "active" else None


Deliver = Callable[[PresenceEvent], None]


class PresenceWatcher:
    """The trio driver: sends the table's SUBSCRIBEs, answers NOTIFYs, runs the refresh timer."""

    def __init__(
        self,
        sip: SipTransport,
        next_hop: SipUri,
        deliver: Deliver,
        *,
        interval: Callable[[], int] = lambda: DEFAULT_SUBSCRIPTION_EXPIRES,
    ) -> None:
        self.sip = sip
        self.next_hop = next_hop
        self.deliver = deliver
        self.interval = interval
        self.table: WatchTable | None = None
        self._nursery: trio.Nursery | None = None
        self._wake = trio.Event()
        self._early: list[tuple[str, str]] = []  # calls before run() started

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled (start after the SIP transport, whose address we need)."""
        contact = self.sip.contact_for(destination_for(self.next_hop).transport)
        self.table = WatchTable(
            f"sip:{WATCHER_USER}@{self.sip.host}",
            contact.replace("sip:", f"sip:{WATCHER_USER}@", 1),
            self.interval,
        )
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            for what, local in self._early:
                getattr(self, what)(local)
            self._early.clear()
            while True:
                deadline = self.table.next_due()
                with trio.move_on_at(deadline if deadline is not None else float("inf")):
                    await self._wake.wait()
                self._wake = trio.Event()
                events, outgoing = self.table.due(trio.current_time())
                self._dispatch(events)
                self._send(outgoing)

    # -- the agent's calls (synchronous) -------------------------------------------------------

    def want(self, local: str) -> None:
        if self.table is None:
            self._early.append(("want", local))
            return
        self._send(self.table.want(local, trio.current_time()))

    def release(self, local: str) -> None:
        if self.table is None:
            self._early = [(w, u) for (w, u) in self._early if u != local]
            return
        self._send(self.table.release(local, trio.current_time()))

    def fetch(self, local: str) -> None:
        if self.table is None:
            self._early.append(("fetch", local))
            return
        self._send(self.table.fetch(local, trio.current_time()))

    async def handle_notify(self, request: SipRequest, ctx: ServerContext) -> None:
        if self.table is None or not is_presence_event(request):
            await ctx.respond(response_to(request, 489 if self.table else 481, to_tag="pw"))
            return
        result = self.table.on_notify(request, trio.current_time())
        await ctx.respond(response_to(request, result.status))
        self._dispatch(result.events)
        self._send(result.outgoing)

    # -- internals -----------------------------------------------------------------------------

    def _dispatch(self, events: list[PresenceEvent]) -> None:
        for event in events:
            try:
                self.deliver(event)
            except Exception:
                log.exception("presence watch: delivering %s failed", event.local)
        self._wake.set()  # dues may have changed

    def _send(self, outgoing: list[Outgoing]) -> None:
        for out in outgoing:
            try:
                assert self._nursery is not None
                self._nursery.start_soon(self._transact, out)
            except RuntimeError:  # the gateway is stopping: nothing more goes out
                log.info("presence watch: stopped, SUBSCRIBE for %s not sent", out.sub.local)
                return
        self._wake.set()

    async def _transact(self, out: Outgoing) -> None:
        """One SUBSCRIBE and its response, in the failure boundary of the transport the
        response comes over (a response nobody expected to break us must not end the watcher)."""
        dest = destination_for(out.hop or self.next_hop)
        await contain(
            surface_of(dest), peer_of(dest), self.sip.telemetry, partial(self._subscribe, out, dest),
            answer_name="dropped",
        )

    async def _subscribe(self, out: Outgoing, dest: Destination) -> None:
        out.request.headers.prepend(
            "Via",
            f"SIP/2.0/{dest.transport.upper()} {self.sip.via_for(dest.transport)}"
            f";branch={self.sip.new_branch()};rport",
        )
        response = await self.sip.request(out.request, dest)
        assert self.table is not None
        events, more = self.table.on_response(out, response, trio.current_time())
        self._dispatch(events)
        self._send(more)


__all__ = [
    "Outgoing",
    "PresenceEvent",
    "PresenceWatcher",
    "Subscription",
    "WatchTable",
    "record_routes",
    "route_request",
]
