"""Prometheus metrics behind a small typed facade.

Every metric lives in the ``Metrics`` object's own ``CollectorRegistry`` (never the process-global
one), so that several edges in one test process do not collide and nothing the libraries register
globally leaks into ``/metrics``. Callers use methods such as ``stream_opened(partner, direction,
auth)`` and enums for the label values; they never spell a metric or label name. ``render()``
gives the Prometheus text exposition served on ``/metrics``.

Label cardinality is bounded: ``partner`` is a configured partner's primary domain (there is no
default partner, so unknown domains never become labels — pass ``None`` and it shows as
``unknown``); every other label comes from an enum or a short fixed vocabulary (stanza error
conditions, TLS versions, DNS outcomes).
"""

from __future__ import annotations

import enum
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client import Enum as EnumMetric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from edgeproxy import __version__
from edgeproxy.ops.events import EventClass
from edgeproxy.ops.status import ChannelState, Direction, EdgeStatus
from edgeproxy.policy.model import AuthMethod

CONTENT_TYPE = CONTENT_TYPE_LATEST
UNKNOWN = "unknown"


class Flow(enum.StrEnum):
    """Which way a stanza travels through the edge."""

    IN = "in"  # from a partner towards a local user
    OUT = "out"  # from a local user towards a partner


class StanzaKind(enum.StrEnum):
    MESSAGE = "message"
    PRESENCE = "presence"
    IQ = "iq"
    OTHER = "other"

    @classmethod
    def of(cls, element_name: str) -> StanzaKind:
        """The kind for a top-level element's local name."""
        try:
            return cls(element_name)
        except ValueError:
            return cls.OTHER


class Verdict(enum.StrEnum):
    """What happened to a stanza."""

    DELIVERED = "delivered"  # forwarded unchanged
    TRANSFORMED = "transformed"  # forwarded after a change (status note stripped)
    REFUSED = "refused"  # refused by policy; the sender got an error stanza
    BOUNCED = "bounced"  # could not be delivered; the sender got an error stanza
    DROPPED = "dropped"  # an error stanza that could not itself be delivered (logged)


class BounceCause(enum.StrEnum):
    """Why a stanza's sender got an error stanza (the ``cause`` of a bounce)."""

    POLICY = "policy"  # the policy refused it (SPEC §4-§6)
    PARTNER_UNREACHABLE = "partner-unreachable"  # no stream to the partner could carry it
    PARTNER_QUEUE_FULL = "partner-queue-full"  # the partner's outbound queue stayed full
    GATEWAY_QUEUE_FULL = "gateway-queue-full"  # the queue to the gateway stayed full past queue-wait
    GATEWAY_AWAY = "gateway-away"  # the gateway was away longer than the outage bound
    GATEWAY_UNDELIVERABLE = "gateway-undeliverable"  # the gateway could not deliver it (SIP side)
    UNSENDABLE = "unsendable"  # the loopback channel cannot carry it (frame limits)
    INTERNAL_ERROR = "internal-error"  # its handling failed (the failure boundary answered)
    SHUTDOWN = "shutdown"  # still queued when the edge stopped


class StreamErrorSide(enum.StrEnum):
    SENT = "sent"
    RECEIVED = "received"


class Outcome(enum.StrEnum):
    OK = "ok"
    FAILED = "failed"


STANZA_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
ESTABLISH_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
DNS_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def _auth(auth: AuthMethod | None) -> str:
    return auth.value if auth is not None else "none"


#: Labelled metric children kept for the hot path (the rest are looked up per call).
MAX_CACHED_CHILDREN = 4096


def _partner(partner: str | None) -> str:
    return partner or UNKNOWN


