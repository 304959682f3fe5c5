"""SIP over TLS from the configuration: which addresses, which certificate, which trust.

``[gateway] sip-tls-listen`` absent: each served ``sip-listen`` address at port + 1 (the SIP
convention, 5060 → 5061), *if* the ``[tls]`` certificate and key exist — a gateway without a
certificate simply serves UDP and TCP. Given and not empty: those addresses, and then a missing
or unloadable certificate is a :class:`~edgeproxy.errors.ConfigError` (the operator asked for
TLS; starting without it would be a silent downgrade). ``[]``: no TLS.

The contexts (RFC 5630, RFC 5922 §7): as TLS server we present ``[tls] certificate`` and do not
request a client certificate (user agents rarely have one) — except when ``[gateway] next-hop``
is ``sips:`` or ``;transport=tls``: only the next hop may then send us requests (issue 14,
``admission.py``), and it must present a certificate that verifies against ``[tls] trust`` and
names its host (mutual TLS, as Lync servers require of each other). As TLS client we present it too (a
SIP server in front of us may demand mutual TLS, as Lync does between servers) and verify the
peer against ``[tls] trust`` (the system store when the file is absent, like S2S) including the
host we connect to — an IP address must be in the certificate's IP SANs, a name in its DNS SANs.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from edgeproxy.config import EdgeConfig
from edgeproxy.errors import ConfigError

#: No TLS below 1.2 (RFC 8996 deprecates 1.0 and 1.1; RFC 5630 predates it).
MINIMUM_VERSION = ssl.TLSVersion.TLSv1_2


def tls_address(sip_listen: str, config: EdgeConfig, index: int = 0) -> str | None:
    """The TLS address paired with the ``index``-th ``sip-listen`` address, or None for no TLS
    (``[]``, or the derived default without a certificate)."""
    explicit = config.gateway.sip_tls_listen
    if explicit is not None:
        return explicit[index] if index < len(explicit) else None
    if not _certificate_files(config):
        return None
    host, _, port = sip_listen.rpartition(":")
    return f"{host}:{int(port) + 1 if int(port) else 0}"


def _certificate_files(config: EdgeConfig) -> tuple[Path, Path] | None:
    cert, key = config.path(config.tls.certificate), config.path(config.tls.key)
    return (cert, key) if cert.exists() and key.exists() else None


def sip_tls_contexts(config: EdgeConfig) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server, client) contexts from ``[tls]``; ConfigError naming the key if they cannot load."""
    files = _certificate_files(config)
    if files is None:
        raise ConfigError(
            f"{config.source}: gateway.sip-tls-listen needs the [tls] certificate and key, but"
            f" {config.path(config.tls.certificate)} or {config.path(config.tls.key)} does not exist"
        )
    cert, key = files
    trust = config.path(config.tls.trust) if config.tls.trust else None
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED, check_hostname
    for ctx in (server, client):
        ctx.minimum_version = MINIMUM_VERSION
        try:
            ctx.load_cert_chain(str(cert), str(key))
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise ConfigError(f"{config.source}: tls.certificate {cert} / tls.key {key} do not load: {exc}") from None
    try:
        if trust is not None and trust.exists():
            client.load_verify_locations(cafile=str(trust))
        else:
            client.load_default_certs(ssl.Purpose.SERVER_AUTH)
        if _next_hop_is_tls(config.gateway.next_hop):
            # issue 14: only the next hop may send us requests, over mutual TLS
            server.verify_mode = ssl.CERT_REQUIRED
            if trust is not None and trust.exists():
                server.load_verify_locations(cafile=str(trust))
            else:
                server.load_default_certs(ssl.Purpose.CLIENT_AUTH)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"{config.source}: tls.trust {trust} does not load: {exc}") from None
    return server, client


def _next_hop_is_tls(next_hop: str) -> bool:
    text = next_hop.strip().lower()
    return text.startswith("sips:") or ";transport=tls" in text
