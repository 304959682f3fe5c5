"""Local delivery: where accepted inbound stanzas go, and the bounce builder.

Until the loopback channel to the translating gateway exists (gateway issue), accepted stanzas
go to a :class:`LocalDelivery`; :class:`MemoryDelivery` is the in-process implementation (bounded
queue, used by ``edgeproxy serve`` and the tests). Stanzas that cannot be delivered are bounced
(RFC 6120 §8.3: swap ``to``/``from``, ``type='error'``, an ``<error/>`` with the condition),
except errors themselves (§8.3.1) — those are logged, never silently dropped (SPEC §6 rule 5).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Protocol

import trio

from edgeproxy.tokenizer import Element
from edgeproxy.xmpp.namespaces import NS_SERVER, NS_STANZAS
from edgeproxy.xmpp.serialize import serialize

#: RFC 6120 §8.3.3: the error type that goes with each condition we send.
ERROR_TYPES: Final = {
    "service-unavailable": "cancel",
    "feature-not-implemented": "cancel",
    "remote-server-not-found": "cancel",
    "remote-server-timeout": "wait",
    "forbidden": "auth",
    "not-authorized": "auth",
    "internal-server-error": "cancel",
}
#: Stanzas waiting in a MemoryDelivery before the producer is made to wait (backpressure).
MEMORY_DELIVERY_BOUND = 1024


@dataclass(frozen=True)
class Delivery:
    """One stanza for a local user: its bytes (``jabber:server`` content) and addresses."""

    raw: bytes
    from_jid: str
    to_jid: str
    kind: str
    type: str | None
    strip_status: bool = False
    pending_subscription: bool = False


class LocalDelivery(Protocol):
    """Where the router hands accepted stanzas.

    A sink may also declare ``answers_subscriptions = True``: the local side it feeds (the
    gateway's presence agent) answers an auto-approved ``subscribe`` itself, with ``subscribed``
    and the user's current presence, so the router must not answer it too (one ``subscribed``,
    not two). Sinks without the attribute (``MemoryDelivery``, the load generator's) are answered
    by the router. See :func:`answers_subscriptions`.
    """

    async def deliver(self, item: Delivery) -> None: ...


def answers_subscriptions(delivery: object) -> bool:
    """Does ``delivery``'s local side answer auto-approved subscription requests itself?"""
    return bool(getattr(delivery, "answers_subscriptions", False))


class MemoryDelivery:
    """A bounded in-process queue of deliveries (``receive()`` to take them).

    Nothing behind it answers subscriptions: the router does (``answers_subscriptions``)."""

    answers_subscriptions = False

    def __init__(self, bound: int = MEMORY_DELIVERY_BOUND) -> None:
        self._send, self._receive = trio.open_memory_channel[Delivery](bound)

    async def deliver(self, item: Delivery) -> None:
        await self._send.send(item)

    async def receive(self) -> Delivery:
        return await self._receive.receive()

    def statistics(self) -> trio.MemoryChannelStatistics:
        return self._send.statistics()


def bounce(element: Element, condition: str, text: str | None = None) -> Element | None:
    """The error reply to ``element`` (RFC 6120 §8.3.1), or None for an error stanza."""
    if element.get("type") == "error":
        return None
    attrs = {k: v for k, v in element.attrs.items() if k not in ("to", "from", "type")}
    if element.get("from"):
        attrs["to"] = element.attrs["from"]
    if element.get("to"):
        attrs["from"] = element.attrs["to"]
    attrs["type"] = "error"
    error = Element("error", element.namespace, {"type": ERROR_TYPES.get(condition, "cancel")})
    error.append(Element(condition, NS_STANZAS))
    if text:
        error.append(Element("text", NS_STANZAS, {}, [text]))
    children: list[Element | str] = [c for c in element.children if element.name != "iq"]
    return Element(element.name, element.namespace, attrs, [*children, error])


def to_bytes(element: Element) -> bytes:
    return serialize(element, parent_namespace=NS_SERVER)
