"""Checks on the edge's own certificate, before import and in ``edgeproxy check``.

Theory of operation. An edge certificate is usable when (docs/spec.md §8.1):

1. **key match** — the certificate's public key is the private key's (SubjectPublicKeyInfo equal);
2. **validity** — ``notBefore <= now <= notAfter`` (RFC 5280 §4.1.2.5);
3. **server authentication** — the extended key usage includes ``id-kp-serverAuth`` (or
   ``anyExtendedKeyUsage``); a certificate without the extension is unrestricted (RFC 5280
   §4.2.1.12) and accepted with a warning. ``clientAuth`` is never required (public CAs stopped
   issuing it);
4. **names** — its identifiers cover every XMPP domain and the external FQDN (RFC 6125 matching,
   :mod:`edgeproxy.certs.identity`);
5. **chain order** — each certificate after the leaf is the issuer of the one before it (name
   match and signature verifies), as TLS requires (RFC 8446 §4.4.2: each following certificate
   SHOULD directly certify the one preceding it); each chain certificate is within its validity.

Each problem has a stable ``code`` and a message naming the exact cause; refusals are
``error``, advice is ``warning``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509.oid import ExtendedKeyUsageOID

from edgeproxy.certs.identity import PresentedIdentities, uncovered
from edgeproxy.certs.pem import PrivateKey, public_key_der

EXPIRY_WARNING_DAYS = 30


@dataclass(frozen=True)
class Problem:
    code: str
    message: str
    severity: Literal["error", "warning"] = "error"


def subject_text(cert: x509.Certificate) -> str:
    return cert.subject.rfc4514_string() or "(empty subject)"


def days_left(cert: x509.Certificate, now: dt.datetime) -> int:
    return (cert.not_valid_after_utc - now).days


def check_key_match(cert: x509.Certificate, key: PrivateKey) -> list[Problem]:
    if public_key_der(cert) == public_key_der(key):
        return []
    return [Problem("key-mismatch", "the private key does not match the certificate's public key")]


def check_validity(cert: x509.Certificate, now: dt.datetime, what: str = "certificate") -> list[Problem]:
    before, after = cert.not_valid_before_utc, cert.not_valid_after_utc
    if now < before:
        return [Problem("not-yet-valid", f"{what} is not yet valid: valid from {before:%Y-%m-%d %H:%M} UTC")]
    if now > after:
        return [Problem("expired", f"{what} expired on {after:%Y-%m-%d %H:%M} UTC")]
    left = days_left(cert, now)
    if what == "certificate" and left < EXPIRY_WARNING_DAYS:
        return [Problem("expiring", f"certificate expires in {left} days ({after:%Y-%m-%d})", "warning")]
    return []


def check_server_auth(cert: x509.Certificate) -> list[Problem]:
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return [
            Problem(
                "no-eku",
                "certificate has no extended key usage extension (unrestricted; public CAs set serverAuth)",
                "warning",
            )
        ]
    if ExtendedKeyUsageOID.SERVER_AUTH in eku or ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE in eku:
        return []
    have = ", ".join(getattr(u, "_name", u.dotted_string) for u in eku) or "none"
    return [Problem("no-server-auth", f"certificate lacks serverAuth extended key usage (has: {have})")]


def check_names(cert: x509.Certificate, required: Sequence[str]) -> list[Problem]:
    missing = uncovered(cert, required)
    if not missing:
        return []
    presented = ", ".join(PresentedIdentities.from_certificate(cert).all_names()) or "none"
    return [
        Problem(
            "missing-names",
            f"subjectAltName does not cover {', '.join(missing)} (certificate names: {presented})",
        )
    ]


def _issued_by(child: x509.Certificate, parent: x509.Certificate) -> bool:
    if child.issuer != parent.subject:
        return False
    try:
        child.verify_directly_issued_by(parent)
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


def check_chain(leaf: x509.Certificate, chain: Sequence[x509.Certificate], now: dt.datetime) -> list[Problem]:
    """Each chain certificate must directly issue the one before it, in order."""
    problems: list[Problem] = []
    current = leaf
    for position, cert in enumerate(chain, start=1):
        if not _issued_by(current, cert):
            wanted = current.issuer.rfc4514_string()
            elsewhere = [i for i, c in enumerate(chain, start=1) if i != position and _issued_by(current, c)]
            if elsewhere:
                problems.append(
                    Problem(
                        "chain-order",
                        f"chain out of order: certificate {position} ({subject_text(cert)}) is not the "
                        f"issuer of {subject_text(current)}; its issuer ({wanted}) is at position "
                        f"{elsewhere[0]}, it must come first",
                    )
                )
            else:
                problems.append(
                    Problem(
                        "chain-unrelated",
                        f"chain certificate {position} ({subject_text(cert)}) did not issue "
                        f"{subject_text(current)} (its issuer is {wanted}, not in the chain)",
                    )
                )
            break
        problems.extend(check_validity(cert, now, f"chain certificate {position} ({subject_text(cert)})"))
        current = cert
    return problems


def check_edge_certificate(
    leaf: x509.Certificate,
    key: PrivateKey | None,
    chain: Sequence[x509.Certificate],
    required: Sequence[str],
    now: dt.datetime,
) -> list[Problem]:
    """Every problem with an edge certificate, in the order an admin would fix them."""
    problems: list[Problem] = []
    if key is not None:
        problems += check_key_match(leaf, key)
    problems += check_validity(leaf, now)
    problems += check_server_auth(leaf)
    problems += check_names(leaf, required)
    problems += check_chain(leaf, chain, now)
    return problems


def errors(problems: Sequence[Problem]) -> list[Problem]:
    return [p for p in problems if p.severity == "error"]
