"""Status model: stable JSON that matches docs/status-json.md, decoding, the human table."""

from __future__ import annotations

import json
import re
from pathlib import Path

import msgspec
import pytest

from edgeproxy.ops.status import (
    STATUS_FORMAT,
    ChannelState,
    ChannelStatus,
    Direction,
    EdgeStatus,
    ListenerStatus,
    QueueStatus,
    Role,
    StatusSource,
    StreamState,
    StreamStatus,
    decode_status,
    encode_status,
    format_age,
    render_table,
)
from edgeproxy.policy.model import AuthMethod

DOCS = Path(__file__).resolve().parents[2] / "docs" / "status-json.md"


def sample_status() -> EdgeStatus:
    return EdgeStatus(
        version="0.1.0",
        pid=4242,
        uptime_seconds=3725,
        domains=("contoso.test",),
        listeners=(
            ListenerStatus(Role.EXTERNAL, "0.0.0.0:5269"),
            ListenerStatus(Role.INTERNAL, "127.0.0.1:23456"),
            ListenerStatus(Role.ADMIN, "127.0.0.1:9269"),
        ),
        streams=(
            StreamStatus("s1", "fabrikam.test", Direction.INBOUND, "192.0.2.7:40112",
                         local_domain="contoso.test", remote_domains=("fabrikam.test",),
                         auth=AuthMethod.SASL_OVER_TLS, tls_version="TLSv1.3", age_seconds=61,
                         stanzas_in=12, stanzas_out=3),
            StreamStatus("s2", "gtalk.test", Direction.OUTBOUND, "198.51.100.2:5269",
                         auth=AuthMethod.TCP_DIALBACK, age_seconds=5),
            StreamStatus("s3", None, Direction.INBOUND, "203.0.113.9:5555",
                         state=StreamState.NEGOTIATING),
        ),
        channel=ChannelStatus(ChannelState.CONNECTED, "127.0.0.1:50000", 3600.0, unacked=1),
        queues=(QueueStatus("outbound:gtalk.test", 2, 100),),
    )


def documented_keys() -> dict[str, set[str]]:
    """``| `object.key` | …`` rows of docs/status-json.md, grouped by object."""
    keys: dict[str, set[str]] = {}
    for m in re.finditer(r"^\| `(\w+)\.(\w+)` \|", DOCS.read_text(encoding="utf-8"), re.MULTILINE):
        keys.setdefault(m[1], set()).add(m[2])
    return keys


def test_json_keys_are_exactly_the_documented_ones():
    data = json.loads(encode_status(sample_status()))
    doc = documented_keys()
    assert set(data) == doc["status"]
    assert set(data["listeners"][0]) == doc["listeners"]
    assert set(data["streams"][0]) == doc["streams"]
    assert set(data["channel"]) == doc["channel"]
    assert set(data["queues"][0]) == doc["queues"]


def test_json_is_stable_and_uses_the_documented_values():
    raw = encode_status(sample_status())
    assert raw == encode_status(sample_status())
    data = json.loads(raw)
    assert list(data)[:2] == ["format", "running"]
    assert data["format"] == STATUS_FORMAT and data["running"] is True
    assert [li["role"] for li in data["listeners"]] == ["external", "internal", "admin"]
    s1, s2, s3 = data["streams"]
    assert (s1["auth"], s1["tls_version"], s1["direction"]) == ("sasl-over-tls", "TLSv1.3", "inbound")
    assert (s2["auth"], s2["tls_version"]) == ("tcp-dialback", None)
    assert (s3["partner"], s3["auth"], s3["state"]) == (None, None, "negotiating")
    assert data["channel"]["state"] == "connected"


def test_decode_round_trips_and_ignores_newer_keys():
    status = sample_status()
    assert decode_status(encode_status(status)) == status
    data = json.loads(encode_status(status))
    data["future_key"] = 1
    data["streams"][0]["future_key"] = "x"
    assert decode_status(json.dumps(data)) == status
    with pytest.raises(msgspec.ValidationError):
        decode_status(json.dumps({"format": STATUS_FORMAT, "pid": 1}))


def test_table_shows_listeners_streams_with_auth_channel_and_queues():
    table = render_table(sample_status(), admin="127.0.0.1:9269")
    assert table.startswith("edgeproxy 0.1.0: running (admin 127.0.0.1:9269), pid 4242, up 1h02m")
    assert re.search(r"external\s+0\.0\.0\.0:5269", table)
    assert re.search(r"internal\s+127\.0\.0\.1:23456", table)
    assert "Streams (2 established with 2 partners, 1 other)" in table
    assert re.search(r"fabrikam\.test\s+inbound\s+192\.0\.2\.7:40112\s+SASL EXTERNAL\s+TLSv1\.3\s+1m01s\s+12\s+3", table)
    assert re.search(r"gtalk\.test\s+outbound\s+198\.51\.100\.2:5269\s+TCP dialback\s+none", table)
    assert "Gateway channel: connected from 127.0.0.1:50000 for 1h00m, 1 unacknowledged" in table
    assert re.search(r"outbound:gtalk\.test\s+2\s+100", table)


def test_ages_are_compact():
    assert [format_age(s) for s in (0, 59, 61, 3600, 90061, None)] == ["0s", "59s", "1m01s", "1h00m", "1d01h", "-"]


def test_a_class_with_a_status_method_is_a_status_source():
    class Fake:
        def status(self) -> EdgeStatus:
            return sample_status()

    assert isinstance(Fake(), StatusSource)
