"""Every SSL context edgeproxy uses, from one builder: :func:`tls_context` with the role.

Theory of operation
-------------------
Each role presents a certificate of ours (``load_cert_chain``: the leaf and the intermediates in
the file) and speaks no TLS below 1.2 (RFC 8996 deprecates 1.0 and 1.1). The roles differ in the
side they take and in how they judge the peer's certificate (:class:`PeerVerification`):

===================== ====== ======== ===================================================================
role                  side   peer     where
===================== ====== ======== ===================================================================
``S2S_SERVER``        server deferred inbound STARTTLS (RFC 6120 §5)
``S2S_CLIENT``        client deferred outbound STARTTLS: our certificate for SASL EXTERNAL (XEP-0178 §3)
``SIP_SERVER``        server none     SIP over TLS from user agents (which rarely have a certificate)
``SIP_NEXT_HOP``      server required SIP over TLS when the next hop is TLS: only it may send
``SIP_CLIENT``        client required SIP over TLS to the next hop or a user agent (RFC 5922 §7)
``CHANNEL_EDGE``      server required the loopback channel's listener (``[edge] internal-tls``)
``CHANNEL_GATEWAY``   client required the gateway's connection to that listener
===================== ====== ======== ===================================================================

* **required** — OpenSSL verifies the chain to the anchors and fails the handshake otherwise; as
  TLS client it also checks the host connected to (``check_hostname``, an IP address against the
  IP SANs, a name against the DNS SANs); as TLS server it demands a client certificate whose
  purpose allows clientAuth (or that has no extended key usage).
* **none** — no client certificate is requested.
* **deferred** (S2S) — *the TLS layer accepts any peer certificate; we judge it afterwards*
  (:mod:`edgeproxy.certs.peer`). A peer whose certificate is untrusted, expired or for another name
  must still get a TLS stream: it then simply is not offered SASL EXTERNAL, and TLS dialback stays
  possible where its row allows it (docs/spec.md §8.2). OpenSSL cannot do that on its own: with
  ``SSL_VERIFY_PEER`` a failed chain aborts the handshake, and on the server side it checks client
  certificates for the ``ssl_client`` purpose — a certificate whose EKU is serverAuth only (what
  public CAs issue today, and what XEP-0178 peers carry) fails with "unsupported certificate
  purpose", although the clientAuth EKU must not be required (docs/spec.md §8.2). Python's ``ssl``
  exposes neither a verify callback nor the purpose, so
  :func:`edgeproxy.certs.openssl.defer_verification` installs a callback that accepts every
  certificate (and skips OpenSSL's chain building, whose result would be moot and whose work
  would stay with the connection); if it cannot (an unexpected object layout), OpenSSL's verification stays and a
  warning says so. ``SSL_VERIFY_PEER`` without ``FAIL_IF_NO_PEER_CERT`` still *requests* a client
  certificate (RFC 5246 §7.4.4 / RFC 8446 §4.3.2), so a peer without one can still connect.
  Host-name checking is off: the identity the certificate must prove is the *partner domain*, not
  the host we connected to. The context (:class:`S2SContext`) carries the
  :class:`~edgeproxy.certs.peer.PeerTrust` the verdict is taken against.

**Session tickets** (S2S server side): none are issued (``num_tickets = 0``). edgeproxy never
resumes an S2S session (its outbound streams do not offer one), and each ticket issued makes
OpenSSL keep a duplicate of the session, certificate data included, for the life of the
connection: 1.4 KiB per idle inbound TLS
stream with a one-name client certificate, 7 KiB with a certificate naming 100 domains (measured
with ``bench/probe_tls_memory.py``). TLS 1.3 issues two tickets by default.

The anchors are ``trust`` when it is given and exists, else the system store (CA certificates for
the purpose of the side). A file that does not load raises what ``ssl`` (or ``cryptography``, for
the S2S anchors) raises — or, given the configuration keys the files came from
(:class:`ConfigKeys`, ``gateway/tls.py`` and ``loopback/tls.py`` do), a
:class:`~edgeproxy.errors.ConfigError` naming the key.
"""

from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from edgeproxy.certs.openssl import defer_verification
from edgeproxy.certs.peer import PeerTrust
from edgeproxy.errors import ConfigError

log = logging.getLogger(__name__)

