"""The gateway's TLS, built once from the configuration before anything listens.

``gateway_tls`` gathers SIP over TLS (``gateway.sip.tls``: the address paired with the served
``sip-listen`` address and the two contexts) and the loopback channel's client context
(``loopback.tls``, with ``[edge] internal-tls``). It raises
:class:`~edgeproxy.errors.ConfigError` for files that are missing or do not load, so that
``run_app`` can refuse to start before the edge binds a port.
"""

from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass

from edgeproxy.config import EdgeConfig
from edgeproxy.gateway.sip.tls import sip_tls_contexts, tls_address
from edgeproxy.gateway.sip.transport import SipTls
from edgeproxy.loopback.server import split_host_port
from edgeproxy.loopback.tls import gateway_channel_context

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
        host, port = split_host_port(address)
        sip = SipTls(host, port, server, client)
    elif config.gateway.sip_tls_listen is None:
        log.info("gateway: no [tls] certificate at %s: SIP over UDP and TCP only", config.path(config.tls.certificate))
    return GatewayTls(sip, gateway_channel_context(config))
