"""The translating gateway service: loopback channel ⇄ translation ⇄ SIP (SPEC §1, §7).

Theory of operation
-------------------
One :class:`GatewayService` owns the gateway's end of the loopback channel
(:class:`~edgeproxy.loopback.endpoint.ChannelEndpoint`, connected by ``run_loopback_client``)
and a :class:`~edgeproxy.gateway.sip.transport.SipTransport` whose transaction user is the
:class:`~edgeproxy.gateway.sip.proxy.LocalProxy` (built-in registrar) with this service as the
handler for requests addressed outside our SIP domains (the XMPP side).

XMPP → SIP (items from the edge; the edge has already applied the inbound policy, SPEC §6)
    Each stanza is parsed (the raw bytes carry no stream context: they are re-parsed under a
    synthetic ``jabber:server`` stream header), at most ``MAX_SIP_IN_FLIGHT`` at once (the
    channel stops reading — and so the edge stops sending — while all are busy). Order is kept
    (RFC 6120 §10.1): a ``<message/>`` is translated (``translate.message_to_sip``) and its SIP
    transaction begun in the channel's batch loop, in order, and the transport writes first
    transmissions per destination in the order begun; only the wait for the response is a task
    of its own. Presence of one sender to one recipient is handled in order (a lane). The
    MESSAGE goes to the user's registered contact (built-in registrar) or to ``next-hop``; a 2xx is
    absorbed, a failure becomes an XMPP error message to the sender with the RFC 7247 condition
    (``recipient-unavailable`` when the user is not registered). The Call-ID and Via branch are
    derived from the edge's session and the item's sequence number, so a stanza re-sent after a
    gateway restart is, to the SIP UA, a retransmission of the same transaction (RFC 3261
    §17.2.3) rather than a second message. The channel runs with ``ack_on_complete``: an item is
    acked to the edge only when its outcome is final — the SIP transaction completed (2xx, or
    a failure whose XMPP error reply the edge has acked) — as a cumulative ack over the
    completed prefix. A gateway killed in between is replaced by one that gets the item again
    and re-sends the same transaction: delivered once. What remains at-least-once: an error
    reply the edge took just before the crash is sent again by the successor.
    ``<iq/>`` requests get ``service-unavailable``.

SIP → XMPP (requests to users of XMPP domains)
    A MESSAGE is taken by the transport's ``take_now`` hook as it is read (in order),
    translated (``translate.sip_message_to_xmpp``), queued on the channel (the edge decides
    the outbound policy, once: a refusal comes back as a nack with its condition) and answered
    once the edge acks it (200), bounces it (the mapped SIP status), or after
    ``SIP_ANSWER_WAIT`` s with ``202 Accepted`` (RFC 3428 §7: accepted, delivery pending). No
    task runs per request: the channel calls back with the outcome (``_edge_outcome``), the
    202s come from one ordered table of unanswered requests looked at every
    ``SIP_ANSWER_TICK``, and the request holds its transport handler slot
    (``MAX_CONCURRENT_REQUESTS``) until it is answered. A SUBSCRIBE (Event: presence) to an XMPP contact goes to
    the presence agent (``presence.py``), as do PUBLISH requests of our users and presence
    stanzas from the edge; with a ``next-hop``, NOTIFYs for the gateway's own subscriptions
    there go to the presence watcher (``presence_watch.py``); other methods towards XMPP get 501.
"""

from __future__ import annotations

import collections
import hashlib
import ipaddress
import itertools
import logging
import secrets
import sqlite3
import ssl
import zlib
from collections.abc import Awaitable, Callable, Sequence
from functools import partial

import trio

