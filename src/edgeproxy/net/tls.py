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

A certificate that ``cryptography`` cannot parse (malformed DER, a repeated extension, a DER-encoded
default value, an unparsable name…) is judged ``bad-certificate: …`` — like no valid certificate:
no SASL EXTERNAL, TLS dialback where the row allows it — and reported as event EP2007. Parsing in
``cryptography`` is partly lazy (extensions are decoded on first access), so everything that
touches the certificate, the matching in ``check(domain)`` included, is inside that guard.

The receiving core offers SASL EXTERNAL only when ``check(domain)`` is None; the initiating
core attempts EXTERNAL only towards a peer whose certificate proves the partner domain (else
TLS dialback where the row allows it, else it gives up naming the cause). Either way the cause
is reported as :class:`~edgeproxy.s2s.PeerCertificateRejected` and logged by the driver.

Host-name checking is off in OpenSSL for the same reason: the identity the certificate must
prove is the *partner domain*, not the host we connected to.

Intermediates: the peer's chain as sent comes from ``SSLObject.get_unverified_chain`` on Python
≥ 3.13; on 3.11 ``SSLObject`` gives only the leaf, so :func:`_peer_chain` calls OpenSSL's
``SSL_get_peer_cert_chain`` the same ctypes way (checked against the context). If that is not
possible the chain is the leaf alone, and a partner's intermediate CA must then be in
``[tls] trust`` (every certificate in the trust file is an anchor).
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


@functools.cache
def _libssl() -> ctypes.CDLL | None:
    """The OpenSSL functions CPython's ``_ssl`` is linked with (dlsym searches its dependencies)."""
    try:
        import _ssl

        lib = ctypes.CDLL(_ssl.__file__)
        signatures: dict[str, tuple[Any, list[Any]]] = {
            "SSL_CTX_get_verify_mode": (ctypes.c_int, [ctypes.c_void_p]),
            "SSL_CTX_get_options": (ctypes.c_uint64, [ctypes.c_void_p]),
            "SSL_CTX_set_verify": (None, [ctypes.c_void_p, ctypes.c_int, _VERIFY_CALLBACK]),
            "SSL_get_SSL_CTX": (ctypes.c_void_p, [ctypes.c_void_p]),
            "SSL_get_peer_cert_chain": (ctypes.c_void_p, [ctypes.c_void_p]),
            "OPENSSL_sk_num": (ctypes.c_int, [ctypes.c_void_p]),
            "OPENSSL_sk_value": (ctypes.c_void_p, [ctypes.c_void_p, ctypes.c_int]),
            "i2d_X509": (ctypes.c_int, [ctypes.c_void_p, ctypes.c_void_p]),
        }
        for name, (restype, argtypes) in signatures.items():
            function = getattr(lib, name)
            function.restype, function.argtypes = restype, argtypes
    except (AttributeError, OSError, ImportError):
        return None
    return lib


def _field(obj: object, index: int) -> int | None:
    """The ``index``-th pointer field after the object header of a CPython object."""
    return ctypes.c_void_p.from_address(id(obj) + object.__basicsize__ + index * ctypes.sizeof(ctypes.c_void_p)).value


def _ssl_ctx_pointer(ctx: ssl.SSLContext) -> int | None:
    """The ``SSL_CTX *`` of ``ctx`` (CPython ``PySSLContext.ctx``), or None if not verifiable."""
    lib = _libssl()
    if lib is None:
        return None
    pointer = _field(ctx, 0)
    if not pointer:
        return None
    # Read back two fields through the pointer: if they are not what Python reports, the
    # object layout is not the one we expect and we must not write through it.
    expected_mode = {ssl.CERT_NONE: 0, ssl.CERT_OPTIONAL: 1, ssl.CERT_REQUIRED: 3}[ctx.verify_mode]
    if lib.SSL_CTX_get_verify_mode(pointer) != expected_mode or lib.SSL_CTX_get_options(pointer) != int(ctx.options):
        return None
    return pointer


def _defer_verification(ctx: ssl.SSLContext) -> bool:
    """Request the peer certificate but accept any (see the module docstring); True if done."""
    pointer = _ssl_ctx_pointer(ctx)
    lib = _libssl()
    if pointer is None or lib is None:
        return False
    lib.SSL_CTX_set_verify(pointer, _SSL_VERIFY_PEER, _ACCEPT_ANY)
    return ctx.verify_mode is ssl.CERT_OPTIONAL


def _peer_chain(tls: Any) -> list[bytes]:
    """DER of every certificate the peer sent (``SSL_get_peer_cert_chain``), or [] if unknown.

    Python 3.13 has ``SSLObject.get_unverified_chain``; on 3.11 the ``SSL *`` is read from the
    ``_ssl._SSLSocket`` (``PySSLSocket``: header, socket weakref, ``SSL *ssl``, ``ctx``) and
    accepted only if it belongs to the stream's context (``SSL_get_SSL_CTX`` and the ``ctx``
    field both match), so a different object layout yields [] rather than a wrong read.
    """
    ssl_object = getattr(tls, "_ssl_object", None)
    unverified = getattr(ssl_object, "get_unverified_chain", None)
    if unverified is not None:
        return [c for c in unverified() or [] if isinstance(c, bytes)]
    lib, inner = _libssl(), getattr(ssl_object, "_sslobj", None)
    ctx_pointer = _ssl_ctx_pointer(tls.context) if lib is not None else None
    if lib is None or inner is None or ctx_pointer is None:
        return []
    ssl_pointer, context_field = _field(inner, 1), _field(inner, 2)
    if not ssl_pointer or context_field != id(tls.context) or lib.SSL_get_SSL_CTX(ssl_pointer) != ctx_pointer:
        return []
    stack = lib.SSL_get_peer_cert_chain(ssl_pointer)
    chain: list[bytes] = []
    for n in range(lib.OPENSSL_sk_num(stack) if stack else 0):
        x509_pointer = lib.OPENSSL_sk_value(stack, n)
        size = lib.i2d_X509(x509_pointer, None)
        if size <= 0:
            return []
        buffer = ctypes.create_string_buffer(size)
        cursor = ctypes.c_void_p(ctypes.addressof(buffer))
        lib.i2d_X509(x509_pointer, ctypes.byref(cursor))
        chain.append(buffer.raw)
    return chain


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
    # Decodes the extensions (lazily parsed by cryptography): a malformed one raises here.
    return problem, PresentedIdentities.from_certificate(cert)


def peer_certificate_check(tls: Any) -> CertificateCheck:
    """The check for the peer of a finished handshake on a :class:`trio.SSLStream`: its leaf,
    the intermediates it sent (whatever else it sent, minus the leaf) and the context's trust."""
    der: bytes | None = tls.getpeercert(binary_form=True)
    trust = getattr(tls.context, "peer_trust", None) or _system_trust()
    intermediates = [c for c in _peer_chain(tls) if c != der]
    return certificate_check(der, trust, intermediates=intermediates)


@functools.cache
def _system_trust() -> PeerTrust:
    return PeerTrust.load(None)
