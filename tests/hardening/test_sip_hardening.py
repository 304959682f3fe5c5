"""Issue 13 on the SIP surface: no datagram, connection or request handler can end the SIP
stack (and, in role both, the edge with it), and the registrar is no UDP amplifier.

Over real sockets against ``edgeproxy serve`` (role both):

* a REGISTER whose Via has a non-ASCII port, or whose CSeq / Content-Length / Expires holds a
  digit ``str.isdigit`` accepts and ``int`` does not (``²``, ``３``), gets 400 and the next
  REGISTER gets 200 — the same datagram used to end the SIP loop and the process;
* the same over TCP: 400, the connection closed when the stream cannot be resynchronised, and a
  new connection is served;
* garbage that names no request is dropped and counted;
* after ten long contacts registered over TCP, a small REGISTER over UDP gets a response no
  larger than itself (it used to get ~15 KB: every binding, RFC 3261 §10.3 step 8).

In process (the only way to make code raise on purpose): a raising parser, transaction lookup
or request handler at each boundary — per datagram (``sip-datagram``), per TCP connection
(``sip-connection``) and per handler task — answers the peer 500 where a request is known,
reports EP1007 with the surface, and the next datagram or connection is served.

Addresses: edgeproxy on 127.0.0.50, SIP clients on 127.0.0.51–59.
"""

from __future__ import annotations

import io
import json
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import trio

import edgeproxy.gateway.sip.transport as sip_transport
from edgeproxy.gateway.service import GatewayService
from edgeproxy.gateway.sip.message import SipParser, SipRequest, SipResponse, canonical
from edgeproxy.ops.events import EventLog
from edgeproxy.ops.metrics import Metrics
from edgeproxy.ops.telemetry import Telemetry
from edgeproxy.policy.model import Configuration, GatewaySettings
from fixtures.channel_peer import EdgePeer
from fixtures.serve import ServeProcess, start_serve
from fixtures.sipauth import authorization, every_user, md5_challenge
from fixtures.sipauth import user as sip_user

SERVER = "127.0.0.50"
CLIENTS = [f"127.0.0.{n}" for n in range(51, 60)]
DOMAIN = "contoso.test"


# -- SIP over plain sockets --------------------------------------------------------------------


