"""Issue 5 acceptance, PublicUnverified partners (SPEC §4): a stranger's message is refused;
after the SIP user adds the contact it is delivered, and the pending subscription is approved.

fabrikam.test (a real Prosody) is a PublicUnverified partner and carol@fabrikam.test is not one of
alice@contoso.test's contacts. "The SIP user adds the contact" is alice's UA SUBSCRIBing
(Event: presence) to sip:carol@fabrikam.test: the gateway's presence agent approves carol's
pending request and its contact hook writes the store, which the edge applies.
"""

from __future__ import annotations

from pathlib import Path

import trio
from harness import SIP_UA_ADDR, E2ELab, e2e_lab, expect_stanza, wait_for

from edgeproxy.policy.model import PartnerType
from edgeproxy.tokenizer import Stanza
from fixtures.c2s import Client
from fixtures.ports import free_port

ALICE = "alice@contoso.test"
CAROL = "carol@fabrikam.test"
REFUSED_TEXT = "Hallo, kennen wir uns? 👋"
DELIVERED_TEXT = "Danke fürs Hinzufügen! ✓"


def _from_alice(stanza: Stanza, name: str, type: str | None = None) -> bool:
    return (stanza.name == name and stanza.type == type
            and (stanza.from_ or "").partition("/")[0] == ALICE)


def _contacts(lab: E2ELab) -> frozenset[str]:
    return lab.snapshot().users[ALICE].contacts


def _pending(lab: E2ELab) -> tuple[str, ...]:
    return lab.snapshot().users[ALICE].user.pending


async def _message(carol: Client, id: str, text: str) -> None:
    await carol.send(f"<message to='{ALICE}' type='chat' id='{id}'><body>{text}</body></message>")


async def test_a_stranger_is_refused_until_the_sip_user_adds_the_contact(tmp_path: Path) -> None:
    with trio.fail_after(120):
        async with e2e_lab(tmp_path, partner_type=PartnerType.PUBLIC_UNVERIFIED) as lab:
            assert CAROL not in _contacts(lab)
            carol = await lab.login("carol")
            # alice's UA: a UAS that takes one MESSAGE, registered at the built-in registrar.
            uas_port = free_port(SIP_UA_ADDR, udp_too=True)
            uas_log: list[str] = []

            async def alice_uas() -> None:
                uas_log.append(await lab.sipp("message_uas.xml", "alice-uas.log", port=uas_port))

            lab.nursery.start_soon(alice_uas)
            await lab.register("alice", uas_port)

            # 1. The stranger's message is refused with an error from alice's address.
            await _message(carol, "stranger-1", REFUSED_TEXT)
            error = await expect_stanza(carol, lambda s: _from_alice(s, "message", "error"))
            assert error.id == "stranger-1"
            assert b"service-unavailable" in error.raw

            # 2. The stranger's subscription request is kept pending: stored, not answered, and
            # it authorizes nothing (a second message is refused too; its error is the barrier
            # before which any answer to the subscribe would have arrived).
            await carol.send(f"<presence to='{ALICE}' type='subscribe'/>")
            await wait_for(lambda: CAROL in _pending(lab))
            await _message(carol, "stranger-2", REFUSED_TEXT)
            seen: list[Stanza] = []
            await expect_stanza(carol, lambda s: bool(seen.append(s)) or _from_alice(s, "message", "error"))
            assert seen[-1].id == "stranger-2"
            assert not [s for s in seen if _from_alice(s, "presence", s.type)], [s.raw for s in seen]

            # 3. alice adds carol: SIP SUBSCRIBE to carol's URI (a watcher of carol's presence).
            watch_log: list[str] = []

            async def alice_adds_carol() -> None:
                watch_log.append(await lab.sipp(
                    "watch_uac.xml", "watch.log",
                    "-key", "user", "alice", "-key", "domain", "contoso.test",
                    "-key", "contact", "carol", "-key", "cdomain", "fabrikam.test",
                    "-key", "expires", "3600",
                ))  # fmt: skip

            lab.nursery.start_soon(alice_adds_carol)
            # The pending request is approved (with alice's presence: she never published,
            # so offline), and alice's own subscription request reaches carol.
            await expect_stanza(carol, lambda s: _from_alice(s, "presence", "subscribed"))
            await expect_stanza(carol, lambda s: _from_alice(s, "presence", "subscribe"))
            await wait_for(lambda: CAROL in _contacts(lab) and CAROL not in _pending(lab))

            # 4. carol's message is delivered now, from/to and text intact.
            await _message(carol, "known-1", DELIVERED_TEXT)
            await wait_for(lambda: bool(uas_log))
            got = uas_log[0]
            assert f"GOT MESSAGE sip:alice@{SIP_UA_ADDR}:{uas_port}|" in got
            assert "|from=sip:carol@fabrikam.test|to=sip:alice@contoso.test|" in got
            assert f"|body={DELIVERED_TEXT}|" in got  # the refused message never reached the UA

            # carol approves alice in turn: her presence reaches alice's UA as a NOTIFY (the
            # note too: SPEC §4 withholds the status of local users from public partners, not
            # the partner's own), then the watcher ends its subscription.
            await carol.send(f"<presence to='{ALICE}' type='subscribed'/>")
            await carol.send("<presence><show>chat</show><status>END — bis bald</status></presence>")
            await wait_for(lambda: bool(watch_log))
            assert "|<basic>open||<note>END — bis bald|" in watch_log[0]
            assert "FINAL state=terminated" in watch_log[0]
