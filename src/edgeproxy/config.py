"""The edge's static configuration: ``edgeproxy.toml``.

The file is decoded with msgspec into frozen Structs: an unknown key or a value of the wrong type
is refused with an error naming the file, the key and the rule in words, e.g. ``edgeproxy.toml:
[gateway] max-queued: must be an integer ≥ 1, got 0`` (``ConfigError``). Every name in the file
follows the one validation layer for names (:mod:`edgeproxy.names`): domains and the
external FQDN are DNS names (returned in lower-case A-label form), the host of each listener is
an IP address or a DNS name, ``[dns] resolver`` an IP address. Where the file comes from:

1. ``--config PATH`` on the command line,
2. else the ``EDGEPROXY_CONFIG`` environment variable,
3. else the embedded default (``default.toml`` in this package: domain ``contoso.test``, state in
   ``./var/``).

Relative paths in the file (state dir, certificates) are resolved against the directory of the
file, or against the current directory for the embedded default. Dynamic configuration
(partners, gateway settings, policies, users) lives in the store under the state dir, not here.

Appliance mode (``[edge] appliance = true``, or ``load_config(..., appliance=True)`` for
``edgeproxy serve --appliance``): the file may lie on a read-only root filesystem, and the
override file ``<state-dir>/edgeproxy.override.toml`` (:data:`OVERRIDE_FILE`), when it exists,
is merged over it key by key (a table merges into the table, any other value replaces the
value; a list replaces the whole list) before the result is checked like any configuration.
The override may not set ``[edge] state-dir`` (it lives there) nor ``[edge] appliance``; a
relative path in it is resolved against the state dir. In appliance mode ``[edge] state-dir``
must be an absolute path: everything the server writes goes under it (``docs/appliance.md``).
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Final, Literal

import msgspec

from edgeproxy.errors import ConfigError
from edgeproxy.names import (
    RULE_PORT,
    InvalidName,
    ip_literal,
    normalize_domain,
    normalize_host,
    normalize_host_port,
    quote,
    split_host_port,
)

CONFIG_ENV_VAR = "EDGEPROXY_CONFIG"

HostPort = Annotated[str, msgspec.Meta(pattern=r"^(\[[0-9A-Fa-f:.]+\]|[^:\s\[\]]+):[0-9]{1,5}$")]


class EdgeSection(msgspec.Struct, frozen=True, forbid_unknown_fields=True, rename="kebab"):
    """The edge: XMPP domains, listeners, state.

    ``internal-listen``: the loopback channel to the gateway (SPEC §1, Lync's 23456); it must be a
    loopback address unless ``internal-tls`` is true. ``internal-tls``: mutual TLS on the channel
    — the edge presents ``internal-certificate``/``internal-key`` (default: ``[tls]``) and accepts
    only a gateway whose client certificate chains to ``internal-trust`` (default: ``[tls]
    trust``); the gateway presents ``[gateway] channel-certificate``/``channel-key`` and checks
    that the edge's certificate chains to the same anchors and names the host it connects to.
    A gateway on another host sets the same ``[edge] internal-*`` keys in its own file.
    """

    domains: tuple[str, ...] = ("contoso.test",)
    external_fqdn: str = "access.contoso.test"
    listen: tuple[HostPort, ...] = ("0.0.0.0:5269",)
    internal_listen: HostPort = "127.0.0.1:23456"
    state_dir: str = "var"
    #: Mutual TLS on the loopback channel (SPEC §1): required off loopback (see ``check_rules``).
    internal_tls: bool = False
    internal_certificate: str | None = None
    internal_key: str | None = None
    internal_trust: str | None = None
    #: Appliance mode: a read-only root, every write under the state dir, the override file.
    appliance: bool = False
    #: Edge worker processes sharing the external listeners (``SO_REUSEPORT``): a number from 1
    #: to ``MAX_WORKERS``, or ``"auto"`` for one per usable CPU (``edgeproxy.ops.workers``).
    workers: Annotated[int, msgspec.Meta(ge=1, le=64)] | Literal["auto"] = 1


#: The most ``[edge] workers`` may ask for (each is a process with its own memory and sockets).
MAX_WORKERS: Final = 64


class TlsSection(msgspec.Struct, frozen=True, forbid_unknown_fields=True, rename="kebab"):
    certificate: str = "certs/edge.pem"
    key: str = "certs/edge.key"
    trust: str | None = "certs/ca.pem"


class AdminSection(msgspec.Struct, frozen=True, forbid_unknown_fields=True, rename="kebab"):
    """The admin endpoint (``/metrics``, ``/healthz``, ``/status``, POST ``/reload`` and ``/stop``).

    ``listen`` must be a loopback address unless ``allow-remote`` is true. ``token-file`` holds the
    bearer token required for the write operations (reload, stop); without it they are refused.
    ``ui``: serve the Control Panel (web administration) under ``/ui/`` on the same listener.
    """

    listen: HostPort = "127.0.0.1:9269"
    token_file: str | None = None
    allow_remote: bool = False
    ui: bool = False


class GatewaySection(msgspec.Struct, frozen=True, forbid_unknown_fields=True, rename="kebab"):
    """The translating gateway (SPEC §7) and its end of the loopback channel (SPEC §1).

    ``sip-listen``: UDP and TCP on each address. ``next-hop``: empty = the built-in registrar
    serves ``sip-domains`` (default: the edge's domains); else every request goes to this SIP URI.
    ``edge-address``: where the gateway connects (default: ``[edge] internal-listen``).
    ``outage-bound``: seconds the other side may be away before queued stanzas are bounced.
    ``max-queued``: stanzas waiting for the other side, per direction.
    ``queue-wait``: seconds a stanza from a partner may wait for room when ``max-queued`` are
    waiting for the gateway; meanwhile its stream is not read (TCP holds the partner back:
    backpressure, not bounces), and only a stanza that waited longer is bounced. 60 s is the
    gateway's own bound for a SIP transaction to finish (Timer F is 32 s; the SIP sender's wait
    for the edge is 8 s) with room for a burst to drain.
    ``page-mode-ceiling``: bytes of a SIP MESSAGE (RFC 3428 §8).
    ``sip-tls-listen``: SIP over TLS (RFC 3261 §26.2), one address per ``sip-listen`` address;
    absent = each ``sip-listen`` address at port + 1 (5060 → 5061, the SIP convention) when the
    ``[tls]`` certificate and key exist; ``[]`` = no TLS. Outgoing TLS verifies the peer against
    ``[tls] trust``.
    ``channel-certificate``/``channel-key``: the gateway's client certificate on the loopback
    channel with ``[edge] internal-tls`` (default: the ``[tls]`` certificate and key).
    """

    sip_listen: tuple[HostPort, ...] = ("127.0.0.1:5060",)
    next_hop: str = ""
    sip_domains: tuple[str, ...] = ()
    edge_address: str = ""
    outage_bound: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 30.0
    max_queued: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 10_000
    queue_wait: Annotated[float, msgspec.Meta(ge=0, le=3600)] = 60.0
    page_mode_ceiling: Annotated[int, msgspec.Meta(ge=200, le=65535)] = 1300
    sip_tls_listen: tuple[HostPort, ...] | None = None
    channel_certificate: str | None = None
    channel_key: str | None = None


class LimitsSection(msgspec.Struct, frozen=True, forbid_unknown_fields=True, rename="kebab"):
    """Limits that hold *before* a peer has authenticated (issue 13; ``docs/limits.md``).

    Where the defaults come from:

    * ``preauth-per-ip`` 20: unauthenticated S2S connections open from one source address. A
      partner's pool opens a handful of streams; 20 is SPEC §3's per-partner limit, so one
      address can never hold more unauthenticated slots than a whole partner may hold
      authenticated ones (ejabberd and Prosody have no such cap by default; nginx's
      ``limit_conn`` idiom).
    * ``preauth-total`` 500: unauthenticated connections in total: half of SPEC §3's connection
      limit (1000), so that a flood of strangers leaves room for authenticated partners.
    * ``dialback-per-stream`` 8: distinct dialback verifications pending on one stream; a
      repeated ``db:result`` for a pair already pending starts none (XEP-0220 §2.4: one stream may
      carry several domain pairs; eight is more than any real multiplexing server uses).
    * ``dialback-per-ip`` 32: pending verifications caused by all streams from one address.
    * ``write-timeout`` 30 s: longest one write to a peer may block (a peer that does not read
      is closed on schedule instead of holding its slot and memory forever).
    * ``preauth-rate`` 16384 B/s (burst ``preauth-burst`` 65536 B): bytes read per second from a
      stream before it has authenticated — negotiation needs a few KiB (Prosody's ``s2sin`` limit
      is 30 kb/s in its example configuration, ejabberd's ``fast`` s2s shaper 50,000 B/s).
    * ``inbound-rate`` 8 MiB/s (burst ``inbound-burst`` 8 MiB) per authenticated inbound stream:
      a shaper like ejabberd's, well above what one partner stream carries in practice
      (`bench/RESULTS.md`: ~45,000 stanzas/s of ~200 B on one CPU), so that a runaway partner is
      slowed, not cut off. ``0`` turns a rate limit off.
    """

    preauth_per_ip: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 20
    preauth_total: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 500
    dialback_per_stream: Annotated[int, msgspec.Meta(ge=1, le=1024)] = 8
    dialback_per_ip: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 32
    write_timeout: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 30.0
    preauth_rate: Annotated[int, msgspec.Meta(ge=0)] = 16384
    preauth_burst: Annotated[int, msgspec.Meta(ge=1024)] = 65536
    inbound_rate: Annotated[int, msgspec.Meta(ge=0)] = 8 * 1024 * 1024
    inbound_burst: Annotated[int, msgspec.Meta(ge=1024)] = 8 * 1024 * 1024


class DnsSection(msgspec.Struct, frozen=True, forbid_unknown_fields=True, rename="kebab"):
    """DNS lookups of the running edge (partners' SRV and address records).

    ``resolver``: ``"IP"`` or ``"IP:PORT"`` (``"[IPv6]:PORT"``; port 53 when absent) of the one
    nameserver to ask; empty = the system's resolver (``/etc/resolv.conf``). The environment
    variable ``EDGEPROXY_DNS_RESOLVER``, when set and not empty, overrides it (tests and labs).
    """

    resolver: str = ""


class PoolSection(msgspec.Struct, frozen=True, forbid_unknown_fields=True, rename="kebab"):
    """An edge pool: several edge hosts serving the same domains behind one SRV name, sharing
    one store (``docs/pool.md``).

    ``role``: ``standalone`` (no pool, the default), ``primary`` (the one host where the store is
    changed; it serves it to the members on ``listen``) or ``member`` (a read-only copy of the
    primary's store, fetched from ``primary``; a change reaches it at once, by long poll).
    ``interval``: seconds a member waits before trying again when the primary cannot be reached.
    ``secret-file``: the pool secret both sides prove (default ``<state-dir>/pool.secret``; the
    same file on every host, mode 0600). ``tls``: mutual TLS on the link with the ``[tls]``
    certificate, key and trust — required when ``listen`` or ``primary`` is not a loopback
    address (the store holds the dialback secret and the users' SIP digest hashes).
    """

    role: Literal["standalone", "primary", "member"] = "standalone"
    listen: str = ""
    primary: str = ""
    interval: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 1.0
    secret_file: str = ""
    tls: bool = False

    def secret_path(self, config: EdgeConfig) -> Path:
        """Where the pool secret is: ``secret-file``, else ``<state-dir>/pool.secret``."""
        return config.path(self.secret_file) if self.secret_file else config.state_dir / POOL_SECRET_FILE


#: The pool secret's file in the state dir when ``[pool] secret-file`` is not set.
POOL_SECRET_FILE: Final = "pool.secret"


#: The environment variable that overrides ``[dns] resolver`` (``IP[:PORT]``).
DNS_RESOLVER_ENV_VAR: Final = "EDGEPROXY_DNS_RESOLVER"
#: The port of a ``[dns] resolver`` written without one.
DNS_PORT: Final = 53


def parse_nameserver(text: str) -> tuple[str, int]:
    """``IP``, ``IP:PORT``, ``[IPv6]:PORT`` (or a bare IPv6 address) → (address, port); else
    InvalidName naming the rule. A host name is refused: the resolver cannot look itself up."""
    host, _port = split_host_port(text)
    if ip_literal(host) is None:
        raise InvalidName(text, "a resolver is an IP address, IP:PORT or [IPv6]:PORT, not a host name")
    return normalize_host_port(text, default_port=DNS_PORT, allow_ip=True)


#: ``EdgeConfig.source`` of the embedded default configuration.
EMBEDDED_DEFAULT: Final = "<embedded default>"


class EdgeConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, rename="kebab"):
    edge: EdgeSection = msgspec.field(default_factory=EdgeSection)
    tls: TlsSection = msgspec.field(default_factory=TlsSection)
    admin: AdminSection = msgspec.field(default_factory=AdminSection)
    gateway: GatewaySection = msgspec.field(default_factory=GatewaySection)
    limits: LimitsSection = msgspec.field(default_factory=LimitsSection)
    dns: DnsSection = msgspec.field(default_factory=DnsSection)
    pool: PoolSection = msgspec.field(default_factory=PoolSection)
    # Directory that relative paths are resolved against (not a TOML key).
    base_dir: str = msgspec.field(default=".", name="-base-dir")
    # Where the configuration came from, for messages (EMBEDDED_DEFAULT or a path).
    source: str = msgspec.field(default=EMBEDDED_DEFAULT, name="-source")

    def path(self, value: str) -> Path:
        """Resolve a path from the file against the file's directory."""
        p = Path(value)
        return p if p.is_absolute() else Path(self.base_dir) / p

    @property
    def state_dir(self) -> Path:
        return self.path(self.edge.state_dir)

    def dns_resolver(self, environ: Mapping[str, str] | None = None) -> tuple[str, int] | None:
        """The nameserver outbound lookups ask: ``$EDGEPROXY_DNS_RESOLVER`` when set and not
        empty (an override, checked like the key), else ``[dns] resolver``; None = the system's.
        Raises ConfigError for an invalid override."""
        environ = os.environ if environ is None else environ
        override = environ.get(DNS_RESOLVER_ENV_VAR, "")
        if override:
            try:
                return parse_nameserver(override)
            except InvalidName as exc:
                raise ConfigError(f"{DNS_RESOLVER_ENV_VAR}: {exc.detail}") from None
        return parse_nameserver(self.dns.resolver) if self.dns.resolver else None


def default_config_text() -> str:
    """The embedded default configuration, as TOML text."""
    return resources.files("edgeproxy").joinpath("default.toml").read_text(encoding="utf-8")


def _toml(text: str, where: str) -> dict[str, Any]:
    """TOML text as a table; ConfigError naming ``where`` when it is not TOML."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{where}: not valid TOML: {exc}") from None
    for hidden in ("-base-dir", "-source"):
        if hidden in raw:
            raise ConfigError(f"{where}: unknown key {hidden!r}")
    return raw


def parse_config(text: str, *, source: str, base_dir: str, appliance: bool = False) -> EdgeConfig:
    """Decode TOML text; raise ConfigError naming the offending key. ``appliance``: appliance
    mode whatever the file says, and in appliance mode the override file is merged over it."""
    raw = _toml(text, source)
    where = source
    if appliance or _appliance_in(raw):
        raw.setdefault("edge", {})
        if isinstance(raw["edge"], dict):
            raw["edge"]["appliance"] = True
        override = _override_path(raw, base_dir)
        if override is not None and override.is_file():
            raw = merge_override(raw, read_override(override))
            where = f"{source} with {override}"
    return _config_from_raw(raw, source=source, base_dir=base_dir, where=where)


# -- appliance mode: the override file -------------------------------------------------------

#: The override file's name, in the state dir (appliance mode only).
OVERRIDE_FILE: Final = "edgeproxy.override.toml"
#: Keys the override file may not set: where it lives, and the mode that reads it.
OVERRIDE_FORBIDDEN: Final = (("edge", "state-dir"), ("edge", "appliance"))
#: Keys holding paths: a relative one in the override file is resolved against the state dir.
PATH_KEYS: Final = (
    ("edge", "internal-certificate"), ("edge", "internal-key"), ("edge", "internal-trust"),
    ("tls", "certificate"), ("tls", "key"), ("tls", "trust"), ("admin", "token-file"),
    ("gateway", "channel-certificate"), ("gateway", "channel-key"), ("pool", "secret-file"),
)


def _appliance_in(raw: dict[str, Any]) -> bool:
    edge = raw.get("edge")
    return isinstance(edge, dict) and edge.get("appliance") is True


def _override_path(raw: dict[str, Any], base_dir: str) -> Path | None:
    """``<state-dir>/edgeproxy.override.toml`` of the raw file; None when its state dir is not an
    absolute path (refused afterwards by ``check_rules``)."""
    edge = raw.get("edge")
    state_dir = edge.get("state-dir", EdgeSection.state_dir) if isinstance(edge, dict) else EdgeSection.state_dir
    if not isinstance(state_dir, str) or not Path(state_dir).is_absolute():
        return None
    return Path(state_dir) / OVERRIDE_FILE


def read_override(path: Path) -> dict[str, Any]:
    """The override file as a table whose relative paths are resolved against its directory (the
    state dir); ConfigError naming the file when it cannot be read, is not TOML, or sets a key it
    may not set."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read the override file {path}: {exc.strerror}") from None
    raw = _toml(text, str(path))
    for table, key in OVERRIDE_FORBIDDEN:
        section = raw.get(table)
        if isinstance(section, dict) and key in section:
            raise ConfigError(
                f"{path}: [{table}] {key} cannot be overridden: the override file lives in the state dir"
                " and is read in appliance mode; set it in the configuration file"
            )
    for table, key in PATH_KEYS:
        section = raw.get(table)
        value = section.get(key) if isinstance(section, dict) else None
        if isinstance(section, dict) and isinstance(value, str) and value and not Path(value).is_absolute():
            section[key] = str(path.parent / value)
    return raw


def merge_override(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``override`` merged over ``base``: tables key by key (recursively), other values replaced."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_override(merged[key], value)
        else:
            merged[key] = value
    return merged


def _config_from_raw(raw: dict[str, Any], *, source: str, base_dir: str, where: str) -> EdgeConfig:
    """The checked configuration from decoded TOML; errors name ``where`` (the file, and the
    override file when one was merged). ``EdgeConfig.source`` stays ``source`` (what a reload
    reads again)."""
    raw = dict(raw)
    raw["-base-dir"] = base_dir
    raw["-source"] = source
    try:
        config = msgspec.convert(raw, EdgeConfig)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{where}: {describe_validation_error(str(exc), raw)}") from None
    if not config.edge.domains:
        raise ConfigError(f"{where}: [edge] domains: must list at least one domain")
    problem = check_rules(config)
    if problem is not None:
        raise ConfigError(f"{where}: {problem}")
    try:
        config = checked_names(config)
    except _NameProblem as exc:
        raise ConfigError(f"{where}: {exc}") from None
    return config


# -- validation errors in words ---------------------------------------------------------------

#: msgspec's type names, said as a rule.
_TYPE_WORDS: Final = {
    "int": "an integer",
    "float": "a number",
    "str": "a string in quotes",
    "bool": "true or false",
    "array": "a list [...]",
    "object": "a table",
    "null": "absent",
}
_COMPARISONS: Final = {">=": "≥", "<=": "≤", ">": ">", "<": "<"}
_HOST_PORT_RULE: Final = "must be \"HOST:PORT\" (e.g. \"127.0.0.1:5269\", \"[::1]:5269\", \"edge.example.com:5269\")"


def _type_words(spec: str) -> str:
    """``int`` → ``an integer``; ``str | null`` → ``a string in quotes``."""
    kinds = [k.strip(" `") for k in spec.split("|")]
    words = [_TYPE_WORDS.get(k, k) for k in kinds if k != "null"]
    return " or ".join(words) or "absent"


def _toml_value(value: Any) -> str:
    """A value as it was written in the file (roughly: TOML literal syntax)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return quote(value)
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return str(value)


def _key_path(path: str) -> tuple[str, list[str | int]]:
    """``$.edge.listen[1]`` → (``[edge] listen (item 2)``, ["edge", "listen", 1])."""
    steps: list[str | int] = []
    for name, index in re.findall(r"\.([^.\[]+)|\[(\d+)\]", path.removeprefix("$")):
        steps.append(int(index) if index else name)
    words = ""
    names = [s for s in steps if isinstance(s, str)]
    if names:
        words = f"[{names[0]}]" if len(names) == 1 else f"[{names[0]}] {'.'.join(names[1:])}"
    for step in steps:
        if isinstance(step, int):
            words += f" (item {step + 1})"
    return words, steps


def _lookup(raw: Any, steps: list[str | int]) -> tuple[bool, Any]:
    for step in steps:
        try:
            raw = raw[step]
        except (KeyError, IndexError, TypeError):
            return False, None
    return True, raw


def _known_keys(steps: list[str | int]) -> list[str]:
    """The keys the table at ``steps`` accepts (for "did you mean")."""
    struct: Any = EdgeConfig
    for step in steps:
        if not isinstance(step, str):
            return []
        field = {f.encode_name: f for f in msgspec.structs.fields(struct)}.get(step)
        if field is None or not isinstance(field.type, type):
            return []
        struct = field.type
    try:
        return [f.encode_name for f in msgspec.structs.fields(struct) if not f.encode_name.startswith("-")]
    except TypeError:
        return []


#: The words for a key whose value is one of a few strings (msgspec only says "Invalid enum value").
_ENUM_WORDS: Final = {
    ("workers",): 'an integer from 1 to 64, or "auto"',
    ("role",): 'one of "standalone", "primary" or "member"',
}


def describe_validation_error(message: str, raw: dict[str, Any]) -> str:
    """msgspec's ``Expected `int` >= 1 - at `$.gateway.max-queued``` as ``[gateway] max-queued:
    must be an integer ≥ 1, got 0``; a message it does not recognise is kept as msgspec wrote it
    after the key path."""
    text, _, path = message.partition(" - at `")
    where, steps = _key_path(path.rstrip("`"))
    found, value = _lookup(raw, steps)
    got = f", got {_toml_value(value)}" if found else ""
    unknown = re.fullmatch(r"Object contains unknown field `(.+)`", text)
    if unknown:
        key = unknown.group(1)
        known = _known_keys(steps)
        near = difflib.get_close_matches(key, known, n=1)
        hint = f" (did you mean {near[0]}?)" if near else (f" (known: {', '.join(known)})" if known else "")
        if not steps:
            return f"unknown table or key {quote(key)} at the top level{hint}"
        return f"{where}: unknown key {quote(key)}{hint}"
    bound = re.fullmatch(r"Expected `(\w+)` (>=|<=|>|<) (\S+)", text)
    if bound:
        kind, op, limit = bound.groups()
        limit = limit.removesuffix(".0") if kind == "float" else limit
        rule = f"must be {_type_words(kind)} {_COMPARISONS[op]} {limit}"
    elif text.startswith("Expected `str` matching regex"):
        rule = _HOST_PORT_RULE
    elif text.startswith("Invalid enum value"):
        rule = f"must be {_ENUM_WORDS.get(tuple(steps[-1:]), 'one of the documented values')}"
    else:
        of_type = re.fullmatch(r"Expected `([^`]+)`, got `[^`]+`", text)
        if of_type:
            rule = f"must be {_type_words(of_type.group(1))}"
        else:
            rule, got = text, ""
    return f"{where}: {rule}{got}" if where else f"{rule}{got}"


# -- names ---------------------------------------------------------------------------------------


class _NameProblem(Exception):
    """A name in the configuration breaks a rule of edgeproxy.names (message: key + rule)."""


def _item(key: str, values: tuple[str, ...], index: int) -> str:
    return f"{key} (item {index + 1})" if len(values) > 1 else key


def _domains(key: str, values: tuple[str, ...]) -> tuple[str, ...]:
    result = []
    for i, value in enumerate(values):
        try:
            result.append(normalize_domain(value))
        except InvalidName as exc:
            raise _NameProblem(f"{_item(key, values, i)}: {exc.detail}") from None
    return tuple(dict.fromkeys(result))


def _listeners(key: str, values: tuple[str, ...], *, any_port: bool = True) -> None:
    """Each ``HOST:PORT``: an IP address or a DNS name, and a port (0 = any free port, where
    ``any_port``)."""
    for i, value in enumerate(values):
        host, port = split_host_port(value)
        try:
            if any_port and port == "0":
                normalize_host(host, allow_ip=True)
            else:
                normalize_host_port(value, allow_ip=True)
        except InvalidName as exc:
            detail = exc.detail if exc.name == value else f"{quote(value)}: {exc.rule}"
            if any_port and exc.rule == RULE_PORT:
                detail += " (or 0 for any free port)"
            raise _NameProblem(f"{_item(key, values, i)}: {detail}") from None


def checked_names(config: EdgeConfig) -> EdgeConfig:
    """The configuration with its domains in canonical form, after every name in it passed the
    rules of :mod:`edgeproxy.names`; _NameProblem names the key and the rule."""
    edge, gateway = config.edge, config.gateway
    domains = _domains("[edge] domains", edge.domains)
    (external_fqdn,) = _domains("[edge] external-fqdn", (edge.external_fqdn,))
    sip_domains = _domains("[gateway] sip-domains", gateway.sip_domains)
    _listeners("[edge] listen", edge.listen)
    _listeners("[edge] internal-listen", (edge.internal_listen,))
    _listeners("[admin] listen", (config.admin.listen,))
    _listeners("[gateway] sip-listen", gateway.sip_listen)
    _listeners("[gateway] sip-tls-listen", gateway.sip_tls_listen or ())
    if gateway.edge_address:
        _listeners("[gateway] edge-address", (gateway.edge_address,), any_port=False)
    if config.pool.listen:
        _listeners("[pool] listen", (config.pool.listen,))
    if config.pool.primary:
        _listeners("[pool] primary", (config.pool.primary,), any_port=False)
    if config.dns.resolver:
        try:
            parse_nameserver(config.dns.resolver)
        except InvalidName as exc:
            raise _NameProblem(f"[dns] resolver: {exc.detail}") from None
    return msgspec.structs.replace(
        config,
        edge=msgspec.structs.replace(edge, domains=domains, external_fqdn=external_fqdn),
        gateway=msgspec.structs.replace(gateway, sip_domains=sip_domains),
    )


def is_loopback_host(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and ``localhost``; a wildcard or any other name is not."""
    host = host.strip("[]")
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host.lower() == "localhost"


def _host_port(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    return host.strip("[]"), int(port)


def check_rules(config: EdgeConfig) -> str | None:
    """The first combination of keys that is refused, as a message naming the rule; else None.

    1. A loopback channel off loopback needs mutual TLS: ``[edge] internal-listen`` (and ``[gateway]
       edge-address``) on a non-loopback address requires ``internal-tls = true`` — without it
       anyone who reaches the port could inject stanzas as any local user.
    2. ``internal-tls`` needs private trust anchors (``internal-trust`` or ``[tls] trust``): with the
       system store any host holding a public certificate could act as the gateway.
    3. A certificate key comes with its certificate (``internal-certificate``/``internal-key``,
       ``channel-certificate``/``channel-key``), and these and ``internal-trust`` are refused
       without ``internal-tls`` (they would silently do nothing).
    4. ``sip-tls-listen``, when given and not empty, has one address per ``sip-listen`` address and
       none equal to a ``sip-listen`` address (TCP already listens there); when absent, each
       ``sip-listen`` port + 1 must be a valid port.
    5. In appliance mode ``[edge] state-dir`` is an absolute path (the file's own directory may be
       read-only; the override file is looked for in the state dir).
    6. ``[pool]`` (:func:`pool_rule`): a primary has ``listen``, a member ``primary``, each only
       for its role; off loopback the link needs ``tls = true``, and ``tls`` a ``[tls] trust``.
    """
    edge, gateway, tls = config.edge, config.gateway, config.tls
    if edge.appliance and not Path(edge.state_dir).is_absolute():
        return (
            f"edge.state-dir {edge.state_dir!r} must be an absolute path in appliance mode: the"
            " configuration may lie on a read-only filesystem and everything the server writes goes"
            ' under the state dir (e.g. state-dir = "/var/lib/edgeproxy")'
        )
    if gateway.edge_address:
        host, _, port = gateway.edge_address.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            return f"gateway.edge-address {gateway.edge_address!r} is not host:port"
    if not edge.internal_tls:
        for key, value in (("edge.internal-listen", edge.internal_listen), ("gateway.edge-address", gateway.edge_address)):
            if value and not is_loopback_host(_host_port(value)[0]):
                return (
                    f"{key} {value} is not a loopback address: set [edge] internal-tls = true (mutual TLS),"
                    " or anyone who reaches the port could send stanzas as any local user"
                )
        for key, value in (
            ("edge.internal-certificate", edge.internal_certificate),
            ("edge.internal-key", edge.internal_key),
            ("edge.internal-trust", edge.internal_trust),
            ("gateway.channel-certificate", gateway.channel_certificate),
            ("gateway.channel-key", gateway.channel_key),
        ):
            if value:
                return f"{key} is set but [edge] internal-tls is false: it would have no effect"
    elif not (edge.internal_trust or tls.trust):
        return (
            "edge.internal-tls needs trust anchors in edge.internal-trust (or tls.trust): with the"
            " system store any host with a public certificate could act as the gateway"
        )
    for cert_key, cert, key_key, key in (
        ("edge.internal-certificate", edge.internal_certificate, "edge.internal-key", edge.internal_key),
        ("gateway.channel-certificate", gateway.channel_certificate, "gateway.channel-key", gateway.channel_key),
    ):
        if bool(cert) != bool(key):
            return f"{cert_key} and {key_key} go together: set both or neither"
    if gateway.sip_tls_listen is None:
        for value in gateway.sip_listen:
            if _host_port(value)[1] == 65535:
                return f"gateway.sip-listen {value}: port + 1 for SIP over TLS is not a port; set gateway.sip-tls-listen"
    elif gateway.sip_tls_listen:
        if len(gateway.sip_tls_listen) != len(gateway.sip_listen):
            return (
                f"gateway.sip-tls-listen has {len(gateway.sip_tls_listen)} addresses for"
                f" {len(gateway.sip_listen)} in gateway.sip-listen: give one per sip-listen address, or []"
            )
        plain = {_host_port(v) for v in gateway.sip_listen}
        for value in gateway.sip_tls_listen:
            host_port = _host_port(value)
            if host_port in plain and host_port[1] != 0:
                return f"gateway.sip-tls-listen {value} is also in gateway.sip-listen: TCP already listens there"
    return pool_rule(config)


def pool_rule(config: EdgeConfig) -> str | None:
    """The first ``[pool]`` rule the configuration breaks, in words; else None."""
    pool = config.pool
    needs = {"primary": ("listen", pool.listen), "member": ("primary", pool.primary)}
    for role, (key, value) in needs.items():
        if pool.role == role and not value:
            return f'pool.{key} is required with pool.role = "{role}" (HOST:PORT)'
        if pool.role != role and value:
            return f'pool.{key} is set but pool.role is "{pool.role}": it is used only by a {role}'
    if pool.role == "standalone":
        return None
    key, value = needs[pool.role]
    if not re.fullmatch(r"(\[[0-9A-Fa-f:.]+\]|[^:\s\[\]]+):[0-9]{1,5}", value):
        return f"pool.{key} {value!r} is not HOST:PORT"
    host, port = _host_port(value)
    if not 0 < port < 65536 and not (pool.role == "primary" and port == 0):
        return f"pool.{key} {value}: the port must be 1-65535"
    if not pool.tls and not is_loopback_host(host):
        return (
            f"pool.{key} {value} is not a loopback address: set pool.tls = true (mutual TLS), or the"
            " store (with the dialback secret and the users' SIP digest hashes) would cross the network"
            " in plain text"
        )
    if pool.tls and not config.tls.trust:
        return (
            "pool.tls needs trust anchors in tls.trust: with the system store any host with a public"
            " certificate could join the pool"
        )
    return None


def load_config(path: str | os.PathLike[str] | None = None, *, appliance: bool = False) -> EdgeConfig:
    """Load the configuration: explicit path, else $EDGEPROXY_CONFIG, else the embedded default.
    ``appliance``: appliance mode even when the file does not say so (``serve --appliance``)."""
    if path is None:
        path = os.environ.get(CONFIG_ENV_VAR) or None
    if path is None:
        return parse_config(default_config_text(), source=EMBEDDED_DEFAULT, base_dir=os.getcwd(),
                            appliance=appliance)
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read configuration {p}: {exc.strerror}") from None
    return parse_config(text, source=str(p), base_dir=str(p.resolve().parent), appliance=appliance)
