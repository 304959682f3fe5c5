"""A private CA and certificates issued by it, for labs and tests (``edgeproxy cert self-signed``).

Keys are ECDSA P-256 (fast to make, accepted by every current XMPP server). The CA is a root with
``basicConstraints CA:TRUE`` and ``keyCertSign``; leaves carry the requested DNS names,
serverAuth + clientAuth usage (S2S certificates are also TLS client certificates) and an
authority/subject key identifier so that chain builders find the issuer. ``sign_csr`` issues a
certificate from a CSR the way a public CA would (copying its subjectAltName), which is what the
import tests use; every knob a test needs to make a bad certificate is a keyword argument.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from edgeproxy.certs.csr import SERVER_AND_CLIENT, key_usage
from edgeproxy.certs.pem import PrivateKey


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def new_ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@dataclass(frozen=True)
class Authority:
    """A CA: its certificate and key."""

    certificate: x509.Certificate
    key: PrivateKey


def make_authority(
    common_name: str = "edgeproxy private CA",
    *,
    issuer: Authority | None = None,
    days: int = 3650,
    now: dt.datetime | None = None,
) -> Authority:
    """A root CA, or an intermediate signed by ``issuer``."""
    now = now or utcnow()
    key = new_ec_key()
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "edgeproxy"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )
    signer_key = issuer.key if issuer else key
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer.certificate.subject if issuer else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(key_usage(ca=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if issuer:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()),  # type: ignore[arg-type]
            critical=False,
        )
    cert = builder.sign(signer_key, hashes.SHA256())  # type: ignore[arg-type]
    return Authority(cert, key)


def issue(
    authority: Authority,
    public_key: object,
    dns_names: Sequence[str],
    *,
    subject: x509.Name | None = None,
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
    days: int = 365,
    usages: Sequence[x509.ObjectIdentifier] | None = SERVER_AND_CLIENT,
) -> x509.Certificate:
    """A leaf certificate for ``public_key`` with the given names; ``usages=None`` omits the EKU."""
    now = utcnow()
    not_before = not_before or now - dt.timedelta(minutes=5)
    not_after = not_after or now + dt.timedelta(days=days)
    if subject is None:
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dns_names[0])])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(authority.certificate.subject)
        .public_key(public_key)  # type: ignore[arg-type]
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(key_usage(ca=False), critical=True)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in dns_names]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(authority.key.public_key()),  # type: ignore[arg-type]
            critical=False,
        )
    )
    if usages is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage(list(usages)), critical=False)
    return builder.sign(authority.key, hashes.SHA256())  # type: ignore[arg-type]


def sign_csr(
    authority: Authority, csr: x509.CertificateSigningRequest, **kwargs: object
) -> x509.Certificate:
    """Issue a certificate from a CSR (its subject and subjectAltName), as a CA would."""
    san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    names = san.get_values_for_type(x509.DNSName)
    return issue(authority, csr.public_key(), names, subject=csr.subject, **kwargs)  # type: ignore[arg-type]
