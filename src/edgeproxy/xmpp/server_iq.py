"""Answers to ``<iq/>`` requests addressed to one of our domains itself (no localpart).

Theory of operation
-------------------
The policy engine lets such an iq through (``engine.ALLOW_SERVER_IQ``: "the edge answers pings
and service discovery", docs/spec.md §6); the router answers it here, on our own stream to the
partner, instead of handing it to the gateway (which has no server to speak for):

* XEP-0199 §4.2 server-to-server ping (``<ping xmlns='urn:xmpp:ping'/>``): an empty result —
  partners ping to learn whether the federation link still works;
* XEP-0030 ``disco#info`` without a node: identity ``server/im`` and the features answered here;
  ``disco#items`` without a node: no items (the gateway's users are not listed);
* any other get/set: ``service-unavailable`` (RFC 6120 §8.4: the service is not offered);
* ``result``/``error``: nothing — the edge sends no iq requests of its own to be answered, and
  RFC 6120 §8.3.1 forbids answering an error with an error.

Sans-IO: :func:`server_iq_reply` maps a request to its reply element.
"""

from __future__ import annotations

from typing import Final

from edgeproxy.tokenizer import Element
from edgeproxy.xmpp.errors import error_reply

NS_PING: Final = "urn:xmpp:ping"
NS_DISCO_INFO: Final = "http://jabber.org/protocol/disco#info"
NS_DISCO_ITEMS: Final = "http://jabber.org/protocol/disco#items"
#: What disco#info says this server answers (XEP-0030 §3.1), in the order listed.
FEATURES: Final = (NS_DISCO_INFO, NS_DISCO_ITEMS, NS_PING)
IDENTITY_NAME: Final = "edgeproxy"


def server_iq_reply(iq: Element) -> Element | None:
    """The reply to ``iq`` (addressed to our domain), or None when none is due."""
    if iq.get("type") not in ("get", "set"):
        return None
    payload = next(iter(iq.elements()), None)  # RFC 6120 §8.2.3: exactly one child
    if iq.get("type") == "get" and payload is not None and payload.get("node") is None:
        if (payload.namespace, payload.name) == (NS_PING, "ping"):
            return _result(iq)
        if (payload.namespace, payload.name) == (NS_DISCO_INFO, "query"):
            identity = Element(
                "identity", NS_DISCO_INFO, {"category": "server", "type": "im", "name": IDENTITY_NAME}
            )
            features = [Element("feature", NS_DISCO_INFO, {"var": var}) for var in FEATURES]
            return _result(iq, Element("query", NS_DISCO_INFO, {}, [identity, *features]))
        if (payload.namespace, payload.name) == (NS_DISCO_ITEMS, "query"):
            return _result(iq, Element("query", NS_DISCO_ITEMS))
    return error_reply(iq, "service-unavailable")


def _result(iq: Element, payload: Element | None = None) -> Element:
    attrs = {"type": "result", "from": iq.get("to") or "", "to": iq.get("from") or ""}
    if iq.get("id") is not None:
        attrs["id"] = iq.attrs["id"]
    return Element("iq", iq.namespace, attrs, [payload] if payload is not None else [])
