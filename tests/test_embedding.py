"""The embedding API: a trio program runs ``edgeproxy.run`` in its nursery, a partner federates
with it, its S2S, admin and SIP listeners answer, and cancelling the nursery stops it cleanly —
the partner's stream is closed with ``system-shutdown``, every listener is closed afterwards and
nothing of the edge is left running (no task, no event-log thread).

Everything listens on 127.0.51.x: the edge on .1 (every port 0: the bound addresses come from
what ``nursery.start`` returns), the partner (an in-process edge for northwind.test, TCP
dialback) on .2.
"""

from __future__ import annotations

import io
import json
import socket
import threading
import urllib.request
from functools import partial
from pathlib import Path

import pytest
import trio

import edgeproxy
from edgeproxy import embed
from edgeproxy.config import load_config
from edgeproxy.embed import RunningEdge
from edgeproxy.net.connector import ConnectorSettings
from edgeproxy.net.delivery import MemoryDelivery
from edgeproxy.net.edge import EdgeServer
from edgeproxy.ops.events import EventLog
from edgeproxy.ops.exitcodes import StartupFailed
from edgeproxy.ops.telemetry import Telemetry
from edgeproxy.policy.model import (
    AccessPolicy,
    Configuration,
    GatewaySettings,
    Negotiation,
    Partner,
    PartnerType,
)
from edgeproxy.policy.snapshot import PolicySnapshot, build_snapshot
from edgeproxy.policy.store import Store
from edgeproxy.tokenizer import Element
from edgeproxy.xmpp.namespaces import NS_SERVER
from fixtures.edges import build_edge, run_edge
from fixtures.sipauth import user as sip_user

EDGE_HOST, PEER_HOST = "127.0.51.1", "127.0.51.2"
DOMAIN, PEER_DOMAIN = "contoso.test", "northwind.test"
NOS = Negotiation.NOT_SUPPORTED
TCP_DIALBACK = {"tls": NOS, "sasl": NOS, "dialback": True}
DRAIN_BOUND = 5.0
#: Bound on the whole scenario: a hang fails the test instead of the suite.
SCENARIO_SECONDS = 60


def federation(our_domain: str, partner_domain: str, partner_address: str,
               users: tuple[str, ...] = ("alice", "bob")) -> Configuration:
    """A store's content: one federated partner over TCP dialback at ``partner_address``, and
    ``users`` of ``our_domain``."""
    return Configuration(
        users=tuple(sip_user(name, our_domain) for name in users),
        gateway=GatewaySettings(dialback_secret=f"{our_domain}-secret"),
        partners=(Partner(domain=partner_domain, type=PartnerType.FEDERATED, proxy_fqdn=partner_address,
                          **TCP_DIALBACK),),  # type: ignore[arg-type]
        policies=(AccessPolicy(identity="global", xmpp=True, federation=True),),
    )


def write_edge_config(directory: Path, host: str = EDGE_HOST, *, extra_edge: str = "",
                      state_dir: str = "state") -> Path:
    """An ``edgeproxy.toml`` for contoso.test with every listener on ``host`` port 0, no TLS."""
    path = directory / "edgeproxy.toml"
    path.write_text(
        f'[edge]\ndomains = ["{DOMAIN}"]\nlisten = ["{host}:0"]\ninternal-listen = "{host}:0"\n'
        f'state-dir = "{state_dir}"\n{extra_edge}'
        '[tls]\ncertificate = "no/edge.pem"\nkey = "no/edge.key"\n'
        f'[admin]\nlisten = "{host}:0"\n'
        f'[gateway]\nsip-listen = ["{host}:0"]\nsip-tls-listen = []\n'
    )
    return path


