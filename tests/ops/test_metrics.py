"""Metrics: the facade's calls show up in the Prometheus text exposition, in a private registry."""

from __future__ import annotations

import prometheus_client
from prometheus_client.parser import text_string_to_metric_families

from edgeproxy.ops import events
from edgeproxy.ops.metrics import (
    BounceCause,
    Flow,
    Metrics,
    Outcome,
    StanzaKind,
    StreamErrorSide,
    Verdict,
)
from edgeproxy.ops.status import (
    ChannelState,
    ChannelStatus,
    Direction,
    EdgeStatus,
    QueueStatus,
)
from edgeproxy.policy.model import AuthMethod


def samples(metrics: Metrics) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Parse the exposition text as a scraper would."""
    text = metrics.render().decode("utf-8")
    out: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def sample(parsed: dict, name: str, **labels: str) -> float | None:
    return parsed.get((name, frozenset(labels.items())))


def test_streams_gauge_follows_open_and_close_by_partner_direction_and_auth():
    m = Metrics()
    m.stream_opened("fabrikam.test", Direction.INBOUND, AuthMethod.SASL_OVER_TLS)
    m.stream_opened("fabrikam.test", Direction.OUTBOUND, AuthMethod.SASL_OVER_TLS)
    m.stream_opened("gtalk.test", Direction.INBOUND, AuthMethod.TCP_DIALBACK)
    m.stream_opened("gtalk.test", Direction.INBOUND, AuthMethod.TCP_DIALBACK)
    m.stream_closed("gtalk.test", Direction.INBOUND, AuthMethod.TCP_DIALBACK)
    p = samples(m)
    assert sample(p, "edgeproxy_streams", partner="fabrikam.test", direction="inbound", auth="sasl-over-tls") == 1
    assert sample(p, "edgeproxy_streams", partner="fabrikam.test", direction="outbound", auth="sasl-over-tls") == 1
    assert sample(p, "edgeproxy_streams", partner="gtalk.test", direction="inbound", auth="tcp-dialback") == 1
    assert sample(p, "edgeproxy_streams_established_total", partner="gtalk.test", direction="inbound", auth="tcp-dialback") == 2


def test_stanzas_counted_by_partner_flow_kind_and_verdict_and_bounces_by_condition():
    m = Metrics()
    for _ in range(3):
        m.stanza("fabrikam.test", Flow.IN, StanzaKind.MESSAGE, Verdict.DELIVERED)
    m.stanza("fabrikam.test", Flow.OUT, StanzaKind.of("presence"), Verdict.TRANSFORMED)
    m.stanza("fabrikam.test", Flow.IN, StanzaKind.of("x-unknown"), Verdict.REFUSED)
    m.stanza(None, Flow.OUT, StanzaKind.IQ, Verdict.BOUNCED)
    m.bounce("remote-server-not-found", BounceCause.PARTNER_UNREACHABLE)
    m.bounce("remote-server-not-found", BounceCause.PARTNER_UNREACHABLE)
    m.bounce("service-unavailable", BounceCause.GATEWAY_QUEUE_FULL)
    p = samples(m)
    assert sample(p, "edgeproxy_stanzas_total", partner="fabrikam.test", flow="in", kind="message", verdict="delivered") == 3
    assert sample(p, "edgeproxy_stanzas_total", partner="fabrikam.test", flow="out", kind="presence", verdict="transformed") == 1
    assert sample(p, "edgeproxy_stanzas_total", partner="fabrikam.test", flow="in", kind="other", verdict="refused") == 1
    assert sample(p, "edgeproxy_stanzas_total", partner="unknown", flow="out", kind="iq", verdict="bounced") == 1
    assert sample(p, "edgeproxy_bounces_total", condition="remote-server-not-found",
                  cause="partner-unreachable") == 2
    assert sample(p, "edgeproxy_bounces_total", condition="service-unavailable",
                  cause="gateway-queue-full") == 1


def test_tls_dns_limits_stream_errors_events_and_reloads_are_exposed():
    m = Metrics()
    m.tls_handshake(Direction.INBOUND, "TLSv1.3")
    m.tls_handshake_failed(Direction.OUTBOUND, "unknown-ca")
    m.dns_lookup("SRV", "nxdomain", 0.02)
    m.dns_lookup("A", "ok")
    m.limit_reached("partner-connections")
    m.stream_error(StreamErrorSide.SENT, "policy-violation")
    m.event_logged(events.CHANNEL_LOST)
    m.reload(Outcome.OK)
    p = samples(m)
    assert sample(p, "edgeproxy_tls_handshakes_total", direction="inbound", version="TLSv1.3") == 1
    assert sample(p, "edgeproxy_tls_handshake_failures_total", direction="outbound", reason="unknown-ca") == 1
    assert sample(p, "edgeproxy_dns_lookups_total", rtype="SRV", outcome="nxdomain") == 1
    assert sample(p, "edgeproxy_dns_lookups_total", rtype="A", outcome="ok") == 1
    assert sample(p, "edgeproxy_dns_lookup_seconds_count", rtype="SRV") == 1
    assert sample(p, "edgeproxy_limit_reached_total", limit="partner-connections") == 1
    assert sample(p, "edgeproxy_stream_errors_total", side="sent", condition="policy-violation") == 1
    assert sample(p, "edgeproxy_events_total", id="EP5002", severity="error") == 1
    assert sample(p, "edgeproxy_reloads_total", outcome="ok") == 1


def test_latency_histograms_bucket_observations():
    m = Metrics()
    m.stanza_latency(Flow.IN, 0.003)
    m.stanza_latency(Flow.IN, 0.2)
    m.stream_establishment(Direction.OUTBOUND, AuthMethod.TLS_DIALBACK, 0.4)
    p = samples(m)
    assert sample(p, "edgeproxy_stanza_latency_seconds_count", flow="in") == 2
    assert sample(p, "edgeproxy_stanza_latency_seconds_bucket", flow="in", le="0.005") == 1
    assert sample(p, "edgeproxy_stanza_latency_seconds_bucket", flow="in", le="0.25") == 2
    assert sample(p, "edgeproxy_stream_establishment_seconds_bucket", direction="outbound", auth="tls-dialback", le="0.5") == 1


def test_observe_status_sets_queue_depths_and_channel_state_and_forgets_old_queues():
    m = Metrics()
    m.observe_status(EdgeStatus(
        version="0", pid=1,
        queues=(QueueStatus("outbound:fabrikam.test", 4, 100), QueueStatus("channel", 2)),
        channel=ChannelStatus(ChannelState.CONNECTED, "127.0.0.1:4000", 5.0, unacked=3),
    ))
    p = samples(m)
    assert sample(p, "edgeproxy_queue_depth", queue="outbound:fabrikam.test") == 4
    assert sample(p, "edgeproxy_gateway_channel_state", edgeproxy_gateway_channel_state="connected") == 1
    assert sample(p, "edgeproxy_gateway_channel_state", edgeproxy_gateway_channel_state="down") == 0
    assert sample(p, "edgeproxy_gateway_channel_unacked") == 3
    m.observe_status(EdgeStatus(version="0", pid=1, queues=(QueueStatus("channel", 0),)))
    p = samples(m)
    assert sample(p, "edgeproxy_queue_depth", queue="outbound:fabrikam.test") is None
    assert sample(p, "edgeproxy_queue_depth", queue="channel") == 0


def test_metrics_use_a_private_registry():
    a, b = Metrics(), Metrics()
    a.bounce("service-unavailable", BounceCause.GATEWAY_AWAY)
    assert b.value("edgeproxy_bounces_total", condition="service-unavailable", cause="gateway-away") is None
    assert a.value("edgeproxy_bounces_total", condition="service-unavailable", cause="gateway-away") == 1
    global_text = prometheus_client.generate_latest(prometheus_client.REGISTRY).decode()
    assert "edgeproxy_" not in global_text


def test_exposition_has_version_info_and_help_lines():
    text = Metrics().render().decode()
    assert 'edgeproxy_build_info{version="' in text
    assert "# HELP edgeproxy_streams Established S2S streams" in text
    assert "# TYPE edgeproxy_stanzas_total counter" in text
