"""serialize(): escaping, namespace declarations, refusal of what XML cannot represent, and the
round trip serialize -> tokenize -> element() (and through pyexpat, an independent parser)."""

from __future__ import annotations

import xml.parsers.expat as expat
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgeproxy.tokenizer import Element, Stanza, Tokenizer
from edgeproxy.xmpp import namespaces as ns
from edgeproxy.xmpp.serialize import serialize

XML_LANG = f"{{{ns.NS_XML}}}lang"
STREAM_WITH_DEFAULT = (
    b"<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams'>"
)
STREAM_WITHOUT_DEFAULT = b"<stream:stream xmlns:stream='http://etherx.jabber.org/streams'>"


def shape(el: Element | str) -> Any:
    if isinstance(el, str):
        return el
    children: list[Any] = []
    for child in el.children:
        if isinstance(child, str):
            if not child:
                continue
            if children and isinstance(children[-1], str):
                children[-1] += child
                continue
        children.append(shape(child))
    return (el.name, el.namespace, dict(el.attrs), children)


def tokenize_one(stream_header: bytes, stanza: bytes) -> Stanza:
    tokens = Tokenizer().feed(stream_header + stanza)
    assert len(tokens) == 2, tokens
    st_ = tokens[1]
    assert isinstance(st_, Stanza)
    assert st_.raw == stanza
    return st_


def expat_shape(document: bytes) -> Any:
    """The document's root as parsed by pyexpat with namespace processing."""
    parser = expat.ParserCreate("UTF-8", "\x01")
    stack: list[Any] = []
    result: list[Any] = []

    def split(name: str) -> tuple[str, str]:
        uri, sep, local = name.rpartition("\x01")
        return (local, uri) if sep else (name, "")

    def start(name: str, attrs: dict[str, str]) -> None:
        local, uri = split(name)
        converted = {}
        for key, value in attrs.items():
            alocal, auri = split(key)
            converted[f"{{{auri}}}{alocal}" if auri else alocal] = value
        el = (local, uri, converted, [])
        (stack[-1][3] if stack else result).append(el)
        stack.append(el)

    def end(name: str) -> None:
        stack.pop()

    def chars(data: str) -> None:
        children = stack[-1][3]
        if children and isinstance(children[-1], str):
            children[-1] += data
        else:
            children.append(data)

    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = chars
    parser.Parse(document, True)
    return result[0]


# --- examples ------------------------------------------------------------------------------------


def test_text_escapes_ampersand_angle_brackets_and_carriage_return() -> None:
    el = Element("body", "", {}, ["a & b < c > d ]]> e\r\nf"])
    assert serialize(el) == b"<body>a &amp; b &lt; c &gt; d ]]&gt; e&#13;\nf</body>"


def test_attribute_values_escape_quote_and_whitespace_as_references() -> None:
    el = Element("x", "", {"v": "a\"b'c&d<e>f\tg\nh\ri"})
    assert serialize(el) == b'<x v="a&quot;b\'c&amp;d&lt;e>f&#9;g&#10;h&#13;i"/>'


def test_output_is_utf8_with_multibyte_characters_kept_raw() -> None:
    el = Element("body", "", {"n": "日本"}, ["😀 café \ufeff"])
    assert serialize(el) == '<body n="日本">😀 café \ufeff</body>'.encode()


def test_empty_element_is_self_closed_and_empty_text_is_ignored() -> None:
    assert serialize(Element("a", "", {}, [])) == b"<a/>"
    assert serialize(Element("a", "", {}, [""])) == b"<a/>"
    assert serialize(Element("a", "", {}, ["", Element("b"), ""])) == b"<a><b/></a>"


def test_root_declares_its_namespace_unless_the_parent_has_it() -> None:
    msg = Element(
        "message", ns.NS_SERVER, {"to": "a@b"}, [Element("body", ns.NS_SERVER, {}, ["hi"])]
    )
    assert serialize(msg) == b'<message xmlns="jabber:server" to="a@b"><body>hi</body></message>'
    assert (
        serialize(msg, parent_namespace=ns.NS_SERVER)
        == b'<message to="a@b"><body>hi</body></message>'
    )


