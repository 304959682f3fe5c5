"""Issue 13 on the S2S surface, each over real sockets against ``edgeproxy serve`` (role both):
one connection can no longer stop, amplify through or lock out anything, and the process is
alive and serving afterwards.

* a STARTTLS peer whose certificate ``cryptography`` refuses to parse (a DER-encoded default
  value; a repeated extension in the chain) gets a stream on which SASL EXTERNAL is simply not
  offered, with event EP2007 — it used to kill the listener nursery and the process;
* the same certificate on a partner's server that we dial: the link fails, the edge goes on;
* one unauthenticated stream repeating the same ``<db:result>`` 3,000 times causes one
  verification connection, not 3,000;
* 20 idle sockets whose header claims a partner take none of its slots: the real partner still
  authenticates and exchanges stanzas;
* beyond ``preauth-per-ip`` unauthenticated connections from one address, and beyond
  ``preauth-total`` in all, a new connection gets ``resource-constraint`` at once;
* a peer that never reads is closed after ``write-timeout`` (EP6003) instead of holding its slot;
* reads before authentication are shaped to ``preauth-rate``.

Addresses: the edge on 127.0.0.40, the in-process fabrikam.test edge on 127.0.0.41, abusers on
127.0.0.42–49.
"""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from _bad_certs import bad_certificate
from test_channel_hardening import message as channel_message

from edgeproxy.loopback.frames import StanzaBatch
from edgeproxy.net.connector import ConnectorSettings
from edgeproxy.net.delivery import MemoryDelivery
from edgeproxy.policy.model import (
    AccessPolicy,
    Configuration,
    GatewaySettings,
    Negotiation,
    Partner,
    PartnerType,
    User,
)
from edgeproxy.policy.snapshot import build_snapshot
from edgeproxy.s2s import wire
from edgeproxy.tokenizer import Element
from edgeproxy.xmpp.namespaces import NS_SERVER
from fixtures.channel_peer import gateway_peer
from fixtures.edges import build_edge, run_edge
from fixtures.ports import free_port
from fixtures.serve import EdgeCertificates, ServeProcess, start_serve

EDGE = "127.0.0.40"
FABRIKAM = "127.0.0.41"
ABUSERS = [f"127.0.0.{n}" for n in range(42, 50)]
FAB_SECRET = "fabrikam-dialback-secret"
REQ, OPT, NOS = Negotiation.REQUIRED, Negotiation.OPTIONAL, Negotiation.NOT_SUPPORTED
TCP_DIALBACK = {"tls": NOS, "sasl": NOS, "dialback": True}

HEADER = (
    b"<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams'"
    b" xmlns:db='jabber:server:dialback' from='fabrikam.test' to='contoso.test' version='1.0'>"
)


def store(fabrikam_port: int, row: dict[str, object] = TCP_DIALBACK, **gateway: int) -> Configuration:
    return Configuration(
        gateway=GatewaySettings(dialback_secret="contoso-secret", **gateway),
        partners=(Partner(domain="fabrikam.test", type=PartnerType.FEDERATED,
                          proxy_fqdn=f"{FABRIKAM}:{fabrikam_port}", **row),),  # type: ignore[arg-type]
        policies=(AccessPolicy(identity="global", xmpp=True, federation=True),),
        users=(User(sip="sip:alice@contoso.test"),),
    )


@pytest.fixture
def serve_factory(tmp_path: Path) -> Iterator[list[ServeProcess]]:
    started: list[ServeProcess] = []
    yield started
    for serve in started:
        serve.stop()


def start(started: list[ServeProcess], tmp_path: Path, **kwargs: object) -> ServeProcess:
    serve = start_serve(tmp_path / "edge", address=EDGE, **kwargs)  # type: ignore[arg-type]
    started.append(serve)
    return serve


# -- a scripted raw peer ----------------------------------------------------------------------


def connect(serve: ServeProcess, source: str = ABUSERS[0], rcvbuf: int | None = None) -> socket.socket:
    sock = socket.socket()
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.bind((source, 0))
    sock.settimeout(10)
    sock.connect((serve.address, serve.s2s_port))
    return sock


