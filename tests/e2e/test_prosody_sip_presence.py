"""Issue 5 acceptance, presence (SPEC §4, §7; RFC 3903, RFC 3856, RFC 8048) between a user on a
real Prosody (carol@fabrikam.test) and a SIP user (alice@contoso.test, SIPp UAs).

SIP → XMPP: carol subscribes to alice; alice's UA PUBLISHes PIDF documents; carol's client sees
``<show/>`` per the SPEC §7 availability mapping and ``<status/>`` only when fabrikam.test is a
Federated partner (PublicUnverified: absent; carol is one of alice's authorized contacts there);
the same for the answer to Prosody's probe when carol signs in again.

XMPP → SIP: alice's UA SUBSCRIBEs to carol (a watcher); carol approves; every presence carol
sends becomes a NOTIFY with PIDF whose basic status, RPID activity and note follow SPEC §7; the
watcher ends the subscription with ``Expires: 0`` (NOTIFY terminated).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import trio
from harness import SIP_UA_ADDR, E2ELab, child_text, e2e_lab, expect_stanza, wait_for

from edgeproxy.policy.model import PartnerType
from edgeproxy.tokenizer import Stanza
from fixtures.c2s import Client
from fixtures.ports import free_port

ALICE = "alice@contoso.test"
CAROL = "carol@fabrikam.test"

#: SIP PUBLISH (PIDF basic, RPID activity, note) → the show carol sees (SPEC §7: busy and
#: on-the-phone are 6500 Busy → dnd; away is 15500 Away → xa; no activity is 3500 → no show;
#: closed is 18500 Offline → unavailable).
PUBLISHED = [
    ("open", "busy", "In a meeting ☕ — bis 15 Uhr", "available", "dnd"),
    ("open", "away", "Mittagspause 🍜", "available", "xa"),
    ("open", "on-the-phone", "Am Telefon: 日本", "available", "dnd"),
    ("open", "unknown", "Zurück am Platz", "available", None),
    ("closed", "unknown", "Feierabend", "unavailable", None),
]

#: XMPP presence carol sends (show, status) → the NOTIFY's PIDF (basic, RPID activity)
#: (SPEC §7: none/chat → 3500 Available, no activity; away/xa → 15500 Away → away;
#: dnd → 6500 Busy → busy; unavailable → 18500 Offline → closed).
SENT = [
    ("", "Verfügbar ✓", "open", None),
    ("chat", "Lust auf einen Chat", "open", None),
    ("away", "Kurz weg", "open", "away"),
    ("xa", "Im Urlaub 🏖", "open", "away"),
    ("dnd", "Nicht stören ⛔", "open", "busy"),
    ("unavailable", "Offline jetzt", "closed", None),
]


def _from_alice(stanza: Stanza) -> bool:
    return stanza.name == "presence" and (stanza.from_ or "").partition("/")[0] == ALICE


async def _subscribe_to_alice(carol: Client) -> None:
    """carol subscribes; the gateway approves and sends alice's current presence (offline)."""
    await carol.send(f"<presence to='{ALICE}' type='subscribe'/>")
    await expect_stanza(carol, lambda s: _from_alice(s) and s.type == "subscribed")
    await expect_stanza(carol, lambda s: _from_alice(s) and s.type == "unavailable")


@pytest.mark.parametrize("partner_type", [PartnerType.FEDERATED, PartnerType.PUBLIC_UNVERIFIED])
async def test_sip_published_presence_reaches_the_prosody_subscriber(
    tmp_path: Path, partner_type: PartnerType
) -> None:
    federated = partner_type is PartnerType.FEDERATED
    with trio.fail_after(120):
        async with e2e_lab(tmp_path, partner_type=partner_type, contacts={"alice": [CAROL]}) as lab:
            carol = await lab.login("carol")
            await lab.register("alice", free_port(SIP_UA_ADDR, udp_too=True))
            await _subscribe_to_alice(carol)
            for n, (basic, activity, note, availability, show) in enumerate(PUBLISHED):
                published = await lab.sipp(
                    "publish.xml", f"publish-{n}.log",
                    "-key", "user", "alice", "-key", "domain", "contoso.test",
                    "-key", "basic", basic, "-key", "activity", activity, "-key", "note", note,
                )  # fmt: skip
                assert "PUBLISHED etag=" in published
                presence = await expect_stanza(carol, _from_alice)
                seen = (
                    "unavailable" if presence.type == "unavailable" else (presence.type or "available"),
                    child_text(presence, "show"),
                    child_text(presence, "status"),
                )
                expected = (availability, show, note if federated else None)
                assert seen == expected, (basic, activity, presence.raw)
            # carol signs in again (a new session replaces the old one): Prosody probes alice
            # and the gateway answers with her current presence, by the same rules.
            note = "Zurück — am Telefon"
            await lab.sipp(
                "publish.xml", "publish-last.log",
                "-key", "user", "alice", "-key", "domain", "contoso.test",
                "-key", "basic", "open", "-key", "activity", "on-the-phone", "-key", "note", note,
            )  # fmt: skip
            await expect_stanza(carol, lambda s: _from_alice(s) and s.type is None)
            carol_again = await lab.login("carol")
            presence = await expect_stanza(carol_again, _from_alice)
            assert presence.type is None, presence.raw
            assert child_text(presence, "show") == "dnd"
            assert child_text(presence, "status") == (note if federated else None)


