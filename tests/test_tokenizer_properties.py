"""Property tests of the tokenizer (hypothesis).

The generator below writes random *valid* XMPP streams together with the element trees a
conforming parser must produce: random element and attribute names (multi-byte ones too),
prefixes declared where they are used or inherited, default-namespace changes and undeclaration,
attribute values and text that need escaping, written with every legal spelling (predefined
entities, decimal and hex character references, CDATA sections, raw multi-byte UTF-8, both
quote styles, whitespace inside tags, CRLF line ends). pyexpat with namespace processing is the
independent reference parser.
"""

from __future__ import annotations

import os
import re
import signal
import xml.parsers.expat as expat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from random import Random
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from _tokenizer_harness import (
    chunked,
    element_shape,
    feed_all,
    run_signature,
    split_at,
)
from edgeproxy.tokenizer import (
    NS_STREAMS,
    NS_XML,
    Stanza,
    StreamClose,
    StreamOpen,
    Tokenizer,
    TokenizerError,
)

NS_TLS = "urn:ietf:params:xml:ns:xmpp-tls"
NS_SASL = "urn:ietf:params:xml:ns:xmpp-sasl"

HEADER = (
    "<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams'"
    " xmlns:db='jabber:server:dialback' from='example.org' to='example.net' version='1.0'"
    " xml:lang='en'>"
)
STREAM_SCOPE = {"": "jabber:server", "stream": NS_STREAMS, "db": "jabber:server:dialback"}
CLOSE = "</stream:stream>"

# Every condition the tokenizer may send (RFC 6120 §4.9.3).
CONDITIONS = {
    "not-well-formed",
    "restricted-xml",
    "invalid-namespace",
    "bad-format",
    "unsupported-encoding",
    "policy-violation",
    "bad-namespace-prefix",
}

Shape = tuple[str, str, dict[str, str], list[Any]]

# --- names and characters ----------------------------------------------------------------------

NAME_START = "abcxyzABZ_éßΩжあ日"
NAME_REST = NAME_START + "0123456789-.·\u0301"
PREFIXES = ["p", "q", "ns0", "é", "a.b", "stream", "db"]
NAMESPACES = [
    "jabber:server",
    "jabber:client",
    "urn:a",
    "urn:b",
    "http://example.com/x?a=1&b=<2>",
    "urn:é:日本",
    "jabber:server:dialback",
]
SPECIAL = "<>&\"' \t\n\r]]é日😀\u00a0\ufeff\u2028\U0010fffd\x7f\x85"


def _xml_char(c: str) -> bool:
    cp = ord(c)
    return (
        cp in (9, 10, 13)
        or 0x20 <= cp <= 0xD7FF
        or 0xE000 <= cp <= 0xFFFD
        or 0x10000 <= cp <= 0x10FFFF
    )


names = st.builds(
    lambda a, b: a + b,
    st.sampled_from(NAME_START),
    st.text(alphabet=NAME_REST, max_size=6),
)
xml_text = st.text(
    alphabet=st.one_of(
        st.sampled_from(SPECIAL),
        st.characters(codec="utf-8").filter(_xml_char),
    ),
    max_size=24,
)

# --- writing values: every legal spelling of each character ------------------------------------

ENTITIES = {"<": "&lt;", ">": "&gt;", "&": "&amp;", '"': "&quot;", "'": "&apos;"}


def _ref(rnd: Random, c: str) -> str:
    form = rnd.choice(["dec", "hex", "HEX", "entity"])
    if form == "entity" and c in ENTITIES:
        return ENTITIES[c]
    if form == "dec":
        return f"&#{ord(c)};"
    return f"&#x{ord(c):x};" if form == "hex" else f"&#x{ord(c):X};"


def write_attr_value(rnd: Random, value: str, quote: str) -> str:
    """Spell ``value`` inside ``quote``; raw TAB/LF/CR would be normalised to a space, so those
    are references, while a space may be written as raw TAB, LF or CRLF (it parses back as a
    space, XML 1.0 §3.3.3)."""
    out = []
    for c in value:
        if c in "<&" or c == quote or c in "\t\n\r":
            out.append(_ref(rnd, c))
        elif c == " ":
            out.append(rnd.choice([" ", " ", "\t", "\n", "\r\n", "&#32;"]))
        elif rnd.randint(0, 4) == 0:
            out.append(_ref(rnd, c))
        else:
            out.append(c)
    return "".join(out)


