import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID

from edgeproxy.certs import selfsigned
from edgeproxy.certs.identity import (
    ID_ON_DNSSRV,
    ID_ON_XMPPADDR,
    PresentedIdentities,
    dns_id_matches,
)


@pytest.mark.parametrize(
    ("presented", "reference", "expected"),
    [
        ("contoso.test", "contoso.test", True),
        ("Contoso.TEST.", "contoso.test", True),
        ("*.contoso.test", "access.contoso.test", True),
        ("*.contoso.test", "contoso.test", False),  # wildcard stands for exactly one label
        ("*.contoso.test", "a.b.contoso.test", False),
        ("a*.contoso.test", "ab.contoso.test", False),  # partial-label wildcards refused
        ("access.*.test", "access.contoso.test", False),  # left-most label only
        ("*.test", "contoso.test", False),  # no wildcard directly under a single label
        ("*.contoso.test", "xn--bcher-kva.contoso.test", False),  # not over an A-label
        ("bücher.test", "xn--bcher-kva.test", True),  # compared as A-labels
    ],
)
def test_dns_id_matching_follows_rfc6125(presented, reference, expected):
    assert dns_id_matches(presented, reference) is expected


def _der_utf8(text: str, tag: int = 0x0C) -> bytes:
    body = text.encode()
    return bytes([tag, len(body)]) + body


def _cert_with(general_names):
    key = selfsigned.new_ec_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ignored.test")])
    now = selfsigned.utcnow()
    return (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(1).not_valid_before(now).not_valid_after(now + selfsigned.dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(general_names), critical=False)
        .sign(key, hashes.SHA256())
    )


def test_srv_id_and_xmppaddr_prove_the_domain_but_cn_does_not():
    cert = _cert_with([
        x509.OtherName(ID_ON_DNSSRV, _der_utf8("_xmpp-server.fabrikam.test", 0x16)),
        x509.OtherName(ID_ON_XMPPADDR, _der_utf8("litware.test")),
        x509.OtherName(ID_ON_DNSSRV, _der_utf8("_xmpp-client.tailspin.test", 0x16)),
    ])
    ids = PresentedIdentities.from_certificate(cert)
    assert ids.covers("fabrikam.test")
    assert ids.covers("litware.test")
    assert not ids.covers("tailspin.test")  # wrong service
    assert not ids.covers("ignored.test")  # subject CN is not an identifier when SANs exist


def test_xmppaddr_of_a_user_jid_does_not_prove_the_domain():
    cert = _cert_with([x509.OtherName(ID_ON_XMPPADDR, _der_utf8("alice@litware.test"))])
    assert not PresentedIdentities.from_certificate(cert).covers("litware.test")
