"""RFC 7622 JID preparation: split order, domain IDNA, localpart subset, resource rules."""

from __future__ import annotations

import pytest

from edgeproxy.xmpp.jid import InvalidJid, Jid, parse_jid


def test_full_jid_splits_into_three_prepared_parts() -> None:
    jid = parse_jid("Juliet@Example.COM/Balcony")
    assert jid == Jid("juliet", "example.com", "Balcony")
    assert str(jid) == "juliet@example.com/Balcony"
    assert str(jid.bare) == "juliet@example.com"


def test_resource_may_contain_at_and_slash_because_it_is_split_first() -> None:
    jid = parse_jid("example.com/foo@bar/baz")
    assert jid.localpart is None
    assert jid.domain == "example.com"
    assert jid.resource == "foo@bar/baz"


def test_domain_jid_is_a_domain_and_drops_trailing_dot() -> None:
    jid = parse_jid("Example.com.")
    assert jid.is_domain
    assert str(jid) == "example.com"


def test_internationalised_domain_becomes_lowercase_a_labels() -> None:
    assert parse_jid("user@Bücher.DE").domain == "xn--bcher-kva.de"
    assert parse_jid("xn--bcher-kva.de").domain == "xn--bcher-kva.de"


def test_ip_literals_are_valid_domainparts() -> None:
    assert parse_jid("127.0.0.1").domain == "127.0.0.1"
    assert parse_jid("a@[::1]").domain == "[::1]"
    with pytest.raises(InvalidJid):
        parse_jid("[not-ipv6]")


def test_localpart_is_case_folded() -> None:
    assert parse_jid("ÄLICE@example.com").localpart == "älice"


@pytest.mark.parametrize(
    "text",
    [
        "",
        "@example.com",
        "user@",
        "user@example.com/",
        "us er@example.com",
        "us\"er@example.com",
        "us<er@example.com",
        "us:er@example.com",
        "us\x00er@example.com",
        "user@exa mple.com",
        "user@-bad-.com",
        "user@example..com",
        "x" * 1024 + "@example.com",
        "user@example.com/\x07bell",
        "us\u2603er@example.com",  # a symbol (So): outside our stricter subset
    ],
)
def test_malformed_jids_are_refused_with_jid_malformed(text: str) -> None:
    with pytest.raises(InvalidJid) as info:
        parse_jid(text)
    assert info.value.condition == "jid-malformed"