def read_until(sock: socket.socket | ssl.SSLSocket, marker: bytes, limit: float = 10) -> bytes:
    data = b""
    deadline = time.monotonic() + limit
    while marker not in data and time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except (TimeoutError, ConnectionResetError):
            break
        if not chunk:
            break
        data += chunk
    return data


def stream_id_of(features: bytes) -> str:
    return features.split(b" id='", 1)[1].split(b"'", 1)[0].decode()


# -- an in-process partner edge (real sockets, real dialback) -------------------------------


def fabrikam_snapshot(edge_port: int):  # type: ignore[no-untyped-def]
    config = Configuration(
        gateway=GatewaySettings(dialback_secret=FAB_SECRET),
        partners=(Partner(domain="contoso.test", type=PartnerType.FEDERATED,
                          proxy_fqdn=f"{EDGE}:{edge_port}", **TCP_DIALBACK),),  # type: ignore[arg-type]
        policies=(AccessPolicy(identity="global", xmpp=True, federation=True),),
        users=(User(sip="sip:bob@fabrikam.test"),),
    )
    return build_snapshot(config, ["fabrikam.test"])


class CountingFabrikam:
    """fabrikam.test's edge, counting every connection it accepts (verifications included)."""

    def __init__(self, edge_port: int) -> None:
        self.holder = [fabrikam_snapshot(edge_port)]
        self.delivery = MemoryDelivery()
        self.server = build_edge(lambda: self.holder[0], self.delivery,
                                 ConnectorSettings(attempt_delay=0.05, timeout=5))
        self.accepted = 0
        inner = self.server.inbound

        async def counted(stream: trio.abc.Stream) -> None:
            self.accepted += 1
            await inner(stream)

        self.server.inbound = counted  # type: ignore[assignment]
        self.port = 0

    async def start(self, nursery: trio.Nursery, port: int) -> None:
        self.port = await run_edge(nursery, self.server, FABRIKAM, port)

    def received(self) -> list[bytes]:
        got = []
        while True:
            try:
                got.append(self.delivery._receive.receive_nowait().raw)  # noqa: SLF001
            except trio.WouldBlock:
                return got


# -- peer certificates ------------------------------------------------------------------------


def tls_client(sock: socket.socket, cert: Path, key: Path) -> ssl.SSLSocket:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.load_cert_chain(str(cert), str(key))
    return ctx.wrap_socket(sock, server_hostname="contoso.test")


