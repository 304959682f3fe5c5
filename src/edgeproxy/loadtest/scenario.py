"""Load-test scenarios: frozen msgspec Structs decoded from TOML (unknown keys are refused).

A scenario says who the simulated partner servers are (N domains × M S2S streams each, how they
authenticate, where their authoritative listener answers ``db:verify``), what they send (a
weighted mix of stanza kinds, how many, how fast, for how long at most), and how delivery is
observed (a raw c2s sink logged in on the target, or nothing: only echoes and bounces).
Every phase is bounded in count and time: a run always stops by itself.
"""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Annotated

import msgspec

Positive = Annotated[int, msgspec.Meta(ge=1)]
NonNegative = Annotated[float, msgspec.Meta(ge=0)]
Seconds = Annotated[float, msgspec.Meta(gt=0, le=3600)]
Port = Annotated[int, msgspec.Meta(ge=0, le=65535)]


class Security(enum.StrEnum):
    """How the simulated streams authenticate (SPEC §2.1 rows)."""

    PLAIN = "plain"  # dialback over TCP (row 17)


class StanzaKind(enum.StrEnum):
    """What one entry of the mix sends."""

    MESSAGE = "message"  # <message type='chat'> with a body
    HEADLINE = "headline"  # <message type='headline'>: servers drop these silently on failure
    PRESENCE = "presence"  # directed available presence
    SUBSCRIBE = "subscribe"  # <presence type='subscribe'>
    IQ = "iq"  # XEP-0199 ping (get); a result counts as delivered, an error as bounced


class Target(msgspec.Struct, frozen=True, forbid_unknown_fields=True, rename="kebab"):
    """The server under test: its XMPP domain and its S2S address."""

    domain: str
    host: str = "127.0.0.10"
    port: Port = 5269


class Partners(msgspec.Struct, frozen=True, forbid_unknown_fields=True, rename="kebab"):
    """The simulated partner servers. ``domains`` wins over ``count`` + ``pattern``."""

    domains: tuple[str, ...] = ()
    count: Positive = 1
    pattern: str = "sim{n}.test"
    streams_per_domain: Positive = 1
    security: Security = Security.PLAIN
    listen_host: str = "127.0.0.31"
    listen_port: Port = 5269
    secret: str = "edgeproxy-loadtest-dialback-secret"
    connect_rate: Annotated[float, msgspec.Meta(gt=0)] = 200.0
    connect_timeout: Seconds = 30.0
    users_per_domain: Positive = 10

    def domain_names(self) -> tuple[str, ...]:
        if self.domains:
            return self.domains
        return tuple(self.pattern.format(n=n) for n in range(1, self.count + 1))


class MixEntry(msgspec.Struct, frozen=True, forbid_unknown_fields=True, rename="kebab"):
    """One kind of stanza, its recipient and its share of the traffic."""

    kind: StanzaKind
    to: str
    weight: Positive = 1
    body_bytes: Annotated[int, msgspec.Meta(ge=0, le=65536)] = 64


class Traffic(msgspec.Struct, frozen=True, forbid_unknown_fields=True, rename="kebab"):
    """How much is sent: ``stanzas`` in total at ``rate`` per second (0: as fast as the streams
    take them, open loop), sending stops after ``duration`` s at the latest, then outstanding
    stanzas get ``drain`` s to be accounted for; the rest is lost."""

    stanzas: Positive
    mix: tuple[MixEntry, ...]
    rate: NonNegative = 0.0
    duration: Seconds = 60.0
    drain: Seconds = 5.0
    idle: NonNegative = 0.0  # seconds to hold the streams idle before sending (RSS per stream)


class SinkKind(enum.StrEnum):
    NONE = "none"
    C2S = "c2s"  # log in over c2s (SASL PLAIN), then read raw bytes
    RAW = "raw"  # connect and read raw bytes (a target that writes delivered stanzas to a socket)


class Sink(msgspec.Struct, frozen=True, forbid_unknown_fields=True, rename="kebab"):
    """Where delivery is seen: a raw c2s client (SASL PLAIN) logged in on the target, reading
    bytes and only scanning them for our stanza ids (so a slow client does not limit the target)."""

    kind: SinkKind = SinkKind.NONE
    host: str = "127.0.0.1"
    port: Port = 5222
    user: str = "bob"
    password: str = ""
    resource: str = "loadtest"


class Scenario(msgspec.Struct, frozen=True, forbid_unknown_fields=True, rename="kebab"):
    """A whole load test."""

    target: Target
    partners: Partners
    traffic: Traffic
    name: str = "scenario"
    sink: Sink = Sink()


def parse_scenario(text: str | bytes) -> Scenario:
    """Decode a TOML scenario; raises :class:`msgspec.ValidationError` on unknown keys or bad values."""
    scenario = msgspec.toml.decode(text, type=Scenario)
    if not scenario.traffic.mix:
        raise msgspec.ValidationError("traffic.mix needs at least one entry")
    return scenario


def load_scenario(path: str | Path) -> Scenario:
    return parse_scenario(Path(path).read_bytes())


def with_target(scenario: Scenario, host: str, port: int) -> Scenario:
    """The scenario aimed at another address (``--target HOST:PORT``)."""
    return msgspec.structs.replace(
        scenario, target=msgspec.structs.replace(scenario.target, host=host, port=port)
    )