def write_text(rnd: Random, text: str) -> str:
    """Spell ``text`` as content: raw, references, LF as CRLF, or (parts of it) as CDATA."""
    out: list[str] = []
    i = 0
    while i < len(text):
        if rnd.randint(0, 5) == 0:
            # a CDATA section for the next few characters (no CR: it would become LF)
            n = rnd.randint(0, 6)
            part = text[i : i + n]
            if "\r" not in part and "]]>" not in part and not part.endswith("]]"):
                out.append(f"<![CDATA[{part}]]>")
                i += len(part)
                continue
        c = text[i]
        i += 1
        if c in "<&\r":
            out.append(_ref(rnd, c))
        elif c == ">":
            # raw '>' is legal except right after ']]' (that would spell ']]>')
            tail = "".join(out)[-2:]
            out.append(_ref(rnd, c) if tail == "]]" or rnd.random() < 0.5 else c)
        elif c == "\n":
            out.append(rnd.choice(["\n", "\r\n", "&#10;", "&#xA;"]))
        elif rnd.randint(0, 6) == 0:
            out.append(_ref(rnd, c))
        else:
            out.append(c)
    return "".join(out)


def _ws(rnd: Random, min_size: int = 0) -> str:
    return "".join(rnd.choice(" \t\n") for _ in range(rnd.randint(min_size, 2)))


# --- writing elements ---------------------------------------------------------------------------


@dataclass
class Written:
    xml: str
    shape: Shape


ROUTING_NAMES = ["message", "presence", "iq"]
ROUTING_ATTRS = ["to", "from", "type", "id"]


def write_element(draw: st.DrawFn, scope: dict[str, str], depth: int) -> Written:
    """One random element in ``scope`` (prefix -> namespace, "" = default namespace); at depth 0
    often a routable stanza name with routing attributes."""
    top = depth == 0
    rnd = draw(st.randoms(use_true_random=False))
    local = draw(st.sampled_from(ROUTING_NAMES) | names) if top else draw(names)
    namespace = draw(st.sampled_from([*NAMESPACES, scope[""], ""]))
    decls: dict[str, str] = {}  # declarations written on this element
    inner = dict(scope)

    def declare(prefix: str, ns: str) -> None:
        decls[prefix] = ns
        inner[prefix] = ns

    # how the element name is spelled: an inherited prefix, a prefix declared here, or the
    # default namespace (declared here when it changes, sometimes redundantly)
    prefix = ""
    if namespace and draw(st.booleans()):
        bound = [p for p, ns in scope.items() if p and p != "xml" and ns == namespace]
        if bound and draw(st.booleans()):
            prefix = draw(st.sampled_from(bound))
        else:
            prefix = draw(st.sampled_from(PREFIXES))
            declare(prefix, namespace)
    elif scope[""] != namespace or draw(st.integers(0, 5)) == 0:
        declare("", namespace)
    qname = f"{prefix}:{local}" if prefix else local

    used = {prefix}  # prefixes this element's name and attributes are spelled with

    def may_declare(p: str) -> bool:
        # never rebind a prefix this element declared or uses already
        return p not in decls and p not in used

    if draw(st.integers(0, 4)) == 0:
        extra = draw(st.sampled_from(PREFIXES))
        if may_declare(extra):
            declare(extra, draw(st.sampled_from(NAMESPACES)))

    # attributes: unprefixed, xml:, or namespaced through a prefix bound here or inherited
    attrs: dict[str, str] = {}
    written_attrs: list[tuple[str, str]] = []
    for _ in range(draw(st.integers(0, 6 if top else 4))):
        kind = draw(st.sampled_from(["plain", "plain", "xml", "ns"]))
        alocal = draw(st.sampled_from(ROUTING_ATTRS) | names) if top else draw(names)
        if kind == "plain":
            key, aqname = alocal, alocal
        elif kind == "xml":
            alocal = draw(st.sampled_from(["lang", "space", alocal]))
            key, aqname = f"{{{NS_XML}}}{alocal}", f"xml:{alocal}"
        else:
            ans = draw(st.sampled_from(NAMESPACES))
            usable = [p for p, ns in inner.items() if p and ns == ans]
            if usable and draw(st.booleans()):
                aprefix = draw(st.sampled_from(usable))
            else:
                aprefix = draw(st.sampled_from(PREFIXES))
                if not may_declare(aprefix):
                    continue
                declare(aprefix, ans)
            key, aqname = f"{{{ans}}}{alocal}", f"{aprefix}:{alocal}"
            if key in attrs:
                continue
            used.add(aprefix)
        if key in attrs:
            continue
        value = draw(xml_text)
        attrs[key] = value
        written_attrs.append((aqname, value))

    items: list[str] = []
    for p, ns in decls.items():
        q = rnd.choice("'\"")
        dname = f"xmlns:{p}" if p else "xmlns"
        items.append(f"{dname}{_ws(rnd)}={_ws(rnd)}{q}{write_attr_value(rnd, ns, q)}{q}")
    for aqname, value in written_attrs:
        q = rnd.choice("'\"")
        items.append(f"{aqname}{_ws(rnd)}={_ws(rnd)}{q}{write_attr_value(rnd, value, q)}{q}")
    rnd.shuffle(items)
    start = "<" + qname + "".join(_ws(rnd, 1) + item for item in items) + _ws(rnd)

    children: list[Any] = []
    parts: list[str] = []
    if depth < 3:
        for _ in range(draw(st.integers(0, 3))):
            if draw(st.booleans()):
                text = draw(xml_text)
                if text:
                    parts.append(write_text(rnd, text))
                    if children and isinstance(children[-1], str):
                        children[-1] += text
                    else:
                        children.append(text)
            else:
                child = write_element(draw, inner, depth + 1)
                parts.append(child.xml)
                children.append(child.shape)
    if not parts and rnd.random() < 0.5:
        xml = start + "/>"
    else:
        xml = start + ">" + "".join(parts) + f"</{qname}{_ws(rnd)}>"
    return Written(xml, (local, namespace, attrs, children))


