"""The benchmark's light SIP UA (bench/_sip_ua.py) speaks what the gateway accepts: its digest
answers verify with the gateway's own authenticator (nonce reused with an incrementing nc, a
replayed count refused as stale), its messages and answers parse with the gateway's parser, and
it tells a retransmitted MESSAGE from a new one. No sockets: the UA's handlers are fed bytes."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from _sip_ua import LightUA, parse, split_stream  # noqa: E402
from edgeproxy.gateway.sip.digest import (  # noqa: E402
    Accepted,
    Challenge,
    DigestAuthenticator,
    make_ha1,
    parse_credentials,
)
from edgeproxy.gateway.sip.message import SipRequest, parse_datagram  # noqa: E402

DOMAIN, SOURCE, PASSWORD = "contoso.test", "127.0.0.112", "ua-test-password"
TARGET = "sip:romeo@load1.test"


def ua() -> LightUA:
    agent = LightUA("alice", DOMAIN, PASSWORD, transport="udp", host=SOURCE, server=("127.0.0.70", 5060))
    agent.local_port = 40000
    return agent


def challenge_for(request: bytes, values: list[str]) -> bytes:
    """The gateway's 407 to ``request``: its Via, From, To, Call-ID, CSeq and the challenges."""
    parsed = parse(request)
    head = ["SIP/2.0 407 Proxy Authentication Required", *parsed.lines["via"], parsed.lines["from"][0],
            parsed.lines["to"][0] + ";tag=auth", parsed.lines["call-id"][0], parsed.lines["cseq"][0],
            *(f"Proxy-Authenticate: {v}" for v in values), "Content-Length: 0"]
    return ("\r\n".join(head) + "\r\n\r\n").encode()


def verify(authenticator: DigestAuthenticator, data: bytes, now: float) -> object:
    request = parse_datagram(data)
    assert isinstance(request, SipRequest)
    credentials = parse_credentials(request.headers.get("Proxy-Authorization") or "")
    assert credentials.algorithm == "MD5"  # the UA answers the MD5 challenge of the two offered
    return authenticator.verify(
        credentials, method=request.method, request_uri=request.uri, realm=DOMAIN,
        ha1=make_ha1("MD5", "alice", DOMAIN, PASSWORD), now=now, source=SOURCE,
    )


async def test_a_challenged_message_is_sent_again_and_later_ones_reuse_the_nonce() -> None:
    authenticator, now = DigestAuthenticator(), 1000.0
    agent = ua()
    first = agent._build(agent._new("MESSAGE", TARGET, f"<{TARGET}>", body="#1:0.5# hi"))
    assert b"Proxy-Authorization" not in first  # no nonce yet
    out: list[bytes] = []
    agent._on_data(challenge_for(first, authenticator.challenges(DOMAIN, now, SOURCE)), out)
    assert agent.challenged == 1 and len(out) == 1
    again = parse_datagram(out[0])
    assert again.headers.get("CSeq") == "2 MESSAGE" and again.body == b"#1:0.5# hi"
    assert isinstance(verify(authenticator, out[0], now), Accepted)
    second = agent._build(agent._new("MESSAGE", TARGET, f"<{TARGET}>", body="#2:0.6# hi"))
    assert "nc=00000002" in parse_datagram(second).headers.get("Proxy-Authorization")
    assert isinstance(verify(authenticator, second, now), Accepted)
    replay = verify(authenticator, second, now)
    assert isinstance(replay, Challenge) and replay.stale


async def test_a_message_is_answered_200_and_a_retransmission_is_counted() -> None:
    agent = ua()
    bodies: list[bytes] = []
    agent.on_message = lambda body, now: bodies.append(body)
    message = (
        b"MESSAGE sip:alice@127.0.0.112:40000 SIP/2.0\r\n"
        b"Via: SIP/2.0/UDP 127.0.0.70:5060;branch=z9hG4bKabc;rport\r\n"
        b"Max-Forwards: 70\r\nFrom: <sip:juliet@load1.test>;tag=f1\r\nTo: <sip:alice@contoso.test>\r\n"
        b"Call-ID: c1@edgeproxy\r\nCSeq: 1 MESSAGE\r\nContent-Type: text/plain\r\nContent-Length: 9\r\n\r\n"
        b"#7:1.0# x"
    )
    out: list[bytes] = []
    agent._on_data(message, out)
    agent._on_data(message, out)
    assert bodies == [b"#7:1.0# x"] and agent.received == 1 and agent.retransmissions_received == 1
    assert len(out) == 2
    answer = parse_datagram(out[0])
    assert answer.status == 200 and answer.headers.get("Call-ID") == "c1@edgeproxy"
    assert ";tag=" in (answer.headers.get("To") or "")


def test_a_tcp_stream_is_split_on_content_length() -> None:
    one = b"MESSAGE sip:a@b SIP/2.0\r\nContent-Length: 3\r\n\r\nabc"
    two = b"SIP/2.0 200 OK\r\ncontent-length: 0\r\n\r\n"
    buffer = bytearray(b"\r\n" + one + two + one[:20])
    assert split_stream(buffer) == [one, two]
    assert bytes(buffer) == one[:20]
    buffer += one[20:]
    assert split_stream(buffer) == [one] and not buffer
