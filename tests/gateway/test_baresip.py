"""baresip, a real softphone, as a second independent SIP UA against edgeproxy's gateway (issue 5).

``run_app(role="both")`` runs the edge for contoso.test and the real gateway (built-in registrar)
in-process; fabrikam.test is a scripted S2S partner (a real edge on real sockets, ``tests/ops/
_lab.py``); baresip (``tests/fixtures/baresip.py``) registers ``sip:alice@contoso.test`` at the
gateway, over UDP, TCP and TLS (the gateway's ``[tls]`` certificate, SIP over TLS on the SIP
port + 1, requests to alice over her registration connection), and messages travel both ways
with from/to and a non-ASCII body intact; presence travels both ways too (baresip's PUBLISH to romeo, romeo's presence as NOTIFYs
in baresip's contact list, baresip's in-dialog un-SUBSCRIBE); and two baresips of our domain
talk through the registrar's proxy. Addresses: the gateway's SIP listener on 127.0.0.41,
baresip on 127.0.0.40 (alice) and 127.0.0.44 (bob).
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

import pytest
import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "ops"))
from _lab import (  # noqa: E402 - the ops lab helpers live next to the ops tests
    TCP_DIALBACK_ROW,
    Certs,
    Peer,
    configuration,
    message,
    partner,
    start_peer,
    write_config,
    write_store,
)

from edgeproxy.app import EdgeApp, run_app  # noqa: E402
from edgeproxy.config import load_config  # noqa: E402
from edgeproxy.net.delivery import Delivery  # noqa: E402
from edgeproxy.tokenizer import Element  # noqa: E402
from edgeproxy.xmpp.namespaces import NS_SERVER  # noqa: E402
from fixtures.baresip import free_sip_port, start_baresip  # noqa: E402

GATEWAY_IP, ALICE_IP, BOB_IP = "127.0.0.41", "127.0.0.40", "127.0.0.44"
ALICE, ROMEO = "alice@contoso.test", "romeo@fabrikam.test"
TEXT = "héllo ☃ 日本語"


@asynccontextmanager
async def gateway(tmp: Path, certs: Certs | None = None) -> AsyncIterator[tuple[EdgeApp, Peer, tuple[str, int]]]:
    """Edge + gateway for contoso.test (users alice and bob), fabrikam.test a federated partner;
    with ``certs`` the gateway has a certificate and serves SIP over TLS on the SIP port + 1."""
    sip_port = free_sip_port(GATEWAY_IP)
    config_path = write_config(tmp, certs=certs)
    text = config_path.read_text().replace(
        'state-dir = "state"\n', 'state-dir = "state"\ninternal-listen = "127.0.0.1:0"\n'
    )
    config_path.write_text(text + f'[gateway]\nsip-listen = ["{GATEWAY_IP}:{sip_port}"]\n')
    async with trio.open_nursery() as nursery:
        peer = await start_peer(nursery, "fabrikam.test")
        write_store(tmp / "state", configuration(
            "contoso.test", ("alice", "bob"), "contoso-secret", partner("fabrikam.test", peer.port, TCP_DIALBACK_ROW),
        ))
        app = await nursery.start(partial(run_app, load_config(config_path), role="both", signals=False))
        assert app is not None
        external = app.status().listeners[0].address
        peer.federate_with("contoso.test", int(external.rpartition(":")[2]), TCP_DIALBACK_ROW, ("romeo",))
        try:
            yield app, peer, (GATEWAY_IP, sip_port)
        finally:
            nursery.cancel_scope.cancel()


async def wait_for(predicate, timeout: float = 30) -> None:  # type: ignore[no-untyped-def]
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.05)


@pytest.mark.parametrize("transport", ["udp", "tcp", "tls"])
async def test_baresip_and_an_xmpp_partner_exchange_messages_both_ways(tmp_path: Path, transport: str) -> None:
    certs = Certs(tmp_path) if transport == "tls" else None
    with trio.fail_after(90):
        async with gateway(tmp_path, certs) as (app, peer, (host, port)):
            await wait_for(lambda: app.status().channel.state.value == "connected")
            registrar = (host, port + 1) if certs else (host, port)  # TLS: sip-listen port + 1
            async with start_baresip(tmp_path / "baresip", aor=f"sip:{ALICE}", registrar=registrar,
                                     ip=ALICE_IP, transport=transport, contacts=(f"sip:{ROMEO}",),
                                     cafile=certs.files("contoso.test")[2] if certs else None) as alice:
                await alice.wait_registered()

                # XMPP → SIP: romeo's message reaches baresip, From mapped to romeo's SIP URI.
                await peer.send(message(ROMEO, ALICE, body=f"{TEXT} (xmpp→sip)", id="x1"))
                got = await alice.wait_message()
                assert (got.peer, got.text) == (f"sip:{ROMEO}", f"{TEXT} (xmpp→sip)")
                assert not [d for d in peer.received() if d.type == "error"]

                # SIP → XMPP: baresip's MESSAGE reaches the partner as alice → romeo.
                await alice.send_message(f"sip:{ROMEO}", f"{TEXT} (sip→xmpp)")
                received: list[Delivery] = []
                await wait_for(lambda: bool(received.extend(peer.received()) or received))
                [item] = received
                assert (item.kind, item.type) == ("message", "chat")
                assert (item.from_jid.partition("/")[0], item.to_jid) == (ALICE, ROMEO)
                assert f"<body>{TEXT} (sip→xmpp)</body>".encode() in item.raw, item.raw
                # the gateway answered baresip's MESSAGE 200 once the edge had taken it
                await alice.wait_until(lambda: alice.final_responses("MESSAGE")[-1:] not in ([], [407]))
                assert alice.final_responses("MESSAGE") == [407, 200]


def presence(frm: str, to: str, type: str = "", show: str = "", status: str = "") -> Element:
    attrs = {"from": frm, "to": to} | ({"type": type} if type else {})
    children = [Element(name, NS_SERVER, {}, [text]) for name, text in (("show", show), ("status", status)) if text]
    return Element("presence", NS_SERVER, attrs, children)  # type: ignore[arg-type]


class Received:
    """Everything the partner peer got, accumulated (``Peer.received`` drains its queue)."""

    def __init__(self, peer: Peer) -> None:
        self.peer = peer
        self.items: list[Delivery] = []

    def mark(self) -> int:
        """How many stanzas arrived so far (for ``presence(after=...)``)."""
        self.items.extend(self.peer.received())
        return len(self.items)

    def presence(self, type: str | None, after: int = 0) -> list[Delivery]:
        self.items.extend(self.peer.received())
        return [d for d in self.items[after:] if d.kind == "presence" and (d.type or None) == type
                and d.from_jid.partition("/")[0] == ALICE and d.to_jid.partition("/")[0] == ROMEO]


async def test_baresip_and_an_xmpp_partner_see_each_others_presence(tmp_path: Path) -> None:
    romeo_uri = f"sip:{ROMEO}"
    with trio.fail_after(90):
        async with gateway(tmp_path) as (app, peer, registrar):
            await wait_for(lambda: app.status().channel.state.value == "connected")
            got = Received(peer)
            # romeo subscribes to alice (a Federated partner: approved), alice has no presence yet
            await peer.send(presence(ROMEO, ALICE, "subscribe"))
            await wait_for(lambda: got.presence("subscribed") and got.presence("unavailable"))
            async with start_baresip(tmp_path / "baresip", aor=f"sip:{ALICE}", registrar=registrar,
                                     ip=ALICE_IP, watch=(romeo_uri,), publish=True) as alice:
                await alice.wait_registered()
                # baresip's first PUBLISH leaves 100 ms after start, registered or not (the gateway
                # answers 403 to an unregistered publisher, and baresip does not retry): publish again
                await alice.set_presence(True)
                # SIP → XMPP: baresip PUBLISHes open; romeo gets alice's available presence.
                await wait_for(lambda: got.presence(None))
                # XMPP → SIP: baresip SUBSCRIBEs to romeo → XMPP subscribe; romeo approves and
                # his presence shows in baresip's contact list (NOTIFY/PIDF).
                await wait_for(lambda: got.presence("subscribe"))
                await peer.send(presence(ROMEO, ALICE, "subscribed"))
                await peer.send(presence(ROMEO, ALICE, show="dnd", status="Beschäftigt ☕"))
                await alice.wait_contact_status(romeo_uri, "Busy")
                await peer.send(presence(ROMEO, ALICE))
                await alice.wait_contact_status(romeo_uri, "Online")
                await peer.send(presence(ROMEO, ALICE, "unavailable"))
                await alice.wait_contact_status(romeo_uri, "Offline")
                # baresip goes offline (PUBLISH closed): romeo sees alice unavailable.
                seen = got.mark()
                await alice.set_presence(False)
                await wait_for(lambda: got.presence("unavailable", after=seen))
                # baresip stops: its un-SUBSCRIBE, sent inside the dialog to the gateway's
                # Contact, is answered 200 and becomes an XMPP unsubscribe to romeo.
                seen = got.mark()
                await alice.stop()
                assert alice.final_responses("SUBSCRIBE")[-1] == 200, alice.log_tail()
                await wait_for(lambda: got.presence("unsubscribe", after=seen))


async def test_two_baresips_of_our_domain_talk_through_the_registrar(tmp_path: Path) -> None:
    """alice (UDP) → the gateway's proxy → bob's registered Contact (TCP), and back."""
    alice_uri, bob_uri = f"sip:{ALICE}", "sip:bob@contoso.test"
    with trio.fail_after(90):
        async with gateway(tmp_path) as (app, peer, registrar):
            async with start_baresip(tmp_path / "alice", aor=alice_uri, registrar=registrar, ip=ALICE_IP,
                                     contacts=(bob_uri,)) as alice, \
                    start_baresip(tmp_path / "bob", aor=bob_uri, registrar=registrar, ip=BOB_IP,
                                  transport="tcp", contacts=(alice_uri,)) as bob:
                await alice.wait_registered()
                await bob.wait_registered()
                await alice.send_message(bob_uri, f"{TEXT} (alice→bob)")
                got = await bob.wait_message()
                assert (got.peer, got.text) == (alice_uri, f"{TEXT} (alice→bob)")
                await bob.send_message(alice_uri, f"{TEXT} (bob→alice)")
                got = await alice.wait_message()
                assert (got.peer, got.text) == (bob_uri, f"{TEXT} (bob→alice)")
                # each sender got bob's / alice's own 200, relayed by the proxy
                await alice.wait_until(lambda: alice.final_responses("MESSAGE")[-1:] not in ([], [407]))
                await bob.wait_until(lambda: bob.final_responses("MESSAGE")[-1:] not in ([], [407]))
                assert alice.final_responses("MESSAGE") == bob.final_responses("MESSAGE") == [407, 200]
            assert peer.received() == []  # nothing went to the XMPP side