@st.composite
def stanzas(draw: st.DrawFn) -> Written:
    """A random top-level element."""
    return write_element(draw, dict(STREAM_SCOPE, xml=NS_XML), 0)


@dataclass
class GeneratedStream:
    data: bytes
    stanzas: list[Shape]
    whitespace: int  # whitespace bytes between header and close
    closed: bool


@st.composite
def streams(draw: st.DrawFn, max_stanzas: int = 4) -> GeneratedStream:
    decl = draw(
        st.sampled_from(["", "<?xml version='1.0'?>", '<?xml version="1.0" encoding="UTF-8"?>'])
    )
    body: list[str] = []
    shapes: list[Shape] = []
    ws_total = 0
    for _ in range(draw(st.integers(0, max_stanzas))):
        ws = draw(st.text(alphabet=" \t\r\n", max_size=3))
        ws_total += len(ws)
        w = draw(stanzas())
        body += [ws, w.xml]
        shapes.append(w.shape)
    tail_ws = draw(st.text(alphabet=" \t\r\n", max_size=2))
    ws_total += len(tail_ws)
    closed = draw(st.booleans())
    text = decl + HEADER + "".join(body) + tail_ws + (CLOSE if closed else "")
    return GeneratedStream(text.encode("utf-8"), shapes, ws_total, closed)


def cuts_for(data: bytes) -> st.SearchStrategy[list[int]]:
    return st.lists(st.integers(0, len(data)), max_size=12)


# --- the reference parser -----------------------------------------------------------------------


def _expat_name(name: str, separator: str = " ") -> tuple[str, str]:
    ns, sep, local = name.rpartition(separator)
    return (local, ns) if sep else (name, "")


@dataclass
class ExpatResult:
    stanzas: list[Shape]
    error: str | None
    stream_end: bool
    opened: bool
    error_index: int = -1


