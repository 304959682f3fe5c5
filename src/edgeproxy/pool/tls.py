"""Mutual TLS on the pool link (``[pool] tls = true``), from the ``[tls]`` certificate, key and
trust: the primary requires a client certificate chaining to the trust anchors, the member
checks that the primary's certificate chains to them and names the host of ``[pool] primary``.

The contexts are those of the loopback channel's roles (``TlsRole.CHANNEL_EDGE`` and
``CHANNEL_GATEWAY``: both sides required, TLS 1.2 at least): the same rules, another link. A
file that is missing or does not load is a ``ConfigError`` naming its key, raised before
anything listens or connects: the link never falls back to plain text.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from edgeproxy.certs.contexts import ConfigKeys, TlsRole, tls_context
from edgeproxy.config import EdgeConfig
from edgeproxy.errors import ConfigError


def _file(config: EdgeConfig, key: str, value: str | None) -> Path:
    path = config.path(value or "")
    if not value or not path.is_file():
        raise ConfigError(f"{config.source}: {key} {path} does not exist ([pool] tls is on)")
    return path


def _context(config: EdgeConfig, role: TlsRole) -> ssl.SSLContext | None:
    if not config.pool.tls:
        return None
    tls = config.tls
    cert = _file(config, "tls.certificate", tls.certificate)
    key = _file(config, "tls.key", tls.key)
    trust = _file(config, "tls.trust", tls.trust)
    keys = ConfigKeys(config.source, "tls.certificate", "tls.key", "tls.trust")
    return tls_context(role, cert, key, trust, keys)


def primary_context(config: EdgeConfig) -> ssl.SSLContext | None:
    """The primary's listener context (a member's certificate required); None without TLS."""
    return _context(config, TlsRole.CHANNEL_EDGE)


def member_context(config: EdgeConfig) -> ssl.SSLContext | None:
    """The member's context (presents its certificate, verifies the primary's); None without TLS."""
    return _context(config, TlsRole.CHANNEL_GATEWAY)
