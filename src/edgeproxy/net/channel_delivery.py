"""Local delivery over the loopback channel: the edge's side of edge ⇄ gateway (SPEC §1, §6).

Theory of operation
-------------------
:class:`ChannelDelivery` is the ``LocalDelivery`` of an edge that serves ``[edge]
internal-listen`` (Lync's internal port 23456). It owns the edge's
:class:`~edgeproxy.loopback.endpoint.ChannelEndpoint` for the life of the process and
:meth:`ChannelDelivery.run` serves the gateway's WebSocket connections (``serve_loopback``).

Authentication (issue 14)
    The endpoint is built with the channel secret (``secret``, required: the edge never runs an
    unauthenticated channel; ``EdgeApp`` loads it with ``loopback.auth.load_channel_secret``).
    A connection that does not prove it — or is refused for any other reason before it is
    up: mutual TLS, a wrong protocol version — is reported as ``EP5003`` channel-refused
    (repeats of one host and reason at most once a minute, ``serve_loopback``) and never
    affects the connected gateway.

Edge → gateway
    ``deliver`` (called by the router for inbound stanzas that passed the policy, and for error
    replies to local senders) submits the stanza's bytes as a ``Routed`` item: the bytes received
    from the partner, or the router's serialization of what the policy transformed. When the
    channel's queue is full, or the gateway has been away longer than the outage bound, the
    endpoint hands the item back (``on_bounce``) and the XMPP sender gets an error. An
    auto-approved ``subscribe`` is delivered unanswered: the gateway's presence agent answers
    it (``answers_subscriptions``), so the partner gets one ``subscribed``, not two.
Gateway → edge
    A ``Routed`` item is a stanza from a local (SIP) user to an XMPP contact: it goes through the
    router's outbound path (policy ``decide_outbound``, decided there once, then the S2S pool). A
    refusal is a *nack* to the gateway (a ``Bounce`` with the condition and ``ref``, the item's
    sequence number), sent before the ack that covers the item (``loopback/endpoint.py``,
    "Nacks before acks"), so the SIP sender waiting for the item gets the mapped status. A ``Bounce`` item is
    a stanza the gateway could not deliver: its sender gets an error stanza with the item's
    condition, over the pool.
Refused and failed items (issue 13: no item can take the edge down)
    A ``Routed`` item whose bytes are not one well-formed ``message``/``presence``/``iq`` in
    ``jabber:server`` is refused before the router sees it: no stanza error exists for it, so the
    gateway gets a *nack* — a ``Bounce`` item with ``bad-request`` (it owns the sender) — and
    event EP7003 says why. Each item is handled inside the endpoint's per-item failure boundary
    (``Surface.CHANNEL_ITEM``): if handling raises anyway, EP1007 is reported and
    :meth:`ChannelDelivery._item_failed` answers — the local sender gets an
    ``internal-server-error`` stanza over the channel (as for any bounce to a local sender), or the
    gateway a nack when the bytes are no stanza; a failed ``Bounce`` item is only reported (an
    error is never answered with an error). The channel goes on with the next item.
Bounces (SPEC §6 rule 5)
    ``on_bounce`` is synchronous (the endpoint calls it from its watchdog and from ``submit``);
    the items go on an internal queue and a task turns each into an RFC 6120 §8.3 error stanza
    (``service-unavailable`` when refused at once, ``remote-server-timeout`` after the outage
    bound) sent to the original sender through the pool. Errors are never answered with errors.
"""

from __future__ import annotations

import logging
import math
import ssl
from functools import partial

import trio

from edgeproxy.config import GatewaySection
from edgeproxy.loopback.endpoint import (
    DEFAULT_OUTAGE_BOUND,
    UNSENDABLE_CONDITION,
    ChannelEndpoint,
    ChannelStatistics,
)
from edgeproxy.loopback.frames import Bounce, Item, Role, Routed, StanzaKind
from edgeproxy.loopback.reliable import DEFAULT_MAX_QUEUED
from edgeproxy.loopback.server import serve_loopback
from edgeproxy.net.delivery import Delivery, to_bytes
from edgeproxy.net.router import Router
from edgeproxy.ops import events
from edgeproxy.ops.metrics import BounceCause
from edgeproxy.ops.telemetry import Telemetry
from edgeproxy.tokenizer import Stanza, TokenizerError
from edgeproxy.xmpp.errors import error_reply
from edgeproxy.xmpp.namespaces import NS_SERVER
from edgeproxy.xmpp.stanza import domain_of, parse_stanza, read_stanza

log = logging.getLogger("edgeproxy.net.channel_delivery")

#: ``[gateway] queue-wait``'s default (config.py says where it comes from).
DEFAULT_QUEUE_WAIT = GatewaySection().queue_wait
#: What a gateway item may carry (RFC 6120 §8: the three stanza kinds, server namespace).
STANZA_NAMES = frozenset(kind.value for kind in StanzaKind)