def expat_stanzas(data: bytes, separator: str = " ") -> ExpatResult:
    """Top-level elements as parsed by pyexpat (namespaces on, UTF-8 forced), with the RFC 6120
    restrictions it does not apply by itself (comments, PIs, DOCTYPE, a BOM, non-UTF-8
    declarations, root other than stream:stream, text between stanzas) and the XML declaration's
    version syntax, which it does not check.

    expat >= 2.4.5 refuses a namespace name that contains the separator (CVE-2022-25236), which
    is not an XML rule: inputs whose namespace names may contain spaces use "\x01" instead, a
    character no XML 1.0 document can contain."""
    parser = expat.ParserCreate("UTF-8", separator)
    stack: list[Shape] = []
    out: list[Shape] = []
    state = {"depth": 0, "end": False, "opened": False}

    class Refuse(Exception):
        pass

    def refuse(*_: Any) -> None:
        raise Refuse

    def start(name: str, attrs: dict[str, str]) -> None:
        local, ns = _expat_name(name, separator)
        state["depth"] += 1
        if state["depth"] == 1:
            if (local, ns) != ("stream", NS_STREAMS):
                raise Refuse
            state["opened"] = True
            return
        converted = {}
        for key, value in attrs.items():
            alocal, ans = _expat_name(key, separator)
            converted[f"{{{ans}}}{alocal}" if ans else alocal] = value
        el: Shape = (local, ns, converted, [])
        if stack:
            stack[-1][3].append(el)
        stack.append(el)

    def end(name: str) -> None:
        state["depth"] -= 1
        if state["depth"] == 0:
            state["end"] = True
            return
        el = stack.pop()
        if not stack:
            out.append(el)

    def chars(data: str) -> None:
        if not stack:
            if data.strip(" \t\r\n"):
                raise Refuse
            return
        children = stack[-1][3]
        if children and isinstance(children[-1], str):
            children[-1] += data
        else:
            children.append(data)

    def xmldecl(version: str, encoding: str | None, standalone: int) -> None:
        if encoding is not None and encoding.lower() != "utf-8":
            raise Refuse
        if re.fullmatch(r"1\.[0-9]+", version) is None:
            raise Refuse  # XML 1.0 [26] VersionNum; expat 2.5 accepts e.g. 'A1.0'

    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = chars
    parser.CommentHandler = refuse
    parser.ProcessingInstructionHandler = refuse
    parser.StartDoctypeDeclHandler = refuse
    parser.XmlDeclHandler = xmldecl
    error = None
    try:
        if data[:3] == b"\xef\xbb\xbf" or data[:2] in (b"\xff\xfe", b"\xfe\xff"):
            raise Refuse
        parser.Parse(data, False)
    except Refuse:
        error = "restricted"
    except expat.ExpatError as exc:
        error = str(exc)
        return ExpatResult(
            out, error, bool(state["end"]), bool(state["opened"]), parser.ErrorByteIndex
        )
    return ExpatResult(out, error, bool(state["end"]), bool(state["opened"]))


# XML 1.0 5th edition NameChar beyond ASCII (what we implement). expat implements the 4th
# edition's smaller, Unicode 2.0 based classes, so it refuses names like "a\u0700" that are
# well-formed today.
_NAME_CHAR_5TH = re.compile(
    "[\xb7\xc0-\xd6\xd8-\xf6\xf8-\u037d\u037f-\u1fff\u200c\u200d\u203f\u2040"
    "\u2070-\u218f\u2c00-\u2fef\u3001-\ud7ff\uf900-\ufdcf\ufdf0-\ufffd\U00010000-\U000effff]"
)


def expat_refused_a_5th_edition_name(blob: bytes, ref: ExpatResult) -> bool:
    if ref.error is None or ref.error_index < 0:
        return False
    ch = blob[ref.error_index : ref.error_index + 4].decode("utf-8", errors="ignore")[:1]
    return bool(ch) and _NAME_CHAR_5TH.fullmatch(ch) is not None


# --- helpers -----------------------------------------------------------------------------------


@contextmanager
def time_limit(seconds: int) -> Iterator[None]:
    """Turn a hang into a failure (works while the tokenizer returns to Python regularly)."""

    def alarm(*_: Any) -> None:
        raise TimeoutError(f"tokenizer took more than {seconds}s")

    old = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def check_tokens_are_usable(tokens: list[Any]) -> None:
    """Everything a tokenizer emits can be looked at without raising."""
    for t in tokens:
        if isinstance(t, Stanza):
            el = t.element()
            assert (t.name, t.namespace) == (el.name, el.namespace)
            assert (t.to, t.from_, t.type, t.id) == tuple(
                el.attrs.get(k) for k in ("to", "from", "type", "id")
            )
        else:
            assert isinstance(t, (StreamOpen, StreamClose))


