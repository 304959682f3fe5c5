"""SIP message parser/serializer: valid messages, chunked streams, malformed input, limits."""

from __future__ import annotations

import contextlib

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
    minimal_response,
    parse_cseq,
    parse_datagram,
    parse_uint,
    parse_uint_or,
    response_from_head,
    response_to,
    serialize,
)
from edgeproxy.gateway.sip.uri import (
    _general_via,
    _plain_via,
    parse_name_addr,
    parse_uri,
    parse_via,
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


# -- issue 13: numbers are ASCII, malformed headers are SipParseError and nothing else --------


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (b"CSeq: 1 MESSAGE", "CSeq: ²7 MESSAGE".encode()),
        (b"CSeq: 1 MESSAGE", "CSeq: ３ MESSAGE".encode()),
        (b"CSeq: 1 MESSAGE", b"CSeq: 2147483648 MESSAGE"),  # §8.1.1.5: under 2**31
        (b"CSeq: 1 MESSAGE", b"CSeq: 1" + b"0" * 5000 + b" MESSAGE"),  # int() would refuse it
        (b"CSeq: 1 MESSAGE", b"CSeq: 1MESSAGE"),
        (b"Content-Length: 7", "Content-Length: ３".encode()),
        (b"Content-Length: 7", "Content-Length: ²".encode()),
        (b"Content-Length: 7", b"Content-Length: 7" + b"0" * 5000),
        (b"Content-Length: 7", b"Content-Length: +7"),
        (b"Via: SIP/2.0/UDP 127.0.0.1:5092", "Via: SIP/2.0/UDP 127.0.0.1:５０９２".encode()),
        (b"Via: SIP/2.0/UDP 127.0.0.1:5092", "Via: SIP/2.0/UDP 127.0.0.1:²".encode()),
        (b"Via: SIP/2.0/UDP 127.0.0.1:5092", b"Via: SIP/2.0/UDP 127.0.0.1:70000"),
        (b"Via: SIP/2.0/UDP 127.0.0.1:5092", b"Via: SIP/2.0/UDP 127.0.0.1:"),
        (b"Via: SIP/2.0/UDP 127.0.0.1:5092", b"Via: SIP/2.0/UDP ;"),
        (b"Via: SIP/2.0/UDP 127.0.0.1:5092", b"Via: SIP/2.0 127.0.0.1"),
        (b"Via: SIP/2.0/UDP 127.0.0.1:5092", b"Via: SIP/2.0/UDP ho<st"),
        (b"Via: SIP/2.0/UDP 127.0.0.1:5092", b"Via: ,"),
        (b";branch=z9hG4bK-1", ";branch=z9hG4bK-1;rport=²".encode()),
        (b"f: <sip:alice@sip.test>;tag=1", b"f: <sip:alice@sip.test;tag=1"),
        (b"f: <sip:alice@sip.test>;tag=1", b'f: "Alice <sip:alice@sip.test>'),
        (b"f: <sip:alice@sip.test>;tag=1", b"f: alice"),
        (b"To: <sip:bob@sip.test>", b"To: <>"),
        (b"Call-ID: abc@127.0.0.1", b"Call-ID: abc def"),
    ],
)
def test_malformed_numbers_and_mandatory_headers_are_refused_with_400(old: bytes, new: bytes) -> None:
    data = MESSAGE.replace(old, new)
    assert data != MESSAGE
    with pytest.raises(SipParseError) as info:
        parse_datagram(data)
    assert info.value.status == 400
    assert info.value.head is not None  # what the transport answers from


def test_non_ascii_status_code_is_refused() -> None:
    data = "SIP/2.0 ２00 OK\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nFrom: <sip:a@b>;tag=1\r\n"
    data += "To: <sip:a@b>\r\nCall-ID: x\r\nCSeq: 1 MESSAGE\r\n\r\n"
    with pytest.raises(SipParseError):
        parse_datagram(data.encode())


@pytest.mark.parametrize(
    "value",
    [
        "SIP / 2.0 / UDP 127.0.0.1:5092;branch=z9hG4bK-1",  # LWS around the slashes (§20.42)
        "SIP/2.0/TCP [2001:db8::1]:5060;branch=z9hG4bK-1;rport=5060",
        "SIP/2.0/UDP host.example;branch=z9hG4bK-1;received=192.0.2.1",
    ],
)
def test_well_formed_via_values_are_accepted(value: str) -> None:
    assert parse_via(value).branch == "z9hG4bK-1"


def test_display_name_may_hold_angle_brackets_when_quoted() -> None:
    addr = parse_name_addr('"A <b>, c" <sip:alice@sip.test>;tag=9')
    assert (addr.display, str(addr.uri), addr.tag) == ("A <b>, c", "sip:alice@sip.test", "9")


@pytest.mark.parametrize("port", ["²", "５０６０", "0", "65536", "1" * 12, "-5"])
def test_uri_port_must_be_ascii_digits_in_range(port: str) -> None:
    with pytest.raises(SipParseError):
        parse_uri(f"sip:bob@sip.test:{port}")


@pytest.mark.parametrize(("text", "expected"), [("42", 42), (" 7 ", 7), ("4294967295", 2**32 - 1)])
def test_parse_uint_reads_ascii_decimals(text: str, expected: int) -> None:
    assert parse_uint(text, "n") == expected


@pytest.mark.parametrize("text", ["", "²", "３", "٣", "4294967296", "1" * 11, "1_000", "0x10", "1e3", " "])
def test_parse_uint_refuses_anything_else(text: str) -> None:
    with pytest.raises(SipParseError):
        parse_uint(text, "n")
    assert parse_uint_or(text, -1) == -1


