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


def _pick(own: tuple[str, str | None], default: tuple[str, str | None]) -> tuple[str, str]:
    """The channel's own setting (key, value) when it is given, else the ``[tls]`` one."""
    key, value = own if own[1] else default
    return key, value or ""


def _context(
    config: EdgeConfig, role: TlsRole, certificate: tuple[str, str | None], key: tuple[str, str | None]
) -> ssl.SSLContext | None:
    """``role``'s context from the channel's ``certificate`` and ``key`` settings (key, value)
    and ``[edge] internal-trust``, each defaulting to its ``[tls]`` setting; None without
    ``[edge] internal-tls``."""
    if not config.edge.internal_tls:
        return None
    picked = (
        _pick(certificate, ("tls.certificate", config.tls.certificate)),
        _pick(key, ("tls.key", config.tls.key)),
        _pick(("edge.internal-trust", config.edge.internal_trust), ("tls.trust", config.tls.trust)),
    )
    cert_file, key_file, trust_file = (_file(config, k, v) for k, v in picked)
    names = ConfigKeys(config.source, *(k for k, _v in picked))
    return tls_context(role, cert_file, key_file, trust_file, names)


def edge_channel_context(config: EdgeConfig) -> ssl.SSLContext | None:
    """The internal listener's context (client certificate required), or None without TLS."""
    edge = config.edge
    return _context(
        config,
        TlsRole.CHANNEL_EDGE,
        ("edge.internal-certificate", edge.internal_certificate),
        ("edge.internal-key", edge.internal_key),
    )


def gateway_channel_context(config: EdgeConfig) -> ssl.SSLContext | None:
    """The gateway's context (presents its certificate, verifies the edge), or None without TLS."""
    gateway = config.gateway
    return _context(
        config,
        TlsRole.CHANNEL_GATEWAY,
        ("gateway.channel-certificate", gateway.channel_certificate),
        ("gateway.channel-key", gateway.channel_key),
    )
