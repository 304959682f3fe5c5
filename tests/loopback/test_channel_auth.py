"""The channel secret proven in the opening (issue 14): the proof itself (pure), then the real
``serve_loopback`` / ``run_loopback_client`` and raw WebSocket peers on 127.0.0.1 (port 0), then
the edge's start with a secret file it must refuse."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from functools import partial
from pathlib import Path

import pytest
import trio
from trio_websocket import open_websocket

from edgeproxy.app import EdgeApp
from edgeproxy.config import parse_config
from edgeproxy.errors import ConfigError
from edgeproxy.loopback.auth import (
    AUTH_FAILED,
    ChannelAuthError,
    channel_proof,
    check_proof,
    load_channel_secret,
)
from edgeproxy.loopback.client import LOOPBACK_RESOURCE, run_loopback_client
from edgeproxy.loopback.endpoint import CLOSE_POLICY_VIOLATION, ChannelEndpoint
from edgeproxy.loopback.frames import (
    Auth,
    Hello,
    Item,
    Role,
    Routed,
    StanzaBatch,
    StanzaKind,
    decode_frame,
    encode_frame,
)
from edgeproxy.loopback.server import serve_loopback
from edgeproxy.ops.events import EventLog
from edgeproxy.secretfiles import SecretFileError, channel_secret_path
from fixtures.channel_peer import closed_with, hello, raw_opening

HOST = "127.0.0.1"
SECRET = b"the-right-secret"
WRONG = b"not-the-secret"


# -- the proof (pure) ------------------------------------------------------------------------


@pytest.mark.parametrize("prover", [Role.EDGE, Role.GATEWAY])
def test_a_proof_made_with_the_right_secret_is_accepted(prover: Role) -> None:
    edge, gateway = hello(Role.EDGE), hello(Role.GATEWAY)
    check_proof(SECRET, prover, edge, gateway, channel_proof(SECRET, prover, edge, gateway))


@pytest.mark.parametrize("prover", [Role.EDGE, Role.GATEWAY])
def test_a_proof_made_with_a_wrong_secret_is_refused(prover: Role) -> None:
    edge, gateway = hello(Role.EDGE), hello(Role.GATEWAY)
    with pytest.raises(ChannelAuthError, match="wrong proof"):
        check_proof(SECRET, prover, edge, gateway, channel_proof(WRONG, prover, edge, gateway))


@pytest.mark.parametrize("prover", [Role.EDGE, Role.GATEWAY])
def test_an_empty_proof_is_refused(prover: Role) -> None:
    with pytest.raises(ChannelAuthError, match="no proof"):
        check_proof(SECRET, prover, hello(Role.EDGE), hello(Role.GATEWAY), b"")


def test_a_proof_replayed_from_another_connection_is_refused_because_the_nonces_differ() -> None:
    """The recorded gateway proof of one connection, with the same gateway Hello replayed on the
    next: the edge's fresh nonce makes it worthless."""
    gateway = hello(Role.GATEWAY)
    first_edge = hello(Role.EDGE)
    recorded = channel_proof(SECRET, Role.GATEWAY, first_edge, gateway)
    second_edge = hello(Role.EDGE, session=first_edge.session)  # same edge process, new connection
    with pytest.raises(ChannelAuthError):
        check_proof(SECRET, Role.GATEWAY, second_edge, gateway, recorded)


def test_the_edges_own_proof_reflected_back_is_not_a_gateway_proof() -> None:
    edge, gateway = hello(Role.EDGE), hello(Role.GATEWAY)
    with pytest.raises(ChannelAuthError):
        check_proof(SECRET, Role.GATEWAY, edge, gateway, channel_proof(SECRET, Role.EDGE, edge, gateway))


def test_the_proof_covers_both_sessions() -> None:
    edge, gateway = hello(Role.EDGE), hello(Role.GATEWAY)
    mac = channel_proof(SECRET, Role.GATEWAY, edge, gateway)
    other = hello(Role.GATEWAY, nonce=gateway.nonce)  # same nonce, another session
    with pytest.raises(ChannelAuthError):
        check_proof(SECRET, Role.GATEWAY, edge, other, mac)


# -- over real sockets -----------------------------------------------------------------------


class Side:
    def __init__(self, role: Role, secret: bytes | None) -> None:
        self.received: list[str] = []

        async def on_items(items: list[Item]) -> None:
            self.received.extend(i.id for i in items if isinstance(i, Routed))

        self.endpoint = ChannelEndpoint(role, on_items=on_items, on_bounce=lambda items, c: None, secret=secret)

    def send(self, id: str) -> None:
        raw = f"<message from='a@b.test' to='c@contoso.test' type='chat' id='{id}'><body>x</body></message>"
        assert self.endpoint.submit(StanzaKind.MESSAGE, "a@b.test", "c@contoso.test", "chat", id, raw.encode())


