"""The router's shortcut: the policy's view of a stanza from the tokenizer's routing view alone.

``routing_view`` may answer only when the answer is the one the stanza's tree gives
(``engine_view``); otherwise it must say "read the tree" (None). Every stanza below is checked
against that rule, including the ones written to slip a flagged namespace past a byte search.
"""

from __future__ import annotations

import pytest

from edgeproxy.net.delivery import MemoryDelivery
from edgeproxy.net.router import Router, engine_view, routing_view
from edgeproxy.policy.model import (
    AccessPolicy,
    Configuration,
    GatewaySettings,
    Partner,
    PartnerType,
    User,
)
from edgeproxy.policy.snapshot import build_snapshot
from edgeproxy.s2s import Role, S2SConnection
from edgeproxy.tokenizer import Element, Stanza, Tokenizer
from edgeproxy.xmpp.stanza import read_stanza

PLAIN_HEADER = (
    b"<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams'"
    b" xmlns:db='jabber:server:dialback' from='fabrikam.test' to='contoso.test' version='1.0'>"
)
PREFIXED_HEADER = PLAIN_HEADER.replace(b" version=", b" xmlns:j='urn:xmpp:jingle:1' version=")
DOMAINS = frozenset({"fabrikam.test"})
ADDR = b"from='alice@fabrikam.test/pc' to='bob@contoso.test'"

FAST = {
    "chat": b"<message " + ADDR + b" type='chat' id='m1'><body>hello</body></message>",
    "presence without a note": b"<presence " + ADDR + b"><show>away</show><priority>5</priority></presence>",
    "presence unavailable": b"<presence " + ADDR + b" type='unavailable'/>",
    "iq ping": b"<iq " + ADDR + b" type='get' id='p'><ping xmlns='urn:xmpp:ping'/></iq>",
    "xhtml body": b"<message " + ADDR + b"><html xmlns='http://jabber.org/protocol/xhtml-im'>"
                  b"<body xmlns='http://www.w3.org/1999/xhtml'><p>hi</p></body></html></message>",
}
SLOW = {
    "presence with a note": b"<presence " + ADDR + b"><status>at lunch</status></presence>",
    "jingle": b"<iq " + ADDR + b" type='set' id='j'><jingle xmlns='urn:xmpp:jingle:1' action='x'/></iq>",
    "si file transfer": b"<iq " + ADDR + b" type='set' id='s'><si xmlns='http://jabber.org/protocol/si'/></iq>",
    "oob": b"<iq " + ADDR + b" type='set' id='o'><query xmlns='jabber:iq:oob'/></iq>",
    "muc invite": b"<message " + ADDR + b"><x xmlns='http://jabber.org/protocol/muc#user'>"
                  b"<invite from='c@fabrikam.test'/></x></message>",
    "direct invite": b"<message " + ADDR + b"><x xmlns='jabber:x:conference' jid='r@muc.test'/></message>",
    "namespace spelled with a character reference": b"<iq " + ADDR + b" type='set' id='j'>"
                  b"<jingle xmlns='urn:xmpp:jingle&#x3a;1'/></iq>",
    "prefix bound in the stanza": b"<iq " + ADDR + b" type='set' id='j' xmlns:q='urn:xmpp:jingle:1'>"
                  b"<q:jingle/></iq>",
    "a body that only quotes a URI": b"<message " + ADDR + b"><body>see urn:xmpp:jingle:1</body></message>",
    "an entity in the body": b"<message " + ADDR + b"><body>a &amp; b</body></message>",
}


def tokens(header: bytes, raw: bytes) -> Stanza:
    tokenizer = Tokenizer()
    stream_open, *rest = tokenizer.feed(header + raw)
    assert isinstance(rest[0], Stanza)
    return rest[0]


@pytest.mark.parametrize("raw", FAST.values(), ids=FAST.keys())
def test_a_stanza_without_flags_is_decided_from_its_routing_view_with_the_trees_answer(raw: bytes) -> None:
    stanza = tokens(PLAIN_HEADER, raw)
    view = routing_view(stanza, DOMAINS, plain_scope=True)
    assert view is not None
    assert view == engine_view(stanza.element(), DOMAINS)


