"""Issue 13 on DNS answers: no answer a resolver (or anyone spoofing one) sends takes the edge down.

``ScriptedDns`` is a UDP DNS responder on a raw socket that answers each partner domain with
something odd: bytes that are no DNS message, a compression loop, FORMERR, an SRV target that is
not a host name, port 0, an answer of 2,000 records. ``edgeproxy serve --role edge`` uses it
(``[dns] resolver``); the test is the gateway on the channel and sends alice's message to
each partner: every one comes back as an error stanza, the process lives, and a well-formed answer
afterwards is still followed (the edge connects to the target). The injected-failure tests run the
connector in process with a lookup that raises. Addresses: 127.0.0.63 (DNS), 127.0.0.64 (targets).
"""

from __future__ import annotations

import io
import json
import re
import secrets
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import pytest
import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from edgeproxy.loopback.frames import (  # noqa: E402
    Routed,
    StanzaBatch,
    StanzaKind,
)
from edgeproxy.net import connector as connector_module  # noqa: E402
from edgeproxy.net.connector import (  # noqa: E402
    MAX_SRV_TARGETS,
    ConnectFailed,
    Connector,
    ConnectorSettings,
    UnusableAnswer,
    usable_srv_records,
)
from edgeproxy.ops.events import EventLog  # noqa: E402
from edgeproxy.ops.metrics import Metrics  # noqa: E402
from edgeproxy.ops.telemetry import Telemetry  # noqa: E402
from edgeproxy.policy.model import (  # noqa: E402
    AccessPolicy,
    Configuration,
    GatewaySettings,
    Partner,
    PartnerType,
    User,
)
from fixtures.channel_peer import gateway_peer  # noqa: E402
from fixtures.serve import ServeProcess, start_serve  # noqa: E402

DNS_ADDRESS = "127.0.0.63"
TARGETS = "127.0.0.64"
ALICE = "alice@contoso.test"
ODD = ["garbage", "pointer-loop", "formerr", "servfail", "bad-target", "port-zero", "huge", "cname-loop",
       "wrong-type", "truncated"]


def _srv(name: str, records: list[tuple[int, int, int, str]]) -> dns.rrset.RRset:
    rdatas = [f"{p} {w} {port} {target}" for p, w, port, target in records]
    return dns.rrset.from_text_list(name, 60, "IN", "SRV", rdatas)


class ScriptedDns:
    """A UDP DNS responder: each query's domain (the label before ``.test``) picks an answer."""

    def __init__(self, address: str, target_port: int) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((address, 0))
        self.address, self.port = self.sock.getsockname()
        self.target_port = target_port
        self.queries: list[str] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.sock.close()

    def _serve(self) -> None:
        while True:
            try:
                data, peer = self.sock.recvfrom(65535)
            except OSError:
                return
            try:
                query = dns.message.from_wire(data)
                qname = query.question[0].name.to_text()
                self.queries.append(qname)
                answer = self.answer(query, qname)
            except Exception:  # noqa: BLE001 - a test responder answers nothing to what it cannot read
                continue
            if answer is not None:
                self.sock.sendto(answer, peer)

    def answer(self, query: dns.message.Message, qname: str) -> bytes | None:
        labels = qname.rstrip(".").split(".")
        case = labels[-2] if len(labels) >= 2 else ""
        response = dns.message.make_response(query)
        question = query.question[0]
        if question.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
            if question.rdtype == dns.rdatatype.A:
                response.answer.append(dns.rrset.from_text(question.name, 60, "IN", "A", TARGETS))
            return response.to_wire()
        header = query.id.to_bytes(2, "big")
        if case == "garbage":
            return header + b"\x81\x80" + secrets.token_bytes(40)
        if case == "pointer-loop":  # one answer whose owner name is a compression pointer to itself
            question_wire = query.to_wire()[12:]
            offset = 12 + len(question_wire)
            return (header + b"\x81\x80\x00\x01\x00\x01\x00\x00\x00\x00" + question_wire
                    + bytes([0xC0 | (offset >> 8), offset & 0xFF]) + b"\x00\x21\x00\x01\x00\x00\x00\x3c\x00\x00")
        if case == "formerr":
            response.set_rcode(dns.rcode.FORMERR)
        elif case == "servfail":
            response.set_rcode(dns.rcode.SERVFAIL)
        elif case == "bad-target":
            name = dns.name.Name([b"\x00\xff bad*", b"bad-target", b"test", b""])
            rrset = dns.rrset.RRset(question.name, dns.rdataclass.IN, dns.rdatatype.SRV)
            rrset.add(dns.rdata.from_text("IN", "SRV", f"0 0 5269 {name.to_text()}"), 60)
            response.answer.append(rrset)
        elif case == "port-zero":
            response.answer.append(_srv(qname, [(0, 0, 0, "xmpp.port-zero.test.")]))
        elif case == "huge":
            response.answer.append(_srv(qname, [(i % 7, i, 1, f"t{i}.huge.test.") for i in range(2000)]))
        elif case == "cname-loop":
            response.answer.append(dns.rrset.from_text(qname, 60, "IN", "CNAME", qname))
        elif case == "wrong-type":  # an A record where SRV was asked
            response.answer.append(dns.rrset.from_text(qname, 60, "IN", "A", TARGETS))
        elif case == "truncated":  # TC set, and nothing listens on TCP: the retry fails
            response.flags |= dns.flags.TC
        elif case == "good":
            response.answer.append(_srv(qname, [(0, 0, self.target_port, "xmpp.good.test.")]))
        return response.to_wire(max_size=65535)


