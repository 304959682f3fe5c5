"""The gateway's contact hooks in the running server (SPEC §4, issue 5): a PublicUnverified
contact may message or subscribe a local user only once the user has added it.

``run_app`` runs in-process for contoso.test — role ``both`` (edge and gateway in one process),
or roles ``edge`` and ``gateway`` side by side as two separate halves that share only the store
and the loopback channel — with fabrikam.test as a scripted S2S partner (a real edge on real
sockets, ``_lab.start_peer``) whose user bob is the stranger. Alice is a SIP user played by SIPp
(Debian package sip-tester; with CI=true a missing sipp fails the test): a REGISTER binding her
UAS (which receives the MESSAGE), and a SUBSCRIBE to bob's URI, which is "alice adds bob".
Addresses: gateway SIP listener and internal channel on 127.0.0.50, alice's UAS on 127.0.0.51,
her UACs on 127.0.0.52; the S2S listeners stay on 127.0.0.1 (``_lab``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import msgspec
import pytest
import trio
from _lab import (
    TCP_DIALBACK_ROW,
    Peer,
    configuration,
    message,
    partner,
    start_peer,
    write_config,
    write_store,
)

from edgeproxy.app import EdgeApp, run_app
from edgeproxy.config import load_config
from edgeproxy.gateway.directory import ContactRecorder
from edgeproxy.net.delivery import Delivery
from edgeproxy.ops.telemetry import Telemetry
from edgeproxy.policy.holder import SnapshotHolder
from edgeproxy.policy.model import PartnerType, User
from edgeproxy.policy.store import Store
from edgeproxy.tokenizer import Element
from edgeproxy.xmpp.namespaces import NS_SERVER
from fixtures.ports import free_port
from fixtures.sipauth import sipp_auth
from fixtures.tools import require_tool

GATEWAY_IP, UAS_IP, UAC_IP = "127.0.0.50", "127.0.0.51", "127.0.0.52"
SCENARIOS = Path(__file__).resolve().parents[1] / "gateway" / "sipp"
ALICE, BOB = "alice@contoso.test", "bob@fabrikam.test"


def presence(frm: str, to: str, type: str | None = None) -> Element:
    attrs = {"from": frm, "to": to}
    if type is not None:
        attrs["type"] = type
    return Element("presence", NS_SERVER, attrs)


async def wait_for(predicate: Callable[[], object], timeout: float = 20) -> None:
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.02)


def stored_user(state_dir: Path, sip: str = f"sip:{ALICE}") -> User:
    with Store.open(state_dir) as store:
        _, config = store.read()
    return next(u for u in config.users if u.sip == sip)


async def wait_for_store(state_dir: Path, predicate: Callable[[User], bool], timeout: float = 20) -> User:
    with trio.fail_after(timeout):
        while True:
            user = await trio.to_thread.run_sync(stored_user, state_dir)
            if predicate(user):
                return user
            await trio.sleep(0.05)


@dataclass
class Inbox:
    """What the partner has received from contoso.test, accumulated."""

    peer: Peer
    got: list[Delivery] = field(default_factory=list)

    def poll(self) -> list[Delivery]:
        self.got.extend(self.peer.received())
        return self.got

    async def wait(self, predicate: Callable[[Delivery], bool]) -> Delivery:
        found: list[Delivery] = []
        await wait_for(lambda: found.extend(d for d in self.poll() if predicate(d)) or found)
        return found[0]

    def presences(self, type: str | None) -> list[Delivery]:
        return [d for d in self.poll() if d.kind == "presence" and d.type == type]


@dataclass
class Lab:
    app: EdgeApp
    peer: Peer
    inbox: Inbox
    sip: str  # the gateway's SIP listener, host:port
    state_dir: Path
    nursery: trio.Nursery


@asynccontextmanager
async def contact_lab(tmp: Path, partner_type: PartnerType, *, split: bool = False) -> AsyncIterator[Lab]:
    """contoso.test with alice, fabrikam.test (of ``partner_type``) with bob; ``split``: the
    edge and the gateway as separate ``run_app`` roles (the gateway with its own store view)."""
    sip = f"{GATEWAY_IP}:{free_port(GATEWAY_IP, udp_too=True)}"
    internal = f"{GATEWAY_IP}:{free_port(GATEWAY_IP, udp_too=True) if split else 0}"
    config_path = write_config(tmp)
    text = config_path.read_text().replace(
        'state-dir = "state"\n', f'state-dir = "state"\ninternal-listen = "{internal}"\n'
    )
    config_path.write_text(text + f'[gateway]\nsip-listen = ["{sip}"]\n')
    config = load_config(config_path)
    async with trio.open_nursery() as nursery:
        peer = await start_peer(nursery, "fabrikam.test")
        row = msgspec.structs.replace(partner("fabrikam.test", peer.port, TCP_DIALBACK_ROW), type=partner_type)
        write_store(tmp / "state", configuration("contoso.test", ("alice",), "contoso-secret", row))
        if split:
            app = await nursery.start(partial(run_app, config, role="edge", signals=False))
            await nursery.start(partial(run_app, config, role="gateway"))
        else:
            app = await nursery.start(partial(run_app, config, role="both", signals=False))
        assert app is not None
        external = app.status().listeners[0].address
        peer.federate_with("contoso.test", int(external.rpartition(":")[2]), TCP_DIALBACK_ROW, ("bob",))
        await wait_for(lambda: app.status().channel.state.value == "connected")
        try:
            yield Lab(app, peer, Inbox(peer), sip, tmp / "state", nursery)
        finally:
            nursery.cancel_scope.cancel()


def sipp_command(scenario: str, ip: str, *keys: tuple[str, str], log: Path, remote: str | None = None,
                 timeout: int = 15, port: int | None = None) -> list[str]:
    cmd = [require_tool("sipp", "sip-tester"), "-sf", str(SCENARIOS / scenario), "-i", ip,
           "-p", str(port or free_port(ip, udp_too=True)), "-m", "1", "-nostdin", "-timeout", str(timeout), "-timeout_error",
           "-default_behaviors", "all,-bye", "-trace_logs", "-log_file", str(log)]
    for name, value in keys:
        cmd += ["-key", name, value]
    cmd += sipp_auth(SCENARIOS / scenario, cmd)  # issue 14: the UAC answers the 401/407
    return cmd + ([remote] if remote else [])


async def run_sipp(cmd: list[str], log: Path) -> str:
    done = await trio.run_process(cmd, check=False, capture_stdout=True, capture_stderr=True)
    text = log.read_text(encoding="utf-8") if log.exists() else ""
    assert done.returncode == 0, f"sipp failed ({done.returncode}): {done.stderr.decode()[-800:]}\n{text}"
    return text


class Background:
    """A SIPp run in the background; ``await result()`` for its log."""

    def __init__(self, nursery: trio.Nursery, cmd: list[str], log: Path) -> None:
        self._done = trio.Event()
        self._text: list[str] = []
        self._error: list[BaseException] = []

        async def run() -> None:
            try:
                self._text.append(await run_sipp(cmd, log))
            except BaseException as exc:  # reported by result(), not by the lab's nursery
                self._error.append(exc)
                if not isinstance(exc, Exception):
                    raise
            finally:
                self._done.set()

        nursery.start_soon(run)

    async def result(self, timeout: float = 30) -> str:
        with trio.fail_after(timeout):
            await self._done.wait()
        if self._error:
            raise self._error[0]
        return self._text[0]


# -- PublicUnverified: refused, kept pending, authorized by the SIP user's SUBSCRIBE -------------


@pytest.mark.parametrize("split", [False, True], ids=["role-both", "roles-edge-and-gateway"])
async def test_a_public_unverified_stranger_is_refused_until_the_sip_user_subscribes_to_it(
    tmp_path: Path, split: bool,
) -> None:
    require_tool("sipp", "sip-tester")
    with trio.fail_after(60):
        async with contact_lab(tmp_path, PartnerType.PUBLIC_UNVERIFIED, split=split) as lab:
            peer, inbox = lab.peer, lab.inbox
            uas_port = free_port(UAS_IP, udp_too=True)
            uas_log = tmp_path / "uas.log"
            # Alice's UA, which takes exactly one MESSAGE (it must be the authorized one).
            uas = Background(lab.nursery, sipp_command(
                "message_uas.xml", UAS_IP, log=uas_log, timeout=50, port=uas_port,
            ), uas_log)

            # (a) The stranger's message is refused: an error to the sender, nothing stored.
            await peer.send(message(BOB, ALICE, body="hello stranger", id="a1"))
            error = await inbox.wait(lambda d: d.type == "error")
            assert (error.kind, error.from_jid, error.to_jid) == ("message", ALICE, BOB)
            assert b"service-unavailable" in error.raw and b"a1" in error.raw
            user = await trio.to_thread.run_sync(stored_user, lab.state_dir)
            assert (user.contacts, user.pending) == ((), ())

            # (b) Its subscribe is kept pending: the store records the request, no "subscribed".
            await peer.send(presence(BOB, ALICE, "subscribe"))
            user = await wait_for_store(lab.state_dir, lambda u: BOB in u.pending)
            assert BOB not in user.contacts
            # An unauthorized probe is answered by the edge's router with "unsubscribed" (never
            # delivered); it travels on the same stream after any reply to the subscribe.
            await peer.send(presence(BOB, ALICE, "probe"))
            await inbox.wait(lambda d: d.kind == "presence" and d.type == "unsubscribed")
            assert inbox.presences("subscribed") == []

            # (c) Alice registers her UA and subscribes to bob: "alice adds bob".
            await run_sipp(sipp_command(
                "register.xml", UAC_IP, ("user", "alice"), ("domain", "contoso.test"),
                ("contact_host", UAS_IP), ("contact_port", str(uas_port)), ("expires", "600"),
                log=tmp_path / "register.log", remote=lab.sip,
            ), tmp_path / "register.log")
            watcher_log = tmp_path / "subscribe.log"
            watcher = Background(lab.nursery, sipp_command(
                "subscribe_uac.xml", UAC_IP, ("user", "alice"), ("domain", "contoso.test"),
                ("contact", "bob"), ("cdomain", "fabrikam.test"), ("expires", "600"),
                log=watcher_log, remote=lab.sip, timeout=40,
            ), watcher_log)
            user = await wait_for_store(lab.state_dir, lambda u: BOB in u.contacts)
            assert BOB not in user.pending
            # The pending request is approved: exactly one "subscribed" (then alice's presence and
            # her own subscribe, in that order on the channel: the subscribe is the barrier).
            await inbox.wait(lambda d: d.kind == "presence" and d.type == "subscribe")
            assert [d.from_jid for d in inbox.presences("subscribed")] == [ALICE]

            # The edge's snapshot follows the store (at once in role both, by its poll otherwise),
            # and the stranger's next message reaches alice's UA.
            await wait_for(lambda: BOB in lab.app.holder.snapshot.users[ALICE].contacts)  # type: ignore[union-attr]
            await peer.send(message(BOB, ALICE, body="now we are friends", id="c1"))
            got = await uas.result(timeout=40)
            assert "from=sip:bob@fabrikam.test" in got and "now we are friends" in got
            assert "hello stranger" not in got
            assert [d for d in inbox.poll() if d.type == "error" and b"c1" in d.raw] == []

            # Alice's subscription: fabrikam's edge approves her subscribe by itself (bob is on a
            # Federated partner there), which makes it active; bob's "unsubscribed" ends it.
            await wait_for(lambda: "NOTIFY2" in (watcher_log.read_text() if watcher_log.exists() else ""))
            await peer.send(presence(BOB, ALICE, "unsubscribed"))
            notifies = await watcher.result(timeout=40)
            assert "NOTIFY1 state=pending" in notifies and "NOTIFY2 state=active" in notifies
            assert "NOTIFY3 state=terminated;reason=rejected" in notifies


# -- one "subscribed", not two ------------------------------------------------------------------


@pytest.mark.parametrize("split", [False, True], ids=["role-both", "roles-edge-and-gateway"])
async def test_a_federated_subscribe_is_answered_by_exactly_one_subscribed(tmp_path: Path, split: bool) -> None:
    with trio.fail_after(30):
        async with contact_lab(tmp_path, PartnerType.FEDERATED, split=split) as lab:
            await lab.peer.send(presence(BOB, ALICE, "subscribe"))
            # The presence agent approves, then sends alice's current presence (offline) on the
            # same channel and stream: once that has arrived, every "subscribed" has too.
            await lab.inbox.wait(lambda d: d.kind == "presence" and d.type == "unavailable")
            assert [(d.from_jid, d.to_jid) for d in lab.inbox.presences("subscribed")] == [(ALICE, BOB)]
            # Federated needs no authorization: nothing was written to the store.
            user = await trio.to_thread.run_sync(stored_user, lab.state_dir)
            assert (user.contacts, user.pending) == ((), ())


async def test_without_a_gateway_channel_the_router_answers_the_subscribe_itself(tmp_path: Path) -> None:
    """An in-memory delivery (tests, the load generator) has nothing behind it that answers."""
    delivered: list[Delivery] = []
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            peer = await start_peer(nursery, "fabrikam.test")
            write_store(tmp_path / "state", configuration(
                "contoso.test", ("alice",), "contoso-secret", partner("fabrikam.test", peer.port, TCP_DIALBACK_ROW),
            ))
            app = EdgeApp(load_config(write_config(tmp_path)), signals=False, admin=False,
                          on_delivery=delivered.append)
            await nursery.start(app.run)
            external = app.status().listeners[0].address
            peer.federate_with("contoso.test", int(external.rpartition(":")[2]), TCP_DIALBACK_ROW, ("bob",))
            inbox = Inbox(peer)
            await peer.send(presence(BOB, ALICE, "subscribe"))
            await wait_for(lambda: delivered)
            assert [(d.kind, d.type, d.from_jid) for d in delivered] == [("presence", "subscribe", BOB)]
            await inbox.wait(lambda d: d.type == "subscribed")
            # A refusal on the same stream is the barrier: no second "subscribed" before it.
            await peer.send(message(BOB, "nobody@contoso.test", id="barrier"))
            await inbox.wait(lambda d: d.type == "error")
            assert len(inbox.presences("subscribed")) == 1
            nursery.cancel_scope.cancel()


# -- the recorder on its own: idempotent, and a failure is an event, never fatal ----------------


class RecordedTelemetry(Telemetry):
    def __init__(self) -> None:
        super().__init__()
        self.events: list[tuple[str, dict[str, object]]] = []

    def emit(self, event, /, **fields: object) -> None:  # type: ignore[no-untyped-def]
        self.events.append((event.id, fields))


def alice_store(state_dir: Path) -> None:
    write_store(state_dir, configuration(
        "contoso.test", ("alice",), "contoso-secret", partner("fabrikam.test", 5269, TCP_DIALBACK_ROW),
    ))


async def test_the_recorder_stores_pending_then_contact_and_skips_what_the_store_already_shows(
    tmp_path: Path,
) -> None:
    state = tmp_path / "state"
    alice_store(state)
    holder = SnapshotHolder.open(state, ["contoso.test"])

    async def refresh() -> None:
        await trio.to_thread.run_sync(holder.reload_if_changed)

    telemetry = RecordedTelemetry()
    recorder = ContactRecorder(state, ["contoso.test"], policy=lambda: holder.snapshot,
                               on_stored=refresh, telemetry=telemetry)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            await nursery.start(recorder.run)
            recorder.on_pending(ALICE, BOB)
            await wait_for(lambda: recorder.stored == 1)
            assert stored_user(state).pending == (BOB,)
            recorder.on_pending(ALICE, BOB)  # already in the (refreshed) snapshot: not written
            recorder.on_contact_added(ALICE, BOB)
            await wait_for(lambda: recorder.stored == 2)
            user = stored_user(state)
            assert (user.contacts, user.pending) == ((BOB,), ())
            generation = holder.snapshot.generation
            recorder.on_contact_added(ALICE, BOB)  # idempotent: already a contact
            recorder.on_pending(ALICE, BOB)  # a contact's request is never pending again
            await trio.sleep(0.2)  # nothing queued: the skip is synchronous (not a timing assertion)
            assert recorder.stored == 2 and holder.snapshot.generation == generation
            assert telemetry.events == []
            nursery.cancel_scope.cancel()
    holder.close()


async def test_a_change_that_cannot_be_stored_is_an_event_and_the_recorder_goes_on(tmp_path: Path) -> None:
    state = tmp_path / "state"
    alice_store(state)
    telemetry = RecordedTelemetry()
    recorder = ContactRecorder(state, ["contoso.test"], telemetry=telemetry)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            await nursery.start(recorder.run)
            recorder.on_contact_added("nobody@contoso.test", BOB)  # no such user in the store
            recorder.on_contact_added(ALICE, BOB)
            await wait_for(lambda: recorder.stored + recorder.failed == 2)
            assert (recorder.stored, recorder.failed) == (1, 1)
            [(event_id, fields)] = telemetry.events
            assert event_id == "EP8006"
            assert (fields["change"], fields["contact"], fields["user"]) == (
                "contact", BOB, "sip:nobody@contoso.test"
            )
            assert "no user" in str(fields["error"])
            assert stored_user(state).contacts == (BOB,)
            nursery.cancel_scope.cancel()


async def test_an_unusable_state_dir_is_an_event_per_change_not_a_crash(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "state"
    not_a_dir.write_text("a file where the state directory should be")
    telemetry = RecordedTelemetry()
    recorder = ContactRecorder(not_a_dir, ["contoso.test"], telemetry=telemetry)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            await nursery.start(recorder.run)
            recorder.on_pending(ALICE, BOB)
            recorder.on_contact_added(ALICE, BOB)
            await wait_for(lambda: recorder.failed == 2)
            assert [e for e, _ in telemetry.events] == ["EP8006", "EP8006"]
            nursery.cancel_scope.cancel()


def test_a_full_queue_reports_the_change_instead_of_blocking(tmp_path: Path) -> None:
    telemetry = RecordedTelemetry()
    recorder = ContactRecorder(tmp_path / "state", ["contoso.test"], telemetry=telemetry, max_queued=1)
    recorder.on_pending(ALICE, BOB)  # queued (no writer task running)
    recorder.on_contact_added(ALICE, BOB)  # does not fit: reported, never blocks the caller
    assert recorder.failed == 1
    [(event_id, fields)] = telemetry.events
    assert event_id == "EP8006" and "1 changes already wait" in str(fields["error"])
