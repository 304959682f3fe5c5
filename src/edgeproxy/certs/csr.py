"""Certificate signing requests for the edge's external certificate (SPEC §8, the Lync wizard).

The request carries the subject the admin gives (CN = the external FQDN, O, OU, C, ST, L), a
subjectAltName with every name from :func:`edgeproxy.certs.names.certificate_names`, and asks for
serverAuth + clientAuth extended key usage (S2S certificates are also presented as TLS client
certificates; a CA may drop clientAuth and the import does not require it). The friendly name is
carried as the PKCS#9 ``unstructuredName`` attribute so that it shows in ``openssl req -text``
and is recorded beside the key (``cert show`` prints it). The key is RSA (default 2048 bits),
written as exportable PKCS#8 PEM with mode 0600, encrypted when a passphrase is given.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import AttributeOID, ExtendedKeyUsageOID, NameOID

from edgeproxy.names import InvalidName, normalize_certificate_name

KEY_SIZES = (2048, 3072, 4096)

#: The extended key usage of an edge certificate: S2S certificates are also TLS client certificates.
SERVER_AND_CLIENT = (ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH)


@dataclass(frozen=True)
class SubjectFields:
    common_name: str
    organization: str | None = None
    organizational_unit: str | None = None
    country: str | None = None
    state: str | None = None
    locality: str | None = None

    def to_name(self) -> x509.Name:
        attrs = [
            (NameOID.COUNTRY_NAME, self.country),
            (NameOID.STATE_OR_PROVINCE_NAME, self.state),
            (NameOID.LOCALITY_NAME, self.locality),
            (NameOID.ORGANIZATION_NAME, self.organization),
            (NameOID.ORGANIZATIONAL_UNIT_NAME, self.organizational_unit),
            (NameOID.COMMON_NAME, self.common_name),
        ]
        return x509.Name([x509.NameAttribute(oid, v) for oid, v in attrs if v])


#: RFC 5280 appendix A (ub-common-name): a common name is at most 64 characters.
MAX_COMMON_NAME = 64


def validate_subject(fields: SubjectFields) -> None:
    """Raise ValueError for values a CA would reject; the common name is a DNS name (the
    external FQDN), checked by the rule for certificate names."""
    if fields.country is not None and (len(fields.country) != 2 or not fields.country.isascii() or not fields.country.isalpha()):
        raise ValueError(f"--country must be a two-letter ISO 3166 code, not {fields.country!r}")
    if len(fields.common_name) > MAX_COMMON_NAME:
        raise ValueError(f"common name {fields.common_name!r} is longer than {MAX_COMMON_NAME} characters (RFC 5280)")
    try:
        normalize_certificate_name(fields.common_name)
    except InvalidName as exc:
        raise ValueError(f"common name {exc.detail}") from None


def checked_dns_names(dns_names: Sequence[str]) -> list[str]:
    """The subjectAltName DNS names in canonical form; ValueError naming the rule a name breaks."""
    try:
        return [normalize_certificate_name(n) for n in dns_names]
    except InvalidName as exc:
        raise ValueError(f"subjectAltName {exc.detail}") from None


def key_usage(*, ca: bool) -> x509.KeyUsage:
    """The keyUsage of a CA (``keyCertSign``, ``cRLSign``) or of a TLS leaf (``keyEncipherment``)."""
    return x509.KeyUsage(
        digital_signature=True,
        key_encipherment=not ca,
        content_commitment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def generate_rsa_key(key_size: int = 2048) -> rsa.RSAPrivateKey:
    if key_size not in KEY_SIZES:
        raise ValueError(f"key size must be one of {', '.join(map(str, KEY_SIZES))}")
    return rsa.generate_private_key(public_exponent=65537, key_size=key_size)


def build_csr(
    key: rsa.RSAPrivateKey,
    subject: SubjectFields,
    dns_names: Sequence[str],
    *,
    friendly_name: str | None = None,
) -> x509.CertificateSigningRequest:
    """A SHA-256 signed CSR with the subjectAltName and serverAuth/clientAuth usage."""
    validate_subject(subject)
    if not dns_names:
        raise ValueError("a certificate request needs at least one name")
    dns_names = checked_dns_names(dns_names)
    builder = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(subject.to_name())
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(n) for n in dns_names]), critical=False
        )
        .add_extension(key_usage(ca=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage(list(SERVER_AND_CLIENT)), critical=False)
    )
    if friendly_name:
        builder = builder.add_attribute(AttributeOID.UNSTRUCTURED_NAME, friendly_name.encode("utf-8"))
    return builder.sign(key, hashes.SHA256())
