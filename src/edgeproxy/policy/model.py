"""The stored policy configuration as frozen msgspec Structs (docs/spec.md §2, §3, §5).

These are the values the store holds, the commands print (``--json``) and ``config export``
writes; field names are encoded in kebab-case, enumerations as their lower-case values. Defaults
are those of docs/spec.md: a new partner is PublicUnverified, TLS Required, SASL Required, dialback
on, keep-alive on; the gateway row has Lync's limits and timers; a new access policy allows
nothing until switched on.

Models only describe; the rules live in ``validation`` and the decisions in ``engine``.
"""

from __future__ import annotations

import enum
from typing import Annotated, Literal, Self

import msgspec

from edgeproxy.names import split_host_port

PositiveInt = Annotated[int, msgspec.Meta(ge=1)]
GLOBAL_POLICY = "global"
SITE_PREFIX = "site:"


def _folded(text: str) -> str:
    """``Public-Verified``, ``PublicVerified`` and ``public_verified`` all fold to
    ``publicverified``: how a choice is compared whatever its spelling."""
    return "".join(c for c in text.lower() if c not in "-_ ")


class _Choice(enum.StrEnum):
    """An enumeration written in lower case with hyphens (``public-verified``) that also accepts
    Lync's spelling of its values (``PublicVerified``), in any case, on input."""

    @classmethod
    def parse(cls, text: str) -> Self:
        """The member ``text`` names, in our spelling or Lync's, in any case; ``ValueError``
        naming the accepted values otherwise."""
        folded = _folded(text)
        for member in cls:
            if _folded(member.value) == folded:
                return member
        raise ValueError(f"{text!r} is not one of {cls.spellings()}")

    @classmethod
    def spellings(cls) -> str:
        """The accepted values in words: ``federated (Federated), …``."""
        return ", ".join(f"{m.value} ({m.lync})" for m in cls)

    @property
    def lync(self) -> str:
        """The value as Lync writes it: ``PublicVerified``, ``NotSupported``."""
        return "".join(part.capitalize() for part in self.value.split("-"))


class PartnerType(_Choice):
    """Trust level of a partner (docs/spec.md §4)."""

    FEDERATED = "federated"
    PUBLIC_VERIFIED = "public-verified"
    PUBLIC_UNVERIFIED = "public-unverified"


class Negotiation(_Choice):
    """TLS or SASL negotiation setting of a partner (docs/spec.md §2)."""

    REQUIRED = "required"
    OPTIONAL = "optional"
    NOT_SUPPORTED = "not-supported"


class AuthMethod(enum.StrEnum):
    """How a server-to-server stream may be authenticated (docs/spec.md §2.1), strongest first."""

    SASL_OVER_TLS = "sasl-over-tls"
    TLS_DIALBACK = "tls-dialback"
    TCP_DIALBACK = "tcp-dialback"


class Partner(msgspec.Struct, frozen=True, forbid_unknown_fields=True, rename="kebab"):
    """An XMPP federated partner, identified by its primary domain (docs/spec.md §2)."""

    domain: str
    description: str = ""
    additional_domains: tuple[str, ...] = ()
    type: PartnerType = PartnerType.PUBLIC_UNVERIFIED
    tls: Negotiation = Negotiation.REQUIRED
    sasl: Negotiation = Negotiation.REQUIRED
    dialback: bool = True
    keepalive: bool = True
    connection_limit: PositiveInt | None = None
    proxy_fqdn: str | None = None

    @property
    def domains(self) -> tuple[str, ...]:
        """Primary domain first, then the additional ones."""
        return (self.domain, *self.additional_domains)

    @property
    def proxy_address(self) -> tuple[str, int | None] | None:
        """The proxy FQDN as ``(host, port)`` (``port`` None when it names none: the XMPP
        server port applies), or None without one. The stored form is ``host`` or ``host:port``
        (validated on save: a DNS name, a port 1–65535)."""
        if not self.proxy_fqdn:
            return None
        host, port = split_host_port(self.proxy_fqdn)
        return host, int(port) if port else None


class GatewaySettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, rename="kebab"):
    """The one global gateway configuration (docs/spec.md §3). Times are in seconds."""

    dialback_secret: str
    connection_limit: PositiveInt = 1000
    partner_connection_limit: PositiveInt = 20
    keepalive_interval: PositiveInt = 300
    stream_establishment_timeout: PositiveInt = 60
    stream_inactivity_timeout: PositiveInt = 600
    subscription_refresh_interval: PositiveInt = 28800
    log_message_bodies: bool = False


#: The whole-number gateway settings, in model order (``gateway set --connection-limit N`` …).
GATEWAY_INT_SETTINGS = (
    "connection_limit",
    "partner_connection_limit",
    "keepalive_interval",
    "stream_establishment_timeout",
    "stream_inactivity_timeout",
    "subscription_refresh_interval",
)


class AccessPolicy(msgspec.Struct, frozen=True, forbid_unknown_fields=True, rename="kebab"):
    """An external access policy (docs/spec.md §5): ``global``, ``site:NAME`` or a named user
    policy."""

    identity: str
    xmpp: bool = False
    federation: bool = False
    public_cloud: bool = False
    description: str = ""

    @property
    def scope(self) -> str:
        """``global``, ``site`` or ``user``."""
        if self.identity == GLOBAL_POLICY:
            return "global"
        if self.identity.startswith(SITE_PREFIX):
            return "site"
        return "user"


class SipCredential(msgspec.Struct, frozen=True, forbid_unknown_fields=True, rename="kebab"):
    """One SIP digest credential of a user (RFC 3261 §22.4, RFC 8760 §3): only the hash
    ``ha1`` = H(username ":" realm ":" password), lower-case hex, with H the ``algorithm``
    (MD5 for older UAs, SHA-256). ``username`` is the user part of the SIP address, ``realm``
    the SIP domain. The password itself is never stored."""

    algorithm: Literal["MD5", "SHA-256"]
    realm: str
    ha1: str


class User(msgspec.Struct, frozen=True, forbid_unknown_fields=True, rename="kebab"):
    """A local (SIP) user of the directory (docs/spec.md §5)."""

    sip: str
    name: str = ""
    site: str = ""
    sba: bool = False
    policy: str | None = None
    contacts: tuple[str, ...] = ()
    pending: tuple[str, ...] = ()
    #: SIP digest credentials (SIP passwords); secrets: exported only with --include-secrets.
    credentials: tuple[SipCredential, ...] = ()

    @property
    def jid(self) -> str:
        """The user's bare JID (RFC 7247 §5)."""
        return self.sip[4:] if self.sip.startswith("sip:") else self.sip


class Configuration(msgspec.Struct, frozen=True, forbid_unknown_fields=True, rename="kebab"):
    """Everything the store holds: the unit of export, import and snapshot building."""

    gateway: GatewaySettings
    partners: tuple[Partner, ...] = ()
    policies: tuple[AccessPolicy, ...] = ()
    users: tuple[User, ...] = ()