async def wait_for(predicate: Callable[[], object], timeout: float = 10) -> None:
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.01)


def partial_serve(edge: Side, refusals: list[tuple[str, str]]) -> Callable[..., object]:
    async def serve(task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED) -> None:
        await serve_loopback(edge.endpoint, HOST, 0, on_refused=lambda peer, reason: refusals.append((peer, reason)),
                             task_status=task_status)

    return serve


async def test_both_sides_with_the_same_secret_connect_and_carry_stanzas() -> None:
    edge, gateway = Side(Role.EDGE, SECRET), Side(Role.GATEWAY, SECRET)
    refusals: list[tuple[str, str]] = []
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            host, port = await nursery.start(partial_serve(edge, refusals))
            await nursery.start(run_loopback_client, gateway.endpoint, host, port)
            gateway.send("g1")
            edge.send("e1")
            await wait_for(lambda: edge.received == ["g1"] and gateway.received == ["e1"])
            nursery.cancel_scope.cancel()
    assert refusals == []
    assert edge.endpoint.statistics().refused == gateway.endpoint.statistics().refused == 0


@pytest.mark.parametrize(
    ("edge_secret", "gateway_secret", "refuser"),
    [(SECRET, WRONG, "edge"), (WRONG, SECRET, "edge"), (SECRET, None, "edge"), (None, SECRET, "gateway")],
    ids=["gateway-wrong", "edge-wrong", "gateway-without", "edge-without"],
)
async def test_a_side_with_another_secret_is_refused_and_never_connects(
    edge_secret: bytes | None, gateway_secret: bytes | None, refuser: str
) -> None:
    """Both sides verify: whichever holds the right secret refuses the other (here the edge
    checks first in both wrong-secret cases, and the gateway refuses an edge without one)."""
    edge, gateway = Side(Role.EDGE, edge_secret), Side(Role.GATEWAY, gateway_secret)
    refusals: list[tuple[str, str]] = []
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            host, port = await nursery.start(partial_serve(edge, refusals))
            await nursery.start(partial(run_loopback_client, gateway.endpoint, host, port, backoff_max=0.05))
            side = edge if refuser == "edge" else gateway
            await wait_for(lambda: side.endpoint.statistics().refused >= 3)
            nursery.cancel_scope.cancel()
    # the side that checks never counts a connection (one without a secret checks nothing)
    assert side.endpoint.statistics().connections == 0
    if refuser == "edge":
        assert refusals and all(reason.startswith(AUTH_FAILED) for _, reason in refusals)
    else:
        assert refusals == []  # the edge had nothing to refuse: the gateway closed


IMPOSTORS: dict[str, Callable[[Hello, Hello], bytes | None]] = {
    "wrong-secret": lambda edge, me: channel_proof(WRONG, Role.GATEWAY, edge, me),
    "empty-proof": lambda edge, me: b"",
    "edge-proof-reflected": lambda edge, me: channel_proof(SECRET, Role.EDGE, edge, me),
}


@pytest.mark.parametrize("kind", [*IMPOSTORS, "batch-instead-of-proof"])
async def test_an_impostor_is_refused_and_the_connected_gateway_keeps_carrying_stanzas(kind: str) -> None:
    edge, gateway = Side(Role.EDGE, SECRET), Side(Role.GATEWAY, SECRET)
    refusals: list[tuple[str, str]] = []
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            host, port = await nursery.start(partial_serve(edge, refusals))
            await nursery.start(run_loopback_client, gateway.endpoint, host, port)
            await gateway.endpoint.wait_connected()
            async with open_websocket(host, port, LOOPBACK_RESOURCE, use_ssl=False) as ws:
                me = hello(Role.GATEWAY)
                if kind in IMPOSTORS:
                    await raw_opening(ws, me, lambda edge_hello: IMPOSTORS[kind](edge_hello, me) or b"")
                else:
                    await raw_opening(ws, me, None)
                    await ws.send_message(encode_frame(StanzaBatch((Routed(
                        1, StanzaKind.MESSAGE, "a@b.test", "c@contoso.test", "chat", "inj", b"<message/>"),))))
                # while the impostor is being refused, the live connection goes on
                edge.send("during")
                assert await closed_with(ws) == (CLOSE_POLICY_VIOLATION, AUTH_FAILED)
            gateway.send("after")
            await wait_for(lambda: "during" in gateway.received and edge.received == ["after"])
            nursery.cancel_scope.cancel()
    assert edge.endpoint.statistics().connections == 1  # never displaced, never reconnected
    assert edge.endpoint.statistics().refused == 1
    [(_, reason)] = refusals
    assert reason.startswith(AUTH_FAILED)