_NOTIFY = re.compile(r"^NOTIFY state=([^|]*)\|([^|]*)\|([^|]*)\|([^|]*)\|$")


def _notifies(lab: E2ELab) -> list[tuple[str, str | None, str | None, str | None]]:
    """(Subscription-State, basic, RPID activity, note) of every NOTIFY the watcher logged."""
    try:
        text = (lab.workdir / "watch.log").read_text(encoding="utf-8")
    except OSError:
        return []
    rows = []
    for line in text.splitlines():
        if match := _NOTIFY.match(line):
            state, basic, activity, note = match.groups()
            rows.append((
                state,
                basic.removeprefix("<basic>") or None,
                activity.rpartition(":")[2] if activity else None,
                note.removeprefix("<note>") or None,
            ))
    return rows


async def test_prosody_presence_reaches_the_sip_watcher_as_pidf(tmp_path: Path) -> None:
    with trio.fail_after(120):
        async with e2e_lab(tmp_path) as lab:
            carol = await lab.login("carol")
            watch_log: list[str] = []

            async def alice_watches_carol() -> None:
                watch_log.append(await lab.sipp(
                    "watch_uac.xml", "watch.log",
                    "-key", "user", "alice", "-key", "domain", "contoso.test",
                    "-key", "contact", "carol", "-key", "cdomain", "fabrikam.test",
                    "-key", "expires", "3600",
                ))  # fmt: skip

            lab.nursery.start_soon(alice_watches_carol)
            # SIP SUBSCRIBE → XMPP subscribe to carol (RFC 8048 §5); carol approves.
            await expect_stanza(
                carol, lambda s: s.name == "presence" and s.type == "subscribe"
                and (s.from_ or "").partition("/")[0] == ALICE,
            )
            await carol.send(f"<presence to='{ALICE}' type='subscribed'/>")
            # Prosody then sends carol's current presence (available, no show): NOTIFY active.
            await wait_for(lambda: ("open", None, None) in [(b, a, n) for s, b, a, n in _notifies(lab)
                                                           if s.startswith("active")])
            for show, status, basic, activity in SENT:
                if show == "unavailable":
                    await carol.send(f"<presence type='unavailable'><status>{status}</status></presence>")
                else:
                    show_el = f"<show>{show}</show>" if show else ""
                    await carol.send(f"<presence>{show_el}<status>{status}</status></presence>")
                await wait_for(lambda status=status: any(n == status for *_, n in _notifies(lab)))
                [row] = [r for r in _notifies(lab) if r[3] == status]
                assert row[0].startswith("active;expires=") and row[1:] == (basic, activity, status), (
                    show, row,
                )
            await carol.send("<presence><status>END of the test</status></presence>")
            await wait_for(lambda: bool(watch_log))
            first = _notifies(lab)[0]
            assert first[0].startswith("pending;expires=")  # RFC 6665 §4.2.1.2, before carol answered
            assert "SUBSCRIBED expires=3600" in watch_log[0]
            assert "FINAL state=terminated" in watch_log[0]
            # The watcher's unsubscribe (Expires: 0) became an XMPP unsubscribe to carol.
            await expect_stanza(
                carol, lambda s: s.name == "presence" and s.type == "unsubscribe"
                and (s.from_ or "").partition("/")[0] == ALICE,
            )
