"""The loopback channel in the running server: ``EdgeApp`` in-process on 127.0.0.1 (port 0 for the
external, internal and admin listeners), a scripted S2S partner (fabrikam.test, a real edge on
real sockets) and the gateway side played by the real ``loopback.client`` with its own
``ChannelEndpoint``; the last tests run ``run_app(role="both")`` (edge and the real gateway in one
process, the channel on loopback), with a SIPp UAC as the SIP user."""

from __future__ import annotations

from collections.abc import AsyncIterator
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
from edgeproxy.cli import build_parser
from edgeproxy.commands.ops import AdminClient
from edgeproxy.config import load_config
from edgeproxy.loopback.auth import load_channel_secret
from edgeproxy.loopback.client import run_loopback_client
from edgeproxy.loopback.endpoint import ChannelEndpoint
from edgeproxy.loopback.frames import Item, Role, Routed, StanzaKind
from edgeproxy.net.delivery import Delivery, to_bytes
from edgeproxy.ops.status import decode_status
from edgeproxy.xmpp.namespaces import NS_STANZAS
from fixtures.ports import free_port
from fixtures.sipauth import sipp_auth
from fixtures.tools import require_tool

OUTAGE_BOUND = 0.5


@dataclass
class ChannelLab:
    app: EdgeApp
    peer: Peer
    nursery: trio.Nursery
    from_edge: list[Routed] = field(default_factory=list)

    def internal(self) -> tuple[str, int]:
        assert self.app.internal_address is not None
        host, _, port = self.app.internal_address.rpartition(":")
        return host, int(port)

    async def connect_gateway(self, handling_seconds: float = 0.0) -> ChannelEndpoint:
        """The gateway side: a real client endpoint connected to the edge's internal listener
        (taking ``handling_seconds`` per batch, a slow gateway)."""

        async def on_items(items: list[Item]) -> None:
            await trio.sleep(handling_seconds)
            self.from_edge.extend(i for i in items if isinstance(i, Routed))

        # the edge's channel secret, as the real gateway loads it (issue 14)
        endpoint = ChannelEndpoint(Role.GATEWAY, on_items=on_items, on_bounce=lambda items, c: None,
                                   secret=load_channel_secret(self.app.config.state_dir))
        await self.nursery.start(run_loopback_client, endpoint, *self.internal())
        with trio.fail_after(5):
            await endpoint.wait_connected()
        return endpoint


@asynccontextmanager
async def channel_lab(tmp: Path, *, outage_bound: float = OUTAGE_BOUND,
                      drain_bound: float = 5.0) -> AsyncIterator[ChannelLab]:
    config_path = write_config(tmp)  # external and admin listeners on 127.0.0.1 port 0
    text = config_path.read_text().replace(
        'state-dir = "state"\n', 'state-dir = "state"\ninternal-listen = "127.0.0.1:0"\n'
    )
    config_path.write_text(text + f"[gateway]\noutage-bound = {outage_bound}\n")
    async with trio.open_nursery() as nursery:
        peer = await start_peer(nursery, "fabrikam.test")
        write_store(tmp / "state", configuration(
            "contoso.test", ("alice",), "contoso-secret", partner("fabrikam.test", peer.port, TCP_DIALBACK_ROW),
        ))
        app = EdgeApp(load_config(config_path), poll_interval=3600, signals=False, drain_bound=drain_bound)
        await nursery.start(app.run)
        external = app.status().listeners[0].address
        peer.federate_with("contoso.test", int(external.rpartition(":")[2]), TCP_DIALBACK_ROW, ("bob",))
        try:
            yield ChannelLab(app, peer, nursery)
        finally:
            nursery.cancel_scope.cancel()


async def wait_for(predicate, timeout: float = 10) -> None:  # type: ignore[no-untyped-def]
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.02)


def _errors(received: list[Delivery]) -> list[Delivery]:
    return [d for d in received if d.type == "error"]


