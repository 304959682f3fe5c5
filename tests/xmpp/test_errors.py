"""Stanza errors (RFC 6120 §8.3): the condition → type table and the error reply."""

from __future__ import annotations

import pytest

from edgeproxy.tokenizer import Element
from edgeproxy.xmpp.errors import ERROR_TYPES, error_reply, error_type
from edgeproxy.xmpp.namespaces import NS_SERVER, NS_STANZAS

#: RFC 6120 §8.3.3.1–§8.3.3.22, in the RFC's order, with the type each "SHOULD be" (the first
#: where two are allowed; undefined-condition allows any).
RFC_6120_CONDITIONS = {
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


def test_the_table_covers_every_rfc_6120_condition_with_its_type() -> None:
    assert len(RFC_6120_CONDITIONS) == 22
    assert dict(ERROR_TYPES) == RFC_6120_CONDITIONS
    assert set(ERROR_TYPES.values()) <= {"auth", "cancel", "continue", "modify", "wait"}


def test_a_condition_the_rfc_does_not_define_is_cancel() -> None:
    assert error_type("x-made-up") == "cancel"
    assert error_type("remote-server-timeout") == "wait"


def message(**attrs: str) -> Element:
    base = {"from": "romeo@montague.example/orchard", "to": "juliet@contoso.test", "id": "m1"}
    base.update(attrs)
    return Element("message", NS_SERVER, base, [Element("body", NS_SERVER, {}, ["hi"])])


def condition_and_text(reply: Element) -> tuple[str, str, str | None]:
    error = reply.find("error", reply.namespace)
    assert error is not None
    [condition, *rest] = error.elements()
    assert condition.namespace == NS_STANZAS
    text = rest[0].text if rest else None
    return error.attrs["type"], condition.name, text


def test_the_reply_swaps_the_addresses_keeps_the_id_and_names_the_condition() -> None:
    reply = error_reply(message(), "recipient-unavailable", "480 Temporarily Unavailable")
    assert reply is not None
    assert (reply.name, reply.namespace) == ("message", NS_SERVER)
    assert reply.attrs == {
        "id": "m1", "to": "romeo@montague.example/orchard", "from": "juliet@contoso.test",
        "type": "error",
    }
    assert condition_and_text(reply) == ("wait", "recipient-unavailable", "480 Temporarily Unavailable")


def test_the_reply_has_no_text_element_without_text() -> None:
    reply = error_reply(message(), "service-unavailable")
    assert reply is not None
    assert condition_and_text(reply) == ("cancel", "service-unavailable", None)


def test_the_reply_keeps_the_original_attributes_and_payload_by_default() -> None:
    lang = "{http://www.w3.org/XML/1998/namespace}lang"
    reply = error_reply(message(type="chat", **{lang: "en"}), "forbidden")
    assert reply is not None
    assert reply.attrs[lang] == "en" and reply.attrs["type"] == "error"
    body, error = reply.elements()
    assert (body.name, body.text, error.name) == ("body", "hi", "error")


def test_without_the_original_the_reply_holds_addresses_id_and_error_only() -> None:
    lang = "{http://www.w3.org/XML/1998/namespace}lang"
    reply = error_reply(message(type="chat", **{lang: "en"}), "bad-request", include_original=False)
    assert reply is not None
    assert reply.attrs == {
        "id": "m1", "to": "romeo@montague.example/orchard", "from": "juliet@contoso.test",
        "type": "error",
    }
    assert [child.name for child in reply.elements()] == ["error"]
    assert condition_and_text(reply) == ("modify", "bad-request", None)


def test_an_iq_reply_drops_the_request_payload() -> None:
    iq = Element("iq", NS_SERVER, {"from": "a.test", "to": "b.test", "id": "q", "type": "get"},
                 [Element("query", "jabber:iq:version")])
    reply = error_reply(iq, "service-unavailable")
    assert reply is not None
    assert [child.name for child in reply.elements()] == ["error"]
    assert (reply.get("from"), reply.get("to"), reply.get("type")) == ("b.test", "a.test", "error")


def test_missing_addresses_stay_missing() -> None:
    reply = error_reply(Element("presence", NS_SERVER, {"to": "juliet@contoso.test"}), "forbidden")
    assert reply is not None
    assert reply.attrs == {"from": "juliet@contoso.test", "type": "error"}


@pytest.mark.parametrize("include_original", [True, False])
def test_an_error_is_never_answered_with_an_error(include_original: bool) -> None:
    assert error_reply(message(type="error"), "service-unavailable",
                       include_original=include_original) is None


def test_the_error_element_is_in_the_stanza_namespace() -> None:
    original = Element("message", "jabber:client", {"from": "a@b.test", "to": "c@d.test"})
    reply = error_reply(original, "item-not-found")
    assert reply is not None and reply.namespace == "jabber:client"
    assert reply.find("error", "jabber:client") is not None