class Metrics:
    """The edge's metrics, in a private registry. Cheap to call from the hot path."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        self._info = Info("edgeproxy_build", "edgeproxy version", registry=r)
        self._info.info({"version": __version__})
        self._streams = Gauge(
            "edgeproxy_streams", "Established S2S streams",
            ["partner", "direction", "auth"], registry=r,
        )
        self._streams_opened = Counter(
            "edgeproxy_streams_established", "S2S streams that finished authentication",
            ["partner", "direction", "auth"], registry=r,
        )
        self._streams_refused = Counter(
            "edgeproxy_streams_refused", "S2S streams refused before establishment",
            ["direction", "reason"], registry=r,
        )
        self._stanzas = Counter(
            "edgeproxy_stanzas", "Stanzas by flow, kind and verdict",
            ["partner", "flow", "kind", "verdict"], registry=r,
        )
        self._bounces = Counter(
            "edgeproxy_bounces", "Error stanzas generated for undeliverable or refused stanzas",
            ["condition", "cause"], registry=r,
        )
        self._stream_errors = Counter(
            "edgeproxy_stream_errors", "Stream errors sent and received",
            ["side", "condition"], registry=r,
        )
        self._tls = Counter(
            "edgeproxy_tls_handshakes", "Completed TLS handshakes",
            ["direction", "version"], registry=r,
        )
        self._tls_failures = Counter(
            "edgeproxy_tls_handshake_failures", "Failed TLS handshakes",
            ["direction", "reason"], registry=r,
        )
        self._dns = Counter(
            "edgeproxy_dns_lookups", "DNS lookups by record type and outcome",
            ["rtype", "outcome"], registry=r,
        )
        self._dns_seconds = Histogram(
            "edgeproxy_dns_lookup_seconds", "DNS lookup duration",
            ["rtype"], buckets=DNS_BUCKETS, registry=r,
        )
        self._queue_depth = Gauge(
            "edgeproxy_queue_depth", "Stanzas waiting in each queue", ["queue"], registry=r,
        )
        self._channel = EnumMetric(
            "edgeproxy_gateway_channel_state", "State of the loopback channel to the gateway",
            states=[s.value for s in ChannelState], registry=r,
        )
        self._channel_unacked = Gauge(
            "edgeproxy_gateway_channel_unacked", "Frames sent to the gateway, not yet acknowledged",
            registry=r,
        )
        self._latency = Histogram(
            "edgeproxy_stanza_latency_seconds", "Time from a stanza's arrival to its forwarding",
            ["flow"], buckets=STANZA_LATENCY_BUCKETS, registry=r,
        )
        # Labelled children of the per-stanza metrics, looked up once (``labels()`` costs about
        # as much as the rest of a stanza's policy decision). Bounded: partners × flows × kinds ×
        # verdicts, partners being the partner list's domains.
        self._stanza_children: dict[tuple[str, Flow, StanzaKind, Verdict], Any] = {}
        self._latency_children: dict[Flow, Any] = {}
        self._establish = Histogram(
            "edgeproxy_stream_establishment_seconds", "Time from TCP connect to an authenticated stream",
            ["direction", "auth"], buckets=ESTABLISH_BUCKETS, registry=r,
        )
        self._limits = Counter(
            "edgeproxy_limit_reached", "Times a named limit was reached", ["limit"], registry=r,
        )
        self._input_failures = Counter(
            "edgeproxy_input_failures", "Inputs whose handler raised; each was answered with its"
            " protocol's error and closed (the failure boundary)", ["surface"], registry=r,
        )
        self._sip_malformed = Counter(
            "edgeproxy_sip_malformed", "Malformed SIP messages by transport and what they got"
            " (a status, or dropped when no response could be built)", ["transport", "answer"], registry=r,
        )
        self._sip_busy = Counter(
            "edgeproxy_sip_busy", "SIP requests answered 503 with Retry-After because a named limit"
            " of the SIP transport was full", ["transport", "limit"], registry=r,
        )
        self._events_suppressed = Counter(
            "edgeproxy_events_suppressed", "Events left out by the event log's rate limit (EP9003)",
            ["id"], registry=r,
        )
        self._events = Counter(
            "edgeproxy_events", "Event log lines by id and severity", ["id", "severity"], registry=r,
        )
        self._reloads = Counter(
            "edgeproxy_reloads", "Configuration reloads", ["outcome"], registry=r,
        )
        self._channel.state(ChannelState.NOT_CONNECTED.value)

    # -- streams ----------------------------------------------------------------------------

    def stream_opened(self, partner: str | None, direction: Direction, auth: AuthMethod | None) -> None:
        """A stream finished authentication; pair with ``stream_closed`` (same arguments)."""
        labels = (_partner(partner), direction.value, _auth(auth))
        self._streams.labels(*labels).inc()
        self._streams_opened.labels(*labels).inc()

    def stream_closed(self, partner: str | None, direction: Direction, auth: AuthMethod | None) -> None:
        """An established stream closed."""
        self._streams.labels(_partner(partner), direction.value, _auth(auth)).dec()

    def stream_refused(self, direction: Direction, reason: str) -> None:
        """A stream was refused before establishment (``not-partner``, ``auth-failed``, …)."""
        self._streams_refused.labels(direction.value, reason).inc()

    def stream_establishment(self, direction: Direction, auth: AuthMethod | None, seconds: float) -> None:
        self._establish.labels(direction.value, _auth(auth)).observe(seconds)

    def stream_error(self, side: StreamErrorSide, condition: str) -> None:
        self._stream_errors.labels(side.value, condition).inc()

    # -- stanzas ----------------------------------------------------------------------------

    def stanza(self, partner: str | None, flow: Flow, kind: StanzaKind, verdict: Verdict) -> None:
        """One stanza and what became of it."""
        key = (partner or UNKNOWN, flow, kind, verdict)
        child = self._stanza_children.get(key)
        if child is None:
            child = self._stanzas.labels(key[0], flow.value, kind.value, verdict.value)
            if len(self._stanza_children) < MAX_CACHED_CHILDREN:
                self._stanza_children[key] = child
        child.inc()

    def bounce(self, condition: str, cause: BounceCause) -> None:
        """An error stanza generated with this condition (``remote-server-not-found``, …) for
        this cause."""
        self._bounces.labels(condition, cause.value).inc()

    def stanza_latency(self, flow: Flow, seconds: float) -> None:
        child = self._latency_children.get(flow)
        if child is None:
            child = self._latency_children[flow] = self._latency.labels(flow.value)
        child.observe(seconds)

    # -- TLS and DNS ------------------------------------------------------------------------

    def tls_handshake(self, direction: Direction, version: str) -> None:
        self._tls.labels(direction.value, version).inc()

    def tls_handshake_failed(self, direction: Direction, reason: str) -> None:
        self._tls_failures.labels(direction.value, reason).inc()

    def dns_lookup(self, rtype: str, outcome: str, seconds: float | None = None) -> None:
        """One lookup: ``rtype`` SRV/A/AAAA, ``outcome`` ok/nxdomain/nodata/timeout/servfail/error."""
        self._dns.labels(rtype, outcome).inc()
        if seconds is not None:
            self._dns_seconds.labels(rtype).observe(seconds)

    # -- queues, channel, limits, events, reloads ------------------------------------------

    def set_channel_state(self, state: ChannelState, unacked: int | None = None) -> None:
        self._channel.state(state.value)
        if unacked is not None:
            self._channel_unacked.set(unacked)

    def limit_reached(self, limit: str) -> None:
        self._limits.labels(limit).inc()

    def input_failed(self, surface: str) -> None:
        self._input_failures.labels(surface).inc()

    def sip_malformed(self, transport: str, answer: str) -> None:
        self._sip_malformed.labels(transport, answer).inc()

    def sip_busy(self, transport: str, limit: str) -> None:
        self._sip_busy.labels(transport, limit).inc()

    def event_suppressed(self, event: EventClass) -> None:
        """Count one event the rate limit left out; ``EventLog(on_suppress=...)``."""
        self._events_suppressed.labels(event.id).inc()

    def event_logged(self, event: EventClass) -> None:
        """Count one event-log line; pass as ``EventLog(on_emit=metrics.event_logged)``."""
        self._events.labels(event.id, event.severity.value).inc()

    def reload(self, outcome: Outcome) -> None:
        self._reloads.labels(outcome.value).inc()

    def observe_status(self, status: EdgeStatus) -> None:
        """Refresh the gauges a status snapshot knows best: queue depths and the channel.

        The admin endpoint calls this before each ``/metrics`` scrape, so the server need not push
        queue depths itself. Queues absent from the snapshot disappear from the exposition.
        """
        self._queue_depth.clear()
        for q in status.queues:
            self._queue_depth.labels(q.name).set(q.depth)
        self.set_channel_state(status.channel.state, status.channel.unacked)

    # -- exposition -------------------------------------------------------------------------

    def render(self) -> bytes:
        """The Prometheus text exposition (``Content-Type: CONTENT_TYPE``)."""
        return generate_latest(self.registry)

    def value(self, name: str, **labels: str) -> float | None:
        """One sample's current value (``edgeproxy_stanzas_total``, labels…), for tests and checks."""
        return self.registry.get_sample_value(name, labels)
