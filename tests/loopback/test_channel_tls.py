"""Mutual TLS on the loopback channel ([edge] internal-tls), from the configuration, on 127.0.0.100.

Certificates come from a private CA (trustme): the edge's names its internal address, the
gateway's is a client certificate of the same CA. The contexts are the ones the server builds
(``loopback.tls``); the peers are the real ``serve_loopback`` / ``run_loopback_client`` (and, in the
first test, the whole ``run_app`` with the real gateway). Refusals: a gateway with no client
certificate, with one from an unknown CA, a plain-text gateway, and an edge whose certificate names
another host.
"""

from __future__ import annotations

import io
import json
import logging
import socket
import ssl
from collections.abc import Callable
from functools import partial
from pathlib import Path

import pytest
import trio

from edgeproxy.app import EdgeApp, run_app
from edgeproxy.config import EdgeConfig, parse_config
from edgeproxy.errors import ConfigError
from edgeproxy.loopback.client import run_loopback_client
from edgeproxy.loopback.endpoint import ChannelEndpoint
from edgeproxy.loopback.frames import Item, Role, Routed, StanzaKind
from edgeproxy.loopback.server import serve_loopback
from edgeproxy.loopback.tls import edge_channel_context, gateway_channel_context
from edgeproxy.net.delivery import Delivery
from edgeproxy.ops.events import EventLog
from edgeproxy.ops.status import ChannelState
from edgeproxy.secretfiles import channel_secret_path
from fixtures.private_ca import PrivateCa

EDGE_IP = "127.0.0.100"
CLIENT_LOG = "edgeproxy.loopback.client"


def write_pki(directory: Path) -> PrivateCa:
    pki = PrivateCa(directory)
    pki.write_ca()
    pki.write_leaf("edge", "edge.contoso.test", EDGE_IP)
    pki.write_leaf("gateway", "gateway.contoso.test")
    pki.write_leaf("rogue-gateway", "gateway.contoso.test", rogue=True)
    pki.write_leaf("other-edge", "other.contoso.test")
    return pki


def config(directory: Path, *, edge: str = "", gateway: str = "", internal_tls: bool = True) -> EdgeConfig:
    text = (
        f'[edge]\ndomains = ["contoso.test"]\nlisten = ["{EDGE_IP}:0"]\ninternal-listen = "{EDGE_IP}:0"\n'
        f'state-dir = "state"\ninternal-tls = {str(internal_tls).lower()}\n{edge}'
        '[tls]\ncertificate = "edge.pem"\nkey = "edge.key"\ntrust = "ca.pem"\n'
        f'[admin]\nlisten = "{EDGE_IP}:0"\n'
        f'[gateway]\nsip-listen = ["{EDGE_IP}:0"]\noutage-bound = 30\n{gateway}'
    )
    return parse_config(text, source="edgeproxy.toml", base_dir=str(directory))


GATEWAY_CERT = 'channel-certificate = "gateway.pem"\nchannel-key = "gateway.key"\n'
ROGUE_CERT = 'channel-certificate = "rogue-gateway.pem"\nchannel-key = "rogue-gateway.key"\n'


class Side:
    """One end of the channel, recording the items it receives."""

    def __init__(self, role: Role) -> None:
        self.received: list[Routed] = []

        async def on_items(items: list[Item]) -> None:
            self.received.extend(i for i in items if isinstance(i, Routed))

        self.endpoint = ChannelEndpoint(role, on_items=on_items, on_bounce=lambda items, c: None)

    def send(self, to: str, body: str) -> None:
        raw = f"<message from='a@b.test' to='{to}' type='chat' id='x'><body>{body}</body></message>".encode()
        self.endpoint.submit(StanzaKind.MESSAGE, "a@b.test", to, "chat", "x", raw)


async def wait_for(predicate: Callable[[], object], timeout: float = 20) -> None:
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.02)


async def serve_edge(nursery: trio.Nursery, cfg: EdgeConfig, refusals: list[tuple[str, str]]) -> tuple[Side, str, int]:
    edge = Side(Role.EDGE)
    host, port = await nursery.start(partial(
        serve_loopback, edge.endpoint, EDGE_IP, 0, ssl_context=edge_channel_context(cfg),
        on_refused=lambda peer, reason: refusals.append((peer, reason)),
    ))  # fmt: skip
    return edge, host, port


async def test_gateway_with_the_right_certificate_connects_and_carries_stanzas_both_ways(tmp_path: Path) -> None:
    write_pki(tmp_path)
    cfg = config(tmp_path, gateway=GATEWAY_CERT)
    refusals: list[tuple[str, str]] = []
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            edge, host, port = await serve_edge(nursery, cfg, refusals)
            gateway = Side(Role.GATEWAY)
            # The gateway checks the edge's certificate for the host it connects to (an IP SAN).
            await nursery.start(partial(
                run_loopback_client, gateway.endpoint, host, port, ssl_context=gateway_channel_context(cfg),
            ))  # fmt: skip
            await gateway.endpoint.wait_connected()
            edge.send("alice@contoso.test", "to the gateway")
            gateway.send("bob@fabrikam.test", "to the edge")
            await wait_for(lambda: edge.received and gateway.received)
            nursery.cancel_scope.cancel()
    assert b"to the gateway" in gateway.received[0].raw
    assert b"to the edge" in edge.received[0].raw
    assert refusals == []