@pytest.mark.parametrize("kind", ["explicit_default", "duplicate_extension_in_chain"])
def test_a_peer_certificate_cryptography_cannot_parse_is_judged_bad_and_the_edge_goes_on(
    tmp_path: Path, serve_factory: list[ServeProcess], kind: str
) -> None:
    row = {"tls": REQ, "sasl": OPT, "dialback": True}
    serve = start(serve_factory, tmp_path, store=store(free_port(FABRIKAM), row),
                  certificates=EdgeCertificates(tmp_path / "pki"))
    if kind == "explicit_default":
        cert, key = bad_certificate("explicit_default", "fabrikam.test", tmp_path)
    else:
        # OpenSSL will not present a leaf with a repeated extension, but sends one in the chain;
        # the edge parses the chain's certificates as intermediates.
        from edgeproxy.certs import selfsigned
        from edgeproxy.certs.pem import certificates_pem, private_key_pem

        bad, _ = bad_certificate("duplicate_extension", "fabrikam.test", tmp_path)
        issuer = selfsigned.make_authority("Leaf CA")
        leaf_key = selfsigned.new_ec_key()
        leaf = selfsigned.issue(issuer, leaf_key.public_key(), ["fabrikam.test"])
        cert, key = tmp_path / "chain.pem", tmp_path / "leaf.key"
        cert.write_bytes(certificates_pem([leaf]) + bad.read_bytes())
        key.write_bytes(private_key_pem(leaf_key))
    for _ in range(2):  # the second connection proves the listener survived the first
        sock = connect(serve)
        sock.sendall(HEADER)
        assert b"<starttls" in read_until(sock, b"</stream:features>")
        sock.sendall(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
        assert b"<proceed" in read_until(sock, b"<proceed")
        tls = tls_client(sock, cert, key)
        tls.sendall(HEADER)
        features = read_until(tls, b"</stream:features>")
        assert b"</stream:features>" in features
        assert b"EXTERNAL" not in features  # no SASL with a certificate we cannot read
        assert b"<dialback" in features  # TLS dialback stays possible (row 7)
        tls.close()
    if kind == "explicit_default":
        record = serve.wait_for_event("EP2007", direction="inbound")
        assert str(record["reason"]).startswith("bad-certificate: ValueError")
    serve.assert_serving()


async def test_a_partner_server_with_an_unparsable_certificate_fails_only_its_link(
    tmp_path: Path, serve_factory: list[ServeProcess]
) -> None:
    """Outbound: we dial fabrikam's server, it presents the bad certificate after STARTTLS."""
    cert, key = bad_certificate("explicit_default", "fabrikam.test", tmp_path)
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(str(cert), str(key))
    listener = (await trio.open_tcp_listeners(0, host=FABRIKAM))[0]
    port = listener.socket.getsockname()[1]
    row = {"tls": REQ, "sasl": REQ, "dialback": False}
    serve = await trio.to_thread.run_sync(lambda: start(
        serve_factory, tmp_path, store=store(port, row), certificates=EdgeCertificates(tmp_path / "pki"),
        role="edge"))
    handshakes = 0

    async def fabrikam_server(stream: trio.SocketStream) -> None:
        nonlocal handshakes
        with trio.move_on_after(10):
            data = b""
            while b"<stream:stream" not in data:
                data += await stream.receive_some(4096)
            await stream.send_all(
                b"<?xml version='1.0'?><stream:stream xmlns='jabber:server' xmlns:stream="
                b"'http://etherx.jabber.org/streams' from='fabrikam.test' to='contoso.test' id='s1'"
                b" version='1.0'><stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'>"
                b"<required/></starttls></stream:features>")
            data = b""
            while b"<starttls" not in data:
                data += await stream.receive_some(4096)
            await stream.send_all(b"<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
            tls = trio.SSLStream(stream, server_ctx, server_side=True)
            await tls.do_handshake()
            handshakes += 1
            data = b""
            while b"<stream:stream" not in data:
                data += await tls.receive_some(4096)
            await tls.send_all(
                b"<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams'"
                b" from='fabrikam.test' to='contoso.test' id='s2' version='1.0'><stream:features>"
                b"<mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><mechanism>EXTERNAL</mechanism>"
                b"</mechanisms></stream:features>")
            with trio.move_on_after(5):
                while await tls.receive_some(4096):
                    pass

    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, fabrikam_server, [listener])
        # alice writes to bob@fabrikam.test through the channel (the test is the gateway): the
        # edge dials fabrikam
        async with gateway_peer(serve) as gw:
            await gw.send(StanzaBatch((channel_message(1, to="bob@fabrikam.test"),)))
            record = await trio.to_thread.run_sync(lambda: serve.wait_for_event("EP2007", timeout=20))
        assert record["direction"] == "outbound"
        assert handshakes >= 1
        nursery.cancel_scope.cancel()
    await trio.to_thread.run_sync(serve.assert_serving)


# -- dialback -----------------------------------------------------------------------------------


async def test_one_stream_repeating_a_db_result_causes_one_verification_connection(
    tmp_path: Path, serve_factory: list[ServeProcess]
) -> None:
    """Issue 13: 3,000 repeats of one db:result used to open 3,000 connections to the partner."""
    fabrikam_port = free_port(FABRIKAM)
    serve = await trio.to_thread.run_sync(lambda: start(serve_factory, tmp_path, store=store(fabrikam_port)))
    fabrikam = CountingFabrikam(serve.s2s_port)
    async with trio.open_nursery() as nursery:
        await fabrikam.start(nursery, fabrikam_port)
        stream, request = await claim_fabrikam(serve, ABUSERS[2])
        repeats = 3000
        answers = b""

        async def reader() -> None:
            nonlocal answers
            while answers.count(b"type='valid'") < repeats:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    return
                answers += chunk

        with trio.move_on_after(30):
            async with trio.open_nursery() as io:
                io.start_soon(reader)
                await stream.send_all(request * repeats)
        # Every repeat is answered (the first after its verification, the rest at once)…
        assert answers.count(b"type='valid'") == repeats
        # …and fabrikam's authoritative server saw one verification connection, not 3,000.
        assert fabrikam.accepted == 1
        await stream.aclose()
        nursery.cancel_scope.cancel()
    await trio.to_thread.run_sync(serve.assert_serving)


async def read_stream(stream: trio.SocketStream, marker: bytes) -> bytes:
    data = b""
    with trio.move_on_after(10):
        while marker not in data:
            chunk = await stream.receive_some(65536)
            if not chunk:
                break
            data += chunk
    return data


async def claim_fabrikam(serve: ServeProcess, source: str) -> tuple[trio.SocketStream, bytes]:
    """A raw stream from ``source`` claiming fabrikam.test, and the db:result with the right key
    for it (XEP-0185, fabrikam's secret): (stream, request bytes, not sent yet)."""
    stream = await trio.open_tcp_stream(EDGE, serve.s2s_port, local_address=source)
    await stream.send_all(HEADER)
    features = await read_stream(stream, b"</stream:features>")
    key = wire.dialback_key(FAB_SECRET, "contoso.test", "fabrikam.test", stream_id_of(features))
    return stream, wire.db_result_request(from_="fabrikam.test", to="contoso.test", key=key)


# -- partner slots ------------------------------------------------------------------------------


async def test_sockets_that_only_claim_a_partner_do_not_lock_the_real_partner_out(
    tmp_path: Path, serve_factory: list[ServeProcess]
) -> None:
    """Issue 13: 20 idle sockets with from='fabrikam.test' used to take all 20 of fabrikam's
    slots (SPEC §3 partner connection limit), and the real partner got resource-constraint."""
    fabrikam_port = free_port(FABRIKAM)
    serve = await trio.to_thread.run_sync(lambda: start(serve_factory, tmp_path, store=store(fabrikam_port)))
    fabrikam = CountingFabrikam(serve.s2s_port)
    squatters: list[trio.SocketStream] = []
    async with trio.open_nursery() as nursery:
        await fabrikam.start(nursery, fabrikam_port)
        for _ in range(20):
            squatter = await trio.open_tcp_stream(EDGE, serve.s2s_port, local_address=ABUSERS[3])
            await squatter.send_all(HEADER)
            assert b"</stream:features>" in await read_stream(squatter, b"</stream:features>")
            squatters.append(squatter)
        # the real fabrikam.test writes to alice: its stream authenticates by dialback and the
        # stanza reaches the gateway (alice is not registered: the error comes back to bob)
        await fabrikam.server.router.send_from_local(Element(
            "message", NS_SERVER, {"from": "bob@fabrikam.test/x", "to": "alice@contoso.test",
                                   "type": "chat", "id": "m1"},
            [Element("body", NS_SERVER, {}, ["hello"])]))
        with trio.fail_after(15):
            while not fabrikam.received():
                await trio.sleep(0.05)
        links = [link for link in fabrikam.server.pool.links.values() if link.remote == "contoso.test"]
        assert links and links[0].session is not None and links[0].session.ready.is_set()
        assert links[0].session.error_received is None  # not resource-constraint
        for squatter in squatters:
            await squatter.aclose()
        nursery.cancel_scope.cancel()
    await trio.to_thread.run_sync(serve.assert_serving)


# -- pre-authentication connection caps ---------------------------------------------------------


def test_unauthenticated_connections_beyond_the_per_ip_limit_get_resource_constraint_and_the_total_evicts(
    tmp_path: Path, serve_factory: list[ServeProcess]
) -> None:
    serve = start(serve_factory, tmp_path, store=store(free_port(FABRIKAM)),
                  extra="[limits]\npreauth-per-ip = 5\npreauth-total = 8\n")
    held = []
    for _ in range(5):
        sock = connect(serve, ABUSERS[4])
        sock.sendall(HEADER)
        assert b"</stream:features>" in read_until(sock, b"</stream:features>")
        held.append(sock)
    sixth = connect(serve, ABUSERS[4])
    refused = read_until(sixth, b"</stream:stream>")
    assert b"<resource-constraint xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>" in refused
    # another address still gets in; at the total of unauthenticated connections (8) a new one
    # evicts the oldest unauthenticated connection instead of being refused, so that a flood
    # cannot keep a partner's new stream out
    for _ in range(3):
        sock = connect(serve, ABUSERS[5])
        sock.sendall(HEADER)
        assert b"</stream:features>" in read_until(sock, b"</stream:features>")
        held.append(sock)
    ninth = connect(serve, ABUSERS[6])
    ninth.sendall(HEADER)
    assert b"</stream:features>" in read_until(ninth, b"</stream:features>")
    oldest = held[0]
    oldest.settimeout(5)
    assert oldest.recv(4096) == b""  # aborted: closed without more data
    assert serve.metric("edgeproxy_limit_reached_total", limit="preauth-per-ip") >= 1
    assert serve.metric("edgeproxy_limit_reached_total", limit="preauth-total") >= 1
    # closing them frees the slots again
    for sock in [*held, sixth, ninth]:
        sock.close()
    deadline = time.monotonic() + 10
    while True:
        sock = connect(serve, ABUSERS[4])
        sock.sendall(HEADER)
        data = read_until(sock, b"</stream:features>")
        sock.close()
        if b"</stream:features>" in data:
            break
        assert time.monotonic() < deadline, "the slots were not given back"
        time.sleep(0.2)
    serve.assert_serving()


# -- a peer that does not read ------------------------------------------------------------------


def test_a_peer_that_never_reads_is_closed_after_the_write_timeout(
    tmp_path: Path, serve_factory: list[ServeProcess]
) -> None:
    """Issue 13: the session blocked in send_all held the send lock, so even the establishment
    timer's close() waited forever. db:verify requests are answered by the edge itself (it is
    authoritative for contoso.test); a peer asks thousands and never reads the answers."""
    serve = start(serve_factory, tmp_path, store=store(free_port(FABRIKAM)),
                  extra="[limits]\nwrite-timeout = 2.0\npreauth-rate = 0\n")
    sock = connect(serve, ABUSERS[7], rcvbuf=4096)
    sock.sendall(HEADER)
    read_until(sock, b"</stream:features>")
    verify = wire.db_verify_request(from_="fabrikam.test", to="contoso.test", stream_id="x" * 32,
                                    key="0" * 64)
    sock.setblocking(False)
    deadline = time.monotonic() + 20
    closed = False
    chunk = verify * 200
    while time.monotonic() < deadline:
        try:
            sock.send(chunk)
        except BlockingIOError:
            time.sleep(0.05)
            continue
        except (BrokenPipeError, ConnectionResetError):
            closed = True
            break
    assert closed, "the edge never closed a peer that does not read"
    record = serve.wait_for_event("EP6003", timeout=15)
    assert record["direction"] == "inbound"
    sock.close()
    serve.assert_serving()


# -- shaping ------------------------------------------------------------------------------------


def test_reads_before_authentication_are_shaped_to_the_preauth_rate(
    tmp_path: Path, serve_factory: list[ServeProcess]
) -> None:
    serve = start(serve_factory, tmp_path, store=store(free_port(FABRIKAM)),
                  extra="[limits]\npreauth-rate = 2048\npreauth-burst = 2048\n")
    sock = connect(serve, ABUSERS[0])
    sock.sendall(HEADER)
    read_until(sock, b"</stream:features>")
    started = time.monotonic()
    # 10 KiB of whitespace (allowed between top-level elements), then a request the edge answers
    sock.sendall(b" " * 10240 + wire.db_verify_request(
        from_="fabrikam.test", to="contoso.test", stream_id="y" * 32, key="0" * 64))
    answer = read_until(sock, b"type='", limit=20)  # <db:verify … type='invalid'/>
    elapsed = time.monotonic() - started
    assert b"<db:verify" in answer and b"type='" in answer
    # 2 KiB at once, then 2 KiB/s: the answer cannot come before ~4 s (unshaped: milliseconds)
    assert 3.0 <= elapsed < 10.0, elapsed
    sock.close()
    serve.assert_serving()


async def test_an_authoritative_server_that_refuses_at_once_gives_an_error_verdict(
    tmp_path: Path, serve_factory: list[ServeProcess]
) -> None:
    """Found by the soak test: when the partner's server sent its features and a stream error in
    one write (a partner at its connection limit), the verification stream raised
    LocalProtocolError ('db:verify goes on a ready initiating stream') and the process ended."""
    listener = (await trio.open_tcp_listeners(0, host=FABRIKAM))[0]
    port = listener.socket.getsockname()[1]
    serve = await trio.to_thread.run_sync(lambda: start(serve_factory, tmp_path, store=store(port)))

    async def refusing_authority(stream: trio.SocketStream) -> None:
        with trio.move_on_after(10):
            data = b""
            while b"<stream:stream" not in data:
                data += await stream.receive_some(4096)
            await stream.send_all(
                b"<?xml version='1.0'?><stream:stream xmlns='jabber:server' xmlns:db='jabber:server:dialback'"
                b" xmlns:stream='http://etherx.jabber.org/streams' from='fabrikam.test' to='contoso.test'"
                b" id='v1' version='1.0'><stream:features><dialback xmlns='urn:xmpp:features:dialback'/>"
                b"</stream:features><stream:error><resource-constraint"
                b" xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error></stream:stream>")
            await stream.aclose()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, refusing_authority, [listener])
        for _ in range(3):
            stream, request = await claim_fabrikam(serve, ABUSERS[1])
            await stream.send_all(request)
            answer = b""
            with trio.move_on_after(10):
                while b"</db:result>" not in answer and b"type='invalid'" not in answer:
                    answer += await stream.receive_some(4096)
            assert b"type='error'" in answer or b"type='invalid'" in answer
            await stream.aclose()
        nursery.cancel_scope.cancel()
    await trio.to_thread.run_sync(serve.assert_serving)
    assert not serve.events("EP1007")