# --- properties ---------------------------------------------------------------------------------

COMMON = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
# EDGEPROXY_FUZZ_SCALE=20 runs 20 times the examples, for a deeper local search.
FUZZ_SCALE = float(os.environ.get("EDGEPROXY_FUZZ_SCALE", "1"))


def examples(n: int) -> int:
    return max(1, int(n * FUZZ_SCALE))


@settings(COMMON, max_examples=examples(100))
@given(streams())
def test_generated_streams_are_valid_for_the_reference_parser(stream: GeneratedStream) -> None:
    """Self-check of the generator: expat agrees with the trees we meant to write."""
    ref = expat_stanzas(stream.data)
    assert ref.error is None
    assert ref.stanzas == stream.stanzas
    assert ref.stream_end == stream.closed


@settings(COMMON, max_examples=examples(200))
@given(streams())
def test_element_trees_equal_the_reference_parsers(stream: GeneratedStream) -> None:
    run = feed_all([stream.data])
    assert run.error is None, f"{run.error.condition} at {run.error.offset}: {run.error}"
    assert [element_shape(s.element()) for s in run.stanzas] == expat_stanzas(stream.data).stanzas
    assert len(run.opens) == 1 and run.tokens[0] is run.opens[0]
    assert len(run.closes) == (1 if stream.closed else 0)
    check_tokens_are_usable(run.tokens)


@settings(COMMON, max_examples=examples(200))
@given(st.data())
def test_any_chunking_of_a_valid_stream_yields_identical_tokens(data: st.DataObject) -> None:
    stream = data.draw(streams())
    cuts = data.draw(cuts_for(stream.data))
    whole = run_signature(feed_all([stream.data]))
    assert whole[1] is None
    assert run_signature(feed_all(split_at(stream.data, cuts))) == whole


@settings(COMMON, max_examples=examples(60))
@given(streams(max_stanzas=2))
def test_one_byte_chunks_of_a_valid_stream_yield_identical_tokens(stream: GeneratedStream) -> None:
    whole = run_signature(feed_all([stream.data]))
    assert run_signature(feed_all(chunked(stream.data, 1))) == whole


@settings(COMMON, max_examples=examples(80))
@given(streams())
def test_whitespace_between_stanzas_is_counted_and_never_emitted(stream: GeneratedStream) -> None:
    run = feed_all([stream.data])
    assert run.error is None
    assert len(run.stanzas) == len(stream.stanzas)
    assert run.tokenizer.whitespace_bytes == stream.whitespace
    for s in run.stanzas:
        assert s.raw[:1] == b"<" and s.raw[-1:] == b">"


@settings(COMMON, max_examples=examples(400))
@given(st.binary(max_size=2048), st.data())
def test_random_bytes_tokenize_or_raise_tokenizer_error(blob: bytes, data: st.DataObject) -> None:
    prefix = data.draw(st.sampled_from([b"", HEADER.encode(), b"<?xml version='1.0'?>"]))
    payload = prefix + blob
    cuts = data.draw(cuts_for(payload))
    with time_limit(10):
        run = feed_all(split_at(payload, cuts))
    if run.error is not None:
        assert run.error.condition in CONDITIONS
        assert 0 <= run.error.offset <= len(payload)
    check_tokens_are_usable(run.tokens)


MUTATION_BYTES = [
    b"<",
    b">",
    b"/",
    b"&",
    b";",
    b"'",
    b'"',
    b"=",
    b":",
    b"!",
    b"?",
    b"[",
    b"]]>",
    b"<![CDATA[",
    b"<!--",
    b"&#x0;",
    b"&amp;",
    b"xmlns:p='urn:p'",
    b"p:",
    b" ",
    b"\x00",
    b"\xc3",
    b"\xe6\x97",
    b"\xff",
    b"\xef\xbf\xbe",
    b"</stream:stream>",
]