def register(
    source: tuple[str, int],
    *,
    transport: str = "UDP",
    user: str = "carol",
    call_id: str = "reg-1",
    cseq: str = "1",
    via_port: str | None = None,
    contacts: list[str] | None = None,
    expires: str | None = "600",
    content_length: str = "0",
    authorization: str | None = None,
) -> bytes:
    """A REGISTER as a UA would send it (every mandatory header, Max-Forwards, Content-Length);
    with ``authorization`` (issue 14: the answer to the registrar's 401) a new transaction."""
    host, port = source
    branch = f"z9hG4bK-{call_id}-{cseq}" + ("-auth" if authorization else "")
    lines = [
        f"REGISTER sip:{DOMAIN} SIP/2.0",
        f"Via: SIP/2.0/{transport} {host}:{via_port or port};branch={branch};rport",
        "Max-Forwards: 70",
        f"From: <sip:{user}@{DOMAIN}>;tag=f{call_id}",
        f"To: <sip:{user}@{DOMAIN}>",
        f"Call-ID: {call_id}",
        f"CSeq: {cseq} REGISTER",
    ]
    lines += [f"Contact: {c}" for c in contacts or []]
    if authorization is not None:
        lines.append(f"Authorization: {authorization}")
    if expires is not None:
        lines.append(f"Expires: {expires}")
    lines.append(f"Content-Length: {content_length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


@dataclass
class Reply:
    """A response read leniently: a refusal copies the request's malformed headers as they were
    (§8.2.6.2), which our own parser would rightly refuse."""

    status: int
    fields: list[tuple[str, str]]
    size: int

    def get(self, name: str) -> str | None:
        values = self.get_all(name)
        return values[0] if values else None

    def get_all(self, name: str) -> list[str]:
        return [v for n, v in self.fields if canonical(n) == canonical(name)]


def head_of(data: bytes) -> Reply:
    head = data.partition(b"\r\n\r\n")[0].decode("utf-8", "replace").split("\r\n")
    version, status, _ = (head[0].split(" ", 2) + [""])[:3]
    assert version == "SIP/2.0", head[0]
    fields = [(n.strip(), v.strip()) for n, _, v in (line.partition(":") for line in head[1:])]
    return Reply(int(status), fields, len(data))


def response_of(data: bytes) -> Reply:
    return head_of(data)


def answer(challenges: list[str], options: dict[str, object]) -> dict[str, object]:
    """``options`` of a REGISTER with the Authorization that answers the registrar's 401
    (issue 14: every user here has ``PASSWORD``, MD5)."""
    value = authorization(md5_challenge(challenges), method="REGISTER", uri=f"sip:{DOMAIN}",
                          username=str(options.get("user", "carol")))
    return {**options, "authorization": value}


class UdpClient:
    def __init__(self, host: str, server: tuple[str, int]) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, 0))
        self.sock.settimeout(5)
        self.address: tuple[str, int] = self.sock.getsockname()
        self.server = server

    def exchange(self, data: bytes) -> bytes:
        self.sock.sendto(data, self.server)
        reply, _ = self.sock.recvfrom(65535)
        return reply

    def register(self, **options: object) -> tuple[bytes, bytes]:
        """A REGISTER, and after a 401 (issue 14) the same with its digest answer: the last
        request sent and its reply."""
        data = register(self.address, **options)  # type: ignore[arg-type]
        reply = self.exchange(data)
        first = response_of(reply)
        if first.status == 401:
            data = register(self.address, **answer(first.get_all("WWW-Authenticate"), options))  # type: ignore[arg-type]
            reply = self.exchange(data)
        return data, reply

    def silent(self, data: bytes, wait: float = 1.0) -> bool:
        """True if ``data`` draws no datagram within ``wait`` seconds."""
        self.sock.sendto(data, self.server)
        self.sock.settimeout(wait)
        try:
            self.sock.recvfrom(65535)
        except TimeoutError:
            return True
        finally:
            self.sock.settimeout(5)
        return False

    def close(self) -> None:
        self.sock.close()


class TcpClient:
    def __init__(self, host: str, server: tuple[str, int]) -> None:
        self.sock = socket.create_connection(server, timeout=5, source_address=(host, 0))
        self.address: tuple[str, int] = self.sock.getsockname()
        self.buffer = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def register(self, **options: object) -> Reply:
        """A REGISTER over TCP, and after a 401 (issue 14) the same with its digest answer."""
        self.send(register(self.address, transport="TCP", **options))  # type: ignore[arg-type]
        reply = self.response()
        if reply.status == 401:
            self.send(register(self.address, transport="TCP",
                               **answer(reply.get_all("WWW-Authenticate"), options)))  # type: ignore[arg-type]
            reply = self.response()
        return reply

    def response(self) -> Reply:
        while b"\r\n\r\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            assert chunk, "connection closed before a response"
            self.buffer += chunk
        reply = head_of(self.buffer)
        reply.size = self.buffer.index(b"\r\n\r\n") + 4 + int(reply.get("Content-Length") or "0")
        while len(self.buffer) < reply.size:
            self.buffer += self.sock.recv(65536)
        self.buffer = self.buffer[reply.size :]
        return reply

    def closed_by_server(self) -> bool:
        """True once the server has closed (EOF or reset); data still buffered is drained."""
        try:
            while self.sock.recv(65536):
                pass
        except ConnectionResetError:
            pass
        return True

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(scope="module")
def serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    # issue 14: the registrar authenticates; carol and dave have the test password
    store = Configuration(gateway=GatewaySettings(dialback_secret="sip-hardening-secret"),
                          users=(sip_user("carol"), sip_user("dave")))
    process = start_serve(tmp_path_factory.mktemp("sip-hardening"), address=SERVER, store=store)
    yield process
    process.stop()