@pytest.fixture
def target_listener() -> Iterator[socket.socket]:
    with socket.socket() as listener:
        listener.bind((TARGETS, 0))
        listener.listen(16)
        listener.settimeout(20)
        yield listener


@pytest.fixture
def scripted_dns(target_listener: socket.socket) -> Iterator[ScriptedDns]:
    server = ScriptedDns(DNS_ADDRESS, target_listener.getsockname()[1])
    yield server
    server.close()


def store(domains: list[str]) -> Configuration:
    return Configuration(
        gateway=GatewaySettings(dialback_secret="s" * 32),
        partners=tuple(Partner(domain=d, type=PartnerType.FEDERATED) for d in domains),
        policies=(AccessPolicy(identity="global", xmpp=True, federation=True),),
        users=(User(sip="sip:alice@contoso.test"),),
    )


def message(seq: int, to: str) -> Routed:
    raw = f"<message from='{ALICE}' to='{to}' type='chat' id='m{seq}'><body>hi</body></message>"
    return Routed(seq, StanzaKind.MESSAGE, ALICE, to, "chat", f"m{seq}", raw.encode())


async def send_as_gateway(serve: ServeProcess, stanzas: list[Routed], done: Callable[[list[Routed]], bool],
                          timeout: float) -> list[Routed]:
    """Be the gateway: send ``stanzas``, collect (and ack) what the edge sends back until ``done``."""
    async with gateway_peer(serve) as gw:  # proves the channel secret (issue 14)
        await gw.send(StanzaBatch(tuple(stanzas)))
        await gw.receive(lambda g: done(g.routed()), timeout)
    return gw.routed()


