"""Stanza errors (RFC 6120 §8.3): the error type of each defined condition, and the error reply.

Theory of operation
-------------------
RFC 6120 §8.3.3 names a type for each defined condition ("the associated error type SHOULD
be ..."); where it allows two (``feature-not-implemented``: cancel or modify,
``policy-violation``: modify or wait, ``unexpected-request``: wait or modify) the table keeps
the first, the one of the RFC's example. ``undefined-condition`` may carry any type: it gets
``cancel``, as does a condition the RFC does not define (**Decision**: the sender should not
retry what it cannot understand).

:func:`error_reply` builds the reply of RFC 6120 §8.3.1: the same stanza kind and id, ``to`` and
``from`` swapped, ``type='error'``, and an ``<error/>`` child holding the condition and, when
given, a human-readable ``<text/>``. An error stanza is never answered with an error (§8.3.1):
the reply is then None and the caller logs it (nothing is dropped silently: docs/spec.md
§6.5). By default the reply keeps the original's other attributes and, except for an iq
(RFC 6120 §8.2.3 makes the request's payload optional in its error), its children, so the sender
can see what failed;
``include_original=False`` gives only the addresses, the id and the error.
"""

from __future__ import annotations

from typing import Final

from edgeproxy.tokenizer import Element
from edgeproxy.xmpp.namespaces import NS_STANZAS

__all__ = ["ERROR_TYPES", "error_reply", "error_type"]

#: RFC 6120 §8.3.3: the error type associated with each defined condition.
ERROR_TYPES: Final = {
    "bad-request": "modify",
    "conflict": "cancel",
    "feature-not-implemented": "cancel",
    "forbidden": "auth",
    "gone": "cancel",
    "internal-server-error": "cancel",
    "item-not-found": "cancel",
    "jid-malformed": "modify",
    "not-acceptable": "modify",
    "not-allowed": "cancel",
    "not-authorized": "auth",
    "policy-violation": "modify",
    "recipient-unavailable": "wait",
    "redirect": "modify",
    "registration-required": "auth",
    "remote-server-not-found": "cancel",
    "remote-server-timeout": "wait",
    "resource-constraint": "wait",
    "service-unavailable": "cancel",
    "subscription-required": "auth",
    "undefined-condition": "cancel",
    "unexpected-request": "wait",
}


def error_type(condition: str) -> str:
    """The error type to send with ``condition`` (``cancel`` for one RFC 6120 does not define)."""
    return ERROR_TYPES.get(condition, "cancel")


def error_reply(
    stanza: Element, condition: str, text: str = "", *, include_original: bool = True
) -> Element | None:
    """The error reply to ``stanza`` (RFC 6120 §8.3.1), or None when it is an error itself."""
    if stanza.get("type") == "error":
        return None
    if include_original:
        attrs = {k: v for k, v in stanza.attrs.items() if k not in ("to", "from", "type")}
        children: list[Element | str] = [] if stanza.name == "iq" else list(stanza.children)
    else:
        attrs = {"id": stanza.attrs["id"]} if "id" in stanza.attrs else {}
        children = []
    if stanza.get("from"):
        attrs["to"] = stanza.attrs["from"]
    if stanza.get("to"):
        attrs["from"] = stanza.attrs["to"]
    attrs["type"] = "error"
    error = Element("error", stanza.namespace, {"type": error_type(condition)})
    error.append(Element(condition, NS_STANZAS))
    if text:
        error.append(Element("text", NS_STANZAS, {}, [text]))
    return Element(stanza.name, stanza.namespace, attrs, [*children, error])
