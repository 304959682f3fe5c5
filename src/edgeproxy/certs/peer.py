"""The verdict on an S2S peer's certificate, after a TLS handshake that accepted it whatever it is.

Theory of operation
-------------------
The S2S contexts (:mod:`edgeproxy.certs.contexts`, role ``S2S_*``) let every peer certificate
through the handshake: a peer whose certificate is untrusted, expired or for another name still
gets a TLS stream, is then simply not offered SASL EXTERNAL, and TLS dialback stays possible
where its row allows it (docs/spec.md §2.1, XEP-0220 over TLS). The verdict is ours
(:func:`certificate_check`, per stream, cached), with ``cryptography.x509.verification``:

1. no certificate → "no certificate";
2. leaf validity period → "expired on …" / "not valid before …";
3. chain to ``[tls] trust`` (:class:`PeerTrust`; the system store if unset) under the Web PKI
   profile (RFC 5280 path validation, basic constraints, key usage…) but with the extended key
   usage relaxed to "serverAuth or clientAuth or absent" (docs/spec.md §8.2) → "untrusted
   issuer …";
4. identity for the partner domain per RFC 6125 §6 / XEP-0178 §3 with
   :class:`edgeproxy.certs.identity.PresentedIdentities` (DNS-ID with left-most-label wildcard,
   SRV-ID ``_xmpp-server.domain``, XmppAddr) → "name mismatch: …".

A certificate that ``cryptography`` cannot parse (malformed DER, a repeated extension, a DER-encoded
default value, an unparsable name…) is judged ``bad-certificate: …`` — like no valid certificate:
no SASL EXTERNAL, TLS dialback where the row allows it — and reported as event EP2007. Parsing in
``cryptography`` is partly lazy (extensions are decoded on first access), so everything that
touches the certificate, the matching in ``check(domain)`` included, is inside that guard.

The receiving core offers SASL EXTERNAL only when ``check(domain)`` is None; the initiating
core attempts EXTERNAL only towards a peer whose certificate proves the partner domain (else
TLS dialback where the row allows it, else it gives up naming the cause). Either way the cause
is reported as :class:`~edgeproxy.s2s.PeerCertificateRejected` and logged by the driver.

What a verdict keeps: the cause (or None) and the identities the certificate presents — not the
certificate, its chain or their DER; and once it is taken OpenSSL lets go of the chain the peer
sent (it keeps the leaf: ``getpeercert``). The identities are shared by every stream that presents the
same certificate (:func:`_identities`, the last ``IDENTITY_CACHE_SIZE`` certificates by digest): a
partner opens many streams with one certificate, and one naming 100 domains costs about 7 KiB of
identities per stream otherwise (and the same IDNA work on every handshake). The cause is taken
anew on every handshake: it depends on the time and the trust.

Intermediates: the peer's chain as sent (:func:`edgeproxy.certs.openssl.peer_chain`). If it cannot
be read the chain is the leaf alone, and a partner's intermediate CA must then be in ``[tls]
trust`` (every certificate in the trust file is an anchor).
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import ssl
import warnings
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.x509 import verification as xv
from cryptography.x509.oid import ExtendedKeyUsageOID

from edgeproxy.certs.identity import PresentedIdentities
from edgeproxy.certs.openssl import peer_chain, release_peer_chain
from edgeproxy.s2s import CertificateCheck

#: Extended key usages acceptable on an S2S peer certificate (clientAuth not required).
_S2S_USAGES = frozenset(
    (ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE)
)


#: Peer certificates whose presented identities are kept to be shared (by SHA-256 of the DER).
IDENTITY_CACHE_SIZE = 256
_IDENTITIES: OrderedDict[bytes, PresentedIdentities] = OrderedDict()

#: cryptography's warning about a certificate whose serial number is not positive.
SYSTEM_ROOT_SERIAL_WARNING = r"Parsed a serial number which wasn't positive"


@dataclass(frozen=True)
class PeerTrust:
    """The anchors peer certificates must chain to (``[tls] trust``, else the system store)."""

    anchors: tuple[x509.Certificate, ...]
    source: str

    @classmethod
    def load(cls, trust: Path | None) -> PeerTrust:
        if trust is not None and trust.exists():
            return cls(tuple(x509.load_pem_x509_certificates(trust.read_bytes())), str(trust))
        cafile = ssl.get_default_verify_paths().cafile
        anchors: list[x509.Certificate] = []
        if cafile and Path(cafile).exists():
            # One by one: a system bundle may hold a certificate cryptography cannot parse. A few
            # old roots there (Go Daddy, Starfield) have serial number 0, which cryptography
            # warns about: they are valid anchors, so the warning is silenced here, at its source.
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=SYSTEM_ROOT_SERIAL_WARNING)
                for block in Path(cafile).read_bytes().split(b"-----END CERTIFICATE-----"):
                    if b"-----BEGIN CERTIFICATE-----" in block:
                        try:
                            anchors.append(
                                x509.load_pem_x509_certificate(block + b"-----END CERTIFICATE-----\n")
                            )
                        except ValueError:
                            continue
        return cls(tuple(anchors), cafile or "system store (empty)")


def _eku_is_s2s(_policy: Any, _cert: x509.Certificate, eku: x509.ExtendedKeyUsage | None) -> None:
    if eku is not None and not _S2S_USAGES.intersection(eku):
        raise ValueError("extended key usage allows neither serverAuth nor clientAuth")


def _chain_problem(
    leaf: x509.Certificate, intermediates: Sequence[x509.Certificate], trust: PeerTrust, moment: dt.datetime
) -> str | None:
    """RFC 5280 path validation of ``leaf`` to ``trust``; None if it chains, else the cause."""
    if not trust.anchors:
        return f"untrusted issuer: no trust anchors in {trust.source}"
    ee_policy = xv.ExtensionPolicy.webpki_defaults_ee().may_be_present(
        x509.ExtendedKeyUsage, xv.Criticality.AGNOSTIC, _eku_is_s2s
    )
    verifier = (
        xv.PolicyBuilder()
        .store(xv.Store(list(trust.anchors)))
        .time(moment)
        .extension_policies(ca_policy=xv.ExtensionPolicy.webpki_defaults_ca(), ee_policy=ee_policy)
        .build_client_verifier()
    )
    try:
        verifier.verify(leaf, list(intermediates))
    except xv.VerificationError as exc:
        issuer = leaf.issuer.rfc4514_string()
        if leaf.issuer == leaf.subject:
            return f"untrusted issuer: self-signed certificate {issuer} ({exc})"
        return f"untrusted issuer {issuer} ({exc})"
    return None


#: What parsing a peer certificate may raise (cryptography: ValueError for malformed DER;
#: DuplicateExtension, UnsupportedGeneralNameType and InvalidVersion, which are not ValueErrors;
#: TypeError for odd key types; idna/UnicodeError in names). The prefix of the verdict (EP2007).
BAD_CERTIFICATE = "bad-certificate"
_PARSE_ERRORS = (
    ValueError, TypeError, UnicodeError, RecursionError,
    x509.DuplicateExtension, x509.UnsupportedGeneralNameType, x509.InvalidVersion,  # not ValueErrors
)


def certificate_check(
    der: bytes | None,
    trust: PeerTrust,
    now: dt.datetime | None = None,
    intermediates: Sequence[bytes] = (),
) -> CertificateCheck:
    """``check(domain)`` for the core: None if the peer certificate proves ``domain``, else the
    named cause (see the module docstring for the order of the checks). Never raises: a
    certificate that cannot be parsed gives ``bad-certificate: …`` for every domain."""
    if der is None:
        return lambda domain: "no certificate: the peer presented none"
    try:
        problem, ids = _judge(der, trust, now, intermediates)
    except _PARSE_ERRORS as exc:
        return _bad(exc)

    def check(domain: str) -> str | None:
        if problem is not None:
            return problem
        try:
            covered = ids.covers(domain)
        except _PARSE_ERRORS as exc:
            return _bad(exc)(domain)
        if not covered:
            return f"name mismatch: certificate names {', '.join(ids.all_names()) or 'nothing'}, not {domain}"
        return None

    return check


def _bad(exc: BaseException) -> CertificateCheck:
    reason = f"{BAD_CERTIFICATE}: {type(exc).__name__}: {str(exc)[:200]}"
    return lambda domain: reason


def _judge(
    der: bytes, trust: PeerTrust, now: dt.datetime | None, intermediates: Sequence[bytes]
) -> tuple[str | None, PresentedIdentities]:
    cert = x509.load_der_x509_certificate(der)
    _ = cert.extensions  # decoded lazily by cryptography: a malformed one is bad-certificate
    moment = now or dt.datetime.now(dt.UTC)
    if cert.not_valid_after_utc < moment:
        problem: str | None = f"expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC"
    elif cert.not_valid_before_utc > moment:
        problem = f"not yet valid (not before {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC)"
    else:
        chain = [x509.load_der_x509_certificate(d) for d in intermediates]
        problem = _chain_problem(cert, chain, trust, moment)
    return problem, _identities(der, cert)


def _identities(der: bytes, cert: x509.Certificate) -> PresentedIdentities:
    """The identities ``cert`` (whose DER is ``der``) presents, shared with every earlier verdict
    on the same certificate while it is among the last ``IDENTITY_CACHE_SIZE`` seen."""
    key = hashlib.sha256(der).digest()
    ids = _IDENTITIES.get(key)
    if ids is not None:
        _IDENTITIES.move_to_end(key)
        return ids
    ids = _IDENTITIES[key] = PresentedIdentities.from_certificate(cert)
    if len(_IDENTITIES) > IDENTITY_CACHE_SIZE:
        _IDENTITIES.popitem(last=False)
    return ids


def peer_certificate_check(tls: Any) -> CertificateCheck:
    """The check for the peer of a finished handshake on a :class:`trio.SSLStream` (or a
    :class:`~edgeproxy.certs.socket_tls.SocketTlsStream`): its leaf, the intermediates it sent
    (whatever else it sent, minus the leaf) and the context's trust. Once read, the chain is
    released in OpenSSL (:func:`~edgeproxy.certs.openssl.release_peer_chain`): the verdict is
    taken here, once, and OpenSSL would otherwise keep the chain for the connection's life."""
    der: bytes | None = tls.getpeercert(binary_form=True)
    trust = getattr(tls.context, "peer_trust", None) or _system_trust()
    intermediates = [c for c in peer_chain(tls) if c != der]
    release_peer_chain(tls)
    return certificate_check(der, trust, intermediates=intermediates)


@functools.cache
def _system_trust() -> PeerTrust:
    return PeerTrust.load(None)
