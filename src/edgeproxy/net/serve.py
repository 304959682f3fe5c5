"""``edgeproxy serve``: run the S2S edge from the configuration file and the policy store.

Composition (until the service-control issue brings ``app.py``): the policy snapshot comes from
a :class:`~edgeproxy.policy.holder.SnapshotHolder` polled every ``POLL_INTERVAL`` seconds in a
worker thread (a committed change applies without dropping streams, SPEC §10 "reload"); TLS
contexts from ``[tls]`` when the certificate and key exist (else the edge runs without TLS and
says so); the S2S listeners on ``edge.listen``. Accepted inbound stanzas go to an in-memory
local delivery whose consumer logs them — the loopback channel to the gateway replaces it.
``EDGEPROXY_DNS_RESOLVER=IP[:PORT]`` points outbound SRV/A lookups at one nameserver (the lab).
"""

from __future__ import annotations

import logging
import os

import trio

from edgeproxy.config import EdgeConfig
from edgeproxy.dns.records import split_host_port
from edgeproxy.dns.resolver import parse_resolver
from edgeproxy.net.connector import Connector, ConnectorSettings
from edgeproxy.net.context import EdgeContext
from edgeproxy.net.delivery import MemoryDelivery
from edgeproxy.net.edge import EdgeServer
from edgeproxy.net.tls import client_context, server_context
from edgeproxy.policy.holder import POLL_INTERVAL, SnapshotHolder

log = logging.getLogger("edgeproxy.serve")


async def _poll(holder: SnapshotHolder) -> None:
    while True:
        await trio.sleep(POLL_INTERVAL)
        if await trio.to_thread.run_sync(holder.reload_if_changed):
            log.info("policy reloaded (generation %d)", holder.snapshot.generation)


async def _log_deliveries(delivery: MemoryDelivery) -> None:
    while True:
        item = await delivery.receive()
        log.info("local delivery (no gateway yet): %s %s -> %s", item.kind, item.from_jid, item.to_jid)


async def serve(config: EdgeConfig, *, task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED) -> None:
    holder = SnapshotHolder.open(config.state_dir, config.edge.domains)
    cert, key = config.path(config.tls.certificate), config.path(config.tls.key)
    trust = config.path(config.tls.trust) if config.tls.trust else None
    server_ssl = client_ssl = None
    if cert.exists() and key.exists():
        server_ssl, client_ssl = server_context(cert, key, trust), client_context(cert, key, trust)
    else:
        log.warning("no certificate at %s: STARTTLS and SASL EXTERNAL are unavailable", cert)
    resolver = os.environ.get("EDGEPROXY_DNS_RESOLVER")
    delivery = MemoryDelivery()
    ctx = EdgeContext(
        policy=lambda: holder.snapshot,
        connector=Connector(ConnectorSettings(resolver=parse_resolver(resolver) if resolver else None)),
        delivery=delivery,
        server_ssl=server_ssl,
        client_ssl=client_ssl,
    )
    listen = [split_host_port(hp) for hp in config.edge.listen]
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_poll, holder)
            nursery.start_soon(_log_deliveries, delivery)
            listeners = await nursery.start(EdgeServer(ctx).run, [(h or None, p) for h, p in listen])
            for listener in listeners:
                log.info("listening for S2S on %s", listener.socket.getsockname())
            task_status.started(listeners)
    finally:
        holder.close()
