"""TLS for S2S streams: SSL contexts from the edge certificate and the peer-certificate check.

Theory of operation
-------------------
STARTTLS (RFC 6120 §5) is run by the session driver with :class:`trio.SSLStream` once the core
says :class:`~edgeproxy.s2s.StartTls`. Both directions present the edge certificate (as TLS
server inbound, as TLS *client* outbound, so that the partner can run SASL EXTERNAL on it,
XEP-0178 §3).

**The TLS layer accepts any peer certificate; we judge it afterwards.** A peer whose certificate
is untrusted, expired or for another name must still get a TLS stream: it then simply is not
offered SASL EXTERNAL, and TLS dialback stays possible where its row allows it (SPEC §2.1,
XEP-0220 over TLS). OpenSSL cannot do that on its own: with ``SSL_VERIFY_PEER`` a failed chain
aborts the handshake, and on the server side it checks client certificates for the
``ssl_client`` purpose — a certificate whose EKU is serverAuth only (what public CAs issue
today, and what XEP-0178 peers carry) fails with "unsupported certificate purpose", although
SPEC §8 says the clientAuth EKU must not be required. Python's ``ssl`` exposes neither a verify
callback nor the purpose, so :func:`_defer_verification` installs a verify callback that accepts
every certificate on the context's ``SSL_CTX`` through ctypes (the pointer is the first field
after the object header of ``_ssl._SSLContext``; it is sanity-checked by reading back the
verify mode and options, and if anything does not match we keep OpenSSL's verification and log
the limitation). ``SSL_VERIFY_PEER`` without ``FAIL_IF_NO_PEER_CERT`` still *requests* a client
certificate (RFC 5246 §7.4.4 / RFC 8446 §4.3.2), so a peer without one can still connect.

The verdict is then ours (:func:`certificate_check`, per stream, cached), with
``cryptography.x509.verification``:

1. no certificate → "no certificate";
2. leaf validity period → "expired on …" / "not valid before …";
3. chain to ``[tls] trust`` (the system store if unset) under the Web PKI profile (RFC 5280 path
   validation, basic constraints, key usage…) but with the extended key usage relaxed to
   "serverAuth or clientAuth or absent" (SPEC §8) → "untrusted issuer …";
4. identity for the partner domain per RFC 6125 §6 / XEP-0178 §3 with
   :class:`edgeproxy.certs.identity.PresentedIdentities` (DNS-ID with left-most-label wildcard,
   SRV-ID ``_xmpp-server.domain``, XmppAddr) → "name mismatch: …".

The receiving core offers SASL EXTERNAL only when ``check(domain)`` is None; the initiating
core attempts EXTERNAL only towards a peer whose certificate proves the partner domain (else
TLS dialback where the row allows it, else it gives up naming the cause). Either way the cause
is reported as :class:`~edgeproxy.s2s.PeerCertificateRejected` and logged by the driver.

Host-name checking is off in OpenSSL for the same reason: the identity the certificate must
prove is the *partner domain*, not the host we connected to.

**Limitation (Python 3.11):** ``SSLObject`` gives only the peer's leaf certificate
(``get_unverified_chain`` arrives in Python 3.13 and is used when present). On 3.11 the leaf
must therefore be issued directly by a certificate in ``[tls] trust``: put the partner's
intermediate CA there next to the roots (every certificate in the trust file is an anchor).
"""

from __future__ import annotations

import ctypes
import datetime as dt
import functools
import logging
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.x509 import verification as xv
from cryptography.x509.oid import ExtendedKeyUsageOID

from edgeproxy.certs.identity import PresentedIdentities
from edgeproxy.s2s import CertificateCheck

log = logging.getLogger("edgeproxy.net.tls")

#: OpenSSL's SSL_VERIFY_PEER: request (server) / require (client) the peer's certificate.
_SSL_VERIFY_PEER = 1
_VERIFY_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_void_p)
#: Kept alive for the life of the process: OpenSSL holds the function pointer.
_ACCEPT_ANY = _VERIFY_CALLBACK(lambda _preverify_ok, _store: 1)
#: Extended key usages acceptable on an S2S peer certificate (SPEC §8: clientAuth not required).
_S2S_USAGES = frozenset(
    (ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE)
)


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
            # One by one: a system bundle may hold a certificate cryptography cannot parse.
            for block in Path(cafile).read_bytes().split(b"-----END CERTIFICATE-----"):
                if b"-----BEGIN CERTIFICATE-----" in block:
                    try:
                        anchors.append(x509.load_pem_x509_certificate(block + b"-----END CERTIFICATE-----\n"))
                    except ValueError:
                        continue
        return cls(tuple(anchors), cafile or "system store (empty)")


class EdgeSSLContext(ssl.SSLContext):
    """An SSL context that carries the trust anchors used to judge the peer afterwards."""

    peer_trust: PeerTrust
    verification_deferred: bool


