"""The failure boundary on the S2S surface (docs/design.md): a handler that raises is injected
at each boundary — inbound stream, outbound stream, dialback verification — and the peer gets
the protocol's answer, EP1007 names the surface, the counter moves, and the next connection is
served. In-process edges on real loopback sockets (127.0.0.43–44)."""

from __future__ import annotations

import io
import json

import pytest
import trio

from edgeproxy.net import listener as listener_module
from edgeproxy.net import pool as pool_module
from edgeproxy.net.connector import ConnectorSettings
from edgeproxy.net.delivery import MemoryDelivery
from edgeproxy.ops.events import EventLog
from edgeproxy.ops.metrics import Metrics
from edgeproxy.ops.telemetry import Telemetry
from edgeproxy.policy.model import (
    AccessPolicy,
    Configuration,
    GatewaySettings,
    Negotiation,
    Partner,
    PartnerType,
    User,
)
from edgeproxy.policy.snapshot import PolicySnapshot, build_snapshot
from edgeproxy.s2s import StreamOpened, wire
from edgeproxy.tokenizer import Element
from edgeproxy.xmpp.namespaces import NS_SERVER
from fixtures.edges import build_edge, run_edge

CONTOSO, FABRIKAM = "127.0.0.43", "127.0.0.44"
NOS = Negotiation.NOT_SUPPORTED
HEADER = (
    b"<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams'"
    b" xmlns:db='jabber:server:dialback' from='fabrikam.test' to='contoso.test' version='1.0'>"
)


class Edge:
    def __init__(self, domain: str, address: str) -> None:
        self.domain, self.address = domain, address
        self.holder: list[PolicySnapshot] = [self.snapshot(None)]
        self.delivery = MemoryDelivery()
        self.log_output = io.StringIO()
        self.metrics = Metrics()
        self.telemetry = Telemetry(self.metrics, EventLog(self.log_output, output="json"))
        self.server = build_edge(lambda: self.holder[0], self.delivery,
                                 ConnectorSettings(attempt_delay=0.05, timeout=5), telemetry=self.telemetry)
        self.port = 0

    def snapshot(self, other: tuple[str, str, int] | None) -> PolicySnapshot:
        partners = () if other is None else (Partner(
            domain=other[0], type=PartnerType.FEDERATED, tls=NOS, sasl=NOS, dialback=True,
            proxy_fqdn=f"{other[1]}:{other[2]}"),)
        config = Configuration(
            gateway=GatewaySettings(dialback_secret=f"{self.domain}-secret"), partners=partners,
            policies=(AccessPolicy(identity="global", xmpp=True, federation=True),),
            users=(User(sip=f"sip:user@{self.domain}"),),
        )
        return build_snapshot(config, [self.domain])

    async def start(self, nursery: trio.Nursery) -> None:
        self.port = await run_edge(nursery, self.server, self.address)

    def federate(self, other: Edge) -> None:
        self.holder[0] = self.snapshot((other.domain, other.address, other.port))

    def failures(self, surface: str) -> float:
        return self.metrics.value("edgeproxy_input_failures_total", surface=surface) or 0.0

    def events(self, event_id: str) -> list[dict[str, object]]:
        self.telemetry.event_log.flush()  # type: ignore[union-attr]
        lines = [json.loads(line) for line in self.log_output.getvalue().splitlines() if line.strip()]
        return [r for r in lines if r["id"] == event_id]


async def read_until(stream: trio.SocketStream, marker: bytes) -> bytes:
    data = b""
    with trio.move_on_after(10):
        while marker not in data:
            chunk = await stream.receive_some(65536)
            if not chunk:
                break
            data += chunk
    return data