class ChannelDelivery:
    """``LocalDelivery`` over the loopback channel (see the module docstring)."""

    #: The gateway's presence agent answers an auto-approved ``subscribe`` (``subscribed``
    #: plus the user's presence, RFC 6121 §3.1.5): the router does not answer it too.
    answers_subscriptions = True

    def __init__(
        self,
        telemetry: Telemetry | None = None,
        *,
        outage_bound: float = DEFAULT_OUTAGE_BOUND,
        max_queued: int = DEFAULT_MAX_QUEUED,
        queue_wait: float = DEFAULT_QUEUE_WAIT,
        secret: bytes,
    ) -> None:
        """``secret``: the channel secret the gateway must prove (``loopback/auth.py``);
        ``queue_wait``: ``[gateway] queue-wait``, the longest a stanza waits for room."""
        self.telemetry = telemetry if telemetry is not None else Telemetry()
        self.max_queued = max_queued
        self.queue_wait = queue_wait
        #: Where stanzas from the gateway and bounces go: the edge's router, given to ``run``
        #: (the router delivers to this channel, so it is built after it).
        self.router: Router | None = None
        self.endpoint = ChannelEndpoint(
            Role.EDGE,
            on_items=self._from_gateway,
            on_bounce=self._on_bounce,
            max_queued=max_queued,
            outage_bound=outage_bound,
            telemetry=self.telemetry,
            on_item_failed=self._item_failed,
            secret=secret,
        )
        self._bounces_in, self._bounces_out = trio.open_memory_channel[tuple[Routed, str, BounceCause]](math.inf)
        self.address: str | None = None
        self.bounced = 0
        self.from_gateway = 0

    # -- edge → gateway -----------------------------------------------------------------------

    async def deliver(self, item: Delivery) -> None:
        """Queue an accepted stanza for the gateway (bounced to its sender if it cannot go).

        Backpressure, not bounces: with ``max_queued`` stanzas already waiting for the gateway,
        wait for room — the router awaits this, so the partner's stream is not read meanwhile
        and TCP holds the partner back — at most ``queue_wait`` seconds; a stanza still without
        room then is bounced (``gateway-queue-full``), and one for a gateway away past the outage
        bound at once (``gateway-away``)."""
        if not self.endpoint.has_room():
            self.telemetry.limit_reached("gateway-queue", self.max_queued)
            with trio.move_on_after(self.queue_wait):
                await self.endpoint.wait_for_room()
        kind = StanzaKind(item.kind) if item.kind in StanzaKind.__members__.values() else StanzaKind.MESSAGE
        self.endpoint.submit(kind, item.from_jid, item.to_jid, item.type or "", "", item.raw)

    def _on_bounce(self, items: list[Routed], condition: str) -> None:
        cause = self._cause_of(condition)
        for item in items:
            self._bounces_in.send_nowait((item, condition, cause))

    def _cause_of(self, condition: str) -> BounceCause:
        """Why the endpoint handed stanzas back (``ChannelEndpoint``: on_bounce)."""
        if condition == UNSENDABLE_CONDITION:
            return BounceCause.UNSENDABLE
        if condition == "remote-server-timeout" or self.endpoint.outage_expired:
            return BounceCause.GATEWAY_AWAY
        return BounceCause.GATEWAY_QUEUE_FULL

    async def _send_bounces(self) -> None:
        async for item, condition, cause in self._bounces_out:
            await self._answer(item.raw, condition, "", cause)

    async def _answer(self, raw: bytes, condition: str, text: str, cause: BounceCause) -> None:
        """An error stanza for the sender of ``raw`` over the S2S pool (never for an error)."""
        assert self.router is not None
        try:
            element = parse_stanza(raw)
        except (TokenizerError, ValueError) as exc:
            log.warning("channel: cannot bounce an unparsable stanza: %s", exc)
            return
        reply = error_reply(element, condition, text)
        if reply is None:
            log.info("channel: undeliverable error stanza from %s dropped after logging", element.get("from"))
            return
        self.bounced += 1
        self.telemetry.bounce(condition, cause, kind=element.name, from_domain=domain_of(element.get("from")),
                              to_domain=domain_of(element.get("to")))
        try:
            await self.router.send_remote(reply)
        except Exception:  # the pool refuses while stopping; the bounce is logged, not lost silently
            log.exception("channel: bounce to %s could not be sent", reply.get("to"))

    # -- gateway → edge -----------------------------------------------------------------------

    async def _from_gateway(self, items: list[Item]) -> None:
        assert self.router is not None
        for item in items:
            self.from_gateway += 1
            if isinstance(item, Bounce):
                await self._answer(item.raw, item.condition, item.text, BounceCause.GATEWAY_UNDELIVERABLE)
                continue
            stanza = self._stanza_of(item)
            if stanza is None:
                continue
            # backpressure, not bounces: the channel stops reading while the partner's
            # outbound queue is full (the gateway's SIP senders then wait for their answer)
            await self.router.wait_for_room(domain_of(stanza.from_), domain_of(stanza.to))
            # The checked bytes go out as they are unless the policy changes the stanza (no
            # tree, no second serialization of what the gateway just serialized).
            await self.router.send_from_gateway(
                stanza, refused=partial(self.endpoint.nack, item),  # the gateway answers its sender
            )

    def _stanza_of(self, item: Routed) -> Stanza | None:
        """The item's stanza as the tokenizer checked it (its first, when the bytes hold more);
        None when refused."""
        try:
            stanza = read_stanza(item.raw)
        except (TokenizerError, ValueError) as exc:
            self._refuse(item, f"not one well-formed stanza: {exc}")
            return None
        if stanza.name not in STANZA_NAMES or stanza.namespace != NS_SERVER:
            self._refuse(item, f"<{stanza.name[:64]}> in {stanza.namespace[:100]!r} is not a message, presence or iq stanza")
            return None
        return stanza

    def _refuse(self, item: Routed, reason: str) -> None:
        """A gateway item that is no stanza: nack it (``bad-request``; the gateway owns the sender)."""
        log.warning("channel: item %d from the gateway refused: %s", item.seq, reason)
        self.telemetry.refused(item.kind.value, domain_of(item.from_), domain_of(item.to), "bad-request",
                               f"loopback item: {reason}"[:300])
        self.endpoint.nack(item, "bad-request", reason)

    async def _item_failed(self, item: Item, exc: BaseException) -> None:
        """Handling ``item`` raised (contained by the endpoint, EP1007): answer its sender."""
        if isinstance(item, Bounce):
            log.warning("channel: bounce for %.200s from the gateway could not be answered", item.from_)
            return
        try:
            element = parse_stanza(item.raw)
        except (TokenizerError, ValueError):
            element = None
        if element is None or element.name not in STANZA_NAMES:
            self.endpoint.nack(item, "internal-server-error")
            return
        reply = error_reply(element, "internal-server-error")
        if reply is None:
            return  # an error stanza: reported (EP1007), never answered with an error
        self.bounced += 1
        self.telemetry.bounce("internal-server-error", BounceCause.INTERNAL_ERROR, kind=element.name,
                              from_domain=domain_of(element.get("from")), to_domain=domain_of(element.get("to")))
        self.endpoint.submit(StanzaKind(reply.name), reply.get("from") or "", reply.get("to") or "",
                             "error", reply.get("id") or "", to_bytes(reply))

    # -- running ------------------------------------------------------------------------------

    async def run(
        self,
        host: str,
        port: int,
        router: Router,
        *,
        ssl_context: ssl.SSLContext | None = None,
        task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve the internal listener until cancelled, sending what the gateway sends (and the
        bounces) out through ``router``; ``task_status`` gets the bound address.

        Raises ``OSError`` when the internal address cannot be bound.
        """
        self.router = router
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._send_bounces)
            bound = await nursery.start(
                partial(serve_loopback, self.endpoint, host, port, ssl_context=ssl_context, on_refused=self._refused)
            )
            nursery.start_soon(self._watch_state)
            task_status.started(bound)

    def _refused(self, peer: str, reason: str) -> None:
        """A connection to the internal listener was refused: mutual TLS, the channel secret's
        proof, the opening handshake (EP5003)."""
        self.telemetry.emit(events.CHANNEL_REFUSED, peer=peer, reason=reason)

    async def _watch_state(self) -> None:
        """Report the gateway's connections (EP5001) and their ends (EP5002) as they happen."""
        while True:
            await self.endpoint.wait_connected()
            self.telemetry.emit(events.CHANNEL_CONNECTED, peer="gateway")
            await self.endpoint.wait_disconnected()
            self.telemetry.emit(events.CHANNEL_LOST, peer="gateway", reason="connection closed")

    async def flush(self) -> bool:
        """Wait until the gateway has acked everything queued; True when flushed.

        Cancel (``move_on_at``) to bound it; with no gateway connected it returns False at once.
        """
        while self.endpoint.sender.queued:
            if not self.endpoint.statistics().connected:
                return False
            await self.endpoint.wait_acked()
        return True

    async def bounce_queued(self, condition: str = "service-unavailable") -> int:
        """Bounce whatever is still queued for the gateway (at stop, after the flush bound)."""
        left = [item for item in self.endpoint.sender.drain() if isinstance(item, Routed)]
        for item in left:
            await self._answer(item.raw, condition, "", BounceCause.SHUTDOWN)
        return len(left)

    def statistics(self) -> ChannelStatistics:
        return self.endpoint.statistics()