_HEADER_TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n"), max_size=60)


@given(via=_HEADER_TEXT, from_=_HEADER_TEXT, cseq=_HEADER_TEXT, length=_HEADER_TEXT)
def test_any_header_values_give_a_message_or_a_sip_parse_error(
    via: str, from_: str, cseq: str, length: str
) -> None:
    data = (
        f"REGISTER sip:contoso.test SIP/2.0\r\nVia: {via}\r\nFrom: {from_}\r\nTo: <sip:a@b>\r\n"
        f"Call-ID: x\r\nCSeq: {cseq}\r\nContent-Length: {length}\r\n\r\n"
    ).encode()
    for parse in (parse_datagram, _parse_stream):
        with contextlib.suppress(SipParseError):
            parse(data)


@given(st.binary(max_size=300))
def test_any_bytes_give_a_message_or_a_sip_parse_error(data: bytes) -> None:
    for parse in (parse_datagram, _parse_stream):
        with contextlib.suppress(SipParseError):
            parse(data)


@given(_HEADER_TEXT)
def test_uri_name_addr_and_via_parsers_raise_only_sip_parse_error(text: str) -> None:
    for parse in (parse_uri, parse_name_addr, parse_via, parse_cseq):
        with contextlib.suppress(SipParseError):
            parse(text)


def _parse_stream(data: bytes) -> None:
    parser = SipParser()
    parser.feed(data)
    parser.next_message()


def test_refusal_is_built_from_the_raw_head_with_a_to_tag() -> None:
    data = MESSAGE.replace(b"CSeq: 1 MESSAGE", "CSeq: ²7 MESSAGE".encode())
    with pytest.raises(SipParseError) as info:
        parse_datagram(data)
    assert info.value.head is not None
    response = response_from_head(info.value.head, info.value.status, to_tag="bad")
    assert response is not None
    assert response.status == 400
    assert response.headers.get("To") == "<sip:bob@sip.test>;tag=bad"
    assert response.headers.get("CSeq") == "²7 MESSAGE"  # copied as it came (§8.2.6.2)
    assert response.headers.get("Subject") is None


@pytest.mark.parametrize(
    "head",
    [
        MESSAGE.replace(b"Call-ID: abc@127.0.0.1\r\n", b"").partition(b"\r\n\r\n")[0],  # no Call-ID
        b"ACK sip:bob@sip.test SIP/2.0\r\nVia: x\r\nf: a\r\nTo: b\r\nCall-ID: c\r\nCSeq: 1 ACK",
        b"SIP/2.0 200 OK\r\nVia: x\r\nf: a\r\nTo: b\r\nCall-ID: c\r\nCSeq: 1 MESSAGE",
    ],
)
def test_no_refusal_without_the_five_headers_or_to_an_ack_or_a_response(head: bytes) -> None:
    assert response_from_head(head, 400, to_tag="bad") is None


def test_minimal_response_keeps_the_copied_headers_and_what_the_status_needs() -> None:
    request = parse_datagram(MESSAGE.replace(b"MESSAGE", b"REGISTER"))
    assert isinstance(request, SipRequest)
    ok = response_to(request, 200, "Fine Thanks", to_tag="t")
    ok.headers.add("Contact", "<sip:x@y>;expires=60")
    ok.body = b"body"
    small = minimal_response(ok)
    assert [name.lower() for name, _ in small.headers.items] == ["via", "f", "to", "call-id", "cseq"]
    assert (small.reason, small.body) == ("OK", b"")
    brief = response_to(request, 423, to_tag="t")
    brief.headers.add("Min-Expires", "60")
    brief.headers.add("Warning", '399 x "y"')
    assert minimal_response(brief).headers.get("Min-Expires") == "60"
    assert minimal_response(brief).headers.get("Warning") is None


_VIA_PIECES = st.sampled_from(
    ["SIP/2.0/", "SIP/2.0/UDP ", "TCP", "tls", " ", "\t", "\u00a0", "host", "10.0.0.1", "[::1]", ":",
     "5060", "0", "65536", ";", "branch=z9hG4bK-1", "rport", "=", "5061", "received=1.2.3.4", '"', ",",
     "RPort", "Branch", "x", "-", "."]
)


@given(st.lists(_VIA_PIECES, max_size=12).map("".join))
def test_the_usual_via_is_read_the_same_way_by_both_paths(value: str) -> None:
    # parse_via reads the usual value in one match (uri._plain_via); whatever that accepts, the
    # general rules must read the same way
    plain = _plain_via(value)
    if plain is not None:
        assert _general_via(value) == plain


@pytest.mark.parametrize(
    "value",
    [
        "SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK-1;rport",
        "SIP/2.0/tcp host;Branch=z9hG4bK-1;rport=5061;received=10.0.0.2",
        "SIP/2.0/TLS h.example.com;branch=a;branch=b",
    ],
)
def test_plain_vias_take_the_fast_path_and_agree(value: str) -> None:
    assert _plain_via(value) is not None
    assert _plain_via(value) == _general_via(value) == parse_via(value)


@pytest.mark.parametrize("value", ["SIP/2.0/UDP h:0", "SIP/2.0/UDP h:65536", "SIP/2.0/UDP h;rport=0"])
def test_a_bad_port_on_the_fast_path_is_still_refused(value: str) -> None:
    assert _plain_via(value) is None
    with pytest.raises(SipParseError):
        parse_via(value)
