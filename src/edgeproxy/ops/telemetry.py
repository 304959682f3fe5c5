"""``Telemetry``: the one object the S2S drivers report to (metrics and event log together).

The drivers (``net.listener``, ``net.router``, ``net.edge``) call a handful of methods named after
what happened — a stream was established or ended, a stanza got a verdict, a stanza was bounced, a
limit was reached — and ``Telemetry`` turns each into the right metric updates and event-log lines
(``ops.events``). Drivers never spell a metric or an event id, and a driver built without
telemetry (the unit tests) gets ``Telemetry()``: metrics in a private registry, no event log.

Message content never reaches this module except as ``Content`` (redacted unless body logging is
on); every event field here is an address, a domain, a condition or a count.
"""

from __future__ import annotations

from collections.abc import Callable

import trio

from edgeproxy.ops import events
from edgeproxy.ops.events import EventClass, EventLog
from edgeproxy.ops.metrics import BounceCause, Flow, Metrics, StanzaKind, StreamErrorSide, Verdict
from edgeproxy.ops.status import Direction, S2SSession
from edgeproxy.policy import engine
from edgeproxy.policy.snapshot import PolicySnapshot

PolicySource = Callable[[], PolicySnapshot]


def remote_domain_of(session: S2SSession) -> str | None:
    """The peer's domain: the initiating stream's target, else the header ``from`` or the first
    authenticated remote domain."""
    conn = session.conn
    if conn.remote_domain and conn.role.value == "initiating":
        return conn.remote_domain
    if conn.peer_from:
        return conn.peer_from
    domains = sorted(conn.remote_domains)
    return domains[0] if domains else None


