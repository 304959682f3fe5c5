"""Anti-spoofing asserted at the peer (RFC 6120 §4.9.3.9 ``invalid-from``, SPEC §6 rule 1): a
scripted partner authenticates for its own domain by dialback against a real edge listening on
127.0.0.1, then sends a stanza from a domain it did not authenticate."""

from __future__ import annotations

import pytest
import trio
from _edges import partner, set_partners, start_edge
from _scripted_peer import open_scripted_stream

from edgeproxy.s2s import StreamErrorReceived

INVALID_FROM = b"<invalid-from xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>"


def chat(frm: str, to: str, body: str) -> bytes:
    return f"<message from='{frm}' to='{to}' type='chat' id='x'><body>{body}</body></message>".encode()


@pytest.mark.parametrize(
    "spoofed", ["eve@litware.test", "mallory@contoso.test", "litware.test", "eve@chat.fabrikam.test/r"]
)
async def test_stanza_from_an_unauthenticated_domain_closes_that_stream_with_invalid_from(spoofed: str) -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            contoso = await start_edge(nursery, "contoso.test", ("alice",), "c")
            fabrikam = await start_edge(nursery, "fabrikam.test", ("bob",), "f")  # authoritative
            set_partners(contoso, ("alice",), "c", partner("fabrikam.test", fabrikam.port),
                         partner("litware.test", 9))
            set_partners(fabrikam, ("bob",), "f", partner("contoso.test", contoso.port))
            peer = dict(local="fabrikam.test", remote="contoso.test", policy=fabrikam.holder[0], secret="f")
            honest = await open_scripted_stream("127.0.0.1", contoso.port, **peer)  # type: ignore[arg-type]
            spoofer = await open_scripted_stream("127.0.0.1", contoso.port, **peer)  # type: ignore[arg-type]
            assert ("fabrikam.test", "contoso.test") in spoofer.conn.authenticated  # (local, remote)

            # A legitimate stanza first: the stream is usable.
            await spoofer.send_raw(chat("bob@fabrikam.test", "alice@contoso.test", "one"))
            assert b">one<" in (await contoso.delivery.receive()).raw
            await spoofer.send_raw(chat(spoofed, "alice@contoso.test", "spoof"))
            events = await spoofer.until_closed()
            assert INVALID_FROM in spoofer.raw
            assert [e.condition for e in events if isinstance(e, StreamErrorReceived)] == ["invalid-from"]
            assert await spoofer.transport_closed()

            # The other stream of the same peer stays up and carries stanzas.
            await honest.send_raw(chat("bob@fabrikam.test/pc", "alice@contoso.test", "two"))
            got = await contoso.delivery.receive()
            assert (got.from_jid, got.to_jid) == ("bob@fabrikam.test/pc", "alice@contoso.test")
            assert b">two<" in got.raw and b"spoof" not in got.raw
            assert contoso.delivery.statistics().current_buffer_used == 0  # the spoofed one never arrived
            nursery.cancel_scope.cancel()