class Peer:
    """A partner edge for ``domain`` in this process (real sockets), its policy settable later."""

    def __init__(self, domain: str) -> None:
        self.domain = domain
        self.policy: PolicySnapshot = build_snapshot(federation(domain, "unset.test", "127.0.0.1:9"), [domain])
        self.telemetry = Telemetry()
        self.delivery = MemoryDelivery()
        self.server: EdgeServer = build_edge(lambda: self.policy, self.delivery,
                                             ConnectorSettings(attempt_delay=0.05, timeout=5),
                                             telemetry=self.telemetry)
        self.port = 0

    async def start(self, nursery: trio.Nursery, host: str) -> None:
        self.port = await run_edge(nursery, self.server, host)

    def federate_with(self, domain: str, address: str) -> None:
        self.policy = build_snapshot(federation(self.domain, domain, address), [self.domain])

    async def send_message(self, frm: str, to: str, body: str = "hello") -> None:
        await self.server.router.send_from_local(Element(
            "message", NS_SERVER, {"from": frm, "to": to, "type": "chat", "id": "m1"},
            [Element("body", NS_SERVER, {}, [body])]))

    def stream_errors_received(self, condition: str) -> float:
        return self.telemetry.metrics.value("edgeproxy_stream_errors_total", side="received",
                                            condition=condition) or 0.0


def host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def stream_header_answer(address: str) -> bytes:
    """What the S2S listener sends back to a stream header (the first bytes)."""
    header = (
        "<?xml version='1.0'?><stream:stream xmlns='jabber:server'"
        " xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback'"
        f" to='{DOMAIN}' from='{PEER_DOMAIN}' version='1.0'>"
    ).encode()
    with socket.create_connection(host_port(address), timeout=5) as sock:
        sock.sendall(header)
        data = b""
        while b"<stream:features" not in data and len(data) < 65536:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    return data


def healthz(address: str) -> int:
    with urllib.request.urlopen(f"http://{address}/healthz", timeout=5) as reply:
        return int(reply.status)


def sip_options_answer(address: str) -> bytes:
    """The SIP listener's answer (first line) to an OPTIONS over UDP."""
    host, port = host_port(address)
    probe = (
        f"OPTIONS sip:{host}:{port} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {host}:9;branch=z9hG4bKembed;rport\r\n"
        f"From: <sip:probe@{DOMAIN}>;tag=p\r\nTo: <sip:{host}:{port}>\r\n"
        "Call-ID: embed-probe\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    ).encode()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5)
        sock.bind((host, 0))
        sock.sendto(probe, (host, port))
        return sock.recv(65536).split(b"\r\n", 1)[0]


def tcp_refused(address: str) -> bool:
    try:
        with socket.create_connection(host_port(address), timeout=2):
            return False
    except ConnectionRefusedError:
        return True


def udp_port_free(address: str) -> bool:
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind(host_port(address))
        return True
    except OSError:
        return False


async def wait_for(predicate, timeout: float = 10) -> None:  # type: ignore[no-untyped-def]
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.02)


def event_ids(sink: io.StringIO) -> list[str]:
    return [json.loads(line)["id"] for line in sink.getvalue().splitlines() if line.strip()]


async def test_a_trio_program_runs_the_edge_in_its_nursery_and_stops_it_by_cancelling(tmp_path: Path) -> None:
    config_path = write_edge_config(tmp_path)
    sink = io.StringIO()
    event_log = EventLog(sink, output="json")
    with trio.fail_after(SCENARIO_SECONDS):
        async with trio.open_nursery() as program:
            peer = Peer(PEER_DOMAIN)
            await peer.start(program, PEER_HOST)
            with Store.open(tmp_path / "state") as store, store.write() as tx:
                tx.replace_all(federation(DOMAIN, PEER_DOMAIN, f"{PEER_HOST}:{peer.port}"))

            async with trio.open_nursery() as host:
                edge: RunningEdge = await host.start(partial(
                    edgeproxy.run, load_config(config_path), event_log=event_log, drain_bound=DRAIN_BOUND))
                listeners = edge.listeners()
                assert set(listeners) == {"external", "internal", "admin", "sip"}
                (external,), (admin,) = listeners["external"], listeners["admin"]
                sip = listeners["sip"][0]
                assert all(a.startswith(EDGE_HOST + ":") for a in external.split() + [admin, sip])

                # it serves: a stream header is answered, /healthz, SIP OPTIONS
                answer = await trio.to_thread.run_sync(stream_header_answer, external)
                assert b"<stream:stream" in answer and b"<stream:features" in answer
                assert await trio.to_thread.run_sync(healthz, admin) == 200
                # (an OPTIONS from our own domain without credentials: challenged, 407)
                assert (await trio.to_thread.run_sync(sip_options_answer, sip)).startswith(b"SIP/2.0 407 ")

                # a partner federates: its stream authenticates (TCP dialback both ways)
                peer.federate_with(DOMAIN, external)
                await peer.send_message(f"bob@{PEER_DOMAIN}", f"alice@{DOMAIN}")
                await wait_for(lambda: any(s.partner == PEER_DOMAIN for s in edge.status().streams))

                host.cancel_scope.cancel()
            assert host.cancel_scope.cancelled_caught

            # a clean stop: the partner's streams were closed with system-shutdown
            await wait_for(lambda: peer.stream_errors_received("system-shutdown") >= 1)
            program.cancel_scope.cancel()
    event_log.close()
    ids = event_ids(sink)
    assert "EP1000" in ids and "EP1003" in ids and "EP1004" in ids, ids  # started, stopping, stopped
    assert "EP1005" not in ids  # not a drain past its bound
    assert edge.app is not None and edge.app.stopped.is_set()
    # every listener is closed afterwards
    for address in (external, admin, listeners["internal"][0], sip):
        assert tcp_refused(address), address
    assert udp_port_free(sip)


