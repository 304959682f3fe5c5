"""The one validation layer for names (edgeproxy.names): each refusal names its rule."""

from __future__ import annotations

import string

import pytest
from hypothesis import given
from hypothesis import strategies as st
from precis_i18n import get_profile

from edgeproxy.names import (
    MAX_DOMAIN,
    MAX_LABEL,
    InvalidName,
    normalize_bare_jid,
    normalize_certificate_name,
    normalize_domain,
    normalize_host_port,
    normalize_jid,
    normalize_localpart,
    normalize_resourcepart,
    normalize_sip_address,
)

# -- domains ------------------------------------------------------------------------------------

REFUSED_DOMAINS = [
    ("bad domain", "may contain only letters, digits and hyphens (RFC 1035 §2.3.1)"),
    ("bad_domain.com", "may contain only letters, digits and hyphens"),
    ("1.2.3.4", "an IP address is not a domain name"),
    ("[::1]", "an IP address is not a domain name"),
    ("::1", "an IP address is not a domain name"),
    ("１.２.３.４", "an IP address is not a domain name"),  # full-width digits map to 1.2.3.4
    ("10.0.0.300", "the last label of a domain name cannot be all digits (RFC 3696 §2)"),
    ("a..b", "a DNS label cannot be empty"),
    (".a.com", "a DNS label cannot be empty"),
    ("-x.com", "cannot begin or end with a hyphen (RFC 5891 §4.2.3.1)"),
    ("x-.com", "cannot begin or end with a hyphen"),
    ("ab--cd.com", "'--' in 3rd and 4th position only as an 'xn--' A-label"),
    ("xn--abc.com", "valid A-label of an internationalized label (RFC 5890 §2.3.2.1)"),
    ("x" * 64 + ".com", "a DNS label is at most 63 characters (RFC 1035 §2.3.4)"),
    (".".join(["x" * 63] * 4), "a domain name is at most 253 characters (RFC 1035 §2.3.4)"),
    ("☃.com", "not a valid internationalized label"),
    ("*.contoso.test", "a wildcard '*' may only be the whole leftmost label"),
    ("", "a domain name is required"),
    ("  ", "a domain name is required"),
]


@pytest.mark.parametrize(("bad", "rule"), REFUSED_DOMAINS)
def test_a_refused_domain_is_quoted_with_the_rule_it_breaks(bad, rule):
    with pytest.raises(InvalidName) as caught:
        normalize_domain(bad)
    assert rule in str(caught.value)
    assert caught.value.detail.startswith(f'"{bad}": ')


@pytest.mark.parametrize(
    ("given_name", "canonical"),
    [
        ("Contoso.TEST", "contoso.test"),
        ("contoso.test.", "contoso.test"),
        ("Bücher.DE", "xn--bcher-kva.de"),
        ("xn--bcher-kva.de", "xn--bcher-kva.de"),
        ("a\u3002b.com", "a.b.com"),  # the ideographic full stop separates labels (UTS #46)
        ("localhost", "localhost"),
        ("1.2.3.com", "1.2.3.com"),  # digits are fine in any label but the last
        ("x" * 63 + ".com", "x" * 63 + ".com"),
    ],
)
def test_domains_come_back_as_lower_case_a_labels(given_name, canonical):
    assert normalize_domain(given_name) == canonical


LABEL = st.from_regex(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?", fullmatch=True).filter(
    lambda s: s[2:4] != "--"
)
DOMAIN = st.lists(LABEL, min_size=1, max_size=5).map(lambda labels: ".".join(labels + ["test"]))


@given(DOMAIN)
def test_any_ldh_name_is_accepted_lower_cased_and_normalising_it_again_changes_nothing(name):
    canonical = normalize_domain(name)
    assert canonical == name.lower()
    assert normalize_domain(canonical) == canonical


@given(st.text(min_size=1, max_size=80))
def test_whatever_is_accepted_obeys_the_length_and_character_rules(text):
    try:
        canonical = normalize_domain(text)
    except InvalidName as exc:
        assert exc.rule  # a refusal always says which rule
        return
    assert len(canonical) <= MAX_DOMAIN
    labels = canonical.split(".")
    assert all(0 < len(label) <= MAX_LABEL for label in labels)
    assert set(canonical) <= set(string.ascii_lowercase + string.digits + "-.")
    assert not labels[-1].isdigit()
    assert normalize_domain(canonical) == canonical


@given(st.ip_addresses())
def test_no_ip_address_passes_for_a_domain(address):
    for text in (str(address), f"[{address}]" if address.version == 6 else str(address)):
        with pytest.raises(InvalidName, match="an IP address is not a domain name"):
            normalize_domain(text)


