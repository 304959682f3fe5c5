"""Fuzz harness (f): certificate identity extraction on arbitrary DER.

The input is a DER certificate (seeds: valid certificates with DNS-ID, wildcard, SRV-ID and
XmppAddr subjectAltNames, generated at run time; the fuzzer mutates them). Three entry points,
each with its own explicit tuple of exceptions it may let escape — anything else is a finding:

* ``x509.load_der_x509_certificate`` — cryptography raises ``ValueError`` for unparsable
  input and ``x509.InvalidVersion`` (*not* a ValueError) for a version field other than
  v1/v3 (``LOAD_EXPECTED``);
* ``PresentedIdentities.from_certificate`` (certs/identity.py) and ``covers`` /
  ``all_names`` on any certificate cryptography loaded — nothing may escape
  (``IDENTITY_EXPECTED`` is empty);
* ``edgeproxy.certs.peer.certificate_check`` (the production entry point on a peer's certificate)
  and the ``check(domain)`` it returns — ``CHECK_EXPECTED``. When this harness was written it
  let the ``ValueError`` of an unparsable certificate escape (a known bug); the fix (commit
  eb0b7c2, "never raises: bad-certificate") landed while it was being written, so the tuple is
  now empty: nothing may escape.
"""

from __future__ import annotations

import datetime as dt
import functools

from _harness import Known, harness
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edgeproxy.certs.identity import ID_ON_DNSSRV, ID_ON_XMPPADDR, PresentedIdentities
from edgeproxy.certs.peer import PeerTrust, certificate_check

MAX_LEN = 4096  # the deep-wildcard seed is 2.3 KB
LOAD_EXPECTED: tuple[type[BaseException], ...] = (ValueError, x509.InvalidVersion)
IDENTITY_EXPECTED: tuple[type[BaseException], ...] = ()
CHECK_EXPECTED: tuple[type[BaseException], ...] = ()  # was (ValueError,) before eb0b7c2
EXPECTED: tuple[type[BaseException], ...] = ()  # each step checks its own tuple
NOW = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)
DOMAINS = ("fabrikam.test", "chat.fabrikam.test", "xn--bcher-kva.test", "")


class Escaped(AssertionError):
    """An exception outside the step's expected tuple."""


# Fixed (604abf6): from_certificate let ValueError / DuplicateExtension /
# UnsupportedGeneralNameType escape; certificate_check let x509.InvalidVersion escape; a dNSName
# of 1,000 wildcard labels raised RecursionError in normalize_domain.
KNOWN: tuple[Known, ...] = ()


@functools.cache
def _ca() -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.derive_private_key(0xED6E, ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fuzz CA")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(NOW - dt.timedelta(days=30))
        .not_valid_after(NOW + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .sign(key, hashes.SHA256())
    )
    return key, cert


@functools.cache
def _trust() -> PeerTrust:
    return PeerTrust((_ca()[1],), "fuzz CA")


def step(expected: tuple[type[BaseException], ...], fn, *args):  # type: ignore[no-untyped-def]
    try:
        return True, fn(*args)
    except expected:
        return False, None
    except Exception as exc:
        if isinstance(exc, AssertionError):
            raise
        raise Escaped(f"{getattr(fn, '__qualname__', fn)} let {type(exc).__name__} escape: {exc}") from exc


@harness(EXPECTED, KNOWN)
def check(data: bytes) -> None:
    ok, check_fn = step(CHECK_EXPECTED, certificate_check, data, _trust(), NOW)
    if ok:
        for domain in DOMAINS:
            step((), check_fn, domain)
    ok, cert = step(LOAD_EXPECTED, x509.load_der_x509_certificate, data)
    if not ok:
        return
    ok, ids = step(IDENTITY_EXPECTED, PresentedIdentities.from_certificate, cert)
    if ok:
        step((), ids.all_names)
        for domain in DOMAINS:
            step((), ids.covers, domain)


TestOneInput = check


def _other(oid: x509.ObjectIdentifier, text: str, tag: int = 0x0C) -> x509.OtherName:
    raw = text.encode()
    return x509.OtherName(oid, bytes([tag, len(raw)]) + raw)


def generated_seeds() -> list[bytes]:
    ca_key, ca = _ca()
    leaf_key = ec.derive_private_key(0xF022, ec.SECP256R1())
    sans: list[list[x509.GeneralName]] = [
        [x509.DNSName("fabrikam.test"), x509.DNSName("*.fabrikam.test")],
        [_other(ID_ON_DNSSRV, "_xmpp-server.fabrikam.test", 0x16),
         _other(ID_ON_XMPPADDR, "fabrikam.test")],
        [x509.DNSName("xn--bcher-kva.test"), _other(ID_ON_XMPPADDR, "b\u00fccher.test"),
         x509.UniformResourceIdentifier("xmpp:fabrikam.test")],
        [],
        # found by review, kept as a seed: ~1000 wildcard labels (normalize_domain recursion)
        [x509.DNSName("*." * 1000 + "fabrikam.test")],
    ]
    seeds = []
    for i, names in enumerate(sans):
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"leaf {i}")]))
            .issuer_name(ca.subject)
            .public_key(leaf_key.public_key())
            .serial_number(100 + i)
            .not_valid_before(NOW - dt.timedelta(days=1))
            .not_valid_after(NOW + dt.timedelta(days=90 if i != 3 else -0))
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        )
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        seeds.append(builder.sign(ca_key, hashes.SHA256()).public_bytes(Encoding.DER))
    return seeds
