"""Kamailio as the gateway's ``next-hop`` instead of the built-in registrar (issue 5): IM both ways;
and (issue 14) only the next hop may send the gateway requests: the same MESSAGE straight from
the UA's address gets 403.

A real Kamailio (Debian ``kamailio``; ``fixtures.kamailio``, IM only) on 127.0.0.1 is
the registrar and proxy of contoso.test and relays everything for montague.example (the XMPP
side) to the gateway. SIPp UAs register at Kamailio, not at the gateway. With CI=true a missing
kamailio or sipp fails the test.
"""

from __future__ import annotations

from pathlib import Path

import trio
from _sipp import (
    ALICE_IP,
    BOB_IP,
    GATEWAY_IP,
    bob_uas_registered,
    require_sipp,
    run_sipp,
    sipp_command,
)

from edgeproxy.gateway.service import GatewayService
from edgeproxy.loopback.frames import StanzaKind
from edgeproxy.xmpp.stanza import parse_stanza
from fixtures.channel_peer import EdgePeer
from fixtures.kamailio import require_kamailio, running_kamailio
from fixtures.ports import free_port

NS = "jabber:server"


async def direct_message(gateway_port: int, text: str) -> bytes:
    """A MESSAGE from alice to juliet sent from ALICE_IP straight to the gateway; its answer."""
    sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    await sock.bind((ALICE_IP, 0))
    host, port = sock.getsockname()
    body = text.encode()
    request = (
        "MESSAGE sip:juliet@montague.example SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {host}:{port};branch=z9hG4bK-direct;rport\r\n"
        "From: <sip:alice@contoso.test>;tag=direct\r\nTo: <sip:juliet@montague.example>\r\n"
        f"Call-ID: direct@{host}\r\nCSeq: 1 MESSAGE\r\nMax-Forwards: 70\r\n"
        f"Content-Type: text/plain;charset=UTF-8\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    with sock, trio.fail_after(5):
        await sock.sendto(request, (GATEWAY_IP, gateway_port))
        data, _ = await sock.recvfrom(65535)
    return data


async def test_im_both_ways_with_kamailio_as_the_next_hop(tmp_path: Path) -> None:
    require_sipp()
    require_kamailio()
    gateway_port = free_port(GATEWAY_IP, udp_too=True)
    with trio.fail_after(50):
        async with running_kamailio(
            tmp_path, GATEWAY_IP, gateway_uri=f"sip:{GATEWAY_IP}:{gateway_port}",
            gateway_domain="montague.example",
        ) as kamailio_port:  # fmt: skip
            kam = f"{GATEWAY_IP}:{kamailio_port}"
            async with trio.open_nursery() as nursery:
                edge = EdgePeer(fail_on_bounce=True)
                service = GatewayService(
                    sip_domains=("contoso.test",),
                    sip_host=GATEWAY_IP,
                    sip_port=gateway_port,
                    next_hop=f"sip:{kam}",
                )
                await edge.run_gateway(nursery, service)
                # Bob registers at Kamailio; an XMPP message reaches him through it.
                bob_port, got = await bob_uas_registered(nursery, kam, tmp_path, digest=False)
                edge.send_message("bob@contoso.test", "Grüße über Kamailio ☃", id="k1")
                while not got:
                    await trio.sleep(0.02)
                # Alice (a SIP user of Kamailio) writes to an XMPP user: Kamailio relays it to
                # the gateway, which hands it to the edge.
                text = "こんにちは via Kamailio"
                alice_log = await run_sipp(
                    sipp_command(
                        "message_uac_noauth.xml",
                        ALICE_IP,
                        "-s",
                        "juliet",
                        "-key",
                        "from_user",
                        "alice",
                        "-key",
                        "from_domain",
                        "contoso.test",
                        "-key",
                        "domain",
                        "montague.example",
                        "-key",
                        "text",
                        text,
                        remote=kam,
                    ),  # fmt: skip
                    tmp_path / "alice.log",
                )
                while not edge.received:
                    await trio.sleep(0.02)
                # issue 14: the same MESSAGE straight from alice's address, not through the next
                # hop, is refused (only the next hop may send the gateway requests).
                direct = await direct_message(gateway_port, text)
                assert direct.startswith(b"SIP/2.0 403 Only The Next Hop\r\n"), direct
                await trio.sleep(0.2)
                assert service.admission.counts["next-hop"] >= 1
                assert service.admission.counts["refused"] == 1
                nursery.cancel_scope.cancel()
    log = got[0]
    assert f"GOT MESSAGE sip:bob@{BOB_IP}:{bob_port}" in log  # Kamailio's location lookup
    assert "|from=sip:romeo@montague.example|to=sip:bob@contoso.test|" in log
    assert "|body=Grüße über Kamailio ☃|" in log
    assert "STATUS 200" in alice_log
    [item] = edge.received  # no error came back for k1
    assert (item.kind, item.from_, item.to, item.type) == (
        StanzaKind.MESSAGE,
        "alice@contoso.test",
        "juliet@montague.example",
        "chat",
    )
    body = parse_stanza(item.raw).find("body", NS)
    assert body is not None and body.text.rstrip("\r\n") == text