def sip_server(serve: ServeProcess) -> tuple[str, int]:
    return (serve.address, serve.sip_port)


def assert_register_works(serve: ServeProcess, client_host: str, *, call_id: str) -> None:
    client = UdpClient(client_host, sip_server(serve))
    try:
        contact = f"<sip:carol@{client.address[0]}:{client.address[1]}>"
        _, data = client.register(call_id=call_id, contacts=[contact])
        assert response_of(data).status == 200
    finally:
        client.close()
    serve.assert_serving()


# -- against edgeproxy serve -------------------------------------------------------------------


@pytest.mark.parametrize("port", ["²", "５０６０", "99999"])  # ² ended the loop; ５０６０ was taken as 5060
def test_unparsable_via_gets_400_and_the_next_register_is_served(serve: ServeProcess, port: str) -> None:
    client = UdpClient(CLIENTS[0], sip_server(serve))
    try:
        bad = register(client.address, call_id="via-1", via_port=port)
        reply = response_of(client.exchange(bad))
        assert reply.status == 400
        assert reply.get("Call-ID") == "via-1"
        assert reply.size <= len(bad)  # the Warning naming the cause did not fit: left out
    finally:
        client.close()
    assert_register_works(serve, CLIENTS[0], call_id="via-2")


@pytest.mark.parametrize(
    ("field", "options"),
    [
        ("CSeq", {"cseq": "²7"}),
        ("CSeq", {"cseq": "３"}),
        ("Content-Length", {"content_length": "３"}),
        ("Content-Length", {"content_length": "²"}),
        ("Expires", {"expires": "²"}),
        ("Expires", {"expires": "3６00"}),
    ],
)
def test_non_ascii_digit_in_a_number_gets_400_over_udp(
    serve: ServeProcess, field: str, options: dict[str, str]
) -> None:
    client = UdpClient(CLIENTS[1], sip_server(serve))
    call_id = f"digit-{field}-{ord(next(iter(options.values()))[0])}"
    try:
        bad, data = client.register(call_id=call_id, **options)  # Expires: after the digest
        reply = response_of(data)
        assert reply.status == 400
        assert reply.get("Call-ID") == call_id
        assert reply.size <= len(bad)
    finally:
        client.close()
    assert_register_works(serve, CLIENTS[1], call_id=f"{call_id}-after")


@pytest.mark.parametrize(
    ("field", "options", "closed"),
    [
        ("CSeq", {"cseq": "²7"}, True),  # the parser refuses the head: no resynchronising a stream
        ("Content-Length", {"content_length": "３"}, True),
        ("port", {"via_port": "²"}, True),
        ("Expires", {"expires": "²"}, False),  # found by the registrar in a well-framed request
    ],
)
def test_non_ascii_digit_over_tcp_gets_400_and_a_new_connection_is_served(
    serve: ServeProcess, field: str, options: dict[str, str], closed: bool
) -> None:
    client = TcpClient(CLIENTS[2], sip_server(serve))
    try:
        reply = client.register(call_id="tcp-bad", **options)  # Expires: after the digest
        assert reply.status == 400
        assert reply.get("Call-ID") == "tcp-bad"
        assert field in (reply.get("Warning") or "")  # over TCP the full answer, with its cause
        if closed:
            assert client.closed_by_server()
        else:
            assert client.register(call_id="tcp-same", expires="0").status == 200
    finally:
        client.close()
    again = TcpClient(CLIENTS[2], sip_server(serve))
    try:
        assert again.register(call_id="tcp-new", expires="0").status == 200
    finally:
        again.close()
    serve.assert_serving()


def test_a_datagram_that_names_no_request_is_dropped_and_counted(serve: ServeProcess) -> None:
    before = serve.metric("edgeproxy_sip_malformed_total", transport="udp", answer="dropped")
    client = UdpClient(CLIENTS[3], sip_server(serve))
    try:
        assert client.silent(b"\x00\xffNOT SIP AT ALL\r\nVia: \xb2\r\n\r\n")
    finally:
        client.close()
    deadline = time.monotonic() + 5
    while serve.metric("edgeproxy_sip_malformed_total", transport="udp", answer="dropped") <= before:
        assert time.monotonic() < deadline, "the dropped datagram was not counted"
        time.sleep(0.05)
    assert_register_works(serve, CLIENTS[3], call_id="after-garbage")