async def test_a_path_and_the_default_event_log_leave_nothing_running(tmp_path: Path) -> None:
    """``run`` given a path, its own event log (stderr): after the cancel, no event-log thread
    and no listener remain."""
    config_path = write_edge_config(tmp_path, "127.0.51.3")
    before = {t.name for t in threading.enumerate()}
    with trio.fail_after(SCENARIO_SECONDS):
        async with trio.open_nursery() as host:
            edge: RunningEdge = await host.start(partial(edgeproxy.run, config_path, role="edge", drain_bound=2))
            assert "sip" not in edge.listeners()
            external = edge.listeners()["external"][0]
            assert await trio.to_thread.run_sync(healthz, edge.listeners()["admin"][0]) == 200
            host.cancel_scope.cancel()
    assert "edgeproxy-event-log" not in {t.name for t in threading.enumerate()} - before
    assert tcp_refused(external)


async def test_a_start_that_fails_raises_startup_failed_with_the_serve_exit_status(tmp_path: Path) -> None:
    config_path = write_edge_config(tmp_path, "127.0.51.4")
    with socket.socket() as busy:
        busy.bind(("127.0.51.4", 0))
        busy.listen()
        port = busy.getsockname()[1]
        config_path.write_text(config_path.read_text().replace('listen = ["127.0.51.4:0"]',
                                                               f'listen = ["127.0.51.4:{port}"]'))
        async with trio.open_nursery() as host:
            with pytest.raises(StartupFailed) as failed:
                await host.start(partial(edgeproxy.run, config_path, event_log=EventLog(io.StringIO())))
    assert failed.value.exit_code == 20  # address in use, as `edgeproxy serve` would exit


async def test_an_unknown_role_is_refused_before_anything_starts(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown role"):
        await edgeproxy.run(write_edge_config(tmp_path), role="relay")


def test_edgeproxy_run_is_the_embedding_api() -> None:
    assert edgeproxy.run is embed.run


async def test_a_stop_from_inside_makes_run_return_normally(tmp_path: Path) -> None:
    """``request_stop`` (as ``edgeproxy stop`` or ``POST /stop``): ``run`` returns without an
    exception once the graceful shutdown is done; nothing was cancelled."""
    config_path = write_edge_config(tmp_path, "127.0.51.5")
    sink = io.StringIO()
    with trio.fail_after(SCENARIO_SECONDS):
        async with trio.open_nursery() as host:
            edge: RunningEdge = await host.start(partial(edgeproxy.run, config_path, role="edge", drain_bound=2,
                                                         event_log=EventLog(sink, output="json")))
            external = edge.listeners()["external"][0]
            edge.request_stop()
    assert not host.cancel_scope.cancelled_caught
    assert edge.app is not None and edge.app.stopped.is_set()
    assert tcp_refused(external)