@st.composite
def mutated_streams(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(streams()).data)
    for _ in range(draw(st.integers(1, 4))):
        pos = draw(st.integers(0, len(data)))
        op = draw(st.sampled_from(["insert", "replace", "delete"]))
        piece = draw(st.sampled_from(MUTATION_BYTES) | st.binary(min_size=1, max_size=3))
        if op == "insert":
            data[pos:pos] = piece
        elif op == "replace":
            data[pos : pos + len(piece)] = piece
        else:
            del data[pos : pos + draw(st.integers(1, 8))]
    return bytes(data)


@settings(COMMON, max_examples=examples(300))
@given(st.data())
def test_mutated_streams_agree_with_the_reference_and_ignore_chunking(data: st.DataObject) -> None:
    blob = data.draw(mutated_streams())
    cuts = data.draw(cuts_for(blob))
    with time_limit(10):
        whole = feed_all([blob])
        pieces = feed_all(split_at(blob, cuts))
    # the verdict, the tokens and the error (condition and offset) never depend on chunking
    assert run_signature(pieces) == run_signature(whole)
    if whole.error is not None:
        assert whole.error.condition in CONDITIONS
        assert 0 <= whole.error.offset <= len(blob)
    check_tokens_are_usable(whole.tokens)

    ref = expat_stanzas(blob, separator="\x01")
    if whole.tokenizer.halted:
        return  # a restart point: we rightly stop parsing there, expat does not
    if expat_refused_a_5th_edition_name(blob, ref):
        ours = [element_shape(s.element()) for s in whole.stanzas]
        assert ours[: len(ref.stanzas)] == ref.stanzas
        return
    # everything we emitted, the reference parsed the same way
    assert [element_shape(s.element()) for s in whole.stanzas] == ref.stanzas[: len(whole.stanzas)]
    assert ref.opened or not whole.opens
    assert ref.stream_end or not whole.closes
    if whole.error is None:
        if ref.error is None:
            assert len(whole.stanzas) == len(ref.stanzas)
        else:
            # we have not decided yet (e.g. waiting for the end of an XML declaration, at most
            # 256 bytes, or of an end-tag name, at most max_name_bytes); we must not wait
            # forever: bytes that are wrong everywhere make us refuse within the limits
            with pytest.raises(TokenizerError):
                whole.tokenizer.feed(b"\x00" * 2048)
    elif (
        ref.error is None
        and ref.stream_end
        and not whole.closes  # bytes after the stream end: we refuse at once, expat waits
        and whole.error.condition != "policy-violation"
    ):
        pytest.fail(f"refused a valid stream: {whole.error.condition}: {whole.error}")


def test_forbidden_byte_in_an_end_tag_name_is_refused_as_it_arrives() -> None:
    """RFC 6120 §11 forbidden input is refused as it arrives (tokenizer.py), not buffered up to
    max_name_bytes (then reported as policy-violation)."""
    for tail in (b"<message></mess\x00", b"<message></mess=", b"</stream:stream\x00"):
        run = feed_all([HEADER.encode() + tail])
        assert run.error is not None, f"{tail!r} not refused"
        assert run.error.condition in ("not-well-formed", "bad-format")


# --- restarts -----------------------------------------------------------------------------------

RESTART_POINTS = [
    f"<proceed xmlns='{NS_TLS}'/>",
    f"<starttls xmlns='{NS_TLS}'><required/></starttls>",
    f"<success xmlns='{NS_SASL}'/>",
    f"<success xmlns='{NS_SASL}'>dGVzdA==</success>",
]


@settings(COMMON, max_examples=examples(150))
@given(st.sampled_from(RESTART_POINTS), st.binary(min_size=1, max_size=300))
def test_bytes_after_a_restart_point_in_the_same_chunk_are_held_not_parsed(
    restart: str, trailing: bytes
) -> None:
    features = (
        "<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/></stream:features>"
    )
    tok = Tokenizer()
    tokens = tok.feed((HEADER + features + restart).encode() + trailing)
    assert [type(t).__name__ for t in tokens] == ["StreamOpen", "Stanza", "Stanza"]
    assert tok.halted
    assert tok.trailing_bytes == trailing

    tok.reset()
    assert not tok.halted
    assert tok.trailing_bytes == b""
    assert tok.stream_open is None
    again = tok.feed(HEADER.encode() + b"<presence/>")
    assert [type(t).__name__ for t in again] == ["StreamOpen", "Stanza"]