def test_small_register_over_udp_draws_no_more_bytes_than_it_sent(serve: ServeProcess) -> None:
    # Ten bindings with long contacts, over TCP (the registrar's limit per AoR is ten).
    padding = "x" * 1200
    contacts = [f"<sip:dave@{CLIENTS[4]}:{5000 + i};pad={padding}>" for i in range(10)]
    tcp = TcpClient(CLIENTS[4], sip_server(serve))
    try:
        assert tcp.register(user="dave", call_id="amp-tcp", contacts=contacts).status == 200
        # over TCP a query still lists every binding (§10.3 step 8): this is what UDP used to get
        full = tcp.register(user="dave", call_id="amp-tcp", cseq="2", expires=None)
        assert len(full.get_all("Contact")) == 10
        full_bytes = full.size
    finally:
        tcp.close()
    udp = UdpClient(CLIENTS[5], sip_server(serve))
    try:
        query, reply = udp.register(user="dave", call_id="amp-udp", expires=None)
        assert response_of(reply).status == 200
        assert len(reply) <= len(query), (len(reply), len(query))
        assert full_bytes > 10 * len(query)  # what §10.3 step 8 would have sent
        # naming one of them: that one is listed, and the answer is still no larger
        named, reply = udp.register(user="dave", call_id="amp-udp", cseq="2", contacts=[contacts[3]])
        listed = response_of(reply).get_all("Contact")
        assert len(listed) == 1 and ":5003;" in listed[0]
        assert len(reply) <= len(named), (len(reply), len(named))
    finally:
        udp.close()
    serve.assert_serving()


# -- in process: a raising parser or handler at each boundary ----------------------------------


class Events:
    """A real event log into memory, and its records."""

    def __init__(self) -> None:
        self.stream = io.StringIO()
        self.log = EventLog(self.stream, output="json")
        self.telemetry = Telemetry(Metrics(), self.log)

    def records(self, event_id: str) -> list[dict[str, object]]:
        out = []
        for line in self.stream.getvalue().splitlines():
            record = json.loads(line)
            if record.get("id") == event_id:
                out.append(record)
        return out

    async def wait_for(self, event_id: str, **fields: str) -> dict[str, object]:
        with trio.fail_after(5):
            while True:
                for record in self.records(event_id):
                    if all(record.get(k) == v for k, v in fields.items()):
                        return record
                await trio.sleep(0.02)

    def failures(self, surface: str) -> float:
        return self.telemetry.metrics.value("edgeproxy_input_failures_total", surface=surface) or 0.0


async def start_gateway(nursery: trio.Nursery, events: Events) -> tuple[GatewayService, tuple[str, int]]:
    service = GatewayService(sip_domains=(DOMAIN,), sip_host=SERVER, sip_port=0, telemetry=events.telemetry,
                             sip_users=every_user(DOMAIN))
    address = await EdgePeer().run_gateway(nursery, service, SERVER)
    return service, address


async def udp_exchange(client: trio.socket.SocketType, server: tuple[str, int], data: bytes) -> Reply:
    await client.sendto(data, server)
    with trio.fail_after(5):
        reply, _ = await client.recvfrom(65535)
    return response_of(reply)


async def udp_register(
    client: trio.socket.SocketType, server: tuple[str, int], address: tuple[str, int], **options: object
) -> tuple[Reply, bytes]:
    """A REGISTER, and after a 401 (issue 14) the same with its digest answer: the reply and the
    last request sent."""
    data = register(address, **options)  # type: ignore[arg-type]
    reply = await udp_exchange(client, server, data)
    if reply.status == 401:
        data = register(address, **answer(reply.get_all("WWW-Authenticate"), options))  # type: ignore[arg-type]
        reply = await udp_exchange(client, server, data)
    return reply, data


