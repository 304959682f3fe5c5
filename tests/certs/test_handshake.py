"""Failed TLS handshakes read the same on every surface (``certs.handshake``): the reason, and the
alert the peer receives — S2S STARTTLS included (it used to drop the connection without the alert
and name the failure in its own words)."""

from __future__ import annotations

import io
import json
import ssl
from pathlib import Path

import pytest
import trio

from edgeproxy.certs import selfsigned
from edgeproxy.certs.contexts import TlsRole, tls_context
from edgeproxy.certs.handshake import tls_failure
from edgeproxy.certs.pem import certificates_pem, private_key_pem
from edgeproxy.net.connector import Connector, ConnectorSettings
from edgeproxy.net.context import EdgeContext
from edgeproxy.net.delivery import MemoryDelivery
from edgeproxy.net.edge import EdgeServer, bound_port
from edgeproxy.ops.events import EventLog
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
from edgeproxy.policy.snapshot import build_snapshot

HEADER = (
    b"<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams'"
    b" from='fabrikam.test' to='contoso.test' version='1.0'>"
)


def test_the_reason_is_openssls_in_words_or_the_timeout() -> None:
    alert = ssl.SSLError(1, "[SSL: TLSV1_ALERT_UNKNOWN_CA] tlsv1 alert unknown ca")
    alert.reason = "TLSV1_ALERT_UNKNOWN_CA"
    broken = trio.BrokenResourceError()
    broken.__cause__ = alert
    assert tls_failure(broken) == "tlsv1 alert unknown ca"  # what trio.SSLStream raises
    assert tls_failure(alert) == "tlsv1 alert unknown ca"  # the SSL error itself
    assert tls_failure(trio.TooSlowError()) == "TLS handshake timed out"


def edge_files(tmp: Path) -> tuple[Path, Path, Path]:
    ca, key = selfsigned.make_authority("contoso CA"), selfsigned.new_ec_key()
    (tmp / "edge.pem").write_bytes(certificates_pem([selfsigned.issue(ca, key.public_key(), ["contoso.test"])]))
    (tmp / "edge.key").write_bytes(private_key_pem(key))
    (tmp / "ca.pem").write_bytes(certificates_pem([ca.certificate]))
    return tmp / "edge.pem", tmp / "edge.key", tmp / "ca.pem"


def no_shared_cipher() -> ssl.SSLContext:
    """A TLS client offering only a cipher the edge does not accept (RSA key exchange)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers("AES256-SHA")
    return ctx


async def read_until(stream: trio.SocketStream, marker: bytes) -> bytes:
    data = b""
    while marker not in data and (chunk := await stream.receive_some(4096)):
        data += chunk
    return data


async def test_an_s2s_peer_failing_the_handshake_gets_the_alert_and_the_event_names_the_reason(
    tmp_path: Path,
) -> None:
    cert, key, trust = edge_files(tmp_path)
    config = Configuration(
        gateway=GatewaySettings(dialback_secret="s"),
        partners=(Partner(domain="fabrikam.test", type=PartnerType.FEDERATED, proxy_fqdn="127.0.0.1:9",
                          tls=Negotiation.REQUIRED, sasl=Negotiation.NOT_SUPPORTED, dialback=True),),
        policies=(AccessPolicy(identity="global", xmpp=True, federation=True),),
        users=(User(sip="sip:alice@contoso.test"),),
    )
    snapshot = build_snapshot(config, ["contoso.test"])
    ctx = EdgeContext(
        policy=lambda: snapshot, connector=Connector(ConnectorSettings(timeout=5)), delivery=MemoryDelivery(),
        server_ssl=tls_context(TlsRole.S2S_SERVER, cert, key, trust),
        client_ssl=tls_context(TlsRole.S2S_CLIENT, cert, key, trust),
    )
    output = io.StringIO()
    event_log = EventLog(output, output="json")
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            edge = EdgeServer(ctx, Telemetry(event_log=event_log))
            port = bound_port(await nursery.start(edge.run, [("127.0.0.1", 0)]))
            peer = await trio.open_tcp_stream("127.0.0.1", port)
            await peer.send_all(HEADER)
            assert b"<starttls" in await read_until(peer, b"</stream:features>")
            await peer.send_all(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
            assert b"<proceed" in await read_until(peer, b"/>")
            tls = trio.SSLStream(peer, no_shared_cipher(), server_hostname="contoso.test")
            with pytest.raises(trio.BrokenResourceError) as refused:
                await tls.do_handshake()
            await trio.aclose_forcefully(tls)
            while not [e for e in events(output, event_log) if e["id"] == "EP2004"]:
                await trio.sleep(0.02)
            nursery.cancel_scope.cancel()
    event_log.close()
    # The peer was told why (OpenSSL's alert), not just dropped ...
    assert isinstance(refused.value.__cause__, ssl.SSLError)
    assert refused.value.__cause__.reason == "SSLV3_ALERT_HANDSHAKE_FAILURE"
    # ... and the event says it as SIP and the loopback channel do (certs.handshake.tls_failure).
    [event] = [e for e in events(output, event_log) if e["id"] == "EP2004"]
    assert event["reason"] == "no shared cipher"


def events(output: io.StringIO, event_log: EventLog) -> list[dict[str, object]]:
    event_log.flush()
    return [json.loads(line) for line in output.getvalue().splitlines() if line.strip()]