from edgeproxy.config import EdgeConfig
from edgeproxy.gateway.directory import ContactRecorder, follow_store
from edgeproxy.gateway.presence import PresenceAgent
from edgeproxy.gateway.sip.admission import (
    Admission,
    Admitted,
    Peer,
    UserLookup,
    users_from_snapshot,
)
from edgeproxy.gateway.sip.message import SipParseError, SipRequest, SipResponse, response_to
from edgeproxy.gateway.sip.proxy import LocalProxy
from edgeproxy.gateway.sip.registrar import Registrar
from edgeproxy.gateway.sip.transport import (
    ANSWER_LATER,
    AnswerLater,
    Destination,
    ServerContext,
    SipTls,
    SipTransport,
    destination_for,
)
from edgeproxy.gateway.sip.uri import SipUri, parse_uri
from edgeproxy.gateway.tls import GatewayTls, gateway_tls
from edgeproxy.gateway.translate import (
    PAGE_MODE_CEILING,
    SipContext,
    TranslationError,
    condition_for_sip_status,
    jid_to_sip_uri,
    message_to_sip,
    parse_jid_memo,
    sip_message_to_xmpp,
    sip_status_for_condition,
)
from edgeproxy.loopback.auth import load_channel_secret
from edgeproxy.loopback.client import run_loopback_client
from edgeproxy.loopback.endpoint import DEFAULT_OUTAGE_BOUND, ChannelEndpoint
from edgeproxy.loopback.frames import Item, Role, Routed, StanzaKind
from edgeproxy.loopback.reliable import DEFAULT_MAX_QUEUED
from edgeproxy.names import listen_address
from edgeproxy.ops import events
from edgeproxy.ops.telemetry import Telemetry
from edgeproxy.policy.holder import SnapshotHolder
from edgeproxy.policy.snapshot import PolicySnapshot
from edgeproxy.tokenizer import Element, TokenizerError
from edgeproxy.xmpp.errors import error_reply
from edgeproxy.xmpp.jid import InvalidJid
from edgeproxy.xmpp.serialize import serialize
from edgeproxy.xmpp.stanza import NotOneStanza, parse_stanza

log = logging.getLogger(__name__)

#: SIP transactions the gateway runs at once for stanzas from the edge.
MAX_SIP_IN_FLIGHT = 512
#: What ``_take_now`` gives the transport: the rest to run as a task, ``ANSWER_LATER`` (answered
#: from a callback), or None (the handler's).
TakenNow = Callable[[], Awaitable[None]] | AnswerLater | None
#: Seconds a SIP sender waits for the edge's ack before getting 202 (well under Timer F = 32 s).
SIP_ANSWER_WAIT = 8.0
#: How often the 202s of ``SIP_ANSWER_WAIT`` are looked for (seconds): one wake-up per tick for
#: every request whose wait ended in it, not one timer per request.
SIP_ANSWER_TICK = 0.1
_KINDS = frozenset(k.value for k in StanzaKind)


