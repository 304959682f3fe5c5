"""Name normalisation (SPEC §2: IDNA + lower case) and model defaults."""

from __future__ import annotations

import pytest

from edgeproxy.names import (
    InvalidName,
    normalize_bare_jid,
    normalize_domain,
    normalize_sip_address,
)
from edgeproxy.policy.model import GatewaySettings, Negotiation, Partner, PartnerType

SAME_DOMAIN = [
    ("Fabrikam.COM", "fabrikam.com"),
    ("fabrikam.com.", "fabrikam.com"),
    ("bücher.de", "xn--bcher-kva.de"),
    ("BÜCHER.DE", "xn--bcher-kva.de"),
    ("XN--BCHER-KVA.de", "xn--bcher-kva.de"),
    ("ｆａｂｒｉｋａｍ.com", "fabrikam.com"),  # full-width letters map under UTS #46
]


@pytest.mark.parametrize(("given", "canonical"), SAME_DOMAIN)
def test_domains_are_compared_after_idna_and_lower_casing(given, canonical):
    assert normalize_domain(given) == canonical


@pytest.mark.parametrize("bad", ["", ".", "a..b", "bad_domain.com", "-x.com", "a b.com", "x" * 300])
def test_invalid_domains_are_refused(bad):
    with pytest.raises(InvalidName, match="refused"):
        normalize_domain(bad)


def test_jids_and_sip_addresses_are_folded():
    assert normalize_bare_jid("Bob@GMail.com") == "bob@gmail.com"
    assert normalize_bare_jid("xmpp:bob@bücher.de") == "bob@xn--bcher-kva.de"
    assert normalize_sip_address("Alice@Contoso.TEST") == "sip:alice@contoso.test"
    assert normalize_sip_address("SIP:alice@contoso.test") == "sip:alice@contoso.test"
    for bad in ("bob@gmail.com/home", "gmail.com", "@gmail.com", "a b@gmail.com"):
        with pytest.raises(InvalidName):
            normalize_bare_jid(bad)


def test_partner_and_gateway_defaults_are_those_of_the_spec():
    p = Partner("fabrikam.com")
    assert p.type is PartnerType.PUBLIC_UNVERIFIED
    assert (p.tls, p.sasl) == (Negotiation.REQUIRED, Negotiation.REQUIRED)
    assert p.dialback and p.keepalive
    assert p.connection_limit is None and p.proxy_fqdn is None
    g = GatewaySettings(dialback_secret="x" * 32)
    assert (g.connection_limit, g.partner_connection_limit) == (1000, 20)
    assert (g.keepalive_interval, g.stream_establishment_timeout) == (300, 60)
    assert (g.stream_inactivity_timeout, g.subscription_refresh_interval) == (600, 28800)
    assert g.log_message_bodies is False