async def test_odd_dns_answers_bounce_the_stanza_and_a_good_answer_is_still_followed(
    tmp_path: Path, scripted_dns: ScriptedDns, target_listener: socket.socket
) -> None:
    domains = [f"{case}.test" for case in ODD]
    # the nameserver from the configuration file's [dns] resolver (the environment's override
    # is held by tests/test_config_errors.py)
    serve = start_serve(tmp_path, address=DNS_ADDRESS, role="edge", store=store([*domains, "good.test"]),
                        extra=f'[dns]\nresolver = "{scripted_dns.address}:{scripted_dns.port}"\n')
    try:
        stanzas = [message(seq, f"bob@{domain}") for seq, domain in enumerate(domains, 1)]
        errors = await send_as_gateway(serve, stanzas, lambda got: len(got) >= len(stanzas), timeout=40)
        for seq, domain in enumerate(domains, 1):
            assert any(re.search(rb"id=[\"']m%d[\"']" % seq, e.raw) for e in errors), f"no bounce for {domain}"
        for error in errors:
            assert error.to == ALICE and error.type == "error"
            assert b"remote-server-not-found" in error.raw or b"remote-server-timeout" in error.raw
        serve.assert_serving()
        # a well-formed answer after all that: the edge follows it to the target
        await send_as_gateway(serve, [message(len(stanzas) + 1, "bob@good.test")], lambda got: True, timeout=5)
        connection, _ = await trio.to_thread.run_sync(target_listener.accept)
        connection.close()
        serve.assert_serving()
        log = serve.events_path.read_text(errors="replace")
        assert "Traceback" not in log
        assert any(q.startswith("_xmpp-server._tcp.huge") for q in scripted_dns.queries)
        # the huge answer: only MAX_SRV_TARGETS targets looked up, not 2,000
        assert sum(q.endswith(".huge.test.") and q.startswith("t") for q in scripted_dns.queries) <= 2 * MAX_SRV_TARGETS
    finally:
        serve.stop()


# -- in process: the answer refused, and an injected raising lookup ---------------------------


def test_srv_records_that_are_no_host_name_or_port_zero_are_skipped_and_a_huge_answer_is_cut() -> None:
    records = [(10, 0, 5269, "xmpp.fabrikam.test."), (5, 0, 0, "port0.fabrikam.test."),
               (1, 0, 5269, "\\000\\255.fabrikam.test."), (1, 0, 5269, "a*b.fabrikam.test.")]
    assert [(r.target, r.port) for r in usable_srv_records("x", records)] == [("xmpp.fabrikam.test", 5269)]
    with pytest.raises(UnusableAnswer):
        usable_srv_records("x", records[1:])
    huge = [(i % 50, 0, 5269, f"t{i}.fabrikam.test.") for i in range(5000)]
    kept = usable_srv_records("x", huge)
    assert len(kept) == MAX_SRV_TARGETS and max(r.priority for r in kept) == 0
    assert [r.target for r in usable_srv_records("x", [(0, 0, 0, ".")])] == ["."]  # "no service" stays


class Captured:
    def __init__(self) -> None:
        self.out = io.StringIO()
        self.metrics = Metrics()
        self.log = EventLog(self.out, output="json")
        self.telemetry = Telemetry(self.metrics, self.log)

    def events(self, event_id: str) -> list[dict[str, object]]:
        self.log.flush()
        return [e for e in map(json.loads, self.out.getvalue().splitlines()) if e["id"] == event_id]


@pytest.mark.parametrize("inner", ["srv_records", "addresses"])
async def test_a_lookup_that_raises_fails_that_connect_cleanly_and_the_next_lookup_is_served(
    scripted_dns: ScriptedDns, target_listener: socket.socket, monkeypatch: pytest.MonkeyPatch, inner: str
) -> None:
    cap = Captured()
    real = getattr(Connector, inner)
    calls: list[str] = []

    async def raising(self: Connector, name: str) -> object:
        calls.append(name)
        if len(calls) == 1:
            raise RuntimeError("injected")
        return await real(self, name)

    monkeypatch.setattr(connector_module.Connector, inner, raising)
    connector = Connector(ConnectorSettings(resolver=(scripted_dns.address, scripted_dns.port), timeout=5,
                                            dns_timeout=2), telemetry=cap.telemetry)
    with trio.fail_after(15):
        with pytest.raises(ConnectFailed):
            await connector.connect("good.test")
        stream = await connector.connect("good.test")
        await stream.aclose()
    [event] = cap.events("EP1007")
    assert event["surface"] == "dns-answer" and "RuntimeError: injected" in str(event["error"])
    assert event["answer"] == "lookup failed"
    assert cap.metrics.registry.get_sample_value("edgeproxy_input_failures_total", {"surface": "dns-answer"}) == 1
