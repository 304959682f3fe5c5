"""TLS for S2S streams: SSL contexts from the edge certificate and the peer-certificate check.

Theory of operation
-------------------
STARTTLS (RFC 6120 §5) is run by the session driver with :class:`trio.SSLStream` once the core
says :class:`~edgeproxy.s2s.StartTls`. Both directions present the edge certificate (as TLS
server inbound, as TLS *client* outbound, so that the partner can run SASL EXTERNAL on it,
XEP-0178 §3). Chain validation is done by OpenSSL against ``[tls] trust`` (the system store if
unset): ``CERT_OPTIONAL`` in both directions, so a peer without a certificate can still use TLS
dialback; a peer presenting a certificate that does not chain to the trust store fails the
handshake (OpenSSL has no "verify but continue" mode without a verify callback, which the
``ssl`` module lacks) — **limitation**, named in the log as the handshake error.

Host-name checking is off in OpenSSL: the identity the certificate must prove is the *partner
domain* (RFC 6125 DNS-ID with left-most wildcard, SRV-ID ``_xmpp-server.domain``, XmppAddr), not
the host we connected to, and it is checked by :func:`certificate_check` with
``edgeproxy.certs.identity``. The clientAuth EKU is not required (SPEC §8): the server context
does not set a purpose for client certificates.
"""

from __future__ import annotations

import datetime as dt
import ssl
from pathlib import Path

from cryptography import x509

from edgeproxy.certs.identity import PresentedIdentities
from edgeproxy.s2s import CertificateCheck


def _context(purpose: ssl.Purpose, cert: Path, key: Path, trust: Path | None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(
        ssl.PROTOCOL_TLS_SERVER if purpose is ssl.Purpose.CLIENT_AUTH else ssl.PROTOCOL_TLS_CLIENT
    )
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(cert), str(key))
    ctx.check_hostname = False
    if trust is not None and trust.exists():
        ctx.load_verify_locations(cafile=str(trust))
    else:
        ctx.load_default_certs(purpose)
    ctx.verify_mode = ssl.CERT_OPTIONAL
    return ctx


def server_context(cert: Path, key: Path, trust: Path | None) -> ssl.SSLContext:
    """Inbound STARTTLS: we are the TLS server and ask for (but do not demand) a client cert."""
    return _context(ssl.Purpose.CLIENT_AUTH, cert, key, trust)


def client_context(cert: Path, key: Path, trust: Path | None) -> ssl.SSLContext:
    """Outbound STARTTLS: we present the edge certificate as TLS client certificate."""
    return _context(ssl.Purpose.SERVER_AUTH, cert, key, trust)


def certificate_check(der: bytes | None, now: dt.datetime | None = None) -> CertificateCheck:
    """``check(domain)`` for the core: None if the (chain-verified) peer cert proves ``domain``."""
    if der is None:
        return lambda domain: "the peer presented no certificate"
    cert = x509.load_der_x509_certificate(der)
    ids = PresentedIdentities.from_certificate(cert)
    moment = now or dt.datetime.now(dt.UTC)

    def check(domain: str) -> str | None:
        if cert.not_valid_after_utc < moment:
            return f"certificate expired on {cert.not_valid_after_utc:%Y-%m-%d}"
        if cert.not_valid_before_utc > moment:
            return f"certificate not valid before {cert.not_valid_before_utc:%Y-%m-%d}"
        if not ids.covers(domain):
            return f"name mismatch: certificate names {', '.join(ids.all_names()) or 'nothing'}"
        return None

    return check
