"""The gateway's presence agent: local SIP users' presence ⇄ XMPP contacts (SPEC §4, §7).

Theory of operation
-------------------
The gateway is the presence agent (RFC 3856 §3) for the users of our SIP domains and the
presence gateway of RFC 8048 towards XMPP. State lives in this process (a restart loses it: SIP
UAs re-PUBLISH and re-SUBSCRIBE on their refresh, XMPP contacts re-probe):

Local presence (RFC 3903)
    ``PUBLISH`` (``Event: presence``) from a user for their own AOR stores the PIDF document as
    :class:`~edgeproxy.gateway.translate.PresenceInfo` under an entity tag (``SIP-ETag``, §4.1);
    a refresh (``SIP-If-Match``, no body) extends it, ``Expires: 0`` removes it, an unknown
    entity tag gets 412 (§6 step 4). With the built-in registrar the publisher must be
    registered (403 otherwise). Every change is sent to the user's approved XMPP subscribers.

XMPP contacts subscribing to local users (RFC 8048 §4, RFC 6121 §3)
    The edge has applied the inbound policy already; the agent asks the policy engine again
    (``decide_inbound``, with the contacts the user added through SIP since the snapshot was
    built) for what to do with a ``subscribe``: ``AutoReply`` (Federated, PublicVerified, or an
    authorized PublicUnverified contact) → ``subscribed`` plus the user's current presence;
    ``StorePending`` → kept pending (and reported through ``on_pending`` to the store) until
    the user adds the contact. ``probe`` and ``subscribed`` are answered with the current
    presence when the engine allows it. The presence a contact gets passes ``decide_outbound``:
    ``AllowTransformed`` removes the status note (SPEC §4: status only to Federated).

Next hop (issue 5, ``presence_watch.py``)
    With ``[gateway] next-hop`` (``next_hop``) our users PUBLISH at the next hop instead: the
    agent then builds its ``watch`` (a ``PresenceWatcher``, run by the service), and the presence XMPP subscribers get comes from the gateway's own subscription to the
    user there (one per user, opened with the first approved subscriber, ended with the last;
    ``watch_presence`` gets each NOTIFY's state, ``remote`` keeps it). A probe for a user
    nobody subscribes to is answered through a fetch. The same ``decide_outbound`` applies.

Local users subscribing to XMPP contacts (RFC 6665, RFC 8048 §5)
    A ``SUBSCRIBE`` (``Event: presence``) to a URI of an XMPP domain is "the user adds the
    contact" — when the request's admitted identity (``ServerContext.identity``, issue 14:
    digest, its dialog, or the trusted next hop) is the subscriber —: it approves a pending request from that contact (SPEC §4; ``on_contact_added``
    lets the store learn it) and sends an XMPP ``subscribe``. The gateway is the notifier of
    that subscription dialog: 200 with the granted ``Expires`` (at most the subscription
    refresh interval), an immediate NOTIFY (§4.2.1.2; ``pending`` until the contact answers),
    and a NOTIFY with PIDF for every presence of the contact. ``Expires: 0`` ends it (NOTIFY
    ``terminated``, XMPP ``unsubscribe``). NOTIFYs follow the route set the SUBSCRIBE's
    Record-Route gave (a proxy such as Kamailio in between; RFC 3261 §12.1.1, loose routing),
    and the 200 copies the Record-Route.

Refresh (SPEC §7, subscription refresh interval)
    ``refresh(now)`` — called by ``run_refresh`` every ``EXPIRY_TICK``, or by tests with their
    own clock — ends the SIP subscriptions and publications whose expiry passed (NOTIFY
    ``terminated;reason=timeout``, RFC 6665 §4.2.2) and probes the contacts of the live
    ones once per subscription refresh interval (the gateway settings'), so the XMPP side's
    view is refreshed at that interval. Granted expiries are capped at the interval.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field

import msgspec
import trio

from edgeproxy.gateway.presence_watch import (
    PresenceEvent,
    PresenceWatcher,
    is_presence_event,
    record_routes,
    route_request,
)
from edgeproxy.gateway.sip.message import (
    Headers,
    SipRequest,
    SipResponse,
    parse_uint_or,
    response_to,
)
from edgeproxy.gateway.sip.registrar import Registrar
from edgeproxy.gateway.sip.transport import (
    Destination,
    ServerContext,
    SipTransport,
    destination_for,
)
from edgeproxy.gateway.sip.uri import SipUri, parse_name_addr, parse_uri
from edgeproxy.gateway.translate import (
    DEFAULT_SUBSCRIPTION_EXPIRES,
    PIDF_CONTENT_TYPE,
    PresenceInfo,
    TranslationError,
    jid_to_sip_uri,
    parse_pidf,
    presence_element,
    presence_info,
    presence_to_pidf,
    sip_status_for_condition,
    sip_uri_to_jid,
)
from edgeproxy.policy import engine
from edgeproxy.policy.snapshot import PolicySnapshot
from edgeproxy.tokenizer import Element
from edgeproxy.xmpp.jid import InvalidJid, parse_jid

log = logging.getLogger(__name__)

#: Default PUBLISH / SUBSCRIBE expiry when the request has none (RFC 3856 §6.4: 3600 s).
DEFAULT_EXPIRES = 3600
#: Smallest expiry we accept (RFC 6665 §4.2.1.1 423 Interval Too Brief).
MIN_EXPIRES = 60
#: Bounds: publications, subscribers per user, SIP watchers (named limits, DESIGN principle 4).
MAX_PUBLICATIONS = 100_000
MAX_WATCHERS = 100_000
MAX_PENDING = 100_000
#: Seconds between expiry sweeps (the smallest expiry we grant).
EXPIRY_TICK = 60.0
OFFLINE = PresenceInfo(False, None, None, 18500)

SendXmpp = Callable[[Element], None]
Policy = Callable[[], PolicySnapshot]


@dataclass
class Publication:
    info: PresenceInfo
    etag: str
    expires_at: float


@dataclass
class Watcher:
    """A local user's SIP subscription to an XMPP contact; we are the notifier (RFC 6665)."""

    local_jid: str  # bare
    contact_jid: str  # bare
    call_id: str
    remote_uri: str  # the subscriber (From of the SUBSCRIBE)
    remote_tag: str
    local_tag: str
    target: str  # the subscriber's Contact: Request-URI of our NOTIFYs
    dest: Destination
    expires_at: float
    cseq: int = 0
    state: str = "pending"
    last: PresenceInfo | None = None
    route_set: tuple[str, ...] = ()  # Record-Route of the SUBSCRIBE, in order (RFC 3261 §12.1.1)
    # (state, last) of the latest NOTIFY sent: a change that is no change is not sent again
    notified: tuple[str, PresenceInfo | None] | None = None
    lock: trio.Lock = field(default_factory=trio.Lock, repr=False, compare=False)