@pytest.mark.parametrize("raw", SLOW.values(), ids=SLOW.keys())
def test_a_stanza_that_may_carry_a_flag_sends_the_router_to_its_tree(raw: bytes) -> None:
    assert routing_view(tokens(PLAIN_HEADER, raw), DOMAINS, plain_scope=True) is None


def test_on_a_stream_that_bound_prefixes_of_its_own_every_stanza_is_read_as_a_tree() -> None:
    """``<j:jingle/>`` with ``j`` bound in the stream header spells no URI in the stanza."""
    stanza = tokens(PREFIXED_HEADER, b"<iq " + ADDR + b" type='set' id='j'><j:jingle/></iq>")
    assert engine_view(stanza.element(), DOMAINS).jingle
    assert routing_view(stanza, DOMAINS, plain_scope=False) is None


@pytest.mark.parametrize(("header", "plain"), [(PLAIN_HEADER, True), (PREFIXED_HEADER, False)])
def test_the_s2s_core_says_whether_the_peers_header_bound_prefixes_of_its_own(header: bytes, plain: bool) -> None:
    config = Configuration(gateway=GatewaySettings(dialback_secret="s"), partners=(Partner(domain="fabrikam.test"),))
    snapshot = build_snapshot(config, ["contoso.test"])
    conn = S2SConnection(Role.RECEIVING, policy=lambda: snapshot, secret="s")
    conn.receive_data(header)
    assert conn.plain_scope is plain


class RecordingPool:
    def __init__(self) -> None:
        self.sent: list[tuple[str, str, bytes, object]] = []

    async def send(self, local: str, remote: str, raw: bytes, held: object) -> None:
        self.sent.append((local, remote, raw, held))


def gateway_router(partner_type: PartnerType) -> tuple[Router, RecordingPool]:
    config = Configuration(
        gateway=GatewaySettings(dialback_secret="s"),
        partners=(Partner(domain="fabrikam.test", type=partner_type),),
        policies=(AccessPolicy(identity="global", xmpp=True, federation=True),),
        users=(User(sip="sip:bob@contoso.test"),),
    )
    snapshot = build_snapshot(config, ["contoso.test"])
    pool = RecordingPool()
    return Router(lambda: snapshot, MemoryDelivery(), pool), pool  # type: ignore[arg-type]


FROM_BOB = b"from='bob@contoso.test' to='alice@fabrikam.test'"


async def test_a_plain_stanza_from_the_gateway_goes_out_as_its_checked_bytes_with_no_tree() -> None:
    router, pool = gateway_router(PartnerType.FEDERATED)
    raw = b"<message " + FROM_BOB + b" type='chat' id='g1'><body>hi</body></message>"
    await router.send_from_gateway(read_stanza(raw), refused=lambda c: pytest.fail(c))
    [(local, remote, sent, held)] = pool.sent
    assert (local, remote, sent) == ("contoso.test", "fabrikam.test", raw)
    assert isinstance(held, Stanza)  # the pool holds the tokenizer's view: no tree was built


async def test_a_status_note_from_the_gateway_to_a_public_partner_is_removed_from_its_tree() -> None:
    router, pool = gateway_router(PartnerType.PUBLIC_VERIFIED)
    raw = b"<presence " + FROM_BOB + b"><show>away</show><status>at lunch</status></presence>"
    await router.send_from_gateway(read_stanza(raw), refused=lambda c: pytest.fail(c))
    [(_, _, sent, held)] = pool.sent
    assert b"<status" not in sent and b"<show>away</show>" in sent
    assert isinstance(held, Element)


async def test_a_refused_stanza_from_the_gateway_is_answered_by_the_nack_not_sent() -> None:
    router, pool = gateway_router(PartnerType.FEDERATED)
    raw = b"<message from='bob@contoso.test' to='eve@unknown.test' id='g2'><body>x</body></message>"
    refusals: list[str] = []
    await router.send_from_gateway(read_stanza(raw), refused=refusals.append)
    assert refusals == ["remote-server-not-found"] and pool.sent == []