def test_child_in_another_namespace_declares_it_and_no_namespace_undeclares() -> None:
    el = Element(
        "message",
        ns.NS_SERVER,
        {},
        [
            Element("ping", "urn:xmpp:ping", {}, [Element("x", "urn:xmpp:ping")]),
            Element("plain", "", {}, [Element("inner", "")]),
            Element("body", ns.NS_SERVER),
        ],
    )
    assert serialize(el, parent_namespace=ns.NS_SERVER) == (
        b'<message><ping xmlns="urn:xmpp:ping"><x/></ping>'
        b'<plain xmlns=""><inner/></plain><body/></message>'
    )


def test_namespaced_attributes_get_declared_prefixes_and_xml_lang_needs_none() -> None:
    el = Element(
        "x",
        "urn:x",
        {XML_LANG: "en", "{urn:a}one": "1", "{urn:b}two": "2", "{urn:a}three": "3", "plain": "p"},
        [Element("y", "urn:x", {"{urn:b}four": "4"})],
    )
    assert serialize(el, parent_namespace="urn:x") == (
        b'<x xml:lang="en" xmlns:ns0="urn:a" ns0:one="1" xmlns:ns1="urn:b" ns1:two="2"'
        b' ns0:three="3" plain="p"><y xmlns:ns0="urn:b" ns0:four="4"/></x>'
    )


def test_namespace_names_are_escaped_in_declarations() -> None:
    el = Element("x", 'urn:a&"b', {"{urn:<c>}k": "v"})
    assert serialize(el) == (b'<x xmlns="urn:a&amp;&quot;b" xmlns:ns0="urn:&lt;c>" ns0:k="v"/>')


@pytest.mark.parametrize(
    "bad",
    ["\x00", "\x08", "\x0b", "\x1b", "\ud800", "\udfff", "\ufffe", "\uffff"],
)
def test_characters_xml_cannot_represent_raise_value_error(bad: str) -> None:
    with pytest.raises(ValueError):
        serialize(Element("a", "", {}, [f"x{bad}y"]))
    with pytest.raises(ValueError):
        serialize(Element("a", "", {"k": f"x{bad}y"}))
    with pytest.raises(ValueError):
        serialize(Element("a", f"urn:{bad}"))


@pytest.mark.parametrize("name", ["", "1a", "a:b", "a b", "-a", "a\x00", "a>"])
def test_names_that_are_not_ncnames_raise_value_error(name: str) -> None:
    with pytest.raises(ValueError):
        serialize(Element(name))
    with pytest.raises(ValueError):
        serialize(Element("a", "", {name: "v"}))
    with pytest.raises(ValueError):
        serialize(Element("a", "", {f"{{urn:x}}{name}": "v"}))


@pytest.mark.parametrize(
    "attrs",
    [
        {"xmlns": "urn:x"},
        {f"{{{ns.NS_XMLNS}}}p": "urn:x"},
        {"{}k": "v"},
        {"{urn:x": "v"},
    ],
)
def test_namespace_declarations_as_attributes_raise_value_error(attrs: dict[str, str]) -> None:
    with pytest.raises(ValueError):
        serialize(Element("a", "", attrs))


def test_elements_in_reserved_namespaces_raise_value_error() -> None:
    with pytest.raises(ValueError):
        serialize(Element("a", ns.NS_XML))
    with pytest.raises(ValueError):
        serialize(Element("a", ns.NS_XMLNS))


def test_very_deep_tree_serializes_without_recursion() -> None:
    root = Element("a")
    node = root
    for _ in range(20_000):
        child = Element("a")
        node.append(child)
        node = child
    out = serialize(root)
    assert out.startswith(b"<a><a><a>") and out.endswith(b"</a></a>")
    assert out.count(b"<a>") == 20_000