def _ssl_ctx_pointer(ctx: ssl.SSLContext) -> int | None:
    """The ``SSL_CTX *`` of ``ctx`` (CPython ``PySSLContext.ctx``), or None if not verifiable."""
    try:
        import _ssl

        lib = ctypes.CDLL(_ssl.__file__)
        get_mode, get_options = lib.SSL_CTX_get_verify_mode, lib.SSL_CTX_get_options
    except (AttributeError, OSError):
        return None
    get_mode.restype, get_mode.argtypes = ctypes.c_int, [ctypes.c_void_p]
    get_options.restype, get_options.argtypes = ctypes.c_uint64, [ctypes.c_void_p]
    pointer = ctypes.c_void_p.from_address(id(ctx) + object.__basicsize__).value
    if not pointer:
        return None
    # Read back two fields through the pointer: if they are not what Python reports, the
    # object layout is not the one we expect and we must not write through it.
    expected_mode = {ssl.CERT_NONE: 0, ssl.CERT_OPTIONAL: 1, ssl.CERT_REQUIRED: 3}[ctx.verify_mode]
    if get_mode(pointer) != expected_mode or get_options(pointer) != int(ctx.options):
        return None
    return pointer


def _defer_verification(ctx: ssl.SSLContext) -> bool:
    """Request the peer certificate but accept any (see the module docstring); True if done."""
    pointer = _ssl_ctx_pointer(ctx)
    if pointer is None:
        return False
    import _ssl

    set_verify = ctypes.CDLL(_ssl.__file__).SSL_CTX_set_verify
    set_verify.restype, set_verify.argtypes = None, [ctypes.c_void_p, ctypes.c_int, _VERIFY_CALLBACK]
    set_verify(pointer, _SSL_VERIFY_PEER, _ACCEPT_ANY)
    return ctx.verify_mode is ssl.CERT_OPTIONAL


def _context(server_side: bool, cert: Path, key: Path, trust: Path | None) -> EdgeSSLContext:
    ctx = EdgeSSLContext(ssl.PROTOCOL_TLS_SERVER if server_side else ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(cert), str(key))
    ctx.check_hostname = False
    if trust is not None and trust.exists():
        ctx.load_verify_locations(cafile=str(trust))
    else:
        ctx.load_default_certs(ssl.Purpose.CLIENT_AUTH if server_side else ssl.Purpose.SERVER_AUTH)
    ctx.verify_mode = ssl.CERT_OPTIONAL
    ctx.peer_trust = PeerTrust.load(trust)
    ctx.verification_deferred = _defer_verification(ctx)
    if not ctx.verification_deferred:
        log.warning(
            "cannot install a verify callback: OpenSSL verifies peer certificates itself, so an"
            " untrusted or serverAuth-only peer certificate fails the TLS handshake"
        )
    return ctx


def server_context(cert: Path, key: Path, trust: Path | None) -> EdgeSSLContext:
    """Inbound STARTTLS: we are the TLS server and request (but do not demand) a client cert."""
    return _context(True, cert, key, trust)


def client_context(cert: Path, key: Path, trust: Path | None) -> EdgeSSLContext:
    """Outbound STARTTLS: we present the edge certificate as TLS client certificate."""
    return _context(False, cert, key, trust)


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


def certificate_check(
    der: bytes | None,
    trust: PeerTrust,
    now: dt.datetime | None = None,
    intermediates: Sequence[bytes] = (),
) -> CertificateCheck:
    """``check(domain)`` for the core: None if the peer certificate proves ``domain``, else the
    named cause (see the module docstring for the order of the checks)."""
    if der is None:
        return lambda domain: "no certificate: the peer presented none"
    cert = x509.load_der_x509_certificate(der)
    moment = now or dt.datetime.now(dt.UTC)
    if cert.not_valid_after_utc < moment:
        problem: str | None = f"expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC"
    elif cert.not_valid_before_utc > moment:
        problem = f"not yet valid (not before {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC)"
    else:
        chain = [x509.load_der_x509_certificate(d) for d in intermediates]
        problem = _chain_problem(cert, chain, trust, moment)
    ids = PresentedIdentities.from_certificate(cert)

    def check(domain: str) -> str | None:
        if problem is not None:
            return problem
        if not ids.covers(domain):
            return f"name mismatch: certificate names {', '.join(ids.all_names()) or 'nothing'}, not {domain}"
        return None

    return check


def peer_certificate_check(tls: Any) -> CertificateCheck:
    """The check for the peer of a finished handshake on a :class:`trio.SSLStream`."""
    der: bytes | None = tls.getpeercert(binary_form=True)
    context = tls.context
    trust = getattr(context, "peer_trust", None) or _system_trust()
    chain: list[bytes] = []
    unverified = getattr(getattr(tls, "_ssl_object", None), "get_unverified_chain", None)
    if unverified is not None:  # Python >= 3.13: DER of what the peer sent, leaf first
        chain = [c for c in unverified() or [] if isinstance(c, bytes)][1:]
    return certificate_check(der, trust, intermediates=chain)


@functools.cache
def _system_trust() -> PeerTrust:
    return PeerTrust.load(None)
