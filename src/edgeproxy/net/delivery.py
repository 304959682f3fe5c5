"""Local delivery: where accepted inbound stanzas go.

Accepted stanzas go to a :class:`LocalDelivery`: the loopback channel to the translating gateway
(:class:`edgeproxy.net.channel_delivery.ChannelDelivery`), or :class:`MemoryDelivery`, the
in-process implementation (bounded queue, used by ``edgeproxy serve`` without a gateway and by
the tests). Stanzas that cannot be delivered are answered with
:func:`edgeproxy.xmpp.errors.error_reply` (RFC 6120 §8.3), except errors themselves (§8.3.1) —
those are logged, never silently dropped (SPEC §6 rule 5).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import trio

from edgeproxy.tokenizer import Element
from edgeproxy.xmpp.namespaces import NS_SERVER
from edgeproxy.xmpp.serialize import serialize

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


def to_bytes(element: Element) -> bytes:
    return serialize(element, parent_namespace=NS_SERVER)
