"""Routing: authenticated inbound stanzas through the policy engine to local delivery, local
stanzas through the engine to the outbound pool, and every refusal back to its sender.

Theory of operation
-------------------
Inbound (SPEC §6): the core has already enforced ``invalid-from`` for the stream's authenticated
pairs; the engine (``decide_inbound``) re-checks addressing against the *current* snapshot (a
partner removed while its stream is open ends the stream, ``policy-violation``) and applies the
user and partner-type rules. Its decisions map to actions here:

* ``Allow`` / ``AllowTransformed`` → :class:`~edgeproxy.net.delivery.Delivery` to local delivery;
* ``Refuse(stream_level)`` → stream error and close;
* ``Refuse(bounce)`` → an error stanza to the sender, over the outbound pool (S2S streams are
  one-way: replies travel on our own stream to the partner, RFC 6120 §10 / XEP-0220 §1);
* ``AutoReply`` → a presence reply to the sender (and delivery if ``deliver``). One component
  answers: when the local side answers auto-approved subscriptions itself (the gateway's
  presence agent behind ``ChannelDelivery``: ``subscribed`` plus the user's presence), a
  delivered ``AutoReply`` is only delivered; the router answers when nothing behind the
  delivery does (``MemoryDelivery``) and always when the stanza is not delivered (an
  unauthorized probe gets ``unsubscribed`` from here);
* ``StorePending`` → delivery flagged as a pending subscription (the gateway stores it);
* ``ALLOW_SERVER_IQ`` (an iq to one of our domains itself) → answered by the edge
  (:mod:`edgeproxy.xmpp.server_iq`: ping, service discovery), not delivered.

The engine needs a few flags from inside the stanza (status note, file transfer, Jingle, MUC
invitation). Most stanzas carry none, and their bytes prove it (:func:`routing_view`): then the
tokenizer's routing view is the whole input and no tree is built at the edge. Only a stanza whose
bytes might hold a flag is parsed (:func:`engine_view`), once, and that tree serves the rest.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import trio

from edgeproxy.net.delivery import Delivery, LocalDelivery, answers_subscriptions, to_bytes
from edgeproxy.net.pool import OutboundPool
from edgeproxy.net.session import S2SSession
from edgeproxy.ops.metrics import BounceCause, Flow, Verdict
from edgeproxy.ops.telemetry import Telemetry
from edgeproxy.policy import engine
from edgeproxy.policy.engine import (
    Allow,
    AllowTransformed,
    AutoReply,
    Refuse,
    StanzaKind,
    StorePending,
)
from edgeproxy.policy.snapshot import PolicySnapshot
from edgeproxy.s2s import StanzaReceived
from edgeproxy.tokenizer import Element, Stanza
from edgeproxy.xmpp.errors import error_reply
from edgeproxy.xmpp.namespaces import NS_SERVER
from edgeproxy.xmpp.server_iq import server_iq_reply
from edgeproxy.xmpp.stanza import bare_of, domain_of, without_status

log = logging.getLogger("edgeproxy.net.router")

PolicySource = Callable[[], PolicySnapshot]
#: Answers a refused outbound stanza to its sender, given the stanza error condition.
Refused = Callable[[str], None]

_NS_MUC_USER = "http://jabber.org/protocol/muc#user"
_NS_CONFERENCE = "jabber:x:conference"
_NS_SI = "http://jabber.org/protocol/si"
_NS_JINGLE = "urn:xmpp:jingle:1"
_NS_OOB = "jabber:iq:oob"


def engine_view(element: Element, stream_domains: frozenset[str] = frozenset()) -> engine.Stanza:
    """What the engine needs to know about a stanza (top-level attributes plus flags)."""
    children = element.elements()
    muc_invite = any(
        (c.namespace == _NS_MUC_USER and c.find("invite", _NS_MUC_USER) is not None)
        or c.namespace == _NS_CONFERENCE
        for c in children
    )
    return engine.Stanza(
        kind=StanzaKind(element.name),
        type=element.get("type") or "",
        from_jid=element.get("from") or "",
        to_jid=element.get("to") or "",
        has_status=element.name == "presence" and element.find("status", NS_SERVER) is not None,
        file_transfer=any(c.namespace in (_NS_SI, _NS_OOB) for c in children),
        jingle=any(c.namespace == _NS_JINGLE for c in children),
        muc_invite=muc_invite,
        stream_domains=stream_domains,
    )


#: Bytes whose presence means a stanza's tree must be read for the engine's flags (the
#: namespaces ``engine_view`` looks for, and a character reference that could spell one).
_FLAG_NEEDLES = (b"&", b"muc#user", b"jabber:x:conference", b"jabber.org/protocol/si", b"urn:xmpp:jingle",
                 b"jabber:iq:oob")


def routing_view(stanza: Stanza, stream_domains: frozenset[str], plain_scope: bool) -> engine.Stanza | None:
    """The engine's view from the tokenizer's routing view alone, when the stanza's bytes prove
    it has none of the flags; None when its tree must be read (``engine_view``).

    A flag needs a child in one of a few namespaces (or, for presence, a ``<status/>``). A
    namespace is named by its URI, so on a stream whose header bound no prefixes of its own
    (``plain_scope``) a stanza in that namespace holds the URI's bytes, unless a character
    reference spells them — and ``&`` sends it the slow way too. False alarms (a body quoting
    one of the URIs) only cost the parse this saves."""
    if not plain_scope:
        return None
    raw = stanza.raw
    name = stanza.name
    if name == "presence" and b"status" in raw:
        return None
    for needle in _FLAG_NEEDLES:
        if needle in raw:
            return None
    return engine.Stanza(
        kind=StanzaKind(name), type=stanza.type or "", from_jid=stanza.from_ or "",
        to_jid=stanza.to or "", stream_domains=stream_domains,
    )


def _tree(held: Element | Stanza) -> Element:
    """The stanza's tree: as held, or parsed from the tokenizer's view now."""
    return held if isinstance(held, Element) else held.element()


class Router:
    """Routes stanzas (see the module docstring); every verdict and bounce goes to ``telemetry``."""

    def __init__(
        self, policy: PolicySource, delivery: LocalDelivery, pool: OutboundPool, telemetry: Telemetry | None = None
    ) -> None:
        self._policy = policy
        self.delivery = delivery
        self.pool = pool
        self.telemetry = telemetry if telemetry is not None else Telemetry()

    def _partner(self, domain: str) -> str | None:
        partner = engine.partner_for_domain(self._policy(), domain)
        return partner.domain if partner is not None else None

    # -- inbound ------------------------------------------------------------------------------

    async def inbound(self, session: S2SSession, event: StanzaReceived) -> None:
        started = trio.current_time()
        stanza = event.stanza
        name = stanza.name
        # One parse at most: the tokenizer's routing view serves the policy unless the flags
        # need the tree (routing_view); the tree, once read, serves everything after.
        element: Element | None = None
        view = routing_view(stanza, session.conn.remote_domains, session.conn.plain_scope)
        if view is None:
            element = stanza.element()
            view = engine_view(element, session.conn.remote_domains)
        decision = engine.decide_inbound(self._policy(), view)
        partner = self._partner(event.from_domain)
        if isinstance(decision, Refuse):
            self.telemetry.stanza(partner, Flow.IN, name, Verdict.REFUSED)
            self.telemetry.refused(name, event.from_domain, event.to_domain,
                                   decision.condition, decision.rule)
            if decision.stream_level:
                await session.close(decision.condition, decision.rule)
                return
            await self._refuse_inbound(element or stanza.element(), decision)
            return
        if decision is engine.ALLOW_SERVER_IQ:  # addressed to our domain: answered here
            reply = server_iq_reply(element or stanza.element())
            if reply is not None:
                await self.send_remote(reply)
            self.telemetry.stanza(partner, Flow.IN, name, Verdict.DELIVERED)
            return
        if isinstance(decision, AutoReply) and not (
            decision.deliver and answers_subscriptions(self.delivery)
        ):
            reply = Element(
                "presence", NS_SERVER,
                {"from": bare_of(view.to_jid), "to": bare_of(view.from_jid), "type": decision.reply},
            )
            await self.send_remote(reply)
            if not decision.deliver:
                return
        # The received bytes go on unchanged unless the policy transforms the stanza (DESIGN §2).
        transformed = isinstance(decision, AllowTransformed) and decision.strip_status
        await self.delivery.deliver(
            Delivery(
                raw=to_bytes(without_status(element or stanza.element())) if transformed else stanza.raw,
                from_jid=view.from_jid,
                to_jid=view.to_jid,
                kind=name,
                type=stanza.type,
                pending_subscription=isinstance(decision, StorePending),
            )
        )
        assert isinstance(decision, Allow | AllowTransformed | AutoReply | StorePending)
        verdict = Verdict.TRANSFORMED if isinstance(decision, AllowTransformed) else Verdict.DELIVERED
        self.telemetry.stanza(partner, Flow.IN, name, verdict)
        self.telemetry.metrics.stanza_latency(Flow.IN, trio.current_time() - started)

    async def _refuse_inbound(self, element: Element, decision: Refuse) -> None:
        reply = error_reply(element, decision.condition) if decision.bounce else None
        if reply is None:
            log.info("refused without reply (%s): %s", decision.rule, element.get("from"))
            return
        self.telemetry.bounce(decision.condition, BounceCause.POLICY)
        await self.send_remote(reply)

    async def send_remote(self, element: Element) -> None:
        """Send a stanza the edge made (a reply, an error) to a partner through the pool."""
        await self.pool.send(domain_of(element.get("from")), domain_of(element.get("to")), to_bytes(element), element)

    # -- outbound -----------------------------------------------------------------------------

    async def send_from_gateway(self, stanza: Stanza, *, refused: Refused) -> None:
        """A stanza from the gateway (the channel checked its bytes are one ``jabber:server``
        stanza): decided from its routing view, with no tree unless the policy's flags need
        one. A refusal is answered by ``refused`` (the channel's nack)."""
        view = routing_view(stanza, frozenset(), plain_scope=True)  # checked without a stream
        if view is not None:
            await self._outbound(view, stanza, stanza.raw, refused)
            return
        element = stanza.element()
        await self._outbound(engine_view(element), element, stanza.raw, refused)

    async def send_from_local(
        self, element: Element, *, raw: bytes | None = None, refused: Refused | None = None
    ) -> None:
        """A stanza from a local user to an XMPP contact (SPEC §6 outbound); ``raw``: its bytes
        as received, sent unchanged unless the policy transforms the stanza."""
        await self._outbound(engine_view(element), element, raw, refused)

    async def _outbound(
        self, view: engine.Stanza, held: Element | Stanza, raw: bytes | None, refused: Refused | None
    ) -> None:
        """The policy's verdict, decided here once, and the stanza to the pool. ``held``: its
        tree if one was read, else the tokenizer's view (parsed only if it must change or
        bounce). A
        refusal is answered by ``refused`` (with the condition) when the caller can tell the
        sender directly — the channel nacks the gateway's item, whose SIP sender waits for that
        answer — else with an error stanza to local delivery."""
        decision = engine.decide_outbound(self._policy(), view)
        if isinstance(decision, Refuse):
            self.telemetry.stanza(self._partner(domain_of(view.to_jid)), Flow.OUT, view.kind.value, Verdict.REFUSED)
            if refused is None:
                await self.bounce_local(held, decision.condition, BounceCause.POLICY, counted=True)
            else:
                self.telemetry.bounce(decision.condition, BounceCause.POLICY)
                refused(decision.condition)
            return
        if isinstance(decision, AllowTransformed) and decision.strip_status:
            held = without_status(_tree(held))
            raw = None  # changed by the policy: sent as serialized here
        if raw is None:
            raw = to_bytes(_tree(held))
        # Counted as delivered when written to the partner's stream (net.pool), or as bounced.
        await self.pool.send(domain_of(view.from_jid), domain_of(view.to_jid), raw, held)

    async def wait_for_room(self, local: str, remote: str) -> None:
        """Backpressure for a sender that can be held back (the gateway channel): wait while
        the stream from ``local`` to ``remote`` has a full queue (``OutboundPool.wait_for_room``)."""
        await self.pool.wait_for_room(local, remote)

    async def bounce_local(
        self, held: Element | Stanza, condition: str, cause: BounceCause, *, counted: bool = False
    ) -> None:
        """An error for a local sender (undeliverable outbound stanza) goes to local delivery.

        ``held``: the stanza as the pool holds it (its tree, or the tokenizer's view of its
        bytes, parsed only now). ``counted``: the stanza's verdict is already in the metrics
        (refused by policy); else it is counted as ``bounced`` here (the pool could not deliver
        it).
        """
        element = _tree(held)
        if not counted:
            partner = self._partner(domain_of(element.get("to")))
            verdict = Verdict.DROPPED if element.get("type") == "error" else Verdict.BOUNCED
            self.telemetry.stanza(partner, Flow.OUT, element.name, verdict)
        reply = error_reply(element, condition)
        if reply is None:
            log.info("undeliverable error stanza from %s dropped after logging", element.get("from"))
            return
        self.telemetry.bounce(condition, cause, kind=element.name, from_domain=domain_of(element.get("from")),
                              to_domain=domain_of(element.get("to")))
        await self.delivery.deliver(
            Delivery(
                raw=to_bytes(reply),
                from_jid=reply.get("from") or "",
                to_jid=reply.get("to") or "",
                kind=reply.name,
                type="error",
            )
        )