async def tcp_register(
    stream: trio.SocketStream, parser: SipParser, address: tuple[str, int], **options: object
) -> SipResponse | None:
    """A REGISTER over TCP, and after a 401 (issue 14) the same with its digest answer."""
    await stream.send_all(register(address, transport="TCP", **options))  # type: ignore[arg-type]
    reply = await tcp_response(stream, parser)
    if reply is not None and reply.status == 401:
        options = answer(reply.headers.get_all("WWW-Authenticate"), options)
        await stream.send_all(register(address, transport="TCP", **options))  # type: ignore[arg-type]
        reply = await tcp_response(stream, parser)
    return reply


async def udp_client(host: str) -> tuple[trio.socket.SocketType, tuple[str, int]]:
    client = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    await client.bind((host, 0))
    return client, client.getsockname()


async def tcp_client(host: str, server: tuple[str, int]) -> tuple[trio.SocketStream, tuple[str, int]]:
    sock = trio.socket.socket()
    await sock.bind((host, 0))
    await sock.connect(server)
    return trio.SocketStream(sock), sock.getsockname()


async def tcp_response(stream: trio.SocketStream, parser: SipParser) -> SipResponse | None:
    """The next response on ``stream`` (well-formed: these are 500s and 200s), or None if the
    server closes the connection first."""
    with trio.fail_after(5):
        while (message := parser.next_message()) is None:
            try:
                chunk = await stream.receive_some(65536)
            except trio.BrokenResourceError:  # reset
                return None
            if not chunk:
                return None
            parser.feed(chunk)
    assert isinstance(message, SipResponse)
    return message


def boom_if(marker: str, original):  # type: ignore[no-untyped-def]
    """``original``, except that it raises RuntimeError for an input carrying ``marker``."""

    def patched(*args, **kwargs):  # type: ignore[no-untyped-def]
        if any(marker.encode() in arg if isinstance(arg, bytes) else marker in str(arg) for arg in args):
            raise RuntimeError(f"injected failure for {marker}")
        return original(*args, **kwargs)

    return patched


