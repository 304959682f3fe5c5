"""Mutual TLS on the loopback channel, from the configuration (SPEC §1: a gateway on another host).

Theory of operation
-------------------
With ``[edge] internal-tls = true`` both ends authenticate each other:

* the edge (TLS server) presents ``[edge] internal-certificate`` (default ``[tls] certificate``)
  and *requires* a client certificate chaining to ``[edge] internal-trust`` (default ``[tls]
  trust``). OpenSSL checks the chain and the client-certificate purpose (clientAuth extended key
  usage, or none); a gateway without one, or with one from another CA, fails the handshake, and
  the edge reports it (event ``EP5003`` channel-refused);
* the gateway (TLS client) presents ``[gateway] channel-certificate`` (default ``[tls]
  certificate``) and verifies the edge's certificate against the same anchors *and* the host
  of ``[gateway] edge-address`` (DNS name or IP address SAN): a certificate from the right CA for
  another host is refused too.

The anchors must be a file (``check_rules`` in ``config.py`` refuses the system store: any
publicly certified host could then act as the gateway). Any file that is missing or does not
load is a :class:`~edgeproxy.errors.ConfigError` naming the key, raised before anything
listens: the channel never falls back to plain text. This module only picks the files; the
contexts are :func:`edgeproxy.certs.contexts.tls_context`'s roles ``CHANNEL_EDGE`` and
``CHANNEL_GATEWAY``.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from edgeproxy.certs.contexts import ConfigKeys, TlsRole, tls_context
from edgeproxy.config import EdgeConfig
from edgeproxy.errors import ConfigError


def _file(config: EdgeConfig, key: str, value: str) -> Path:
    path = config.path(value)
    if not path.exists():
        raise ConfigError(f"{config.source}: {key} {path} does not exist ([edge] internal-tls is on)")
    return path


def _context(config: EdgeConfig, role: TlsRole, cert_keys: tuple[str, str, str, str]) -> ssl.SSLContext:
    cert_key, cert_value, key_key, key_value = cert_keys
    cert, key = _file(config, cert_key, cert_value), _file(config, key_key, key_value)
    trust_key, trust_value = (
        ("edge.internal-trust", config.edge.internal_trust)
        if config.edge.internal_trust
        else ("tls.trust", config.tls.trust or "")
    )
    trust = _file(config, trust_key, trust_value)
    return tls_context(role, cert, key, trust, ConfigKeys(config.source, cert_key, key_key, trust_key))


def edge_channel_context(config: EdgeConfig) -> ssl.SSLContext | None:
    """The internal listener's context (client certificate required), or None without TLS."""
    if not config.edge.internal_tls:
        return None
    edge = config.edge
    return _context(
        config,
        TlsRole.CHANNEL_EDGE,
        (
            "edge.internal-certificate" if edge.internal_certificate else "tls.certificate",
            edge.internal_certificate or config.tls.certificate,
            "edge.internal-key" if edge.internal_key else "tls.key",
            edge.internal_key or config.tls.key,
        ),
    )


def gateway_channel_context(config: EdgeConfig) -> ssl.SSLContext | None:
    """The gateway's context (presents its certificate, verifies the edge), or None without TLS."""
    if not config.edge.internal_tls:
        return None
    gateway = config.gateway
    return _context(
        config,
        TlsRole.CHANNEL_GATEWAY,
        (
            "gateway.channel-certificate" if gateway.channel_certificate else "tls.certificate",
            gateway.channel_certificate or config.tls.certificate,
            "gateway.channel-key" if gateway.channel_key else "tls.key",
            gateway.channel_key or config.tls.key,
        ),
    )