def test_parsed_stanza_serializes_back_to_an_equal_tree() -> None:
    raw = (
        b"<message from='juliet@example.org/b' to=\"romeo@example.net\" type='chat' id='s1'"
        b" xml:lang='ja'><body>\xe6\x97\xa5 &amp; &#x1F600; &lt;tag&gt; ]]&gt;"
        b"<![CDATA[<x>]]></body><x:y xmlns:x='urn:x' x:a='1'/><z xmlns=''/></message>"
    )
    original = tokenize_one(STREAM_WITH_DEFAULT, raw).element()
    again = serialize(original, parent_namespace=ns.NS_SERVER)
    assert shape(tokenize_one(STREAM_WITH_DEFAULT, again).element()) == shape(original)


def test_namespace_constants_match_the_tokenizers() -> None:
    from edgeproxy import tokenizer

    assert ns.NS_STREAMS == tokenizer.NS_STREAMS
    assert ns.NS_XML == tokenizer.NS_XML
    assert ns.NS_STREAM_ERRORS == "urn:ietf:params:xml:ns:xmpp-streams"
    assert ns.NS_DIALBACK == "jabber:server:dialback"


# --- round trip ----------------------------------------------------------------------------------

NAME_START = "abcxyzXYZ_éжあ"
NAMES = st.builds(
    lambda a, b: a + b, st.sampled_from(NAME_START), st.text(NAME_START + "09-.·", max_size=5)
).filter(lambda n: n != "xmlns")
NAMESPACES = st.sampled_from(
    ["", ns.NS_SERVER, ns.NS_CLIENT, "urn:a", "urn:b", 'http://x/?a=1&b="<2>"', "urn:é:日"]
)
ATTR_NAMESPACES = st.sampled_from([ns.NS_XML, "urn:a", "urn:b", 'urn:"q"&<r>', ns.NS_DIALBACK])


def _xml_char(c: str) -> bool:
    cp = ord(c)
    return cp in (9, 10, 13) or 0x20 <= cp <= 0xD7FF or 0xE000 <= cp <= 0xFFFD or cp >= 0x10000


TEXT = st.text(
    alphabet=st.sampled_from("<>&\"' \t\r\n]]é日😀\ufeff\x85") | st.characters().filter(_xml_char),
    max_size=16,
)


@st.composite
def attributes(draw: st.DrawFn) -> dict[str, str]:
    attrs: dict[str, str] = {}
    for _ in range(draw(st.integers(0, 4))):
        local = draw(NAMES)
        key = f"{{{draw(ATTR_NAMESPACES)}}}{local}" if draw(st.booleans()) else local
        attrs[key] = draw(TEXT)
    return attrs


def elements(max_leaves: int = 12) -> st.SearchStrategy[Element]:
    leaf = st.builds(Element, NAMES, NAMESPACES, attributes(), st.just([]))

    def extend(children: st.SearchStrategy[Element]) -> st.SearchStrategy[Element]:
        return st.builds(
            Element, NAMES, NAMESPACES, attributes(), st.lists(children | TEXT, max_size=4)
        )

    return st.recursive(leaf, extend, max_leaves=max_leaves)


ROUND_TRIP = settings(deadline=None, max_examples=250, suppress_health_check=[HealthCheck.too_slow])


@ROUND_TRIP
@given(elements())
def test_serialize_then_tokenize_gives_an_equal_tree(el: Element) -> None:
    inside_server_stream = serialize(el, parent_namespace=ns.NS_SERVER)
    assert shape(tokenize_one(STREAM_WITH_DEFAULT, inside_server_stream).element()) == shape(el)
    standalone = serialize(el)
    assert shape(tokenize_one(STREAM_WITHOUT_DEFAULT, standalone).element()) == shape(el)


@ROUND_TRIP
@given(elements())
def test_serialize_output_parses_to_an_equal_tree_with_expat(el: Element) -> None:
    assert expat_shape(serialize(el)) == shape(el)
