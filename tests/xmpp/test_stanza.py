"""One stanza on its own: parsing its raw bytes, and the bare JID and domain of an address."""

from __future__ import annotations

import pytest

from edgeproxy.tokenizer import TokenizerError
from edgeproxy.xmpp.namespaces import NS_SERVER
from edgeproxy.xmpp.stanza import (
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