async def test_status_shows_external_and_internal_listeners_and_the_channel_state(tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with channel_lab(tmp_path) as lab:
            admin = lab.app.admin_endpoint
            assert admin is not None
            config = msgspec.structs.replace(
                lab.app.config, admin=msgspec.structs.replace(lab.app.config.admin, listen=admin.address)
            )
            client = AdminClient(config, timeout=5)

            async def status():  # type: ignore[no-untyped-def]
                reply = await trio.to_thread.run_sync(client.request, "GET", "/status")
                assert reply.status == 200
                return decode_status(reply.body)

            before = await status()
            roles = {listener.role.value: listener.address for listener in before.listeners}
            assert roles["external"].startswith("127.0.0.1:") and not roles["external"].endswith(":0")
            assert roles["internal"] == lab.app.internal_address
            assert roles["internal"].startswith("127.0.0.1:") and not roles["internal"].endswith(":0")
            assert before.channel.state.value == "not-connected"

            await lab.connect_gateway()
            after = await status()
            assert after.channel.state.value == "connected"


async def test_a_stanza_from_an_s2s_peer_reaches_the_gateway_over_the_channel(tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with channel_lab(tmp_path) as lab:
            await lab.connect_gateway()
            await lab.peer.send(message("bob@fabrikam.test", "alice@contoso.test", body="grüß dich", id="in1"))
            await wait_for(lambda: len(lab.from_edge) == 1)
            item = lab.from_edge[0]
            assert (item.kind, item.from_, item.to) == (StanzaKind.MESSAGE, "bob@fabrikam.test", "alice@contoso.test")
            assert "grüß dich".encode() in item.raw and b"in1" in item.raw


async def test_a_stanza_from_the_gateway_reaches_the_s2s_peer(tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with channel_lab(tmp_path) as lab:
            gateway = await lab.connect_gateway()
            stanza = message("alice@contoso.test", "bob@fabrikam.test", body="hi from SIP", id="out1")
            assert gateway.submit(StanzaKind.MESSAGE, "alice@contoso.test", "bob@fabrikam.test", "chat", "out1",
                                  to_bytes(stanza))
            got: list[Delivery] = []
            await wait_for(lambda: bool(got.extend(lab.peer.received()) or got))
            assert [(d.from_jid, d.to_jid, d.kind) for d in got] == [
                ("alice@contoso.test", "bob@fabrikam.test", "message")
            ]
            assert b"hi from SIP" in got[0].raw


async def test_the_gateways_bytes_go_to_the_peer_as_they_are_and_only_one_stanza_of_them(
    tmp_path: Path,
) -> None:
    """A stanza the policy does not change is forwarded with the gateway's bytes (no second
    serialization); of bytes that are more than one stanza only the first stanza's go on, as
    the tokenizer checked them: nothing is smuggled behind it."""
    exact = (b"<message from='alice@contoso.test' to='bob@fabrikam.test' type='chat' id='raw1'>"
             b"<body>as the gateway wrote it</body></message>")
    smuggled = (b"<message from='alice@contoso.test' to='bob@fabrikam.test' type='chat' id='raw2'>"
                b"<body>first</body></message><message to='bob@fabrikam.test' id='raw3'/>")
    with trio.fail_after(20):
        async with channel_lab(tmp_path) as lab:
            gateway = await lab.connect_gateway()
            for id, raw in (("raw1", exact), ("raw2", smuggled)):
                assert gateway.submit(StanzaKind.MESSAGE, "alice@contoso.test", "bob@fabrikam.test",
                                      "chat", id, raw)
            got: list[Delivery] = []
            await wait_for(lambda: bool(got.extend(lab.peer.received()) or len(got) >= 2))
            await trio.sleep(0.3)  # a third stanza would arrive now
            got.extend(lab.peer.received())
    assert got[0].raw == exact
    assert len(got) == 2 and b"id='raw3'" not in got[1].raw and b'id="raw3"' not in got[1].raw
    assert got[1].raw == smuggled[: smuggled.index(b"</message>") + len(b"</message>")]


async def test_without_a_gateway_past_the_outage_bound_the_peer_gets_an_error_stanza(tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with channel_lab(tmp_path) as lab:
            await lab.peer.send(message("bob@fabrikam.test", "alice@contoso.test", id="lost1"))
            got: list[Delivery] = []
            await wait_for(lambda: bool(got.extend(lab.peer.received()) or _errors(got)))
            first = _errors(got)
            assert len(first) == 1 and (first[0].from_jid, first[0].to_jid) == ("alice@contoso.test", "bob@fabrikam.test")
            assert b"remote-server-timeout" in first[0].raw and NS_STANZAS.encode() in first[0].raw
            assert b"lost1" in first[0].raw

            # Still no gateway: the next stanza is refused at once.
            await lab.peer.send(message("bob@fabrikam.test", "alice@contoso.test", id="lost2"))
            await wait_for(lambda: bool(got.extend(lab.peer.received()) or len(_errors(got)) == 2), timeout=OUTAGE_BOUND * 4)
            second = _errors(got)[1]
            assert b"service-unavailable" in second.raw and b"lost2" in second.raw
            assert lab.app.status().channel.state.value == "not-connected"


async def test_stop_flushes_the_channel_to_a_slow_gateway_within_the_drain_bound(tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with channel_lab(tmp_path, outage_bound=30, drain_bound=3) as lab:
            await lab.connect_gateway(handling_seconds=0.5)
            await lab.peer.send(message("bob@fabrikam.test", "alice@contoso.test", id="s1"))
            await wait_for(lambda: lab.app.channel is not None and lab.app.channel.statistics().queued == 1)
            started = trio.current_time()
            lab.app.request_stop()
            await wait_for(lambda: lab.app.status().channel.state.value == "draining", timeout=1)
            await lab.app.stopped.wait()
            assert trio.current_time() - started < 3
            assert [item.id for item in lab.from_edge] == [""] and b"s1" in lab.from_edge[0].raw
            assert _errors(lab.peer.received()) == []


async def test_stop_without_a_gateway_bounces_what_the_channel_still_holds(tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with channel_lab(tmp_path, outage_bound=30, drain_bound=3) as lab:
            # Bring up contoso's outbound stream to fabrikam (a refusal travels on it): once the
            # stop has closed the listener, a new dialback link could not be verified.
            got: list[Delivery] = []
            await lab.peer.send(message("bob@fabrikam.test", "nobody@contoso.test", id="refused"))
            await wait_for(lambda: bool(got.extend(lab.peer.received()) or _errors(got)))
            got.clear()
            await lab.peer.send(message("bob@fabrikam.test", "alice@contoso.test", id="held1"))
            await wait_for(lambda: lab.app.channel is not None and lab.app.channel.statistics().queued == 1)
            lab.app.request_stop()
            await lab.app.stopped.wait()
            assert lab.app.channel is not None
            assert lab.app.channel.bounced == 1 and lab.app.channel.statistics().queued == 0
            # The error is written on the open stream unless the stream's own shutdown wins the
            # race with the pool's last write (net.edge drain), in which case it is dropped after
            # logging (an error is never answered with an error): not asserted here.
            got.extend(lab.peer.received())
            for error in _errors(got):
                assert b"service-unavailable" in error.raw and b"held1" in error.raw


# -- edge and the real gateway in one process (edgeproxy serve --role both) --------------------

ALICE_IP = "127.0.0.3"


@asynccontextmanager
async def both_roles(tmp: Path) -> AsyncIterator[tuple[EdgeApp, Peer, str]]:
    """``run_app(role="both")`` for contoso.test with fabrikam.test as a scripted partner; yields
    the app, the peer and the gateway's SIP address."""
    sip = f"127.0.0.1:{free_port('127.0.0.1', udp_too=True)}"
    config_path = write_config(tmp)
    text = config_path.read_text().replace(
        'state-dir = "state"\n', 'state-dir = "state"\ninternal-listen = "127.0.0.1:0"\n'
    )
    config_path.write_text(text + f'[gateway]\nsip-listen = ["{sip}"]\n')
    async with trio.open_nursery() as nursery:
        peer = await start_peer(nursery, "fabrikam.test")
        write_store(tmp / "state", configuration(
            "contoso.test", ("alice",), "contoso-secret", partner("fabrikam.test", peer.port, TCP_DIALBACK_ROW),
        ))
        app = await nursery.start(partial(run_app, load_config(config_path), role="both", signals=False))
        assert app is not None
        external = app.status().listeners[0].address
        peer.federate_with("contoso.test", int(external.rpartition(":")[2]), TCP_DIALBACK_ROW, ("bob",))
        try:
            yield app, peer, sip
        finally:
            nursery.cancel_scope.cancel()


async def test_both_roles_a_peer_message_to_an_unregistered_sip_user_comes_back_as_recipient_unavailable(
    tmp_path: Path,
) -> None:
    with trio.fail_after(20):
        async with both_roles(tmp_path) as (app, peer, _sip):
            await wait_for(lambda: app.status().channel.state.value == "connected")
            await peer.send(message("bob@fabrikam.test", "alice@contoso.test", id="u1"))
            got: list[Delivery] = []
            await wait_for(lambda: bool(got.extend(peer.received()) or _errors(got)))
            [error] = _errors(got)
            assert (error.from_jid, error.to_jid) == ("alice@contoso.test", "bob@fabrikam.test")
            assert b"recipient-unavailable" in error.raw and b"u1" in error.raw


async def test_both_roles_a_sip_message_reaches_the_s2s_peer(tmp_path: Path) -> None:
    sipp = require_tool("sipp", "sip-tester")
    scenario = Path(__file__).resolve().parents[1] / "gateway" / "sipp" / "message_uac.xml"
    with trio.fail_after(25):
        async with both_roles(tmp_path) as (app, peer, sip):
            await wait_for(lambda: app.status().channel.state.value == "connected")
            text = "Grüße aus SIP ☃"
            keys = ["-s", "bob", "-key", "from_user", "alice", "-key", "from_domain", "contoso.test",
                    "-key", "domain", "fabrikam.test", "-key", "text", text]
            done = await trio.run_process(
                [sipp, "-sf", str(scenario), "-i", ALICE_IP, "-p", str(free_port(ALICE_IP, udp_too=True)),
                 "-m", "1", "-nostdin", "-timeout", "15", "-timeout_error", "-default_behaviors", "all,-bye",
                 *sipp_auth(scenario, keys), *keys, sip],  # issue 14: alice answers the 407
                check=False, capture_stdout=True, capture_stderr=True,
            )
            assert done.returncode == 0, done.stderr.decode()[-800:]
            got: list[Delivery] = []
            await wait_for(lambda: bool(got.extend(peer.received()) or got))
            [item] = got
            assert (item.from_jid.partition("/")[0], item.to_jid, item.kind) == (
                "alice@contoso.test", "bob@fabrikam.test", "message"
            )
            assert text.encode() in item.raw


def test_serve_takes_a_role_both_by_default() -> None:
    parser = build_parser()
    assert parser.parse_args(["serve"]).role == "both"
    assert parser.parse_args(["serve", "--role", "gateway"]).role == "gateway"
    with pytest.raises(SystemExit):
        parser.parse_args(["serve", "--role", "sip"])
