"""One stanza on its own: parsing its raw bytes, and the bare JID and domain of an address."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgeproxy.tokenizer import Stanza, Tokenizer, TokenizerError
from edgeproxy.xmpp.namespaces import NS_SERVER
from edgeproxy.xmpp.serialize import serialize
from edgeproxy.xmpp.stanza import (
    STREAM_HEADER,
    NotOneStanza,
    bare_of,
    domain_of,
    domainpart,
    parse_stanza,
    read_stanza,
)

RAW = b"<message from='a@fabrikam.test/r' to='b@contoso.test' type='chat'><body>hi</body></message>"


def test_one_raw_stanza_parses_in_the_server_namespace() -> None:
    element = parse_stanza(RAW)
    assert (element.name, element.namespace) == ("message", NS_SERVER)
    assert element.attrs == {"from": "a@fabrikam.test/r", "to": "b@contoso.test", "type": "chat"}
    body = element.find("body", NS_SERVER)
    assert body is not None and body.text == "hi"


def test_read_stanza_gives_the_routing_view_and_says_whether_the_bytes_are_exactly_it() -> None:
    stanza = read_stanza(RAW)
    assert (stanza.name, stanza.to, stanza.from_, stanza.type) == (
        "message", "b@contoso.test", "a@fabrikam.test/r", "chat"
    )
    assert stanza.raw == RAW
    assert read_stanza(RAW + b"  ").raw == RAW  # trailing whitespace: not the same bytes
    assert read_stanza(RAW + b"<presence/>").raw == RAW  # the first stanza of two


def test_a_stanza_may_declare_its_own_default_namespace() -> None:
    element = parse_stanza(b"<iq xmlns='jabber:client' type='get' id='1'/>")
    assert (element.name, element.namespace) == ("iq", "jabber:client")


@pytest.mark.parametrize("raw", [b"", b"   ", b"<message to='a@b'>", b"<message><body>x</body>"])
def test_incomplete_bytes_are_not_one_stanza(raw: bytes) -> None:
    with pytest.raises(NotOneStanza):
        parse_stanza(raw)
    assert issubclass(NotOneStanza, ValueError)


@pytest.mark.parametrize("raw", [b"<message></presence>", b"<!-- c --><message/>", b"text"])
def test_malformed_bytes_raise_the_tokenizer_error(raw: bytes) -> None:
    with pytest.raises(TokenizerError):
        parse_stanza(raw)


@pytest.mark.parametrize(
    ("jid", "bare", "part", "domain"),
    [
        ("juliet@Contoso.TEST/balcony", "juliet@Contoso.TEST", "Contoso.TEST", "contoso.test"),
        ("juliet@contoso.test", "juliet@contoso.test", "contoso.test", "contoso.test"),
        ("Contoso.test", "Contoso.test", "Contoso.test", "contoso.test"),
        ("contoso.test/res", "contoso.test", "contoso.test", "contoso.test"),
        # RFC 7622 §3.1: the resource is split off first, so it may hold '@' and '/'
        ("juliet@contoso.test/a@b/c", "juliet@contoso.test", "contoso.test", "contoso.test"),
        ("contoso.test/foo@bar", "contoso.test", "contoso.test", "contoso.test"),
        # ... and the localpart ends at the first '@' (no valid JID has two)
        ("a@b@contoso.test", "a@b@contoso.test", "b@contoso.test", "b@contoso.test"),
        # normalised SIP addresses split the same way (policy validation uses domain_of)
        ("sip:alice@contoso.test", "sip:alice@contoso.test", "contoso.test", "contoso.test"),
        # no validation, no IDNA: the text as written (lower-cased by domain_of)
        ("user@Bücher.DE", "user@Bücher.DE", "Bücher.DE", "bücher.de"),
        ("", "", "", ""),
        ("juliet@", "juliet@", "", ""),
        ("/res", "", "", ""),
    ],
)
def test_bare_and_domain_of_a_jid(jid: str, bare: str, part: str, domain: str) -> None:
    assert bare_of(jid) == bare
    assert domainpart(jid) == part
    assert domain_of(jid) == domain


def test_the_domain_of_no_address_is_empty() -> None:
    assert domain_of(None) == ""


_PIECES = [
    b"<message xmlns='jabber:server' to='a@x' id='1'><body>one</body></message>",
    b"<presence xmlns='jabber:server' to='b@y'/>",
    b"<iq xmlns='jabber:server' type='get' id='q'><ping xmlns='urn:xmpp:ping'/></iq>",
    b"<message xmlns='jabber:server'>",  # incomplete
    b"<message><bad></message>",  # mismatched
    b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>",  # halts a tokenizer
    b"  ",
    b"<a/><b",  # a stanza, then the start of another
    b"<x xmlns='jabber:server'>&amp;</x>",
]


def _fresh_read(raw: bytes) -> tuple[str, ...]:
    """What ``read_stanza`` gives, computed with a tokenizer of its own."""
    tokenizer = Tokenizer()
    tokenizer.feed(STREAM_HEADER)
    try:
        tokens = tokenizer.feed(raw)
    except TokenizerError as exc:
        return ("error", exc.condition)
    stanzas = [t for t in tokens if isinstance(t, Stanza)]
    if not stanzas:
        return ("none",)
    return ("stanza", stanzas[0].raw.decode(), serialize(stanzas[0].element()).decode())


@given(st.lists(st.sampled_from(_PIECES), max_size=12))
def test_read_stanza_reuses_its_tokenizer_without_carrying_anything_from_one_call_to_the_next(
    inputs: list[bytes],
) -> None:
    """``read_stanza`` keeps a tokenizer between calls: whatever came before (an error, a
    halted stream, bytes after a stanza), each call reads as a fresh tokenizer would."""
    for raw in inputs:
        try:
            stanza = read_stanza(raw)
            got: tuple[str, ...] = ("stanza", stanza.raw.decode(), serialize(stanza.element()).decode())
        except TokenizerError as exc:
            got = ("error", exc.condition)
        except NotOneStanza:
            got = ("none",)
        assert got == _fresh_read(raw), raw