@pytest.mark.parametrize(
    ("variant", "edge_says", "gateway_says"),
    [
        ("no client certificate", "peer did not return a certificate", "alert certificate required"),
        ("certificate from an unknown CA", "certificate verify failed: unable to get local issuer", "alert unknown ca"),
        ("plain text, no TLS", "TLS handshake failed: http request", "cannot connect"),
    ],
)
async def test_a_gateway_the_edge_cannot_authenticate_is_refused_reported_and_keeps_retrying(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, variant: str, edge_says: str, gateway_says: str
) -> None:
    write_pki(tmp_path)
    caplog.set_level(logging.INFO, logger=CLIENT_LOG)
    good = config(tmp_path, gateway=GATEWAY_CERT)
    if variant == "no client certificate":
        client_ssl: ssl.SSLContext | None = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
    elif variant == "certificate from an unknown CA":
        client_ssl = gateway_channel_context(config(tmp_path, gateway=ROGUE_CERT))
    else:
        client_ssl = None
    refusals: list[tuple[str, str]] = []
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            edge, host, port = await serve_edge(nursery, good, refusals)
            stranger = Side(Role.GATEWAY)
            await nursery.start(partial(
                run_loopback_client, stranger.endpoint, host, port, ssl_context=client_ssl, backoff_max=0.2,
            ))  # fmt: skip
            # Refused, reported by the edge (once per reason: the retries are held back) ...
            await wait_for(lambda: refusals)
            # ... and the gateway keeps trying (its attempts are logged).
            await wait_for(lambda: len([r for r in caplog.records if r.name == CLIENT_LOG]) >= 3)
            assert stranger.endpoint.statistics().connections == 0
            assert not edge.endpoint.statistics().connected
            # The right gateway is still served.
            gateway = Side(Role.GATEWAY)
            await nursery.start(partial(
                run_loopback_client, gateway.endpoint, host, port, ssl_context=gateway_channel_context(good),
            ))  # fmt: skip
            await gateway.endpoint.wait_connected()
            nursery.cancel_scope.cancel()
    [(peer, reason)] = refusals
    assert peer.startswith(f"{EDGE_IP}:") or peer.startswith("127.0.0.1:")
    assert edge_says in reason, reason
    attempts = [r for r in caplog.records if r.name == CLIENT_LOG]
    assert gateway_says in attempts[0].getMessage()
    if client_ssl is not None:
        # The first refusal is a warning (an EP9002 event in the server), repeats are info.
        assert attempts[0].levelno == logging.WARNING and "TLS with the edge" in attempts[0].getMessage()
        assert all(r.levelno == logging.INFO for r in attempts[1:])


