"""Real Prosody 0.12 (fabrikam.test) federating with edgeproxy (contoso.test) — issue 4 acceptance.

Each test starts its own lab (``_interop_lab``: dnsmasq with SRV + A records for both domains,
Prosody on 127.0.0.22 and an in-process edge on 127.0.0.10), then drives a real client logged in
on Prosody.
"""

from __future__ import annotations

from pathlib import Path

import trio
from _interop_lab import Lab, lab

from edgeproxy.policy.model import Negotiation, Partner, PartnerType
from edgeproxy.tokenizer import Element
from edgeproxy.xmpp.namespaces import NS_SERVER

NOS = Negotiation.NOT_SUPPORTED
REQ = Negotiation.REQUIRED


async def federate_both_ways(env: Lab, domain: str = "fabrikam.test") -> None:
    """Issue 4 acceptance: message in, message out, refusal, presence subscription round trip."""
    await env.alice.send(
        "<message to='bob@contoso.test' type='chat' id='p1'><body>from prosody</body></message>"
    )
    got = await env.delivery.receive()
    assert (got.from_jid, got.to_jid) == (f"alice@{domain}/interop", "bob@contoso.test")
    assert b"<body>from prosody</body>" in got.raw

    # A local user's stanza reaches the partner user's client (Prosody verifies our key
    # by connecting back to contoso.test: our authoritative dialback role).
    await env.edge.router.send_from_local(Element(
        "message", NS_SERVER, {"from": "bob@contoso.test/sip", "to": f"alice@{domain}", "type": "chat"},
        [Element("body", NS_SERVER, {}, ["from the edge"])],
    ))
    reply = await env.alice.expect("message")
    assert reply.from_ == "bob@contoso.test/sip"
    assert b"from the edge" in reply.raw

    # Refusal: a local user that does not exist comes back as service-unavailable.
    await env.alice.send("<message to='nobody@contoso.test' type='chat' id='p2'><body>?</body></message>")
    error = await env.alice.expect("message")
    assert error.type == "error" and error.from_ == "nobody@contoso.test"
    assert b"service-unavailable" in error.raw

    # Presence subscription round trip: Federated partner → auto-approved.
    await env.alice.send("<presence to='bob@contoso.test' type='subscribe'/>")
    while (p := await env.alice.expect("presence")).type != "subscribed":
        pass
    assert p.from_ == "bob@contoso.test"
    sub = await env.delivery.receive()
    assert sub.kind == "presence" and sub.type == "subscribe"


async def test_prosody_federates_over_tcp_dialback_row_17(tmp_path: Path, caplog) -> None:  # type: ignore[no-untyped-def]
    caplog.set_level("INFO", logger="edgeproxy")
    row = Partner(domain="fabrikam.test", tls=NOS, sasl=NOS, dialback=True, type=PartnerType.FEDERATED)
    with trio.fail_after(40):
        async with lab(tmp_path, row) as env:
            await federate_both_ways(env)
    assert "authenticated by tcp-dialback" in caplog.text


async def test_prosody_federates_over_starttls_and_dialback_row_13(tmp_path: Path, caplog) -> None:  # type: ignore[no-untyped-def]
    caplog.set_level("INFO", logger="edgeproxy")
    row = Partner(domain="fabrikam.test", tls=REQ, sasl=NOS, dialback=True, type=PartnerType.FEDERATED)
    with trio.fail_after(40):
        async with lab(tmp_path, row, mode="starttls") as env:
            await federate_both_ways(env)
            link = env.edge.router.pool.links[("contoso.test", "fabrikam.test")]
            assert link.session is not None and link.session.conn.tls_active
    assert "authenticated by tls-dialback" in caplog.text


async def test_prosody_federates_over_starttls_and_sasl_external_row_2(tmp_path: Path, caplog) -> None:  # type: ignore[no-untyped-def]
    caplog.set_level("INFO", logger="edgeproxy")
    row = Partner(domain="fabrikam.test", tls=REQ, sasl=REQ, dialback=False, type=PartnerType.FEDERATED)
    with trio.fail_after(40):
        async with lab(tmp_path, row, mode="secure") as env:
            await federate_both_ways(env)
    assert "authenticated by sasl-over-tls" in caplog.text


async def test_prosody_users_ping_and_discover_our_domain_answered_by_the_edge(tmp_path: Path) -> None:
    """XEP-0199 §4.2 / XEP-0030: an iq to contoso.test itself is answered by the edge (result from
    our domain), not handed to local delivery; what it does not offer is service-unavailable."""
    row = Partner(domain="fabrikam.test", tls=NOS, sasl=NOS, dialback=True, type=PartnerType.FEDERATED)
    with trio.fail_after(40):
        async with lab(tmp_path, row) as env:
            await env.alice.send("<iq type='get' to='contoso.test' id='ping1'><ping xmlns='urn:xmpp:ping'/></iq>")
            pong = await env.alice.expect("iq")
            assert (pong.type, pong.id, pong.from_) == ("result", "ping1", "contoso.test")

            await env.alice.send("<iq type='get' to='contoso.test' id='disco1'>"
                                 "<query xmlns='http://jabber.org/protocol/disco#info'/></iq>")
            info = await env.alice.expect("iq")
            assert (info.type, info.id) == ("result", "disco1")
            assert b"category='server'" in info.raw or b'category="server"' in info.raw
            assert b"urn:xmpp:ping" in info.raw

            await env.alice.send("<iq type='get' to='contoso.test' id='ver1'>"
                                 "<query xmlns='jabber:iq:version'/></iq>")
            error = await env.alice.expect("iq")
            assert (error.type, error.id) == ("error", "ver1")
            assert b"service-unavailable" in error.raw
            assert env.delivery.statistics().current_buffer_used == 0  # nothing was delivered