class Telemetry:
    """Metrics plus event log, behind methods named after what the drivers saw."""

    def __init__(self, metrics: Metrics | None = None, event_log: EventLog | None = None) -> None:
        self.metrics = metrics if metrics is not None else Metrics()
        self.event_log = event_log
        self.delivered = 0  # stanzas handed to local delivery or to a partner's stream
        self.bounced = 0  # error stanzas generated for undeliverable or refused stanzas

    def emit(self, event: EventClass, /, **fields: object) -> None:
        if self.event_log is not None:
            self.event_log.emit(event, **fields)

    # -- streams ----------------------------------------------------------------------------

    def partner_of(self, policy: PolicySource, session: S2SSession) -> str | None:
        """The configured partner (primary domain) a session is with, or None."""
        domain = remote_domain_of(session)
        return self.partner_of_domain(policy, domain) if domain is not None else None

    @staticmethod
    def partner_of_domain(policy: PolicySource, domain: str) -> str | None:
        partner = engine.partner_for_domain(policy(), domain)
        return partner.domain if partner is not None else None

    def stream_established(self, session: S2SSession, direction: Direction, partner: str | None) -> None:
        if session.tls_version:
            self.metrics.tls_handshake(direction, session.tls_version)
        self.metrics.stream_opened(partner, direction, session.auth_method)
        self.metrics.stream_establishment(
            direction, session.auth_method, trio.current_time() - session.started_at
        )
        self.emit(
            events.STREAM_ESTABLISHED, direction=direction, stream_id=session.conn.stream_id,
            partner=partner, peer=session.remote_address, method=session.auth_method,
            tls_version=session.tls_version or "no TLS",
        )

    def stream_ended(
        self, session: S2SSession, direction: Direction, partner: str | None, *, established: bool
    ) -> None:
        """Every stream that ends: closes the gauge of an established one, reports errors."""
        peer = session.remote_address
        if session.tls_failure is not None:
            self.metrics.tls_handshake_failed(direction, session.tls_failure)
            self.emit(events.TLS_HANDSHAKE_FAILED, peer=peer, direction=direction, reason=session.tls_failure)
        if session.error_received is not None:
            self.metrics.stream_error(StreamErrorSide.RECEIVED, session.error_received)
            self.emit(events.STREAM_ERROR_RECEIVED, condition=session.error_received, peer=peer,
                      text=session.close_reason or "")
        elif session.error_sent is not None:
            self.metrics.stream_error(StreamErrorSide.SENT, session.error_sent)
            self.emit(events.STREAM_ERROR_SENT, condition=session.error_sent, peer=peer,
                      text=session.close_reason or "", stream_id=session.conn.stream_id)
        if established:
            self.metrics.stream_closed(partner, direction, session.auth_method)
            self.emit(events.STREAM_CLOSED, direction=direction, stream_id=session.conn.stream_id,
                      partner=partner, reason=session.close_reason or "closed")
        elif session.error_sent == "connection-timeout" and not session.ready.is_set():
            self.emit(events.NEGOTIATION_TIMEOUT, peer=peer, timeout_seconds=session.timeouts.establishment,
                      state=session.conn.state.value)
            self.metrics.stream_refused(direction, "negotiation-timeout")
        elif partner is not None and session.error_sent == "not-authorized":
            self.authentication_failed(remote_domain_of(session) or partner, direction,
                                       "partner row", session.close_reason or "not-authorized")
        elif partner is None and session.error_sent in ("policy-violation", "not-authorized"):
            domain = remote_domain_of(session) or "?"
            self.metrics.stream_refused(direction, "not-partner")
            self.emit(events.PARTNER_REFUSED, direction=direction, domain=domain, peer=peer)
        elif session.error_sent is not None:
            self.metrics.stream_refused(direction, session.error_sent)

    def peer_certificate_rejected(self, peer: str, direction: Direction, domain: str, reason: str) -> None:
        """EP2007 for a certificate that cannot be parsed (``bad-certificate: …``, see
        ``certs.peer.certificate_check``), else EP2005 (not valid for the domain)."""
        if reason.startswith("bad-certificate"):
            self.emit(events.BAD_CERTIFICATE, peer=peer, direction=direction, reason=reason)
        else:
            self.emit(events.PEER_CERTIFICATE_INVALID, peer=peer, domain=domain, reason=reason)

    def authentication_failed(self, domain: str, direction: Direction, method: str, reason: str) -> None:
        self.metrics.stream_refused(direction, "auth-failed")
        self.emit(events.AUTHENTICATION_FAILED, domain=domain, direction=direction, method=method, reason=reason)

    # -- stanzas ----------------------------------------------------------------------------

    def stanza(self, partner: str | None, flow: Flow, element_name: str, verdict: Verdict) -> None:
        if verdict in (Verdict.DELIVERED, Verdict.TRANSFORMED):
            self.delivered += 1
        self.metrics.stanza(partner, flow, StanzaKind.of(element_name), verdict)

    def bounce(self, condition: str, cause: BounceCause, *, kind: str = "stanza", from_domain: str = "",
               to_domain: str = "") -> None:
        """A stanza was bounced: counted by condition and cause, and event EP7004 (rate-limited
        by the event log like every event) names the domains and the cause — except a policy
        refusal, which EP7003 stanza-refused reports with its rule."""
        self.bounced += 1
        self.metrics.bounce(condition, cause)
        if cause is not BounceCause.POLICY:
            self.emit(events.STANZA_BOUNCED, kind=kind, from_domain=from_domain, to_domain=to_domain,
                      condition=condition, cause=cause.value)

    def refused(self, kind: str, from_domain: str, to_domain: str, condition: str, rule: str) -> None:
        self.emit(events.STANZA_REFUSED, kind=kind, from_domain=from_domain, to_domain=to_domain,
                  condition=condition, rule=rule)

    # -- DNS and connecting (net.connector) -------------------------------------------------

    def dns_lookup(self, rtype: str, name: str, outcome: str, seconds: float,
                   error: BaseException | None = None) -> None:
        """One lookup's duration by outcome; a failed one (``error``) is EP4001 dns-failed."""
        self.metrics.dns_lookup(rtype, outcome, seconds)
        if error is not None:
            self.emit(events.DNS_FAILED, rtype=rtype, name=name, outcome=f"{outcome}: {error}")

    def connect_failed(self, domain: str, error: str, targets: str) -> None:
        self.emit(events.CONNECT_FAILED, domain=domain, error=error, targets=targets)

    # -- the failure boundary (ops.boundary) -------------------------------------------------

    def emit_input_failed(self, surface: str, peer: str, error: str, answer: str) -> None:
        self.emit(events.INPUT_FAILED, surface=surface, peer=peer, error=error, answer=answer)

    # -- limits -----------------------------------------------------------------------------

    def sip_busy(self, transport: str, limit: str) -> None:
        """A SIP request answered 503 with Retry-After: ``limit`` (the transport's constant) was full."""
        self.metrics.sip_busy(transport, limit)

    def limit_reached(self, limit: str, value: int, partner: str | None = None) -> None:
        self.metrics.limit_reached(limit)
        self.emit(events.LIMIT_REACHED, limit=limit, value=value,
                  for_partner=f" for {partner}" if partner else "", partner=partner)
