"""Two edges over real loopback sockets: dialback both ways, routing, refusals and bounces."""

from __future__ import annotations

import msgspec
import trio
from _edges import partner, set_partners, start_edge

from edgeproxy.policy.model import PartnerType
from edgeproxy.tokenizer import Element
from edgeproxy.xmpp.namespaces import NS_SERVER


def message(frm: str, to: str, body: str = "hello") -> Element:
    return Element("message", NS_SERVER, {"from": frm, "to": to, "type": "chat", "id": "m1"},
                   [Element("body", NS_SERVER, {}, [body])])


async def two_edges(nursery: trio.Nursery, **row: object):  # type: ignore[no-untyped-def]
    contoso = await start_edge(nursery, "contoso.test", ("alice",), "contoso-secret")
    fabrikam = await start_edge(nursery, "fabrikam.test", ("bob",), "fabrikam-secret")
    set_partners(contoso, ("alice",), "contoso-secret", partner("fabrikam.test", fabrikam.port, **row))
    set_partners(fabrikam, ("bob",), "fabrikam-secret", partner("contoso.test", contoso.port, **row))
    return contoso, fabrikam


async def test_message_crosses_two_edges_over_tcp_dialback() -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            contoso, fabrikam = await two_edges(nursery)
            await contoso.server.router.send_from_local(message("alice@contoso.test/pc", "bob@fabrikam.test"))
            got = await fabrikam.delivery.receive()
            assert (got.from_jid, got.to_jid, got.kind) == ("alice@contoso.test/pc", "bob@fabrikam.test", "message")
            assert b"<body>hello</body>" in got.raw
            # The reverse direction opens its own stream and reuses it for a second message.
            await fabrikam.server.router.send_from_local(message("bob@fabrikam.test", "alice@contoso.test", "a"))
            await fabrikam.server.router.send_from_local(message("bob@fabrikam.test", "alice@contoso.test", "b"))
            assert b">a<" in (await contoso.delivery.receive()).raw
            assert b">b<" in (await contoso.delivery.receive()).raw
            assert len(fabrikam.server.router.pool.links) == 1
            nursery.cancel_scope.cancel()


async def test_message_to_unknown_local_user_comes_back_as_service_unavailable() -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            contoso, fabrikam = await two_edges(nursery)
            await contoso.server.router.send_from_local(message("alice@contoso.test", "nobody@fabrikam.test"))
            back = await contoso.delivery.receive()
            assert back.type == "error" and back.to_jid == "alice@contoso.test"
            assert b"<service-unavailable" in back.raw
            nursery.cancel_scope.cancel()


async def test_unreachable_partner_bounces_remote_server_not_found() -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            contoso = await start_edge(nursery, "contoso.test", ("alice",), "s")
            with trio.socket.socket() as probe:  # a port nobody listens on
                await probe.bind(("127.0.0.1", 0))
                dead = probe.getsockname()[1]
            set_partners(contoso, ("alice",), "s", partner("fabrikam.test", dead))
            await contoso.server.router.send_from_local(message("alice@contoso.test", "bob@fabrikam.test"))
            back = await contoso.delivery.receive()
            assert b"<remote-server-not-found" in back.raw
            nursery.cancel_scope.cancel()


async def test_mismatched_secrets_make_dialback_fail_and_bounce() -> None:
    """fabrikam's view of contoso points at a third server that shares no secret: forged key."""
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            contoso, fabrikam = await two_edges(nursery)
            impostor = await start_edge(nursery, "contoso.test", ("alice",), "impostor-secret")
            set_partners(impostor, ("alice",), "impostor-secret", partner("fabrikam.test", fabrikam.port))
            await impostor.server.router.send_from_local(message("alice@contoso.test", "bob@fabrikam.test"))
            back = await impostor.delivery.receive()
            assert back.type == "error" and b"<remote-server-not-found" in back.raw
            link = impostor.server.router.pool.links[("contoso.test", "fabrikam.test")]
            assert "dialback invalid" in (link.failure or "")
            nursery.cancel_scope.cancel()


async def test_domain_not_a_partner_is_refused_at_the_stream() -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            fabrikam = await start_edge(nursery, "fabrikam.test", ("bob",), "f")
            stream = await trio.open_tcp_stream("127.0.0.1", fabrikam.port)
            await stream.send_all(
                b"<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams'"
                b" from='evil.test' to='fabrikam.test' version='1.0'>"
            )
            data = b""
            while b"</stream:stream>" not in data:
                chunk = await stream.receive_some(4096)
                if not chunk:
                    break
                data += chunk
            assert b"<policy-violation xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>" in data
            nursery.cancel_scope.cancel()


async def test_a_status_note_to_a_public_partner_is_removed_and_the_rest_goes_as_sent() -> None:
    """SPEC §4: presence notes go only to Federated partners. The router removes ``<status/>``
    from the tree it parsed for the policy and sends that tree's bytes; nothing else moves."""
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            contoso = await start_edge(nursery, "contoso.test", ("alice",), "contoso-secret")
            fabrikam = await start_edge(nursery, "fabrikam.test", ("bob",), "fabrikam-secret")
            public = msgspec.structs.replace(
                partner("fabrikam.test", fabrikam.port), type=PartnerType.PUBLIC_VERIFIED
            )
            set_partners(contoso, ("alice",), "contoso-secret", public)
            set_partners(fabrikam, ("bob",), "fabrikam-secret", partner("contoso.test", contoso.port))
            presence = Element(
                "presence", NS_SERVER, {"from": "alice@contoso.test/pc", "to": "bob@fabrikam.test"},
                [Element("show", NS_SERVER, {}, ["away"]), Element("status", NS_SERVER, {}, ["at lunch"]),
                 Element("priority", NS_SERVER, {}, ["5"])],
            )
            await contoso.server.router.send_from_local(presence)
            got = await fabrikam.delivery.receive()
            assert got.kind == "presence" and got.from_jid == "alice@contoso.test/pc"
            assert b"<status" not in got.raw and b"at lunch" not in got.raw
            assert b"<show>away</show>" in got.raw and b"<priority>5</priority>" in got.raw
            nursery.cancel_scope.cancel()
