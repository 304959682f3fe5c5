"""The gateway's TLS, built once from the configuration before anything listens.

``gateway_tls`` gathers SIP over TLS (the address paired with the served ``sip-listen`` address
and the two contexts) and the loopback channel's client context (``loopback.tls``, with ``[edge]
internal-tls``). It raises :class:`~edgeproxy.errors.ConfigError` for files that are missing or
do not load, so that ``run_app`` can refuse to start before the edge binds a port.

SIP over TLS: ``[gateway] sip-tls-listen`` absent: each served ``sip-listen`` address at port + 1
(the SIP convention, 5060 → 5061), *if* the ``[tls]`` certificate and key exist — a gateway
without a certificate simply serves UDP and TCP. Given and not empty: those addresses, and then a
missing or unloadable certificate is a :class:`~edgeproxy.errors.ConfigError` (the operator asked
for TLS; starting without it would be a silent downgrade). ``[]``: no TLS.

The contexts (RFC 5630, RFC 5922 §7; built by :func:`edgeproxy.certs.contexts.tls_context`): as
TLS server we present ``[tls] certificate`` and do not request a client certificate (user agents
rarely have one) — except when ``[gateway] next-hop`` is ``sips:`` or ``;transport=tls``: only
the next hop may then send us requests (issue 14, ``admission.py``), and it must present a
certificate that verifies against ``[tls] trust`` and names its host (mutual TLS, as Lync servers
require of each other). As TLS client we present it too (a SIP server in front of us may demand
mutual TLS, as Lync does between servers) and verify the peer against ``[tls] trust`` (the system
store when the file is absent, like S2S) including the host we connect to — an IP address must be
in the certificate's IP SANs, a name in its DNS SANs.
"""

from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass
from pathlib import Path

from edgeproxy.certs.contexts import ConfigKeys, TlsRole, tls_context
from edgeproxy.config import EdgeConfig
from edgeproxy.errors import ConfigError
from edgeproxy.gateway.sip.transport import SipTls
from edgeproxy.loopback.tls import gateway_channel_context
from edgeproxy.names import listen_address

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class GatewayTls:
    sip: SipTls | None
    channel: ssl.SSLContext | None


def gateway_tls(config: EdgeConfig, sip_listen: str | None = None) -> GatewayTls:
    """TLS for the gateway serving ``sip_listen`` (default: the first ``sip-listen`` address)."""
    sip_listen = sip_listen or config.gateway.sip_listen[0]
    index = config.gateway.sip_listen.index(sip_listen) if sip_listen in config.gateway.sip_listen else 0
    address = tls_address(sip_listen, config, index)
    sip: SipTls | None = None
    if address is not None:
        server, client = sip_tls_contexts(config)
        host, port = listen_address(address)
        sip = SipTls(host, port, server, client)
    elif config.gateway.sip_tls_listen is None:
        log.info("gateway: no [tls] certificate at %s: SIP over UDP and TCP only", config.path(config.tls.certificate))
    return GatewayTls(sip, gateway_channel_context(config))


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
    # issue 14: with a TLS next hop, only the next hop may send us requests, over mutual TLS
    server_role = TlsRole.SIP_NEXT_HOP if _next_hop_is_tls(config.gateway.next_hop) else TlsRole.SIP_SERVER
    keys = ConfigKeys(config.source, "tls.certificate", "tls.key", "tls.trust")
    return tls_context(server_role, cert, key, trust, keys), tls_context(TlsRole.SIP_CLIENT, cert, key, trust, keys)


def _next_hop_is_tls(next_hop: str) -> bool:
    text = next_hop.strip().lower()
    return text.startswith("sips:") or ";transport=tls" in text