async def test_pending_verifications_from_one_address_are_capped(
    tmp_path: Path, serve_factory: list[ServeProcess]
) -> None:
    """dialback-per-ip: streams from one address may keep only so many verifications pending
    (each costs a connection to the partner); the next asking stream gets resource-constraint,
    another address is not affected."""
    listener = (await trio.open_tcp_listeners(0, host=FABRIKAM))[0]
    port = listener.socket.getsockname()[1]
    serve = await trio.to_thread.run_sync(lambda: start(
        serve_factory, tmp_path, store=store(port), extra="[limits]\ndialback-per-ip = 2\n"))
    held: list[trio.SocketStream] = []

    async def silent_authority(stream: trio.SocketStream) -> None:
        held.append(stream)  # accepts the verification connection and never answers
        await trio.sleep_forever()

    async def ask(source: str) -> tuple[trio.SocketStream, bytes]:
        stream, request = await claim_fabrikam(serve, source)
        await stream.send_all(request)
        answer = b""
        with trio.move_on_after(2):
            while chunk := await stream.receive_some(4096):
                answer += chunk
        return stream, answer

    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, silent_authority, [listener])
        first, a1 = await ask(ABUSERS[6])
        second, a2 = await ask(ABUSERS[6])
        third, a3 = await ask(ABUSERS[6])
        other, a4 = await ask(ABUSERS[7])
        assert b"stream:error" not in a1 + a2 + a4  # pending, unanswered
        assert b"<resource-constraint xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>" in a3
        assert len(held) == 3  # the refused one caused no connection to the partner
        for stream in (first, second, third, other):
            await stream.aclose()
        nursery.cancel_scope.cancel()
    assert await trio.to_thread.run_sync(
        lambda: serve.metric("edgeproxy_limit_reached_total", limit="dialback-per-ip")) >= 1
    await trio.to_thread.run_sync(serve.assert_serving)