class GatewayService:
    def __init__(
        self,
        *,
        sip_domains: tuple[str, ...],
        sip_host: str = "127.0.0.1",
        sip_port: int = 5060,
        next_hop: str = "",
        page_mode_ceiling: int = PAGE_MODE_CEILING,
        outage_bound: float = DEFAULT_OUTAGE_BOUND,
        max_queued: int = DEFAULT_MAX_QUEUED,
        policy: Callable[[], PolicySnapshot] | None = None,
        on_pending: Callable[[str, str], None] | None = None,
        on_contact_added: Callable[[str, str], None] | None = None,
        sip_tls: SipTls | None = None,
        channel_ssl: ssl.SSLContext | None = None,
        answer_wait: float = SIP_ANSWER_WAIT,
        telemetry: Telemetry | None = None,
        channel_secret: bytes | None = None,
        sip_users: UserLookup | None = None,
        edges: int = 1,
    ) -> None:
        # Built in dependency order. The transport and the proxy need each other (the proxy
        # forwards through the transport): the transport gets ``_to_proxy``, which calls the
        # proxy built after it.
        self.registrar = Registrar(sip_domains)
        self.answer_wait = answer_wait
        self.next_hop = parse_uri(next_hop) if next_hop else None
        self.channel_ssl = channel_ssl
        # telemetry: the SIP failure boundaries report there (EP1007, issue 13)
        self.sip = SipTransport(
            sip_host, sip_port, self._to_proxy, take_now=self._take_now, tls=sip_tls, telemetry=telemetry
        )
        self.presence = PresenceAgent(  # with a next hop, users PUBLISH there: it watches them
            self.sip,
            self.registrar,
            self._presence_to_edge,
            policy=policy,
            check_registration=not next_hop,
            on_pending=on_pending,
            on_contact_added=on_contact_added,
            next_hop=self.next_hop,
        )
        self.proxy = LocalProxy(
            self.registrar, self.sip, on_foreign=self._from_sip, on_publish=self.presence.handle_publish
        )
        self.page_mode_ceiling = page_mode_ceiling
        self.policy = policy
        if sip_users is None:
            sip_users = users_from_snapshot(lambda: policy().users) if policy is not None else _nobody
        # Who may send us requests (issue 14, sip/admission.py): digest for our users, or only
        # the next hop when there is one (its addresses are resolved when ``run`` starts).
        self.admission = Admission(
            sip_domains,
            sip_users,
            next_hop_hosts=_literal_hosts(self.next_hop) if self.next_hop is not None else None,
            next_hop_tls_name=(
                self.next_hop.host.strip("[]").lower()
                if self.next_hop is not None and destination_for(self.next_hop).transport == "tls"
                else None
            ),
            dialog_owner=self.presence.dialog_owner,
        )
        #: One channel per edge process (``edges``: the edge's worker processes, each with its
        #: own loopback channel; ``[edge] workers``). An item from an edge is completed on the
        #: channel it came on; what goes to XMPP takes the channel of its recipient's domain
        #: (``channel_for``).
        self.channels: tuple[ChannelEndpoint, ...] = tuple(
            ChannelEndpoint(
                Role.GATEWAY,
                on_items=self._items_handler(index),
                on_bounce=self._channel_bounce,
                max_queued=max_queued,
                outage_bound=outage_bound,
                ack_on_complete=True,
                telemetry=telemetry,  # the channel's failure boundaries report there (EP1007)
                secret=channel_secret,  # proven to the edge in the Hello (loopback/auth.py)
            )
            for index in range(edges)
        )
        #: The first edge's channel (the only one with one edge process).
        self.channel = self.channels[0]
        self._slots = trio.Semaphore(MAX_SIP_IN_FLIGHT)
        # (sender bare JID, recipient bare JID) → the turn of the lane's latest stanza
        self._lanes: dict[tuple[str, str], trio.Event] = {}
        self._nursery: trio.Nursery | None = None
        #: SIP MESSAGEs queued for the edge and not answered yet, in arrival order: the time
        #: their ``answer_wait`` ends (then 202) and the request (``_edge_outcome`` answers it).
        self._unanswered: collections.OrderedDict[ServerContext, tuple[float, SipRequest]] = (
            collections.OrderedDict()
        )
        self._unanswered_wake = trio.Event()
        #: Stanza ids of MESSAGEs from SIP: a random prefix per gateway, then a counter (an id
        #: tells stanzas apart, RFC 6120 §8.1.3; it is no secret: no random bytes per stanza).
        self._id_prefix = secrets.token_hex(4)
        self._ids = itertools.count(1)

    async def run(
        self,
        edge_host: str,
        edge_port: int,
        *,
        more_edges: Sequence[tuple[str, int]] = (),
        task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve SIP and keep the channel to the edge; ``started`` gets the SIP (host, port).
        ``more_edges``: the internal addresses of the other edge processes, in the order of
        ``channels[1:]`` (``[edge] workers``)."""
        edges = [(edge_host, edge_port), *more_edges]
        if len(edges) != len(self.channels):
            raise ValueError(f"{len(edges)} edge addresses for {len(self.channels)} channels")
        if self.next_hop is not None and not self.admission.next_hop_hosts:
            self.admission.set_next_hop_hosts(await _resolve(self.next_hop.host))
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            sip_address = await nursery.start(self.sip.serve)
            if self.presence.watch is not None:
                await nursery.start(self.presence.watch.run)
            for channel, (host, port) in zip(self.channels, edges, strict=True):
                await nursery.start(
                    partial(run_loopback_client, channel, host, port, ssl_context=self.channel_ssl)
                )
            nursery.start_soon(self.presence.run_refresh)
            nursery.start_soon(self._answer_late_with_202)
            task_status.started(sip_address)

    # -- XMPP → SIP ----------------------------------------------------------------------------

    def _items_handler(self, index: int) -> Callable[[list[Item]], Awaitable[None]]:
        """The ``on_items`` of channel ``index``: its items, with the channel to complete them on."""

        async def from_edge(items: list[Item]) -> None:
            await self._from_edge(self.channels[index], items)

        return from_edge

    def channel_for(self, to: str) -> ChannelEndpoint:
        """The channel a stanza to the XMPP address ``to`` goes out on: with several edge
        processes, the one its domain hashes to (all stanzas to one domain leave through one
        edge, in order, RFC 6120 §10.1), or the next connected one while that edge is away."""
        channels = self.channels
        if len(channels) == 1:
            return channels[0]
        domain = to.rpartition("@")[2].partition("/")[0].lower()
        first = zlib.crc32(domain.encode()) % len(channels)
        for step in range(len(channels)):
            channel = channels[(first + step) % len(channels)]
            if channel.connected:
                return channel
        return channels[first]

    async def _from_edge(self, channel: ChannelEndpoint, items: list[Item]) -> None:
        # Stanzas are handled in the order the edge sent them (RFC 6120 §10.1): a MESSAGE's
        # translation and the start of its SIP transaction happen here, in order, without a
        # checkpoint (the transport's writer sends them in that order, several per write); only
        # the wait for the response is a task of its own (trio starts tasks in no particular
        # order). Presence of one sender to one recipient is handled in order too (a lane:
        # each waits for the one ahead, so a contact's NOTIFYs follow its changes).
        assert self._nursery is not None
        for item in items:
            if not isinstance(item, Routed):
                log.warning("gateway: bounce from the edge for %s ignored", item.from_)
                channel.complete(item.seq)
                continue
            try:
                self._slots.acquire_nowait()  # no checkpoint per item while slots are free
            except trio.WouldBlock:
                await self._slots.acquire()
            if item.kind == StanzaKind.PRESENCE:
                lane = (item.from_.partition("/")[0], item.to.partition("/")[0])
                ahead = self._lanes.get(lane)
                turn = self._lanes[lane] = trio.Event()
                self._nursery.start_soon(self._presence_to_sip, channel, item, lane, ahead, turn)
            else:
                self._begin_to_sip(channel, item)

    # An item is completed (and so acked to the edge) only when its outcome is final: the SIP
    # transaction completed, or the error reply reached the edge. The gateway stopping leaves it
    # unacked, and the edge re-sends it to our successor. A MESSAGE's transaction reports its
    # final response to ``_message_answered`` (a callback from the transport: no task, no
    # wait per stanza); only an error reply, which waits for the edge's ack, is a task.

    def _begin_to_sip(self, channel: ChannelEndpoint, item: Routed) -> None:
        """Parse and translate ``item`` and begin its SIP transaction (no checkpoint)."""
        try:
            element = parse_stanza(item.raw)
        except (NotOneStanza, TokenizerError) as exc:
            log.warning("gateway: unparsable stanza from the edge: %s", exc)
            self._item_done(channel, item)
            return
        try:
            if item.kind == StanzaKind.MESSAGE:
                self._begin_message(channel, item, element)
                return
        except Exception:
            log.exception("gateway: handling %s %s failed", item.kind, item.id)
            self._error_then_done(channel, item, element, "internal-server-error")
            return
        if item.kind == StanzaKind.IQ and item.type in ("get", "set"):
            self._error_then_done(channel, item, element, "service-unavailable")
        else:
            self._item_done(channel, item)

    def _item_done(self, channel: ChannelEndpoint, item: Routed) -> None:
        self._slots.release()
        channel.complete(item.seq)

    def _error_then_done(
        self, channel: ChannelEndpoint, item: Routed, element: Element, condition: str, text: str = ""
    ) -> None:
        assert self._nursery is not None
        self._nursery.start_soon(self._send_error_then_done, channel, item, element, condition, text)

    async def _send_error_then_done(
        self, channel: ChannelEndpoint, item: Routed, element: Element, condition: str, text: str
    ) -> None:
        try:
            await self._reply_error(channel, element, condition, text)
        except Exception:
            log.exception("gateway: handling %s %s failed", item.kind, item.id)
        finally:
            self._slots.release()
        channel.complete(item.seq)

    def _message_answered(
        self, channel: ChannelEndpoint, item: Routed, element: Element, response: SipResponse
    ) -> None:
        """The final response of a MESSAGE's transaction (a local 408 / 503 on a timeout or a
        transport error): a 2xx completes the item, a failure is answered with an error."""
        if response.status < 300:
            self._item_done(channel, item)
            return
        condition = condition_for_sip_status(response.status)
        self._error_then_done(channel, item, element, condition, f"{response.status} {response.reason}")

    async def _presence_to_sip(
        self,
        channel: ChannelEndpoint,
        item: Routed,
        lane: tuple[str, str],
        ahead: trio.Event | None,
        turn: trio.Event,
    ) -> None:
        try:
            if ahead is not None:
                await ahead.wait()
            await self.presence.from_xmpp(parse_stanza(item.raw))
        except (NotOneStanza, TranslationError, TokenizerError) as exc:
            log.warning("gateway: unparsable stanza from the edge: %s", exc)
        except Exception:
            log.exception("gateway: handling %s %s failed", item.kind, item.id)
        finally:
            turn.set()
            if self._lanes.get(lane) is turn:
                del self._lanes[lane]
            self._slots.release()
        channel.complete(item.seq)

    def _sip_context(
        self, channel: ChannelEndpoint, item: Routed, transport: str, request_uri: str
    ) -> SipContext:
        seed = f"{channel.receiver.peer_session}:{item.seq}".encode()
        digest = hashlib.blake2b(seed, digest_size=12).hexdigest()
        return SipContext(
            call_id=f"{digest}@edgeproxy",
            from_tag=digest[:10],
            branch="z9hG4bK" + digest,
            via_host=self.sip.via_for(transport),
            transport=transport.upper(),
            request_uri=request_uri,
        )

    def _begin_message(self, channel: ChannelEndpoint, item: Routed, element: Element) -> None:
        try:
            aor = jid_to_sip_uri(str(parse_jid_memo(item.to).bare))
        except (TranslationError, InvalidJid) as exc:
            self._error_then_done(channel, item, element, "jid-malformed", str(exc))
            return
        route = self._destination(aor)
        if route is None:
            self._error_then_done(channel, item, element, "recipient-unavailable", "480 Temporarily Unavailable")
            return
        dest, request_uri = route
        try:
            request = message_to_sip(
                element,
                self._sip_context(channel, item, dest.transport, request_uri),
                ceiling=self.page_mode_ceiling,
            )
        except TranslationError as exc:
            self._error_then_done(channel, item, element, exc.condition, str(exc))
            return
        if request is None:
            self._item_done(channel, item)
            return
        self.sip.begin_request(
            request, dest, on_final=partial(self._message_answered, channel, item, element)
        )

    def _destination(self, aor: str) -> tuple[Destination, str] | None:
        """Where a request for ``aor`` goes, and its Request-URI (RFC 3261 §16.5, §16.6)."""
        if self.next_hop is not None:
            hop = self.next_hop
            return destination_for(hop), aor
        bindings = self.registrar.lookup(aor, trio.current_time())
        if not bindings:
            return None
        binding = bindings[0]
        return self.sip.route(binding.contact, binding.source, binding.transport), str(binding.contact)

    async def _reply_error(
        self, channel: ChannelEndpoint, original: Element, condition: str, text: str = ""
    ) -> None:
        reply = error_reply(original, condition, text, include_original=False)
        if reply is None:
            return  # RFC 6120 §8.3.1: never answer an error with an error
        kind = StanzaKind(original.name) if original.name in _KINDS else StanzaKind.MESSAGE
        # Waits for the edge's ack, so that the original is acked only after its error reply is
        # safe at the edge (a crash in between re-sends the original: the error may then be sent
        # twice, never lost).
        outcome = await channel.submit_and_wait(
            kind,
            reply.get("from") or "",
            reply.get("to") or "",
            "error",
            reply.get("id") or "",
            serialize(reply),
        )
        if outcome is not None:
            log.warning("gateway: error reply to %s lost (%s)", reply.get("to"), outcome)

    def _channel_bounce(self, items: list[Routed], condition: str) -> None:
        # Error stanzas queued for the edge while it stays away: nobody left to tell.
        log.warning("gateway: %d stanzas for the edge dropped (%s)", len(items), condition)

    # -- SIP → XMPP ----------------------------------------------------------------------------

    async def _to_proxy(self, request: SipRequest, ctx: ServerContext) -> None:
        """The transport's handler: the built-in registrar's proxy (see ``__init__``)."""
        await self.proxy(request, ctx)

    def _presence_to_edge(self, element: Element) -> None:
        """Presence the agent sends to an XMPP contact (queued; bounced if the edge is away)."""
        self.channel_for(element.get("to") or "").submit(
            StanzaKind.PRESENCE,
            element.get("from") or "",
            element.get("to") or "",
            element.get("type") or "",
            element.get("id") or "",
            serialize(element),
        )

    async def _from_sip(self, request: SipRequest, ctx: ServerContext) -> None:
        if request.method == "SUBSCRIBE":
            await self.presence.handle_subscribe(request, ctx)
            return
        if request.method == "NOTIFY" and self.presence.watch is not None:
            await self.presence.watch.handle_notify(request, ctx)  # our subscriptions
            return
        if request.method != "MESSAGE":
            await ctx.respond(response_to(request, 501, to_tag="gw"))
            return
        # A MESSAGE towards XMPP is taken by ``_take_now`` (without a task); one that reaches a
        # handler task (the transport run without ``take_now``) is not queued for the edge.
        await ctx.respond(response_to(request, 404, to_tag="gw"))

    def _take_now(self, request: SipRequest, ctx: ServerContext) -> TakenNow:
        """The transport's ``take_now``, called for every new request as it is read: first the
        admission (issue 14: digest, sender identity, next hop) — a refused request is answered
        and goes no further; an admitted one carries its identity in ``ctx.identity``. Then a
        MESSAGE for the XMPP side is queued for the edge at once, in the order the transport
        read it (several may come in one TCP read); what is left (waiting for the edge,
        answering) is returned to run as a task."""
        verdict = self.admission.admit(request, _peer(ctx), trio.current_time())
        if isinstance(verdict, SipResponse):
            return partial(ctx.respond, verdict)
        assert isinstance(verdict, Admitted)
        ctx.identity = verdict.identity
        if request.method != "MESSAGE":
            return None
        try:
            target = parse_uri(request.uri)
        except SipParseError:
            return None
        if self.registrar.is_local(target):
            return None  # for the built-in registrar's proxy
        return self._message_from_sip(request, ctx)

    def _message_from_sip(self, request: SipRequest, ctx: ServerContext) -> TakenNow:
        """Translate a SIP MESSAGE and queue it for the edge now (no checkpoint). It is answered
        from the edge's outcome (``_edge_outcome``: 200 when acked, the mapped status when
        bounced — the outbound policy is decided once, by the edge, whose refusal comes back as
        a nack with the condition) or after ``answer_wait`` with 202 (``_answer_late_with_202``):
        no task per request. A request that cannot be translated is refused at once."""
        try:
            element = sip_message_to_xmpp(request, stanza_id=f"{self._id_prefix}{next(self._ids):x}")
        except TranslationError as exc:
            return partial(ctx.respond, response_to(request, exc.sip_status, to_tag="gw"))
        if not self._unanswered:
            self._unanswered_wake.set()
        # before the submit: a stanza refused at once is answered from inside it
        self._unanswered[ctx] = (trio.current_time() + self.answer_wait, request)
        attrs = element.attrs
        self.channel_for(attrs["to"]).submit_answerable(
            StanzaKind.MESSAGE, attrs["from"], attrs["to"], "chat", attrs["id"], serialize(element),
            on_outcome=partial(self._edge_outcome, ctx),
        )
        return ANSWER_LATER

    def _edge_outcome(self, ctx: ServerContext, outcome: str | None) -> None:
        """The edge acked (None) or bounced (the condition) a MESSAGE from SIP: answer it,
        unless its wait ended with 202 already."""
        entry = self._unanswered.pop(ctx, None)
        if entry is None:
            return
        request = entry[1]
        status = 200 if outcome is None else sip_status_for_condition(outcome)
        ctx.respond_later(response_to(request, status, to_tag="gw"))

    async def _answer_late_with_202(self) -> None:
        """Answer ``202 Accepted`` (RFC 3428 §7: accepted, delivery pending) every MESSAGE whose
        ``answer_wait`` ended before the edge's outcome came; checked every ``SIP_ANSWER_TICK``
        while any is waiting."""
        while True:
            if not self._unanswered:
                self._unanswered_wake = trio.Event()
                await self._unanswered_wake.wait()
                continue
            now = trio.current_time()
            while self._unanswered:
                ctx, (deadline, request) = next(iter(self._unanswered.items()))
                if deadline > now:
                    break
                self._unanswered.popitem(last=False)
                ctx.respond_later(response_to(request, 202, to_tag="gw"))
            if self._unanswered:
                first_deadline = next(iter(self._unanswered.values()))[0]
                await trio.sleep(max(first_deadline - now, SIP_ANSWER_TICK))


async def run_gateway(
    config: EdgeConfig,
    *,
    policy: Callable[[], PolicySnapshot] | None = None,
    on_stored: Callable[[], Awaitable[None]] | None = None,
    telemetry: Telemetry | None = None,
    tls: GatewayTls | None = None,
    edge_addresses: Sequence[tuple[str, int]] | None = None,
    task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the gateway of ``config`` until cancelled (for ``edgeproxy serve``).

    ``edge_addresses``: the internal addresses of the edge processes, one loopback channel to
    each (``[edge] workers``: one per worker); default: ``[gateway] edge-address``, else
    ``[edge] internal-listen``.

    ``tls``: SIP over TLS and the channel's mutual TLS (``gateway.tls.gateway_tls``, built here
    when not given; ``run_app`` builds it first so that a bad file refuses the start).

    The presence agent's contact hooks are written to the store under ``[edge] state-dir``
    (``directory.ContactRecorder``; ``on_stored`` is awaited after each committed change —
    role ``both`` passes the edge's ``refresh_policy``). ``policy``: the edge's snapshot (role
    ``both``); without it (role ``gateway``) the gateway follows the same store through a
    ``SnapshotHolder`` of its own, and a store that cannot be opened stops it (event
    ``EP8005``): without the policy it could not keep a PublicUnverified request pending.
    Only the first ``sip-listen`` address is served for now.
    """
    telemetry = telemetry if telemetry is not None else Telemetry()
    section = config.gateway
    sip_host, sip_port = listen_address(section.sip_listen[0])
    tls = tls if tls is not None else gateway_tls(config)
    edges = list(edge_addresses) if edge_addresses else [
        listen_address(section.edge_address or config.edge.internal_listen)
    ]
    holder: SnapshotHolder | None = None
    if policy is None:
        try:
            holder = SnapshotHolder.open(config.state_dir, config.edge.domains)
        except (sqlite3.Error, OSError) as exc:
            telemetry.emit(events.STORE_UNAVAILABLE, path=str(config.state_dir), error=exc)
            raise
        policy = _current_snapshot(holder)
    recorder = ContactRecorder(
        config.state_dir, config.edge.domains, policy=policy, on_stored=on_stored, telemetry=telemetry
    )
    service = GatewayService(
        sip_domains=section.sip_domains or config.edge.domains,
        sip_host=sip_host,
        sip_port=sip_port,
        next_hop=section.next_hop,
        page_mode_ceiling=section.page_mode_ceiling,
        outage_bound=section.outage_bound,
        max_queued=section.max_queued,
        policy=policy,
        on_pending=recorder.on_pending,
        on_contact_added=recorder.on_contact_added,
        sip_tls=tls.sip,
        channel_ssl=tls.channel,
        telemetry=telemetry,
        channel_secret=load_channel_secret(config.state_dir),
        edges=len(edges),
    )
    try:
        async with trio.open_nursery() as nursery:
            if holder is not None:
                nursery.start_soon(follow_store, holder, config.state_dir, telemetry)
            await nursery.start(recorder.run)
            (edge_host, edge_port), *more_edges = edges
            await service.run(edge_host, edge_port, more_edges=more_edges, task_status=task_status)
    finally:
        if holder is not None:
            holder.close()


def _nobody(aor: str) -> None:
    """The user lookup without a policy: no user, so nobody authenticates."""
    del aor


def _peer(ctx: ServerContext) -> Peer:
    return Peer(ctx.source.host, ctx.source.transport, ctx.certificate_names)


def _literal_hosts(uri: SipUri) -> frozenset[str]:
    """The next hop's address when its URI gives one (else empty: resolved at start)."""
    host = uri.host.strip("[]")
    try:
        return frozenset({str(ipaddress.ip_address(host))})
    except ValueError:
        return frozenset()


async def _resolve(host: str) -> frozenset[str]:
    """Every address of the next hop's name (requests are accepted from any of them)."""
    infos = await trio.socket.getaddrinfo(host, None)
    return frozenset(str(info[4][0]) for info in infos)


def _current_snapshot(holder: SnapshotHolder) -> Callable[[], PolicySnapshot]:
    return lambda: holder.snapshot