async def test_an_impostor_that_never_proves_cannot_hold_the_channel() -> None:
    """A Hello and then silence: the live gateway is untouched meanwhile; the impostor is refused
    when the opening's time is up."""
    edge, gateway = Side(Role.EDGE, SECRET), Side(Role.GATEWAY, SECRET)
    refusals: list[tuple[str, str]] = []
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            host, port = await nursery.start(partial_serve(edge, refusals))
            await nursery.start(run_loopback_client, gateway.endpoint, host, port)
            await gateway.endpoint.wait_connected()
            async with open_websocket(host, port, LOOPBACK_RESOURCE, use_ssl=False) as ws:
                await raw_opening(ws, hello(Role.GATEWAY), None)
                for i in range(5):
                    edge.send(f"m{i}")
                    await trio.sleep(0.05)
                await wait_for(lambda: len(gateway.received) == 5)
                assert edge.endpoint.statistics().connected
                assert await closed_with(ws) == (CLOSE_POLICY_VIOLATION, AUTH_FAILED)
            nursery.cancel_scope.cancel()
    assert edge.endpoint.statistics().connections == 1
    [(_, reason)] = refusals
    assert "no proof within" in reason


async def test_a_proof_replayed_on_a_new_connection_is_refused() -> None:
    """A peer that recorded a complete, valid opening (it had the secret then) replays the same
    Hello and Auth on a new connection: the edge's nonce is new, the proof is refused."""
    edge = Side(Role.EDGE, SECRET)
    refusals: list[tuple[str, str]] = []
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            host, port = await nursery.start(partial_serve(edge, refusals))
            me = hello(Role.GATEWAY)
            recorded: list[bytes] = []

            def prove(edge_hello: Hello) -> bytes:
                recorded.append(channel_proof(SECRET, Role.GATEWAY, edge_hello, me))
                return recorded[-1]

            async with open_websocket(host, port, LOOPBACK_RESOURCE, use_ssl=False) as ws:
                await raw_opening(ws, me, prove)
                assert isinstance(decode_frame(await ws.get_message()), Auth)
                await wait_for(lambda: edge.endpoint.statistics().connected)
            await wait_for(lambda: not edge.endpoint.statistics().connected)
            async with open_websocket(host, port, LOOPBACK_RESOURCE, use_ssl=False) as ws:
                await raw_opening(ws, me, lambda edge_hello: recorded[0])
                assert await closed_with(ws) == (CLOSE_POLICY_VIOLATION, AUTH_FAILED)
            nursery.cancel_scope.cancel()
    assert edge.endpoint.statistics().connections == 1
    assert edge.endpoint.statistics().refused == 1
    assert [reason for _, reason in refusals] == [f"{AUTH_FAILED}: wrong proof from the gateway"]


async def test_an_authenticated_reconnect_of_the_gateway_replaces_its_old_connection() -> None:
    """The gateway's old connection is half dead (the edge still holds it); the gateway's new,
    authenticated connection takes over at once and gets the un-acked items re-sent."""
    edge = Side(Role.EDGE, SECRET)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            host, port = await nursery.start(partial_serve(edge, []))
            me = hello(Role.GATEWAY)
            proof = lambda edge_hello: channel_proof(SECRET, Role.GATEWAY, edge_hello, me)  # noqa: E731
            async with open_websocket(host, port, LOOPBACK_RESOURCE, use_ssl=False) as old:
                await raw_opening(old, me, proof)
                assert isinstance(decode_frame(await old.get_message()), Auth)
                edge.send("unacked")
                batch = decode_frame(await old.get_message())
                assert isinstance(batch, StanzaBatch) and batch.items[0].id == "unacked"
                # never acked; now the same gateway session reconnects
                again = hello(Role.GATEWAY, session=me.session, peer_session=edge.endpoint.session)
                async with open_websocket(host, port, LOOPBACK_RESOURCE, use_ssl=False) as new:
                    await raw_opening(new, again, lambda h: channel_proof(SECRET, Role.GATEWAY, h, again))
                    assert isinstance(decode_frame(await new.get_message()), Auth)
                    resent = decode_frame(await new.get_message())
                    assert isinstance(resent, StanzaBatch) and resent.items[0].id == "unacked"
                    code, _ = await closed_with(old)  # the old one was replaced
                    assert code != CLOSE_POLICY_VIOLATION
            nursery.cancel_scope.cancel()
    assert edge.endpoint.statistics().connections == 2
    assert edge.endpoint.statistics().refused == 0


