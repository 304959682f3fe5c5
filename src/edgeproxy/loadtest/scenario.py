"""Load-test scenarios: frozen msgspec Structs decoded from TOML (unknown keys are refused).

A scenario says who the simulated partner servers are (N domains × M S2S streams each, how they
authenticate, where their authoritative listener answers ``db:verify``), what they send (a
weighted mix of stanza kinds, how many, how fast, for how long at most), and how delivery is
observed (a raw c2s sink logged in on the target, or nothing: only echoes and bounces).
Every phase is bounded in count and time: a run always stops by itself.

Security modes (``partners.security``) and the files they need:

* ``plain`` — TCP dialback; no files.
* ``starttls-dialback`` — STARTTLS (RFC 6120 §5) then dialback (XEP-0220), row 13. The partner
  listener answers STARTTLS too (the target's verification stream may require it). Certificate
  and key are optional: without them the run makes a throw-away private CA and, for each
  simulated domain, a certificate naming that domain only, as a real partner's would (good enough
  for dialback: the target need not trust it).
* ``starttls-sasl`` — STARTTLS then SASL EXTERNAL (XEP-0178), row 2: ``certificate``, ``key``
  (a client certificate proving each simulated domain; ``{domain}`` in the path selects one file
  per domain) and ``trust`` (the CA file that must vouch for the target's certificate) are
  required, and a scenario without them is refused when it is decoded.

Relative paths are resolved against the scenario file's directory (or ``base``), e.g.::

    [partners]
    domains = ["sim1.test", "sim2.test"]
    security = "starttls-sasl"
    certificate = "certs/{domain}.crt"
    key = "certs/{domain}.key"
    trust = "certs/ca.crt"
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
    """How the simulated streams authenticate (a row of the negotiation matrix)."""

    PLAIN = "plain"  # dialback over TCP (row 17)
    STARTTLS_DIALBACK = "starttls-dialback"  # STARTTLS, then dialback over TLS (row 13)
    STARTTLS_SASL = "starttls-sasl"  # STARTTLS, then SASL EXTERNAL with certificates (row 2)

    @property
    def tls(self) -> bool:
        return self is not Security.PLAIN


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
    #: PEM certificate (chain) of the simulated domains; ``{domain}`` for one file per domain.
    certificate: str | None = None
    #: PEM private key matching ``certificate`` (``{domain}`` likewise).
    key: str | None = None
    #: PEM CA certificates the target's certificate must chain to (and a connecting-back
    #: target's client certificate, for SASL EXTERNAL offered by the listener).
    trust: str | None = None

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


def parse_scenario(text: str | bytes, base: str | Path | None = None) -> Scenario:
    """Decode a TOML scenario; raises :class:`msgspec.ValidationError` on unknown keys, bad
    values, or certificate files a security mode needs that are missing or unreadable.
    Relative file paths are resolved against ``base`` (default: the working directory)."""
    scenario = msgspec.toml.decode(text, type=Scenario)
    if not scenario.traffic.mix:
        raise msgspec.ValidationError("traffic.mix needs at least one entry")
    return _with_tls_files(scenario, Path(base) if base is not None else Path.cwd())


def load_scenario(path: str | Path) -> Scenario:
    path = Path(path)
    return parse_scenario(path.read_bytes(), base=path.parent)


def domain_file(template: str, domain: str) -> Path:
    """The file for ``domain`` (``{domain}`` in the template is replaced by the domain name)."""
    return Path(template.replace("{domain}", domain))


def _with_tls_files(scenario: Scenario, base: Path) -> Scenario:
    """Check the certificate fields against the security mode; make their paths absolute."""
    p = scenario.partners
    given = {name: getattr(p, name) for name in ("certificate", "key", "trust")}
    if p.security is Security.STARTTLS_SASL:
        missing = [f"partners.{name}" for name, value in given.items() if not value]
        if missing:
            raise msgspec.ValidationError(
                f"partners.security = 'starttls-sasl' needs {', '.join(missing)}: SASL EXTERNAL "
                "(XEP-0178) authenticates each simulated domain with a client certificate "
                "(partners.certificate, partners.key; '{domain}' in a path selects one file per "
                "domain) and checks the target's certificate against partners.trust (a CA file)"
            )
    elif p.security is Security.PLAIN:
        extra = [f"partners.{name}" for name, value in given.items() if value]
        if extra:
            raise msgspec.ValidationError(
                f"partners.security = 'plain' uses no certificates: remove {', '.join(extra)} "
                "or choose 'starttls-dialback' / 'starttls-sasl'"
            )
        return scenario
    if bool(p.certificate) != bool(p.key):
        raise msgspec.ValidationError("partners.certificate and partners.key go together")
    resolved = {
        name: str(base / value) if value and not Path(value).is_absolute() else value
        for name, value in given.items()
    }
    for name in ("certificate", "key"):
        template = resolved[name]
        if template is None:
            continue
        for domain in p.domain_names():
            path = domain_file(template, domain)
            if not path.is_file():
                raise msgspec.ValidationError(f"partners.{name}: {path} (for {domain}) is not a readable file")
    if resolved["trust"] is not None and not Path(resolved["trust"]).is_file():
        raise msgspec.ValidationError(f"partners.trust: {resolved['trust']} is not a readable file")
    return msgspec.structs.replace(scenario, partners=msgspec.structs.replace(p, **resolved))


def with_target(scenario: Scenario, host: str, port: int) -> Scenario:
    """The scenario aimed at another address (``--target HOST:PORT``)."""
    return msgspec.structs.replace(
        scenario, target=msgspec.structs.replace(scenario.target, host=host, port=port)
    )