@dataclass
class PresenceAgent:
    sip: SipTransport
    registrar: Registrar
    send_xmpp: SendXmpp
    policy: Policy | None = None
    check_registration: bool = True
    on_pending: Callable[[str, str], None] | None = None
    on_contact_added: Callable[[str, str], None] | None = None
    #: ``[gateway] next-hop``: our users PUBLISH there, and ``watch`` subscribes to them.
    next_hop: SipUri | None = None
    publications: dict[str, Publication] = field(default_factory=dict)  # bare JID → state
    subscribers: dict[str, set[str]] = field(default_factory=dict)  # local → contacts
    pending: set[tuple[str, str]] = field(default_factory=set)  # (local, contact)
    added: set[tuple[str, str]] = field(default_factory=set)  # contacts added through SIP
    watchers: dict[tuple[str, str], Watcher] = field(default_factory=dict)
    contact_presence: dict[str, PresenceInfo] = field(default_factory=dict)
    # Next hop (issue 5): users PUBLISH there; we watch them (presence_watch).
    watch: PresenceWatcher | None = field(init=False, default=None)
    remote: dict[str, PresenceInfo] = field(default_factory=dict)  # local → last NOTIFY
    probers: dict[str, set[str]] = field(default_factory=dict)  # local → waiting on a fetch
    _last_probe: float | None = None  # the first refresh sets the baseline

    def __post_init__(self) -> None:
        if self.next_hop is not None:
            self.watch = PresenceWatcher(self.sip, self.next_hop, self.watch_presence, interval=self.refresh_interval)

    # -- policy -------------------------------------------------------------------------------

    def refresh_interval(self) -> int:
        if self.policy is None:
            return DEFAULT_SUBSCRIPTION_EXPIRES
        return self.policy().gateway.subscription_refresh_interval

    def _snapshot(self, local: str) -> PolicySnapshot | None:
        """The current snapshot, with the contacts ``local`` added through SIP since."""
        if self.policy is None:
            return None
        snapshot = self.policy()
        extra = {c for (u, c) in self.added if u == local}
        entry = snapshot.users.get(local)
        if not extra or entry is None or extra <= entry.contacts:
            return snapshot
        users = dict(snapshot.users)
        users[local] = msgspec.structs.replace(entry, contacts=entry.contacts | extra)
        return msgspec.structs.replace(snapshot, users=users)

    def _decide_inbound(self, ptype: str, contact: str, local: str) -> engine.Decision:
        snapshot = self._snapshot(local)
        if snapshot is None:  # no policy (tests, bare gateway): the edge decided already
            return engine.AUTO_SUBSCRIBED if ptype == "subscribe" else engine.ALLOW
        domain = contact.rpartition("@")[2]
        view = engine.Stanza(
            engine.StanzaKind.PRESENCE, ptype, contact, local, stream_domains=frozenset({domain})
        )
        return engine.decide_inbound(snapshot, view)

    # -- XMPP → SIP ---------------------------------------------------------------------------

    async def from_xmpp(self, presence: Element) -> None:
        """A presence stanza from an XMPP contact to a local user (the edge's policy applied)."""
        try:
            contact = str(parse_jid(presence.get("from") or "").bare)
            local = str(parse_jid(presence.get("to") or "").bare)
        except InvalidJid as exc:
            log.info("presence: bad address: %s", exc)
            return
        ptype = presence.get("type") or ""
        if ptype == "subscribe":
            decision = self._decide_inbound("subscribe", contact, local)
            if isinstance(decision, engine.AutoReply) and decision.reply == "subscribed":
                self._approve(local, contact)
            elif isinstance(decision, engine.StorePending):
                if len(self.pending) < MAX_PENDING:
                    self.pending.add((local, contact))
                if self.on_pending is not None:
                    self.on_pending(local, contact)
            else:
                log.info("presence: subscribe %s → %s refused (%s)", contact, local, decision.rule)
        elif ptype in ("probe", "subscribed"):
            if ptype == "subscribed":
                await self._contact_approved(local, contact)
            decision = self._decide_inbound("probe", contact, local)
            if isinstance(decision, engine.AutoReply):  # unauthorized probe: "unsubscribed"
                self._send(
                    Element(
                        "presence",
                        "jabber:server",
                        {"from": local, "to": contact, "type": decision.reply},
                    )
                )
            else:
                self._send_presence(local, contact)
        elif ptype == "unsubscribe":
            self.subscribers.get(local, set()).discard(contact)
            self.pending.discard((local, contact))
            if self.watch is not None and not self.subscribers.get(local):
                self.remote.pop(local, None)  # last subscriber gone: un-SUBSCRIBE
                self.watch.release(local)
        elif ptype == "unsubscribed":
            watcher = self.watchers.pop((local, contact), None)
            if watcher is not None:
                await self._notify(watcher, terminated="rejected")
        elif ptype in ("", "unavailable"):
            info = presence_info(presence)
            self.contact_presence[contact] = info
            watcher = self.watchers.get((local, contact))
            if watcher is not None:
                watcher.state = "active"
                watcher.last = info
                await self._notify(watcher, changed_only=True)
        # type='error': nothing to translate (RFC 6120 §8.3.1)

    def _approve(self, local: str, contact: str) -> None:
        """RFC 6121 §3.1.5: approve, then send the user's current presence."""
        self.pending.discard((local, contact))
        self.subscribers.setdefault(local, set()).add(contact)
        if self.watch is not None:
            self.watch.want(local)  # one SIP subscription at the next hop, shared (idempotent)
        self._send(
            Element(
                "presence", "jabber:server", {"from": local, "to": contact, "type": "subscribed"}
            )
        )
        self._send_presence(local, contact)

    async def _contact_approved(self, local: str, contact: str) -> None:
        watcher = self.watchers.get((local, contact))
        if watcher is not None and watcher.state == "pending":
            watcher.state = "active"
            watcher.last = self.contact_presence.get(contact, OFFLINE)
            await self._notify(watcher, changed_only=True)

    def _send_presence(self, local: str, contact: str, info: PresenceInfo | None = None) -> None:
        if info is None:
            info = self._current(local, contact)
            if info is None:
                return  # asked from the next hop: its NOTIFY answers (watch_presence)
        include_status = True
        snapshot = self._snapshot(local)
        if snapshot is not None:
            decision = engine.decide_outbound(
                snapshot,
                engine.Stanza(
                    engine.StanzaKind.PRESENCE,
                    "" if info.available else "unavailable",
                    local,
                    contact,
                    has_status=bool(info.note),
                ),
            )
            if isinstance(decision, engine.Refuse):
                log.info("presence: %s → %s refused (%s)", local, contact, decision.rule)
                return
            include_status = not isinstance(decision, engine.AllowTransformed)
        self._send(presence_element(local, contact, info, include_status=include_status))

    def _current(self, local: str, contact: str) -> PresenceInfo | None:
        """``local``'s presence: their publication here, or (next hop) the last NOTIFY of our
        subscription there; None while it is being asked (subscribe, or fetch for a probe)."""
        if self.watch is None:
            publication = self.publications.get(local)
            return publication.info if publication is not None else OFFLINE
        info = self.remote.get(local)
        if info is None:
            if contact in self.subscribers.get(local, ()):
                self.watch.want(local)
            else:
                if len(self.probers) < MAX_PENDING:
                    self.probers.setdefault(local, set()).add(contact)
                self.watch.fetch(local)
        return info

    def watch_presence(self, event: PresenceEvent) -> None:
        """A local user's presence from the next hop's NOTIFY (presence_watch): kept while
        they have subscribers and sent to them when it changed; a fetch answers the probers."""
        local = event.local
        if not event.fetch and self.subscribers.get(local):
            changed = self.remote.get(local) != event.info
            self.remote[local] = event.info
            if changed:
                self._broadcast(local)
        for contact in sorted(self.probers.pop(local, ())):
            self._send_presence(local, contact, event.info)

    def _send(self, element: Element) -> None:
        self.send_xmpp(element)

    # -- SIP: PUBLISH (RFC 3903) ------------------------------------------------------------

    async def handle_publish(self, request: SipRequest, ctx: ServerContext) -> None:
        if not is_presence_event(request):
            await ctx.respond(response_to(request, 489, to_tag="pa"))
            return
        try:
            target = parse_uri(request.uri)
            publisher = parse_name_addr(request.headers.get("From") or "").uri
            local = sip_uri_to_jid(target.aor)
        except (ValueError, TranslationError):
            await ctx.respond(response_to(request, 400, to_tag="pa"))
            return
        now = trio.current_time()
        if publisher.aor != target.aor or (
            self.check_registration and not self.registrar.lookup(target.aor, now)
        ):
            await ctx.respond(response_to(request, 403, to_tag="pa"))
            return
        expires = await self._granted_expires(request, ctx)
        if expires is None:
            return
        if_match = request.headers.get("SIP-If-Match")
        current = self.publications.get(local)
        if if_match is not None and (current is None or current.etag != if_match.strip()):
            await ctx.respond(response_to(request, 412, to_tag="pa"))
            return
        if expires == 0:
            self.publications.pop(local, None)
            await ctx.respond(_with(response_to(request, 200, to_tag="pa"), Expires="0"))
            self._broadcast(local)
            return
        if request.body:
            try:
                info = parse_pidf(request.body)
            except TranslationError as exc:
                await ctx.respond(response_to(request, exc.sip_status, to_tag="pa"))
                return
        elif current is not None:
            info = current.info  # refresh (RFC 3903 §4.4)
        else:
            await ctx.respond(response_to(request, 400, "PUBLISH Without Body", to_tag="pa"))
            return
        if current is None and len(self.publications) >= MAX_PUBLICATIONS:
            await ctx.respond(response_to(request, 503, to_tag="pa"))
            return
        etag = secrets.token_hex(8)
        changed = current is None or current.info != info
        self.publications[local] = Publication(info, etag, now + expires)
        response = _with(response_to(request, 200, to_tag="pa"), Expires=str(expires))
        response.headers.add("SIP-ETag", etag)
        await ctx.respond(response)
        if changed:
            self._broadcast(local)

    async def _granted_expires(self, request: SipRequest, ctx: ServerContext) -> int | None:
        """The expiry a PUBLISH or SUBSCRIBE is granted: the asked one (``DEFAULT_EXPIRES``
        without) up to the refresh interval; None when it was too brief and 423 has answered."""
        expires = _expires(request, DEFAULT_EXPIRES)
        if 0 < expires < MIN_EXPIRES:
            response = response_to(request, 423, to_tag="pa")
            response.headers.add("Min-Expires", str(MIN_EXPIRES))
            await ctx.respond(response)
            return None
        return min(expires, self.refresh_interval())

    def _broadcast(self, local: str) -> None:
        for contact in sorted(self.subscribers.get(local, ())):
            self._send_presence(local, contact)

    # -- SIP: SUBSCRIBE to an XMPP contact (RFC 6665 notifier) -------------------------------

    async def handle_subscribe(self, request: SipRequest, ctx: ServerContext) -> None:
        if not is_presence_event(request):
            await ctx.respond(response_to(request, 489, to_tag="pa"))
            return
        try:
            from_ = parse_name_addr(request.headers.get("From") or "")
            subscriber = from_.uri
            local = sip_uri_to_jid(subscriber.aor)
            # A refresh or un-SUBSCRIBE inside the dialog (To tag) is sent to our Contact
            # (RFC 6665 §4.1.2.1: the remote target, e.g. sip:<gateway ip>:<port>): the contact
            # is then the dialog's remote URI, the To URI (RFC 3261 §12.2.1.1).
            to_header = parse_name_addr(request.headers.get("To") or "")
            resource = to_header.uri if to_header.tag else parse_uri(request.uri)
            contact = str(parse_jid(sip_uri_to_jid(resource.aor)).bare)
            contact_header = request.headers.get("Contact")
            target = parse_name_addr(contact_header).uri if contact_header else parse_uri("")
        except (ValueError, TranslationError, InvalidJid):
            await ctx.respond(response_to(request, 400, to_tag="pa"))
            return
        if not self.registrar.is_local(subscriber):
            await ctx.respond(response_to(request, 403, to_tag="pa"))
            return
        if self.policy is not None:
            # SPEC §6 outbound: the user must federate, the contact's domain be a partner.
            decision = engine.decide_outbound(
                self.policy(),
                engine.Stanza(engine.StanzaKind.PRESENCE, "subscribe", local, contact),
            )
            if isinstance(decision, engine.Refuse):
                status = sip_status_for_condition(decision.condition)
                await ctx.respond(response_to(request, status, to_tag="pa"))
                return
        expires = await self._granted_expires(request, ctx)
        if expires is None:
            return
        key = (local, contact)
        watcher = self.watchers.get(key)
        to_tag = parse_name_addr(request.headers.get("To") or "").tag
        if watcher is not None and to_tag and to_tag != watcher.local_tag:
            watcher = None  # a new dialog replaces the old one
        now = trio.current_time()
        if watcher is None:
            if expires and len(self.watchers) >= MAX_WATCHERS:
                await ctx.respond(response_to(request, 503, to_tag="pa"))
                return
            watcher = Watcher(
                local_jid=local,
                contact_jid=contact,
                call_id=request.call_id,
                remote_uri=str(from_.uri),
                remote_tag=from_.tag or "",
                local_tag=to_tag or secrets.token_hex(5),
                target=str(target),
                dest=destination_for(target),
                expires_at=now + expires,
                cseq=0,
                route_set=tuple(record_routes(request)),
            )
        watcher.expires_at = now + expires
        response = response_to(request, 200, to_tag=watcher.local_tag)
        response.headers.add("Expires", str(expires))
        response.headers.add("Contact", f"<{self.sip.contact_for(ctx.source.transport)}>")
        for value in request.headers.get_all("Record-Route"):  # RFC 3261 §12.1.1
            response.headers.add("Record-Route", value)
        await ctx.respond(response)
        if expires == 0:
            self.watchers.pop(key, None)
            await self._notify(watcher, terminated="timeout")
            self._send(
                Element(
                    "presence",
                    "jabber:server",
                    {"from": local, "to": contact, "type": "unsubscribe"},
                )
            )
            return
        new = key not in self.watchers
        self.watchers[key] = watcher
        if contact in self.contact_presence:
            watcher.state = "active"
            watcher.last = self.contact_presence[contact]
        await self._notify(watcher)
        # "The user adds the contact" only when the user sent it (issue 14: the admission
        # proved the From, by digest, its dialog or the next hop): never for a request whose
        # identity nobody checked.
        if new and ctx.identity == subscriber.aor:
            self.contact_added(local, contact)
            self._send(
                Element(
                    "presence", "jabber:server", {"from": local, "to": contact, "type": "subscribe"}
                )
            )

    def dialog_owner(self, request: SipRequest) -> str | None:
        """The AoR of the user whose SUBSCRIBE dialog ``request`` belongs to (Call-ID, our tag
        and theirs must match), or None: the admission lets a refresh or un-SUBSCRIBE in such
        a dialog through without a new challenge (issue 14). Every dialog here was created by
        an admitted SUBSCRIBE."""
        try:
            from_ = parse_name_addr(request.headers.get("From") or "")
            to = parse_name_addr(request.headers.get("To") or "")
            local = sip_uri_to_jid(from_.uri.aor)
            contact = str(parse_jid(sip_uri_to_jid(to.uri.aor)).bare)
        except (ValueError, TranslationError, InvalidJid):
            return None
        watcher = self.watchers.get((local, contact))
        if (
            watcher is None
            or watcher.call_id != request.call_id
            or watcher.local_tag != to.tag
            or watcher.remote_tag != (from_.tag or "")
        ):
            return None
        return parse_uri(watcher.remote_uri).aor

    def contact_added(self, local: str, contact: str) -> None:
        """The local user added ``contact``: approve its pending request (SPEC §4)."""
        self.added.add((local, contact))
        if self.on_contact_added is not None:
            self.on_contact_added(local, contact)
        if (local, contact) in self.pending:
            self._approve(local, contact)

    async def _notify(
        self, watcher: Watcher, *, terminated: str | None = None, changed_only: bool = False
    ) -> None:
        """One in-dialog NOTIFY (RFC 6665 §4.2.2, RFC 3856 §6.6) with the contact's PIDF.

        One NOTIFY transaction at a time per subscription: otherwise a later NOTIFY may
        overtake an earlier one (UDP retransmissions, a proxy's parallel workers) and the
        subscriber sees the states out of order. A NOTIFY sent because the contact's presence
        changed (``changed_only``) carries the state current when its turn comes, so one that
        waited behind another may find nothing left to say: it is not sent (RFC 6665 §4.2.2
        leaves the notifier free to coalesce state changes). A (re-)SUBSCRIBE always gets
        its NOTIFY (§4.2.1.2)."""
        async with watcher.lock:
            if changed_only and terminated is None and watcher.notified == (
                watcher.state,
                watcher.last,
            ):
                return
            await self._notify_now(watcher, terminated)

    async def _notify_now(self, watcher: Watcher, terminated: str | None) -> None:
        watcher.cseq += 1
        now = trio.current_time()
        # In-dialog: through the route set a proxy recorded (Kamailio as next hop), loose
        # routing (RFC 3261 §12.2.1.1, §16.12); none: straight to the subscriber's Contact.
        uri, routes, hop = route_request(watcher.target, watcher.route_set)
        dest = destination_for(hop) if watcher.route_set else watcher.dest
        headers = Headers()
        headers.add(
            "Via",
            f"SIP/2.0/{dest.transport.upper()} {self.sip.via_for(dest.transport)}"
            f";branch={self.sip.new_branch()};rport",
        )
        for route in routes:
            headers.add("Route", route)
        headers.add("Max-Forwards", "70")
        headers.add("From", f"<{jid_to_sip_uri(watcher.contact_jid)}>;tag={watcher.local_tag}")
        headers.add("To", f"<{watcher.remote_uri}>;tag={watcher.remote_tag}")
        headers.add("Call-ID", watcher.call_id)
        headers.add("CSeq", f"{watcher.cseq} NOTIFY")
        headers.add("Contact", f"<{self.sip.contact_for(dest.transport)}>")
        headers.add("Event", "presence")
        if terminated is not None:
            state = f"terminated;reason={terminated}"
        else:
            remaining = max(int(watcher.expires_at - now), 0)
            state = f"{watcher.state};expires={remaining}"
        headers.add("Subscription-State", state)
        body = b""
        if watcher.last is not None and terminated is None:
            headers.add("Content-Type", PIDF_CONTENT_TYPE)
            body = presence_to_pidf(
                jid_to_sip_uri(watcher.contact_jid), watcher.last, include_note=True
            )
        request = SipRequest("NOTIFY", uri, headers, body)
        watcher.notified = (watcher.state, watcher.last)
        response = await self.sip.request(request, dest)
        if response.status in (481, 408) or response.status >= 500:
            # RFC 6665 §4.2.2: the subscriber is gone; end the subscription.
            self.watchers.pop((watcher.local_jid, watcher.contact_jid), None)

    # -- refresh ------------------------------------------------------------------------------

    async def expire(self, now: float) -> None:
        """End the publications and SIP subscriptions whose expiry passed."""
        for local, publication in list(self.publications.items()):
            if publication.expires_at <= now:
                del self.publications[local]
                self._broadcast(local)
        for key, watcher in list(self.watchers.items()):
            if watcher.expires_at <= now:
                del self.watchers[key]
                await self._notify(watcher, terminated="timeout")

    def probe_contacts(self) -> int:
        """Probe every contact a local user watches (RFC 6121 §4.3); return how many."""
        for local, contact in sorted(self.watchers):
            self._send(
                Element(
                    "presence", "jabber:server", {"from": local, "to": contact, "type": "probe"}
                )
            )
        return len(self.watchers)

    async def refresh(self, now: float) -> None:
        """One refresh tick at ``now`` (the caller's clock): expire, then probe if it is due."""
        await self.expire(now)
        if self._last_probe is None:
            self._last_probe = now
        elif now - self._last_probe >= self.refresh_interval():
            self._last_probe = now
            self.probe_contacts()

    async def run_refresh(self, clock: Callable[[], float] = trio.current_time) -> None:
        """Refresh every ``EXPIRY_TICK`` s; probes go out once per refresh interval, counted
        from the first tick."""
        while True:
            await trio.sleep(EXPIRY_TICK)
            try:
                await self.refresh(clock())
            except Exception:  # noqa: BLE001 - one bad tick (state from SIP input) must not end the gateway
                log.exception("presence: refresh failed; next tick in %s s", EXPIRY_TICK)


def _expires(request: SipRequest, default: int) -> int:
    """The Expires header (ASCII delta-seconds), ``default`` when absent or malformed (§20.19)."""
    return parse_uint_or(request.headers.get("Expires"), default)


def _with(response: SipResponse, **headers: str) -> SipResponse:
    for name, value in headers.items():
        response.headers.add(name, value)
    return response


__all__ = ["PresenceAgent", "Publication", "Watcher"]