# -- the edge's start ------------------------------------------------------------------------


def edge_config(tmp_path: Path):  # type: ignore[no-untyped-def]
    text = (
        f'[edge]\ndomains = ["contoso.test"]\nlisten = ["{HOST}:0"]\ninternal-listen = "{HOST}:0"\n'
        'state-dir = "state"\n[tls]\ncertificate = "none.pem"\nkey = "none.key"\n'
        f'[admin]\nlisten = "{HOST}:0"\n[gateway]\nsip-listen = ["{HOST}:0"]\n'
    )
    return parse_config(text, source="edgeproxy.toml", base_dir=str(tmp_path))


def test_the_edge_creates_the_channel_secret_at_its_first_start_and_loads_the_same_one_after(tmp_path: Path) -> None:
    config = edge_config(tmp_path)
    EdgeApp(config, admin=False, signals=False)
    path = channel_secret_path(config.state_dir)
    assert path.stat().st_mode & 0o777 == 0o600
    first = load_channel_secret(config.state_dir)
    app = EdgeApp(config, admin=False, signals=False)
    assert app.channel is not None and app.channel.endpoint.secret == first


def _events(stream: io.StringIO, log: EventLog) -> list[dict[str, object]]:
    log.flush()
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_a_channel_secret_others_can_read_refuses_the_edges_start(tmp_path: Path) -> None:
    config = edge_config(tmp_path)
    load_channel_secret(config.state_dir)
    path = channel_secret_path(config.state_dir)
    path.chmod(0o644)
    stream = io.StringIO()
    log = EventLog(stream, output="json")
    with pytest.raises(SecretFileError, match="chmod 0600"):
        EdgeApp(config, admin=False, signals=False, event_log=log)
    [event] = [e for e in _events(stream, log) if e["id"] == "EP8007"]
    assert event["path"] == str(path) and event["what"] == "channel secret"


def test_an_unreadable_channel_secret_refuses_the_edges_start(tmp_path: Path) -> None:
    config = edge_config(tmp_path)
    load_channel_secret(config.state_dir)
    path = channel_secret_path(config.state_dir)
    path.write_text("\n")  # empty: no secret in it
    stream = io.StringIO()
    log = EventLog(stream, output="json")
    with pytest.raises(ConfigError, match="channel secret"):
        EdgeApp(config, admin=False, signals=False, event_log=log)
    [event] = [e for e in _events(stream, log) if e["id"] == "EP2003"]
    assert event["path"] == str(path)


async def test_silent_connections_filling_every_slot_cannot_keep_the_gateway_out() -> None:
    """A local user opens MAX_CONNECTIONS connections and says nothing (each could hold its slot
    for the whole opening timeout): the real gateway still connects, by evicting the oldest
    connection that has not authenticated."""
    from edgeproxy.loopback.server import MAX_CONNECTIONS

    secret = b"s" * 32
    delivered: list[str] = []

    async def gateway_items(items: list[Item]) -> None:
        delivered.extend(item.id for item in items if isinstance(item, Routed))

    async def nothing(items: list[Item]) -> None:
        pass

    edge = ChannelEndpoint(Role.EDGE, on_items=nothing, on_bounce=lambda i, c: None, secret=secret)
    gateway = ChannelEndpoint(Role.GATEWAY, on_items=gateway_items, on_bounce=lambda i, c: None,
                              secret=secret)
    with trio.fail_after(8):  # well under the 10 s opening timeout that would free a slot
        async with trio.open_nursery() as nursery:
            host, port = await nursery.start(serve_loopback, edge, "127.0.0.1", 0)
            squatters = [await trio.open_tcp_stream(host, port) for _ in range(MAX_CONNECTIONS)]
            await trio.sleep(0.2)
            nursery.start_soon(run_loopback_client, gateway, host, port)
            await edge.wait_connected()
            edge.submit(StanzaKind.MESSAGE, "romeo@montague.example/o", "juliet@contoso.test", "chat",
                        "m1", b"<message to='juliet@contoso.test' id='m1'/>")
            while "m1" not in delivered:
                await trio.sleep(0.02)
            for squatter in squatters:
                await squatter.aclose()
            nursery.cancel_scope.cancel()
