"""What every driver of one edge shares: policy, secret, TLS contexts, connector, delivery."""

from __future__ import annotations

import ssl
from collections.abc import Callable
from dataclasses import dataclass

from edgeproxy.config import LimitsSection
from edgeproxy.net.connector import Connector
from edgeproxy.net.delivery import LocalDelivery
from edgeproxy.net.session import Timeouts
from edgeproxy.policy.model import Partner
from edgeproxy.policy.snapshot import PolicySnapshot


@dataclass
class EdgeContext:
    policy: Callable[[], PolicySnapshot]
    connector: Connector
    delivery: LocalDelivery
    server_ssl: ssl.SSLContext | None = None
    client_ssl: ssl.SSLContext | None = None
    #: ``[limits]``: what holds before a peer authenticates (docs/limits.md).
    limits: LimitsSection = LimitsSection()

    @property
    def secret(self) -> str:
        """The pool-wide dialback secret (SPEC §3), from the current snapshot."""
        return self.policy().gateway.dialback_secret

    def timeouts(self, partner: Partner | None) -> Timeouts:
        """The gateway timers (SPEC §3); keep-alive off when the partner disables it."""
        gateway = self.policy().gateway
        keepalive = None if partner is not None and not partner.keepalive else gateway.keepalive_interval
        return Timeouts(
            establishment=float(gateway.stream_establishment_timeout),
            inactivity=float(gateway.stream_inactivity_timeout),
            keepalive=None if keepalive is None else float(keepalive),
        )
