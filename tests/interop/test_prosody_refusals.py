"""Refusals against real Prosody, each asserted at the peer (issue 4 acceptance)."""

from __future__ import annotations

from pathlib import Path

import trio
from _interop_lab import EDGE_ADDR, lab

from edgeproxy.policy.model import Negotiation, Partner, PartnerType

NOS, REQ = Negotiation.NOT_SUPPORTED, Negotiation.REQUIRED


async def test_domain_not_in_the_partner_list_cannot_federate(tmp_path: Path, caplog) -> None:  # type: ignore[no-untyped-def]
    caplog.set_level("DEBUG", logger="edgeproxy")  # the stream-ended line says why
    with trio.fail_after(40):
        async with lab(tmp_path, None) as env:
            await env.alice.send("<message to='bob@contoso.test' type='chat' id='x1'><body>hi</body></message>")
            error = await env.alice.expect("message")
            assert error.type == "error" and error.id == "x1"
            assert env.delivery.statistics().current_buffer_used == 0
    assert "policy-violation: no default partner" in caplog.text


async def test_partner_whose_row_requires_tls_is_refused_when_the_peer_skips_starttls(tmp_path: Path, caplog) -> None:  # type: ignore[no-untyped-def]
    caplog.set_level("DEBUG", logger="edgeproxy")  # the stream-ended line says why
    row = Partner(domain="fabrikam.test", tls=REQ, sasl=NOS, dialback=True, type=PartnerType.FEDERATED)
    with trio.fail_after(40):
        async with lab(tmp_path, row, mode="plain") as env:  # this Prosody cannot do TLS
            await env.alice.send("<message to='bob@contoso.test' type='chat' id='x2'><body>hi</body></message>")
            error = await env.alice.expect("message")
            assert error.type == "error" and error.id == "x2"
            assert env.delivery.statistics().current_buffer_used == 0
    assert "TLS is required before dialback" in caplog.text


async def test_forged_dialback_key_is_refused_after_asking_the_real_authoritative_server(tmp_path: Path) -> None:
    row = Partner(domain="fabrikam.test", tls=NOS, sasl=NOS, dialback=True, type=PartnerType.FEDERATED)
    with trio.fail_after(40):
        async with lab(tmp_path, row) as env:
            impostor = await trio.open_tcp_stream(EDGE_ADDR, env.edge_port)
            await impostor.send_all(
                b"<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams'"
                b" xmlns:db='jabber:server:dialback' from='fabrikam.test' to='contoso.test' version='1.0'>"
                b"<db:result from='fabrikam.test' to='contoso.test'>" + b"0" * 64 + b"</db:result>"
            )
            data = b""
            while b"</stream:stream>" not in data:
                chunk = await impostor.receive_some(4096)
                if not chunk:
                    break
                data += chunk
            # Prosody (authoritative for fabrikam.test) said the key is not its own.
            assert b"<db:result from='contoso.test' to='fabrikam.test' type='invalid'/>" in data
            assert b"<not-authorized xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>" in data
            await impostor.aclose()
