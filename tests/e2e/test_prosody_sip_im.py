"""Issue 5 acceptance, IM: a user on a real Prosody (carol@fabrikam.test) and a SIP user agent
registered at edgeproxy's built-in registrar (alice@contoso.test, SIPp) exchange messages both
ways, with from/to, body and non-ASCII text intact (SPEC §7, RFC 7572).

Path: Prosody c2s → Prosody s2s (dialback) → edge → loopback channel → gateway → SIP MESSAGE to
alice's registered Contact; and back: SIP MESSAGE → gateway → channel → edge → S2S → Prosody.
"""

from __future__ import annotations

from pathlib import Path

import trio
from harness import SIP_UA_ADDR, child_text, e2e_lab, expect_stanza

from fixtures.ports import free_port

# Non-ASCII in three scripts, an astral-plane character and XML-special characters.
XMPP_TEXT = "Grüße aus Fabrikam — ☃ 日本語 𝄞 <&> \"quoted\""
SIP_TEXT = "Antwort aus SIP: ça va? Ωμέγα ☕ 😀 & <ok>"


async def test_prosody_user_and_sip_ua_exchange_messages_both_ways(tmp_path: Path) -> None:
    with trio.fail_after(90):
        async with e2e_lab(tmp_path) as lab:
            carol = await lab.login("carol")

            # -- XMPP → SIP: alice's UA (a SIPp UAS) registered at the built-in registrar.
            uas_port = free_port(SIP_UA_ADDR, udp_too=True)
            uas_log: list[str] = []

            async def alice_uas() -> None:
                uas_log.append(await lab.sipp("message_uas.xml", "alice-uas.log", port=uas_port))

            lab.nursery.start_soon(alice_uas)
            registered = await lab.register("alice", uas_port)
            assert "REGISTERED expires=600" in registered
            escaped = XMPP_TEXT.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            await carol.send(
                f"<message to='alice@contoso.test' type='chat' id='c1'><body>{escaped}</body></message>"
            )
            with trio.fail_after(30):
                while not uas_log:
                    await trio.sleep(0.05)
            got = uas_log[0]
            assert f"GOT MESSAGE sip:alice@{SIP_UA_ADDR}:{uas_port}|" in got
            assert "|from=sip:carol@fabrikam.test|" in got
            assert "|to=sip:alice@contoso.test|" in got
            assert "|ctype=text/plain;charset=UTF-8|" in got
            assert f"|body={XMPP_TEXT}|" in got

            # -- SIP → XMPP: alice's UA sends a MESSAGE to carol's SIP URI.
            sent = await lab.sipp(
                "message_uac.xml", "alice-uac.log", "-s", "carol",
                "-key", "from_user", "alice", "-key", "from_domain", "contoso.test",
                "-key", "domain", "fabrikam.test", "-key", "text", SIP_TEXT,
            )  # fmt: skip
            assert "STATUS 200" in sent  # the edge took it (the gateway answers once acked)
            message = await expect_stanza(carol, lambda s: s.name == "message")
            assert message.type == "chat", message.raw
            assert (message.from_ or "").partition("/")[0] == "alice@contoso.test"
            assert message.to in ("carol@fabrikam.test", "carol@fabrikam.test/interop")
            # SIPp ends the body it sends with CRLF; the gateway carries it (XML makes it LF)
            assert (child_text(message, "body") or "").rstrip("\r\n") == SIP_TEXT


async def test_a_message_to_an_unregistered_sip_user_comes_back_to_prosody_as_an_error(
    tmp_path: Path,
) -> None:
    with trio.fail_after(90):
        async with e2e_lab(tmp_path) as lab:
            carol = await lab.login("carol")
            # bob is a user of the directory but no UA of his is registered: the gateway's
            # 480 becomes recipient-unavailable (RFC 7247), from bob's address, same id.
            await carol.send(
                "<message to='bob@contoso.test' type='chat' id='c2'><body>Bist du da?</body></message>"
            )
            error = await expect_stanza(carol, lambda s: s.name == "message")
            assert error.type == "error" and error.id == "c2", error.raw
            assert (error.from_ or "").partition("/")[0] == "bob@contoso.test"
            assert b"recipient-unavailable" in error.raw