async def test_the_gateway_refuses_an_edge_whose_certificate_names_another_host(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_pki(tmp_path)
    caplog.set_level(logging.INFO, logger=CLIENT_LOG)
    impostor = config(tmp_path, edge='internal-certificate = "other-edge.pem"\ninternal-key = "other-edge.key"\n',
                      gateway=GATEWAY_CERT)
    refusals: list[tuple[str, str]] = []
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            _, host, port = await serve_edge(nursery, impostor, refusals)
            gateway = Side(Role.GATEWAY)
            await nursery.start(partial(
                run_loopback_client, gateway.endpoint, host, port, ssl_context=gateway_channel_context(impostor),
            ))  # fmt: skip
            await wait_for(lambda: any(r.levelno == logging.WARNING for r in caplog.records if r.name == CLIENT_LOG))
            nursery.cancel_scope.cancel()
    assert gateway.endpoint.statistics().connections == 0
    [warning] = [r for r in caplog.records if r.name == CLIENT_LOG and r.levelno == logging.WARNING]
    assert f"IP address mismatch, certificate is not valid for '{EDGE_IP}'" in warning.getMessage()
    assert refusals and "alert bad certificate" in refusals[0][1]  # the gateway's alert


def _events(stream: io.StringIO, event_log: EventLog) -> list[dict[str, object]]:
    event_log.flush()
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


async def test_serve_both_runs_the_channel_over_mutual_tls_and_reports_a_refused_stranger(tmp_path: Path) -> None:
    """``run_app(role="both")`` from the configuration: the real gateway connects over mutual TLS
    and a stanza crosses both ways (an XMPP message for a SIP user who is not registered comes back
    from the gateway as an error); a plain-text stranger is refused with event EP5003."""
    write_pki(tmp_path)
    cfg = config(tmp_path, gateway=GATEWAY_CERT)
    stream = io.StringIO()
    event_log = EventLog(stream, output="json")
    try:
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                app: EdgeApp = await nursery.start(partial(run_app, cfg, role="both", event_log=event_log,
                                                           signals=False))
                await wait_for(lambda: app.status().channel.state is ChannelState.CONNECTED)
                assert app.channel is not None
                await wait_for(lambda: any(e["id"] == "EP5001" for e in _events(stream, event_log)))
                raw = (b"<message xmlns='jabber:server' from='romeo@montague.example/orchard'"
                       b" to='nobody@contoso.test' type='chat' id='tls1'><body>hi</body></message>")
                await app.channel.deliver(Delivery(raw, "romeo@montague.example/orchard", "nobody@contoso.test",
                                                   "message", "chat"))
                await wait_for(lambda: app.channel is not None and app.channel.from_gateway >= 1)

                stranger = Side(Role.GATEWAY)
                host, _, port = (app.internal_address or "").rpartition(":")
                nursery.start_soon(partial(run_loopback_client, stranger.endpoint, host, int(port), backoff_max=0.2))
                await wait_for(lambda: any(e["id"] == "EP5003" for e in _events(stream, event_log)))
                assert app.status().channel.state is ChannelState.CONNECTED  # the real gateway stays
                app.request_stop()
                await app.stopped.wait()
                nursery.cancel_scope.cancel()
    finally:
        event_log.close()
    events = _events(stream, event_log)
    [refused] = [e for e in events if e["id"] == "EP5003"]
    assert refused["event"] == "channel-refused" and "TLS handshake failed" in str(refused["reason"])


async def test_edge_and_gateway_as_separate_roles_with_their_own_files(tmp_path: Path) -> None:
    """``serve --role edge`` and ``serve --role gateway`` (a gateway on another host: its own file,
    state and client certificate, ``edge-address`` pointing at the edge) over mutual TLS. The
    channel secret is still required: the operator copies the edge's file (mode 0600) into the
    gateway's state dir."""
    write_pki(tmp_path)
    edge_cfg = config(tmp_path)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            app: EdgeApp = await nursery.start(partial(run_app, edge_cfg, role="edge", signals=False))
            copied = channel_secret_path(tmp_path / "gateway-state")
            copied.parent.mkdir(mode=0o750)
            copied.parent.chmod(0o750)
            copied.write_bytes(channel_secret_path(tmp_path / "state").read_bytes())
            copied.chmod(0o600)
            gateway_cfg = parse_config(
                '[edge]\ndomains = ["contoso.test"]\nstate-dir = "gateway-state"\ninternal-tls = true\n'
                'internal-trust = "ca.pem"\n[tls]\ncertificate = "none.pem"\nkey = "none.key"\n'
                f'[gateway]\nedge-address = "{app.internal_address}"\nsip-listen = ["{EDGE_IP}:0"]\n'
                'channel-certificate = "gateway.pem"\nchannel-key = "gateway.key"\n',
                source="gateway.toml", base_dir=str(tmp_path),
            )
            await nursery.start(partial(run_app, gateway_cfg, role="gateway", signals=False))
            await wait_for(lambda: app.status().channel.state is ChannelState.CONNECTED)
            app.request_stop()
            await app.stopped.wait()
            nursery.cancel_scope.cancel()


def _port_is_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


@pytest.mark.parametrize(
    ("edge", "gateway", "message"),
    [
        ('internal-certificate = "missing.pem"\ninternal-key = "edge.key"\n', GATEWAY_CERT,
         "edge.internal-certificate .*missing.pem does not exist"),
        ("", 'channel-certificate = "gateway.pem"\nchannel-key = "missing.key"\n',
         "gateway.channel-key .*missing.key does not exist"),
        ('internal-trust = "not-a-ca.pem"\n', GATEWAY_CERT, "edge.internal-trust .*not-a-ca.pem does not load"),
    ],
)
async def test_channel_tls_files_that_do_not_load_refuse_the_start_before_anything_listens(
    tmp_path: Path, edge: str, gateway: str, message: str
) -> None:
    write_pki(tmp_path)
    (tmp_path / "not-a-ca.pem").write_text("not a certificate\n")
    with socket.socket() as probe:
        probe.bind((EDGE_IP, 0))
        port = probe.getsockname()[1]
    cfg = parse_config(
        f'[edge]\ndomains = ["contoso.test"]\nlisten = ["{EDGE_IP}:{port}"]\ninternal-listen = "{EDGE_IP}:0"\n'
        f'state-dir = "state"\ninternal-tls = true\n{edge}'
        '[tls]\ncertificate = "edge.pem"\nkey = "edge.key"\ntrust = "ca.pem"\n'
        f'[admin]\nlisten = "{EDGE_IP}:0"\n[gateway]\nsip-listen = ["{EDGE_IP}:0"]\n{gateway}',
        source="edgeproxy.toml", base_dir=str(tmp_path),
    )
    with pytest.raises(ConfigError, match=message):
        await run_app(cfg, role="both", signals=False)
    assert _port_is_free(EDGE_IP, port)  # the S2S listener was never bound
    assert not (tmp_path / "state").exists() or not any((tmp_path / "state").iterdir())
