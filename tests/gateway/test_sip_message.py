"""SIP message parser/serializer: valid messages, chunked streams, malformed input, limits."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgeproxy.gateway.sip.message import (
    MAX_BODY_BYTES,
    Headers,
    SipParseError,
    SipParser,
    SipRequest,
    SipResponse,
    parse_datagram,
    response_to,
    serialize,
)

MESSAGE = (
    b"MESSAGE sip:bob@sip.test SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 127.0.0.1:5092;branch=z9hG4bK-1\r\n"
    b"f: <sip:alice@sip.test>;tag=1\r\n"
    b"To: <sip:bob@sip.test>\r\n"
    b"Call-ID: abc@127.0.0.1\r\n"
    b"CSeq: 1 MESSAGE\r\n"
    b"Subject: long\r\n subject\r\n"
    b"Content-Type: text/plain;charset=UTF-8\r\n"
    b"Content-Length: 7\r\n"
    b"\r\n"
    b"hello\r\n"
)


def test_request_is_parsed_with_compact_and_folded_headers() -> None:
    message = parse_datagram(MESSAGE)
    assert isinstance(message, SipRequest)
    assert (message.method, message.uri) == ("MESSAGE", "sip:bob@sip.test")
    assert message.headers.get("From") == "<sip:alice@sip.test>;tag=1"
    assert message.headers.get("subject") == "long subject"
    assert message.body == b"hello\r\n"
    assert message.cseq == (1, "MESSAGE")


def test_serialize_then_parse_gives_the_same_message() -> None:
    message = parse_datagram(MESSAGE)
    again = parse_datagram(serialize(message))
    assert again == message


def test_response_copies_the_dialog_headers_and_adds_a_to_tag() -> None:
    request = parse_datagram(MESSAGE)
    assert isinstance(request, SipRequest)
    response = response_to(request, 200, to_tag="xyz")
    parsed = parse_datagram(serialize(response))
    assert isinstance(parsed, SipResponse)
    assert (parsed.status, parsed.reason) == (200, "OK")
    assert parsed.headers.get("To") == "<sip:bob@sip.test>;tag=xyz"
    assert parsed.headers.get("Via") == "SIP/2.0/UDP 127.0.0.1:5092;branch=z9hG4bK-1"
    assert parsed.headers.get("Content-Length") == "0"


def test_datagram_without_content_length_takes_the_rest() -> None:
    data = MESSAGE.replace(b"Content-Length: 7\r\n", b"")
    assert parse_datagram(data).body == b"hello\r\n"


@given(st.lists(st.integers(min_value=1, max_value=40), min_size=1, max_size=50))
def test_stream_parser_handles_any_chunking(cuts: list[int]) -> None:
    data = b"\r\n" + MESSAGE + MESSAGE
    parser = SipParser()
    out = []
    pos = 0
    for cut in cuts + [len(data)]:
        parser.feed(data[pos : pos + cut])
        pos += cut
        while (message := parser.next_message()) is not None:
            out.append(message)
        if pos >= len(data):
            break
    assert len(out) == 2
    assert out[0] == out[1] == parse_datagram(MESSAGE)


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"MESSAGE sip:bob@sip.test\r\n\r\n", 400),
        (MESSAGE.replace(b"SIP/2.0\r\n", b"SIP/3.0\r\n", 1), 505),
        (MESSAGE.replace(b"CSeq: 1 MESSAGE", b"CSeq: 1 INVITE"), 400),
        (MESSAGE.replace(b"CSeq: 1 MESSAGE", b"CSeq: one MESSAGE"), 400),
        (MESSAGE.replace(b"Call-ID: abc@127.0.0.1\r\n", b""), 400),
        (MESSAGE.replace(b"Content-Length: 7", b"Content-Length: 70"), 400),
        (MESSAGE.replace(b"Content-Length: 7", b"Content-Length: -1"), 400),
        (MESSAGE.replace(b"To: ", b"To : ").replace(b"To : ", b"T o: "), 400),
        (MESSAGE.replace(b"\r\n\r\n", b"\r\n"), 400),
        (b"SIP/2.0 99 Odd\r\nVia: x\r\n\r\n", 400),
        (b"\xff\xfe MESSAGE\r\n\r\n", 400),
    ],
)
def test_malformed_datagrams_are_refused_with_a_status(data: bytes, status: int) -> None:
    with pytest.raises(SipParseError) as info:
        parse_datagram(data)
    assert info.value.status == status


def test_too_many_headers_are_refused() -> None:
    extra = b"".join(b"X-H%d: v\r\n" % i for i in range(200))
    data = MESSAGE.replace(b"To: ", extra + b"To: ")
    with pytest.raises(SipParseError) as info:
        parse_datagram(data)
    assert info.value.status == 513


def test_oversized_head_is_refused_before_its_end_arrives() -> None:
    parser = SipParser(max_head_bytes=1024)
    parser.feed(b"MESSAGE sip:x SIP/2.0\r\nX: " + b"a" * 2000)
    with pytest.raises(SipParseError) as info:
        parser.next_message()
    assert info.value.status == 513


def test_body_over_the_limit_is_refused_from_its_content_length() -> None:
    data = MESSAGE.replace(b"Content-Length: 7", b"Content-Length: %d" % (MAX_BODY_BYTES + 1))
    parser = SipParser()
    parser.feed(data)
    with pytest.raises(SipParseError) as info:
        parser.next_message()
    assert info.value.status == 413


def test_stream_without_content_length_is_refused() -> None:
    parser = SipParser()
    parser.feed(MESSAGE.replace(b"Content-Length: 7\r\n", b""))
    with pytest.raises(SipParseError):
        parser.next_message()


def test_stream_parser_stays_dead_after_an_error() -> None:
    parser = SipParser()
    parser.feed(b"garbage\r\n\r\n")
    with pytest.raises(SipParseError):
        parser.next_message()
    with pytest.raises(SipParseError):
        parser.feed(MESSAGE)


def test_headers_lookup_is_case_insensitive_and_ordered() -> None:
    headers = Headers()
    headers.add("Via", "a")
    headers.add("v", "b")
    headers.add("Contact", "c")
    assert headers.get_all("VIA") == ["a", "b"]
    assert headers.remove_first("via") == "a"
    headers.set("contact", "d")
    assert headers.items == [("v", "b"), ("contact", "d")]
