"""Certificates that OpenSSL loads and uses in a handshake but ``cryptography`` refuses to parse.

They are built by DER surgery on a good certificate, then re-signed by its issuer, so the only
thing wrong with them is the one rule they break (issue 13):

* ``duplicate_extension`` — the first extension appears twice (RFC 5280 §4.2: "a certificate
  MUST NOT include more than one instance of a particular extension"); OpenSSL loads it,
  ``cryptography`` raises ``DuplicateExtension`` when the extensions are read;
* ``explicit_default`` — basicConstraints carries ``cA FALSE`` encoded explicitly, which DER
  forbids for a DEFAULT value (X.690 §11.5); ``cryptography`` refuses the certificate.
"""

from __future__ import annotations

from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from edgeproxy.certs import selfsigned
from edgeproxy.certs.pem import private_key_pem

_BASIC_CONSTRAINTS_OID = bytes.fromhex("0603551d13")


def _tlv(data: bytes, at: int) -> tuple[int, int, int]:
    """(tag, start of value, end of value) of the DER element at ``at``."""
    tag = data[at]
    length = data[at + 1]
    start = at + 2
    if length & 0x80:
        n = length & 0x7F
        length = int.from_bytes(data[start : start + n], "big")
        start += n
    return tag, start, start + length


def _encode(tag: int, value: bytes) -> bytes:
    n = len(value)
    if n < 0x80:
        return bytes((tag, n)) + value
    size = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes((tag, 0x80 | len(size))) + size + value


def _children(data: bytes) -> list[bytes]:
    out, at = [], 0
    while at < len(data):
        _, _, end = _tlv(data, at)
        out.append(data[at:end])
        at = end
    return out


def _resign(cert: x509.Certificate, tbs: bytes, key: ec.EllipticCurvePrivateKey) -> bytes:
    der = cert.public_bytes(serialization_der())
    _, start, _ = _tlv(der, 0)
    parts = _children(der[start:])
    signature = key.sign(tbs, ec.ECDSA(hashes.SHA256()))
    return _encode(0x30, tbs + parts[1] + _encode(0x03, b"\x00" + signature))


def serialization_der():  # type: ignore[no-untyped-def]
    from cryptography.hazmat.primitives.serialization import Encoding

    return Encoding.DER


def _tbs_with_extensions(cert: x509.Certificate, rewrite) -> bytes:  # type: ignore[no-untyped-def]
    tbs = cert.tbs_certificate_bytes
    _, start, end = _tlv(tbs, 0)
    fields = _children(tbs[start:end])
    ext_index = next(i for i, f in enumerate(fields) if f[0] == 0xA3)
    _, ext_start, ext_end = _tlv(fields[ext_index], 0)
    inner = fields[ext_index][ext_start:ext_end]  # SEQUENCE OF Extension
    _, seq_start, seq_end = _tlv(inner, 0)
    extensions = _children(inner[seq_start:seq_end])
    extensions = rewrite(extensions)
    fields[ext_index] = _encode(0xA3, _encode(0x30, b"".join(extensions)))
    return _encode(0x30, b"".join(fields))


def _explicit_false(extensions: list[bytes]) -> list[bytes]:
    out = []
    for ext in extensions:
        if _BASIC_CONSTRAINTS_OID in ext[:8]:
            _, start, end = _tlv(ext, 0)
            parts = _children(ext[start:end])  # OID, [critical], OCTET STRING
            parts[-1] = _encode(0x04, _encode(0x30, b"\x01\x01\x00"))  # cA BOOLEAN FALSE, explicit
            ext = _encode(0x30, b"".join(parts))
        out.append(ext)
    return out


def bad_certificate(kind: str, domain: str, directory: Path) -> tuple[Path, Path]:
    """(certificate PEM, key PEM) of a ``kind`` certificate for ``domain``, issued by a private
    CA; ``kind`` is ``duplicate_extension`` or ``explicit_default``."""
    authority = selfsigned.make_authority("Malformed Issuing CA")
    key = selfsigned.new_ec_key()
    good = selfsigned.issue(authority, key.public_key(), [domain])
    if kind == "duplicate_extension":
        tbs = _tbs_with_extensions(good, lambda exts: [*exts, exts[0]])
    elif kind == "explicit_default":
        tbs = _tbs_with_extensions(good, _explicit_false)
    else:
        raise ValueError(kind)
    issuer_key = authority.key
    assert isinstance(issuer_key, ec.EllipticCurvePrivateKey)
    der = _resign(good, tbs, issuer_key)
    import base64

    body = base64.encodebytes(der).decode().replace("\n", "")
    pem = "-----BEGIN CERTIFICATE-----\n" + "\n".join(body[i : i + 64] for i in range(0, len(body), 64))
    cert_path = directory / f"{kind}.pem"
    cert_path.write_text(pem + "\n-----END CERTIFICATE-----\n")
    key_path = directory / f"{kind}.key"
    key_path.write_bytes(private_key_pem(key))
    return cert_path, key_path
