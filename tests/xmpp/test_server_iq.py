"""The edge answers iq requests addressed to our domain itself: XEP-0199 ping, XEP-0030 service
discovery; anything else is service-unavailable, and results/errors get no answer."""

from __future__ import annotations

from edgeproxy.tokenizer import Element
from edgeproxy.xmpp.namespaces import NS_SERVER, NS_STANZAS
from edgeproxy.xmpp.server_iq import (
    FEATURES,
    NS_DISCO_INFO,
    NS_DISCO_ITEMS,
    NS_PING,
    server_iq_reply,
)

ADDRESSES = {"from": "fabrikam.test", "to": "contoso.test", "id": "q1"}


def iq(type: str, *payload: Element, **attrs: str) -> Element:
    return Element("iq", NS_SERVER, {**ADDRESSES, "type": type, **attrs}, list(payload))


def test_a_ping_gets_an_empty_result_from_our_domain() -> None:
    reply = server_iq_reply(iq("get", Element("ping", NS_PING)))
    assert reply is not None
    assert (reply.name, reply.attrs) == (
        "iq", {"type": "result", "from": "contoso.test", "to": "fabrikam.test", "id": "q1"}
    )
    assert reply.children == []


def test_disco_info_names_a_server_and_the_features_answered_here() -> None:
    reply = server_iq_reply(iq("get", Element("query", NS_DISCO_INFO)))
    assert reply is not None and reply.get("type") == "result"
    [query] = reply.elements()
    identity = query.find("identity", NS_DISCO_INFO)
    assert identity is not None and (identity.get("category"), identity.get("type")) == ("server", "im")
    assert tuple(f.get("var") for f in query.findall("feature", NS_DISCO_INFO)) == FEATURES


def test_disco_items_lists_nothing() -> None:
    reply = server_iq_reply(iq("get", Element("query", NS_DISCO_ITEMS)))
    assert reply is not None and reply.get("type") == "result"
    [query] = reply.elements()
    assert (query.namespace, query.children) == (NS_DISCO_ITEMS, [])


def test_anything_else_and_disco_of_a_node_is_service_unavailable() -> None:
    for request in (
        iq("get", Element("query", "jabber:iq:version")),
        iq("set", Element("ping", NS_PING)),
        iq("get", Element("query", NS_DISCO_INFO, {"node": "x"})),
        iq("get"),
    ):
        reply = server_iq_reply(request)
        assert reply is not None and reply.get("type") == "error"
        assert (reply.get("from"), reply.get("to"), reply.get("id")) == ("contoso.test", "fabrikam.test", "q1")
        error = reply.find("error", NS_SERVER)
        assert error is not None and error.find("service-unavailable", NS_STANZAS) is not None


def test_results_and_errors_are_not_answered() -> None:
    assert server_iq_reply(iq("result")) is None
    assert server_iq_reply(iq("error")) is None
