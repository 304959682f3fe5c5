"""The tokenizer's public API: routing view, stream header, errors, restarts, element view."""

from __future__ import annotations

import pathlib
import pickle

import pytest

from edgeproxy.tokenizer import (
    NS_STREAMS,
    NS_XML,
    Element,
    Stanza,
    StreamClose,
    StreamOpen,
    Tokenizer,
    TokenizerError,
)

HEADER = (
    b"<?xml version='1.0'?><stream:stream xmlns='jabber:server' "
    b"xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' "
    b"from='example.org' to='example.net' id='s1' version='1.0' xml:lang='en'>"
)


def _stanzas(tokens: list) -> list[Stanza]:
    return [t for t in tokens if isinstance(t, Stanza)]


def test_stream_open_exposes_header_attributes_and_namespaces() -> None:
    (so,) = Tokenizer().feed(HEADER)
    assert isinstance(so, StreamOpen)
    assert so.qname == "stream:stream"
    assert (so.name, so.namespace) == ("stream", NS_STREAMS)
    assert (so.to, so.from_, so.id, so.version, so.lang) == (
        "example.net", "example.org", "s1", "1.0", "en",
    )
    assert so.attrs[f"{{{NS_XML}}}lang"] == "en"
    assert so.namespaces == {
        "": "jabber:server",
        "stream": NS_STREAMS,
        "db": "jabber:server:dialback",
    }
    assert so.default_namespace == "jabber:server"
    assert so.raw.startswith(b"<stream:stream ") and so.raw.endswith(b">")


def test_routing_view_decodes_entities_and_keeps_raw_bytes_exact() -> None:
    raw = (
        b"<message to='a&amp;b@example.net' from=\"x@example.org/r&#x31;\" type='chat' "
        b"id='m&lt;1'><body>hi</body></message>"
    )
    (st,) = _stanzas(Tokenizer().feed(HEADER + raw))
    assert st.raw == raw
    assert (st.name, st.namespace) == ("message", "jabber:server")
    assert (st.to, st.from_, st.type, st.id) == ("a&b@example.net", "x@example.org/r1", "chat", "m<1")


def test_absent_routing_attributes_are_none_and_prefixed_ones_are_ignored() -> None:
    raw = b"<db:result xmlns:x='urn:x' x:to='no' from='a.example'>key</db:result>"
    (st,) = _stanzas(Tokenizer().feed(HEADER + raw))
    assert (st.name, st.namespace) == ("result", "jabber:server:dialback")
    assert st.to is None and st.type is None and st.id is None
    assert st.from_ == "a.example"


def test_stream_close_is_emitted_once_and_the_tokenizer_reports_closed() -> None:
    t = Tokenizer()
    tokens = t.feed(HEADER + b"<iq type='get' id='1'/></stream:stream>\n")
    assert isinstance(tokens[-1], StreamClose)
    assert t.closed and t.depth == 0


def test_an_error_is_sticky_until_reset_and_reset_starts_a_new_stream() -> None:
    t = Tokenizer()
    with pytest.raises(TokenizerError) as first:
        t.feed(HEADER + b"<message><!-- no --></message>")
    assert first.value.condition == "restricted-xml"
    with pytest.raises(TokenizerError) as again:
        t.feed(b"<message/>")
    assert again.value is first.value
    t.reset()
    assert isinstance(t.feed(HEADER)[0], StreamOpen)


def test_tokens_completed_before_an_error_travel_with_the_error() -> None:
    t = Tokenizer()
    with pytest.raises(TokenizerError) as exc:
        t.feed(HEADER + b"<presence/><message>&nbsp;</message>")
    kinds = [type(x) for x in exc.value.tokens]
    assert kinds == [StreamOpen, Stanza]
    assert exc.value.offset == len(HEADER) + len(b"<presence/><message>")


def test_tokenizer_error_pickles_with_its_condition_and_offset() -> None:
    err = TokenizerError("x", "bad-format", 7)
    back = pickle.loads(pickle.dumps(err))
    assert (back.condition, back.offset, str(back)) == ("bad-format", 7, "x")


def test_feed_while_halted_keeps_bytes_for_the_caller() -> None:
    t = Tokenizer()
    t.feed(HEADER + b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
    assert t.halted and t.trailing_bytes == b""
    assert t.feed(b"\x16\x03\x01") == []
    assert t.trailing_bytes == b"\x16\x03\x01"
    t.reset()
    assert not t.halted and t.trailing_bytes == b""


def test_sasl_success_is_a_restart_point_but_failure_is_not() -> None:
    sasl = b"urn:ietf:params:xml:ns:xmpp-sasl"
    t = Tokenizer()
    t.feed(HEADER + b"<failure xmlns='" + sasl + b"'><not-authorized/></failure>")
    assert not t.halted
    t.feed(b"<success xmlns='" + sasl + b"'/>")
    assert t.halted


@pytest.mark.parametrize(
    "limits",
    [{"max_stanza_bytes": 10}, {"max_depth": 1}, {"max_attributes": 2}, {"max_name_bytes": 3}],
)
def test_limits_too_small_to_carry_a_stream_are_refused(limits: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        Tokenizer(**limits)


def test_counters_track_bytes_and_keepalive_whitespace() -> None:
    t = Tokenizer()
    t.feed(HEADER)
    t.feed(b" \n\t ")
    t.feed(b"<iq id='1' type='get'/>  ")
    assert t.whitespace_bytes == 6
    assert t.bytes_fed == len(HEADER) + 4 + len(b"<iq id='1' type='get'/>  ")
    assert t.buffered_bytes == 0


def test_element_view_navigation_and_equality() -> None:
    raw = (
        b"<message to='a@b'><body xml:lang='de'>Hallo <b>du</b>!</body>"
        b"<x xmlns='urn:x'><item n='1'/><item n='2'/></x></message>"
    )
    (st,) = _stanzas(Tokenizer().feed(HEADER + raw))
    el = st.element()
    assert el.tag == "{jabber:server}message"
    body = el.find("body")
    assert body is not None and body.text == "Hallo !"
    assert body.get(f"{{{NS_XML}}}lang") == "de"
    assert [e.get("n") for e in el.find("x", "urn:x").findall("item")] == ["1", "2"]
    assert el.find("x", "jabber:server") is None
    assert len(el.elements()) == 2
    assert el == st.element() and el is not st.element()


def test_element_append_merges_adjacent_text() -> None:
    el = Element("body", "jabber:client")
    el.append("a")
    el.append("")
    el.append("b")
    el.append(Element("br", "jabber:client"))
    el.append("c")
    assert el.children == ["ab", Element("br", "jabber:client"), "c"]
    with pytest.raises(TypeError):
        el.append(42)  # type: ignore[arg-type]


def test_only_the_tokenizer_module_imports_the_compiled_extension() -> None:
    src = pathlib.Path(__file__).resolve().parents[1] / "src" / "edgeproxy"
    importers = sorted(
        p.relative_to(src).as_posix()
        for p in src.rglob("*.py")
        if "_fastxml" in p.read_text(encoding="utf-8")
    )
    assert importers == ["tokenizer.py"]