async def test_an_inbound_stream_whose_handler_raises_gets_internal_server_error_and_only_it_closes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    contoso = Edge("contoso.test", CONTOSO)
    original = listener_module.InboundHandler._on_event
    calls = {"n": 0}

    async def raising(self, session, event, *args):  # type: ignore[no-untyped-def]
        if isinstance(event, StreamOpened):
            calls["n"] += 1
            if calls["n"] == 1:
                raise RuntimeError("injected failure in the inbound handler")
        return await original(self, session, event, *args)

    monkeypatch.setattr(listener_module.InboundHandler, "_on_event", raising)
    contoso.holder[0] = contoso.snapshot(("fabrikam.test", FABRIKAM, 1))
    async with trio.open_nursery() as nursery:
        await contoso.start(nursery)
        first = await trio.open_tcp_stream(CONTOSO, contoso.port)
        await first.send_all(HEADER)
        answer = await read_until(first, b"</stream:stream>")
        assert b"<internal-server-error xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>" in answer
        second = await trio.open_tcp_stream(CONTOSO, contoso.port)
        await second.send_all(HEADER)
        assert b"</stream:features>" in await read_until(second, b"</stream:features>")
        assert contoso.failures("s2s-inbound") == 1
        (record,) = contoso.events("EP1007")
        assert record["surface"] == "s2s-inbound"
        assert "injected failure" in str(record["error"])
        await first.aclose()
        await second.aclose()
        nursery.cancel_scope.cancel()


async def test_a_dialback_verification_that_raises_answers_an_error_verdict(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    contoso, fabrikam = Edge("contoso.test", CONTOSO), Edge("fabrikam.test", FABRIKAM)

    async def raising(*_args: object) -> None:
        raise RuntimeError("injected failure in the verification")

    monkeypatch.setattr(listener_module, "verify_dialback", raising)
    async with trio.open_nursery() as nursery:
        await contoso.start(nursery)
        await fabrikam.start(nursery)
        contoso.federate(fabrikam)
        fabrikam.federate(contoso)
        stream = await trio.open_tcp_stream(CONTOSO, contoso.port)
        await stream.send_all(HEADER)
        features = await read_until(stream, b"</stream:features>")
        stream_id = features.split(b" id='", 1)[1].split(b"'", 1)[0].decode()
        key = wire.dialback_key("fabrikam.test-secret", "contoso.test", "fabrikam.test", stream_id)
        await stream.send_all(wire.db_result_request(from_="fabrikam.test", to="contoso.test", key=key))
        answer = await read_until(stream, b"</db:result>")
        assert b"type='error'" in answer and b"remote-connection-failed" in answer
        assert contoso.failures("dialback-verify") == 1
        await stream.aclose()
        nursery.cancel_scope.cancel()


async def test_an_outbound_link_that_raises_bounces_its_stanzas_and_the_edge_goes_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    contoso, fabrikam = Edge("contoso.test", CONTOSO), Edge("fabrikam.test", FABRIKAM)
    original = pool_module.OutboundLink._run
    calls = {"n": 0}

    async def raising(self):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("injected failure on the outbound link")
        return await original(self)

    monkeypatch.setattr(pool_module.OutboundLink, "_run", raising)
    async with trio.open_nursery() as nursery:
        await contoso.start(nursery)
        await fabrikam.start(nursery)
        contoso.federate(fabrikam)
        fabrikam.federate(contoso)

        def message(n: int) -> Element:
            return Element("message", NS_SERVER, {"from": "user@contoso.test", "to": "user@fabrikam.test",
                                                  "type": "chat", "id": f"m{n}"},
                           [Element("body", NS_SERVER, {}, ["hi"])])

        await contoso.server.router.send_from_local(message(1))
        with trio.fail_after(10):
            while not contoso.failures("s2s-outbound"):
                await trio.sleep(0.02)
        # the first link failed and answered its stanza; the next one is delivered
        await contoso.server.router.send_from_local(message(2))
        with trio.fail_after(10):
            while True:
                try:
                    got = fabrikam.delivery._receive.receive_nowait()  # noqa: SLF001
                except trio.WouldBlock:
                    await trio.sleep(0.02)
                    continue
                if b"id='m2'" in got.raw or b'id="m2"' in got.raw:
                    break
        assert contoso.metrics.value("edgeproxy_bounces_total", condition="internal-server-error",
                                     cause="internal-error") == 1
        (record,) = contoso.events("EP1007")
        assert record["surface"] == "s2s-outbound"
        nursery.cancel_scope.cancel()