#: No TLS below 1.2 on any surface (RFC 8996).
MINIMUM_VERSION = ssl.TLSVersion.TLSv1_2
#: TLS 1.3 session tickets an S2S server context issues (OpenSSL's default is 2; see above).
S2S_SERVER_TICKETS = 0
#: What loading a certificate, a key or a trust file may raise.
_LOAD_ERRORS = (OSError, ssl.SSLError, ValueError)


class PeerVerification(Enum):
    """How a role judges the peer's certificate (see the module docstring)."""

    NONE = "none"
    REQUIRED = "required"
    DEFERRED = "deferred"


class TlsRole(Enum):
    """Who we are in a TLS handshake: the side, and how the peer's certificate is judged."""

    S2S_SERVER = ("s2s-server", True, PeerVerification.DEFERRED)
    S2S_CLIENT = ("s2s-client", False, PeerVerification.DEFERRED)
    SIP_SERVER = ("sip-server", True, PeerVerification.NONE)
    SIP_NEXT_HOP = ("sip-next-hop", True, PeerVerification.REQUIRED)
    SIP_CLIENT = ("sip-client", False, PeerVerification.REQUIRED)
    CHANNEL_EDGE = ("channel-edge", True, PeerVerification.REQUIRED)
    CHANNEL_GATEWAY = ("channel-gateway", False, PeerVerification.REQUIRED)

    def __init__(self, _label: str, server_side: bool, peer: PeerVerification) -> None:
        self.server_side = server_side
        self.peer = peer


@dataclass(frozen=True)
class ConfigKeys:
    """The configuration keys the files of a context come from, to name them when they do not load."""

    source: str  # the configuration file
    certificate: str
    key: str
    trust: str


class S2SContext(ssl.SSLContext):
    """An S2S context: carries the anchors the peer is judged against after the handshake."""

    peer_trust: PeerTrust
    verification_deferred: bool


def tls_context(
    role: TlsRole, cert: Path, key: Path, trust: Path | None, keys: ConfigKeys | None = None
) -> ssl.SSLContext:
    """The context for ``role``, presenting ``cert``/``key``, with ``trust`` as the anchors (the
    system store when None or absent). A file that does not load raises the library's error, or
    with ``keys`` a :class:`~edgeproxy.errors.ConfigError` naming its key."""
    protocol = ssl.PROTOCOL_TLS_SERVER if role.server_side else ssl.PROTOCOL_TLS_CLIENT
    ctx = S2SContext(protocol) if role.peer is PeerVerification.DEFERRED else ssl.SSLContext(protocol)
    ctx.minimum_version = MINIMUM_VERSION
    try:
        ctx.load_cert_chain(str(cert), str(key))
    except _LOAD_ERRORS as exc:
        if keys is None:
            raise
        raise ConfigError(f"{keys.source}: {keys.certificate} {cert} / {keys.key} {key} do not load: {exc}") from None
    if role.peer is PeerVerification.NONE:
        return ctx
    if isinstance(ctx, S2SContext):
        ctx.check_hostname = False  # the certificate must prove the partner domain, not the host
    try:
        if trust is not None and trust.exists():
            ctx.load_verify_locations(cafile=str(trust))
        else:
            ctx.load_default_certs(ssl.Purpose.CLIENT_AUTH if role.server_side else ssl.Purpose.SERVER_AUTH)
        if isinstance(ctx, S2SContext):
            ctx.peer_trust = PeerTrust.load(trust)
    except _LOAD_ERRORS as exc:
        if keys is None:
            raise
        raise ConfigError(f"{keys.source}: {keys.trust} {trust} does not load: {exc}") from None
    if isinstance(ctx, S2SContext):
        _defer(ctx)
        if role.server_side:
            ctx.num_tickets = S2S_SERVER_TICKETS
    else:
        ctx.verify_mode = ssl.CERT_REQUIRED  # a TLS client also checks the host name (its default)
    return ctx


def _defer(ctx: S2SContext) -> None:
    """Request the peer certificate and accept any: the verdict is :mod:`edgeproxy.certs.peer`'s."""
    ctx.verify_mode = ssl.CERT_OPTIONAL
    ctx.verification_deferred = defer_verification(ctx)
    if not ctx.verification_deferred:
        log.warning(
            "cannot install a verify callback: OpenSSL verifies peer certificates itself, so an"
            " untrusted or serverAuth-only peer certificate fails the TLS handshake"
        )