async def test_a_raising_datagram_parser_gets_500_and_ep1007_and_the_next_datagram_is_served(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    events = Events()
    monkeypatch.setattr(sip_transport, "parse_datagram", boom_if("boom-parse", sip_transport.parse_datagram))
    async with trio.open_nursery() as nursery:
        _, server = await start_gateway(nursery, events)
        client, address = await udp_client(CLIENTS[6])
        reply = await udp_exchange(client, server, register(address, call_id="boom-parse"))
        assert (reply.status, reply.get("Call-ID")) == (500, "boom-parse")
        record = await events.wait_for("EP1007", surface="sip-datagram")
        assert "injected failure" in str(record.get("error"))
        assert events.failures("sip-datagram") == 1
        reply, _ = await udp_register(client, server, address, call_id="fine", expires="0")
        assert reply.status == 200
        nursery.cancel_scope.cancel()
    events.log.close()


async def test_a_raising_transaction_lookup_gets_500_and_ep1007_and_the_next_datagram_is_served(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    events = Events()
    monkeypatch.setattr(sip_transport, "server_key", boom_if("boom-key", sip_transport.server_key))
    async with trio.open_nursery() as nursery:
        _, server = await start_gateway(nursery, events)
        client, address = await udp_client(CLIENTS[6])
        reply = await udp_exchange(client, server, register(address, call_id="boom-key"))
        assert (reply.status, reply.get("Call-ID")) == (500, "boom-key")
        await events.wait_for("EP1007", surface="sip-datagram")
        reply, _ = await udp_register(client, server, address, call_id="fine", expires="0")
        assert reply.status == 200
        nursery.cancel_scope.cancel()
    events.log.close()


async def test_a_raising_stream_parser_closes_that_connection_only_with_ep1007(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class BoomParser(SipParser):
        def feed(self, data: bytes) -> None:
            if b"boom-stream" in data:
                raise RuntimeError("injected failure in the stream parser")
            super().feed(data)

    events = Events()
    monkeypatch.setattr(sip_transport, "SipParser", BoomParser)
    async with trio.open_nursery() as nursery:
        _, server = await start_gateway(nursery, events)
        bystander, by_address = await tcp_client(CLIENTS[7], server)
        victim, address = await tcp_client(CLIENTS[8], server)
        await victim.send_all(register(address, transport="TCP", call_id="boom-stream"))
        assert await tcp_response(victim, SipParser()) is None  # closed, nothing else
        record = await events.wait_for("EP1007", surface="sip-connection")
        assert "injected failure" in str(record.get("error"))
        # the other connection, open all along, and a new one are served
        by = await tcp_register(bystander, SipParser(), by_address, call_id="by", expires="0")
        assert by is not None and by.status == 200
        fresh, fresh_address = await tcp_client(CLIENTS[8], server)
        again = await tcp_register(fresh, SipParser(), fresh_address, call_id="fresh", expires="0")
        assert again is not None and again.status == 200
        nursery.cancel_scope.cancel()
    events.log.close()


async def test_a_raising_dispatch_on_a_connection_gets_500_then_closes_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    events = Events()
    monkeypatch.setattr(sip_transport, "server_key", boom_if("boom-tcp", sip_transport.server_key))
    async with trio.open_nursery() as nursery:
        _, server = await start_gateway(nursery, events)
        victim, address = await tcp_client(CLIENTS[8], server)
        parser = SipParser()
        await victim.send_all(register(address, transport="TCP", call_id="boom-tcp"))
        reply = await tcp_response(victim, parser)
        assert reply is not None and (reply.status, reply.headers.get("Call-ID")) == (500, "boom-tcp")
        assert await tcp_response(victim, parser) is None
        await events.wait_for("EP1007", surface="sip-connection")
        fresh, fresh_address = await tcp_client(CLIENTS[8], server)
        again = await tcp_register(fresh, SipParser(), fresh_address, call_id="fresh", expires="0")
        assert again is not None and again.status == 200
        nursery.cancel_scope.cancel()
    events.log.close()


@pytest.mark.parametrize(("transport", "surface"), [("UDP", "sip-datagram"), ("TCP", "sip-connection")])
async def test_a_raising_request_handler_gets_500_on_its_transaction_and_ep1007(
    monkeypatch: pytest.MonkeyPatch, transport: str, surface: str
) -> None:
    events = Events()
    async with trio.open_nursery() as nursery:
        service, server = await start_gateway(nursery, events)
        real = service.sip.handler

        async def handler(request: SipRequest, ctx: sip_transport.ServerContext) -> None:
            if request.call_id == "boom-handler":
                raise RuntimeError("injected failure in the transaction user")
            await real(request, ctx)

        monkeypatch.setattr(service.sip, "handler", handler)
        if transport == "UDP":
            client, address = await udp_client(CLIENTS[6])
            # (issue 14: the handler runs only for an authenticated request)
            reply, sent = await udp_register(client, server, address, call_id="boom-handler")
            assert reply.status == 500
            # the transaction keeps its 500: a retransmission gets it again, the handler is not rerun
            again = await udp_exchange(client, server, sent)
            assert again.status == 500
            reply, _ = await udp_register(client, server, address, call_id="fine", expires="0")
        else:
            stream, address = await tcp_client(CLIENTS[7], server)
            parser = SipParser()
            reply = await tcp_register(stream, parser, address, call_id="boom-handler")  # type: ignore[assignment]
            assert reply is not None and reply.status == 500
            # the same connection goes on: the failure was the transaction's, not the connection's
            reply = await tcp_register(stream, parser, address, call_id="fine", expires="0")  # type: ignore[assignment]
        assert reply is not None and reply.status == 200
        record = await events.wait_for("EP1007", surface=surface)
        assert "transaction user" in str(record.get("error"))
        assert events.failures(surface) == 1
        nursery.cancel_scope.cancel()
    events.log.close()