@pytest.mark.parametrize("restart", RESTART_POINTS)
def test_restart_point_at_the_end_of_a_chunk_halts_with_nothing_trailing(restart: str) -> None:
    tok = Tokenizer()
    for chunk in chunked((HEADER + restart).encode(), 5):
        tok.feed(chunk)
    assert tok.halted
    assert tok.trailing_bytes == b""


def test_same_element_outside_the_stream_level_is_not_a_restart_point() -> None:
    tok = Tokenizer()
    tokens = tok.feed(
        f"{HEADER}<iq type='set'><proceed xmlns='{NS_TLS}'/></iq><presence/>".encode()
    )
    assert [type(t).__name__ for t in tokens] == ["StreamOpen", "Stanza", "Stanza"]
    assert not tok.halted


# --- bounded memory -----------------------------------------------------------------------------

OVERSIZE_SHAPES = {
    "text": (b"<message><body>", b"x"),
    "attribute": (b"<message id='", b"y"),
    "cdata": (b"<message><body><![CDATA[", b"z"),
    "multibyte": (b"<message><body>", "日".encode()),
    "nested": (b"<message>", b"<a>"),
}


@pytest.mark.parametrize("shape", sorted(OVERSIZE_SHAPES))
@pytest.mark.parametrize("limit", [4096, 65536, 262144])
def test_oversize_stanza_fails_as_soon_as_the_limit_is_crossed(shape: str, limit: int) -> None:
    opening, filler = OVERSIZE_SHAPES[shape]
    tok = Tokenizer(max_stanza_bytes=limit, max_depth=1_000_000)
    header = HEADER.encode()
    tok.feed(header)
    stanza_bytes = 0
    pending = opening + filler * ((4 * limit) // len(filler))
    error = None
    for chunk in chunked(pending, 4096):
        try:
            tok.feed(chunk)
        except Exception as exc:
            error = exc
            stanza_bytes += len(chunk)
            break
        stanza_bytes += len(chunk)
        assert tok.buffered_bytes <= limit + 4096
        assert stanza_bytes <= limit, f"{stanza_bytes} stanza bytes accepted (limit {limit})"
    assert error is not None, "never refused"
    assert getattr(error, "condition", None) == "policy-violation", repr(error)
    # raised by the chunk that crossed the limit, not later
    assert stanza_bytes - 4096 < limit + 1 <= stanza_bytes
    assert len(header) < error.offset <= len(header) + limit + 1  # type: ignore[attr-defined]


def test_stanza_of_exactly_the_limit_passes_and_one_byte_more_fails() -> None:
    header = HEADER.encode()
    for limit in (512, 4096):
        head, tail = b"<message><body>", b"</body></message>"
        exact = head + b"x" * (limit - len(head) - len(tail)) + tail
        assert len(exact) == limit
        tok = Tokenizer(max_stanza_bytes=limit)
        (opened, stanza) = tok.feed(header + exact)
        assert stanza.raw == exact
        over = head + b"x" * (limit + 1 - len(head) - len(tail)) + tail
        run = feed_all([header, over], Tokenizer(max_stanza_bytes=limit))
        assert run.error is not None and run.error.condition == "policy-violation"


def test_whitespace_keepalives_are_never_buffered() -> None:
    tok = Tokenizer(max_stanza_bytes=4096)
    tok.feed(HEADER.encode())
    for chunk in chunked(b" \n\t\r" * 262144, 4096):
        assert tok.feed(chunk) == []
        assert tok.buffered_bytes <= 4096
    assert tok.whitespace_bytes == 4 * 262144
    assert [type(t).__name__ for t in tok.feed(b"<presence/>")] == ["Stanza"]


def test_oversize_stream_header_is_refused() -> None:
    run = feed_all(
        chunked(
            b"<stream:stream xmlns:stream='" + NS_STREAMS.encode() + b"' a='" + b"x" * 9000, 4096
        ),
        max_stanza_bytes=4096,
    )
    assert run.error is not None and run.error.condition == "policy-violation"
    assert run.tokens == []
