"""Issue 5 acceptance with baresip as a second, independent SIP UA: a user on a real Prosody
(carol@fabrikam.test) and baresip softphones registered at edgeproxy's built-in registrar
(alice@contoso.test over UDP, bob@contoso.test over TCP) exchange messages both ways, with
from/to, body and non-ASCII text intact (SPEC §7, RFC 7572); and presence both ways: baresip's
PUBLISH seen by carol, carol's presence as NOTIFYs in baresip's contact list, baresip's
un-SUBSCRIBE (sent in the dialog, to the gateway's Contact) ending the XMPP subscription.

Path: Prosody c2s → Prosody s2s (dialback) → edge → loopback channel → gateway → SIP MESSAGE to
the registered baresip Contact; and back: baresip MESSAGE → gateway → channel → edge → S2S →
Prosody → carol. baresip (``tests/fixtures/baresip.py``) runs on 127.0.0.42 and 127.0.0.43.
"""

from __future__ import annotations

from pathlib import Path

import trio
from harness import XMPP_DOMAIN, child_text, e2e_lab, expect_stanza, wait_for

from edgeproxy.tokenizer import Stanza
from fixtures.baresip import start_baresip
from fixtures.c2s import Client

XMPP_TEXT = "Grüße aus Fabrikam — ☃ 日本語 𝄞 <&> \"quoted\""
SIP_TEXT = "Antwort aus baresip: ça va? Ωμέγα ☕ 😀 & <ok>"
UAS = {"alice": ("127.0.0.42", "udp"), "bob": ("127.0.0.43", "tcp")}


def xml_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


async def test_prosody_user_and_baresip_exchange_messages_both_ways(tmp_path: Path) -> None:
    carol_uri = f"sip:carol@{XMPP_DOMAIN}"
    with trio.fail_after(120):
        async with e2e_lab(tmp_path, sip_users=("alice", "bob"), xmpp_users=("carol",)) as lab:
            carol = await lab.login("carol")
            for user, (ip, transport) in UAS.items():
                async with start_baresip(
                    tmp_path / f"baresip-{user}", aor=f"sip:{user}@contoso.test", ip=ip,
                    registrar=(lab.sip_host, lab.sip_port), transport=transport, contacts=(carol_uri,),
                ) as ua:
                    await ua.wait_registered()

                    # XMPP → SIP: carol's message reaches baresip from carol's SIP URI.
                    text = f"{XMPP_TEXT} → {user}"
                    await carol.send(f"<message to='{user}@contoso.test' type='chat' id='c-{user}'>"
                                     f"<body>{xml_escape(text)}</body></message>")
                    got = await ua.wait_message()
                    assert (got.peer, got.text) == (carol_uri, text), (transport, got)

                    # SIP → XMPP: baresip's MESSAGE reaches carol as user@contoso.test.
                    text = f"{SIP_TEXT} ← {user}"
                    await ua.send_message(carol_uri, text)
                    message = await expect_stanza(carol, lambda s: s.name == "message")
                    assert message.type == "chat", message.raw
                    assert (message.from_ or "").partition("/")[0] == f"{user}@contoso.test"
                    assert message.to in ("carol@fabrikam.test", "carol@fabrikam.test/interop")
                    assert child_text(message, "body") == text, message.raw
                    await ua.wait_until(lambda ua=ua: ua.final_responses("MESSAGE")[-1:] not in ([], [407]))
                    assert ua.final_responses("MESSAGE") == [407, 200]  # the edge took it


class Inbox:
    """Every stanza a client receives, kept in order (presence arrives in no fixed order)."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.stanzas: list[Stanza] = []

    async def run(self) -> None:
        while True:
            self.stanzas.append(await self.client.next())

    def presence(self, frm: str, type: str | None = None, after: int = 0) -> list[Stanza]:
        return [s for s in self.stanzas[after:] if s.name == "presence" and s.type == type
                and (s.from_ or "").partition("/")[0] == frm]


async def test_prosody_user_and_baresip_see_each_others_presence(tmp_path: Path) -> None:
    alice, carol_uri = "alice@contoso.test", f"sip:carol@{XMPP_DOMAIN}"
    with trio.fail_after(120):
        async with e2e_lab(tmp_path, sip_users=("alice",), xmpp_users=("carol",)) as lab:
            carol = await lab.login("carol")
            inbox = Inbox(carol)
            lab.nursery.start_soon(inbox.run)
            await carol.send(f"<presence to='{alice}' type='subscribe'/>")
            await wait_for(lambda: inbox.presence(alice, "subscribed") and inbox.presence(alice, "unavailable"))

            async with start_baresip(
                tmp_path / "baresip-alice", aor=f"sip:{alice}", ip="127.0.0.42",
                registrar=(lab.sip_host, lab.sip_port), watch=(carol_uri,), publish=True,
            ) as ua:
                await ua.wait_registered()
                # baresip's first PUBLISH leaves 100 ms after start, registered or not (the gateway
                # answers 403 to an unregistered publisher, and baresip does not retry): publish again
                await ua.set_presence(True)
                # SIP → XMPP: baresip PUBLISHes "open" → carol sees alice available.
                await wait_for(lambda: inbox.presence(alice, None))
                # XMPP → SIP: baresip SUBSCRIBEs to carol → an XMPP subscribe, carol approves;
                # her presence comes back as NOTIFY/PIDF and shows in baresip's contact list.
                await wait_for(lambda: inbox.presence(alice, "subscribe"))
                await carol.send(f"<presence to='{alice}' type='subscribed'/>")
                for stanza, status in [
                    ("<presence><status>Hallo ☃</status></presence>", "Online"),
                    ("<presence><show>dnd</show><status>Nicht stören</status></presence>", "Busy"),
                    ("<presence type='unavailable'/>", "Offline"),
                    ("<presence/>", "Online"),  # carol must be available to see what follows
                ]:
                    await carol.send(stanza)
                    await ua.wait_contact_status(carol_uri, status)

                # baresip's own state changes reach carol (PUBLISH closed / open).
                seen = len(inbox.stanzas)
                await ua.set_presence(False)
                await wait_for(lambda: inbox.presence(alice, "unavailable", after=seen))
                seen = len(inbox.stanzas)
                await ua.set_presence(True)
                await wait_for(lambda: inbox.presence(alice, None, after=seen))

                # baresip stops: it un-SUBSCRIBEs inside the dialog (Request-URI = the gateway's
                # Contact): 200, and carol gets alice's unsubscribe.
                seen = len(inbox.stanzas)
                await ua.stop()
                assert ua.final_responses("SUBSCRIBE")[-1] == 200, ua.log_tail()
                await wait_for(lambda: inbox.presence(alice, "unsubscribe", after=seen))