# -- certificate names and host:port ------------------------------------------------------------


def test_a_wildcard_is_allowed_only_as_the_whole_leftmost_label():
    assert normalize_certificate_name("*.Contoso.TEST") == "*.contoso.test"
    assert normalize_certificate_name("webconf.contoso.test") == "webconf.contoso.test"
    for bad in ("a.*.contoso.test", "w*.contoso.test", "*.*.contoso.test", "**.contoso.test"):
        with pytest.raises(InvalidName, match=r"whole leftmost label.*RFC 6125 §6\.4\.3"):
            normalize_certificate_name(bad)
    with pytest.raises(InvalidName, match="at least two labels"):
        normalize_certificate_name("*.test")
    with pytest.raises(InvalidName, match='"bad name": a DNS label may contain only'):
        normalize_certificate_name("bad name")


def test_host_port_takes_a_domain_or_where_allowed_an_ip_address_and_a_port():
    assert normalize_host_port("Edge.Contoso.TEST:5270") == ("edge.contoso.test", 5270)
    assert normalize_host_port("edge.contoso.test", default_port=5269) == ("edge.contoso.test", 5269)
    assert normalize_host_port("[::1]:53", allow_ip=True) == ("::1", 53)
    assert normalize_host_port("127.0.0.1:53", allow_ip=True) == ("127.0.0.1", 53)
    with pytest.raises(InvalidName, match="an IP address is not a domain name"):
        normalize_host_port("127.0.0.1:53")
    with pytest.raises(InvalidName, match='"bad host:10": a DNS label may contain only'):
        normalize_host_port("bad host:10")
    for bad_port in ("a.test:0", "a.test:65536", "a.test:x", "a.test:"):
        with pytest.raises(InvalidName, match="the port must be a number from 1 to 65535"):
            normalize_host_port(bad_port)
    with pytest.raises(InvalidName, match="a port is required"):
        normalize_host_port("a.test")


# -- JIDs and SIP addresses (RFC 7622, PRECIS) --------------------------------------------------


def test_localparts_are_enforced_with_usernamecasemapped():
    assert normalize_localpart("Bob") == "bob"
    assert normalize_localpart("ＢＯＢ") == "bob"  # full-width letters are width-mapped
    assert normalize_localpart("Jürgen") == "jürgen"
    with pytest.raises(InvalidName, match="cannot contain spaces .*UsernameCaseMapped"):
        normalize_localpart("a b")
    with pytest.raises(InvalidName, match="compatibility characters"):
        normalize_localpart("ℌ")
    with pytest.raises(InvalidName, match="cannot contain & .*RFC 7622 §3.3.1"):
        normalize_localpart("tom&jerry")
    with pytest.raises(InvalidName, match="at most 1023 octets"):
        normalize_localpart("x" * 1024)


def test_resourceparts_are_enforced_with_opaquestring_and_keep_their_case():
    assert normalize_resourcepart("Home Office") == "Home Office"
    with pytest.raises(InvalidName, match="control characters .*OpaqueString"):
        normalize_resourcepart("x\x07")


def test_full_jids_split_at_the_first_slash_and_each_part_follows_its_rule():
    assert normalize_jid("Bob@Gmail.COM/Phone/1") == "bob@gmail.com/Phone/1"
    assert normalize_jid("xmpp:Gmail.com") == "gmail.com"
    with pytest.raises(InvalidName, match="domain part: an IP address is not a domain name"):
        normalize_jid("bob@1.2.3.4")
    with pytest.raises(InvalidName, match="a resource cannot be empty"):
        normalize_jid("bob@gmail.com/")


def test_bare_jids_and_sip_addresses_use_the_same_localpart_rule():
    assert normalize_bare_jid("Bob@GMail.com") == "bob@gmail.com"
    assert normalize_sip_address("SIP:Alice@Contoso.TEST") == "sip:alice@contoso.test"
    with pytest.raises(InvalidName, match="cannot contain spaces"):
        normalize_sip_address("sip:a b@contoso.test")
    with pytest.raises(InvalidName, match="without /resource"):
        normalize_bare_jid("bob@gmail.com/home")
    with pytest.raises(InvalidName, match="cannot contain :"):
        normalize_bare_jid("a:b@gmail.com")


@given(st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1, max_size=40))
def test_the_ascii_shortcut_agrees_with_the_precis_profile(local):
    try:
        expected = get_profile("UsernameCaseMapped").enforce(local)
    except UnicodeError:
        expected = None
    try:
        got = normalize_localpart(local)
    except InvalidName:
        got = None
    if expected is not None and not set(expected) & set("\"&'/:<>@"):
        assert got == expected
    else:
        assert got is None
