"""The edge's static configuration: ``edgeproxy.toml``.

The file is decoded with msgspec into frozen Structs: an unknown key or a value of the wrong type
is refused with an error naming the key (``ConfigError``). Where the file comes from:

1. ``--config PATH`` on the command line,
2. else the ``EDGEPROXY_CONFIG`` environment variable,
3. else the embedded default (``default.toml`` in this package: domain ``contoso.test``, state in
   ``./var/``).

Relative paths in the file (state dir, certificates) are resolved against the directory of the
file, or against the current directory for the embedded default. Dynamic configuration
(partners, gateway settings, policies, users) lives in the store under the state dir, not here.
"""

from __future__ import annotations

import os
import tomllib
from importlib import resources
from pathlib import Path
from typing import Annotated

import msgspec

from edgeproxy.errors import ConfigError

CONFIG_ENV_VAR = "EDGEPROXY_CONFIG"

HostPort = Annotated[str, msgspec.Meta(pattern=r"^(\[[0-9A-Fa-f:.]+\]|[^:\s\[\]]+):[0-9]{1,5}$")]


class EdgeSection(msgspec.Struct, frozen=True, forbid_unknown_fields=True, rename="kebab"):
    domains: tuple[str, ...] = ("contoso.test",)
    external_fqdn: str = "access.contoso.test"
    listen: tuple[HostPort, ...] = ("0.0.0.0:5269",)
    internal_listen: HostPort = "127.0.0.1:23456"
    state_dir: str = "var"


class TlsSection(msgspec.Struct, frozen=True, forbid_unknown_fields=True, rename="kebab"):
    certificate: str = "certs/edge.pem"
    key: str = "certs/edge.key"
    trust: str | None = "certs/ca.pem"


class AdminSection(msgspec.Struct, frozen=True, forbid_unknown_fields=True, rename="kebab"):
    """The admin endpoint (``/metrics``, ``/healthz``, ``/status``, POST ``/reload`` and ``/stop``).

    ``listen`` must be a loopback address unless ``allow-remote`` is true. ``token-file`` holds the
    bearer token required for the write operations (reload, stop); without it they are refused.
    """

    listen: HostPort = "127.0.0.1:9269"
    token_file: str | None = None
    allow_remote: bool = False


class GatewaySection(msgspec.Struct, frozen=True, forbid_unknown_fields=True, rename="kebab"):
    """The translating gateway (SPEC §7) and its end of the loopback channel (SPEC §1).

    ``sip-listen``: UDP and TCP on each address. ``next-hop``: empty = the built-in registrar
    serves ``sip-domains`` (default: the edge's domains); else every request goes to this SIP URI.
    ``edge-address``: where the gateway connects (default: ``[edge] internal-listen``).
    ``outage-bound``: seconds the other side may be away before queued stanzas are bounced.
    ``max-queued``: stanzas waiting for the other side, per direction.
    ``page-mode-ceiling``: bytes of a SIP MESSAGE (RFC 3428 §8).
    """

    sip_listen: tuple[HostPort, ...] = ("127.0.0.1:5060",)
    next_hop: str = ""
    sip_domains: tuple[str, ...] = ()
    edge_address: str = ""
    outage_bound: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 30.0
    max_queued: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 10_000
    page_mode_ceiling: Annotated[int, msgspec.Meta(ge=200, le=65535)] = 1300


class EdgeConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, rename="kebab"):
    edge: EdgeSection = msgspec.field(default_factory=EdgeSection)
    tls: TlsSection = msgspec.field(default_factory=TlsSection)
    admin: AdminSection = msgspec.field(default_factory=AdminSection)
    gateway: GatewaySection = msgspec.field(default_factory=GatewaySection)
    # Directory that relative paths are resolved against (not a TOML key).
    base_dir: str = msgspec.field(default=".", name="-base-dir")
    # Where the configuration came from, for messages ("<embedded default>" or a path).
    source: str = msgspec.field(default="<embedded default>", name="-source")

    def path(self, value: str) -> Path:
        """Resolve a path from the file against the file's directory."""
        p = Path(value)
        return p if p.is_absolute() else Path(self.base_dir) / p

    @property
    def state_dir(self) -> Path:
        return self.path(self.edge.state_dir)


def default_config_text() -> str:
    """The embedded default configuration, as TOML text."""
    return resources.files("edgeproxy").joinpath("default.toml").read_text(encoding="utf-8")


def parse_config(text: str, *, source: str, base_dir: str) -> EdgeConfig:
    """Decode TOML text; raise ConfigError naming the offending key."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from None
    for hidden in ("-base-dir", "-source"):
        if hidden in raw:
            raise ConfigError(f"{source}: unknown key {hidden!r}")
    raw["-base-dir"] = base_dir
    raw["-source"] = source
    try:
        config = msgspec.convert(raw, EdgeConfig)
    except msgspec.ValidationError as exc:
        # msgspec names the path, e.g. "Object contains unknown field `listn` - at `$.edge`".
        raise ConfigError(f"{source}: {exc}") from None
    if not config.edge.domains:
        raise ConfigError(f"{source}: edge.domains must list at least one domain")
    return config


def load_config(path: str | os.PathLike[str] | None = None) -> EdgeConfig:
    """Load the configuration: explicit path, else $EDGEPROXY_CONFIG, else the embedded default."""
    if path is None:
        path = os.environ.get(CONFIG_ENV_VAR) or None
    if path is None:
        return parse_config(default_config_text(), source="<embedded default>", base_dir=os.getcwd())
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read configuration {p}: {exc.strerror}") from None
    return parse_config(text, source=str(p), base_dir=str(p.resolve().parent))
