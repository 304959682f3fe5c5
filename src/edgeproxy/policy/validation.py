"""Save-time validation: the negotiation matrix (SPEC §2.1) and the other rules of §2–§5.

Every change is validated *before* it is written; a refused change raises ``ChangeRefused`` whose
message names the rule (``refused: SASL needs TLS and dialback is off``), and the commands map
it to exit status 1. Warnings do not stop the save; they are returned for the caller to print.

The matrix, in its equivalent-rule form (SPEC §2.1):

* refused ⇔ dialback is off and (TLS or SASL is NotSupported);
* SASL over TLS ⇔ TLS ≠ NotSupported and SASL ≠ NotSupported;
* TLS dialback ⇔ TLS ≠ NotSupported, dialback on, and not (TLS = SASL = Required);
* TCP dialback ⇔ TLS ≠ Required and dialback on;
* warning (row 1) ⇔ TLS = SASL = Required and dialback on: dialback is never used;
* warning (rows 3, 4, 5, 9, 10, 11) ⇔ SASL ≠ NotSupported and TLS ≠ Required (and not refused):
  SASL needs TLS, and TLS that is only optional (or unsupported) may make negotiation fail.

``tests/policy/test_matrix.py`` checks all 18 rows against the SPEC table written out literally.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache
from typing import TypeVar

import msgspec

from edgeproxy.errors import ConfigError
from edgeproxy.policy.credentials import HA1_LENGTH
from edgeproxy.policy.model import (
    GLOBAL_POLICY,
    SITE_PREFIX,
    AuthMethod,
    Configuration,
    GatewaySettings,
    Negotiation,
    Partner,
    User,
)
from edgeproxy.policy.names import (
    InvalidName,
    normalize_bare_jid,
    normalize_domain,
    normalize_sip_address,
)
from edgeproxy.xmpp.stanza import domain_of

REFUSED_SASL_NEEDS_TLS = "refused: SASL needs TLS and dialback is off"
REFUSED_SASL_OR_DIALBACK = "refused: SASL or dialback must be enabled"
WARN_DIALBACK_UNUSED = "warning: dialback is never used when TLS and SASL are both required"
WARN_SASL_NEEDS_TLS = "warning: SASL needs TLS, optional TLS may make negotiation fail"
MIN_SECRET_LENGTH = 16
_S = TypeVar("_S", bound=msgspec.Struct)


class ChangeRefused(ConfigError):
    """A change refused by validation; nothing was saved. The message names the rule."""


class NegotiationCheck(msgspec.Struct, frozen=True):
    """The verdict of the matrix for one TLS × SASL × dialback combination."""

    methods: frozenset[AuthMethod]
    refusal: str | None = None
    warnings: tuple[str, ...] = ()


@lru_cache(maxsize=32)
def check_negotiation(tls: Negotiation, sasl: Negotiation, dialback: bool) -> NegotiationCheck:
    """Apply SPEC §2.1 to one combination: allowed methods, refusal, warnings."""
    ns = Negotiation.NOT_SUPPORTED
    req = Negotiation.REQUIRED
    methods: set[AuthMethod] = set()
    if tls is not ns and sasl is not ns:
        methods.add(AuthMethod.SASL_OVER_TLS)
    if tls is not ns and dialback and not (tls is req and sasl is req):
        methods.add(AuthMethod.TLS_DIALBACK)
    if tls is not req and dialback:
        methods.add(AuthMethod.TCP_DIALBACK)
    if not dialback and sasl is ns:
        return NegotiationCheck(frozenset(), refusal=REFUSED_SASL_OR_DIALBACK)
    if not dialback and tls is ns:
        return NegotiationCheck(frozenset(), refusal=REFUSED_SASL_NEEDS_TLS)
    warnings: list[str] = []
    if tls is req and sasl is req and dialback:
        warnings.append(WARN_DIALBACK_UNUSED)
    if sasl is not ns and tls is not req:
        warnings.append(WARN_SASL_NEEDS_TLS)
    return NegotiationCheck(frozenset(methods), warnings=tuple(warnings))


def partner_methods(partner: Partner) -> frozenset[AuthMethod]:
    """The authentication methods a partner's row allows (empty for a refused row)."""
    return check_negotiation(partner.tls, partner.sasl, partner.dialback).methods


def checked(value: _S) -> _S:
    """Re-check a Struct built in code against its declared types and constraints.

    Structs built with keyword arguments are not validated by msgspec; a round trip through
    builtins is (enum values, ``>= 1`` limits). A violation is refused naming the field.
    """
    try:
        return msgspec.convert(msgspec.to_builtins(value), type(value))
    except msgspec.ValidationError as exc:
        raise ChangeRefused(f"refused: invalid value: {exc}") from None


def refuse(message: str) -> ChangeRefused:
    """Build the exception for a refused change (the message must start with ``refused:``)."""
    return ChangeRefused(message if message.startswith("refused:") else f"refused: {message}")


def validate_partner(
    partner: Partner, others: Iterable[Partner], our_domains: Iterable[str]
) -> tuple[str, ...]:
    """Check one partner against SPEC §2 and the other partners; return the warnings.

    ``partner`` must already carry normalised domains (see ``normalize_partner``); ``others`` are
    the other stored partners (the one being changed excluded).
    """
    verdict = check_negotiation(partner.tls, partner.sasl, partner.dialback)
    if verdict.refusal is not None:
        raise ChangeRefused(verdict.refusal)
    ours = set(our_domains)
    seen: set[str] = set()
    for domain in partner.domains:
        if domain in seen:
            raise refuse(f"domain {domain} is listed twice for partner {partner.domain}")
        seen.add(domain)
        if domain in ours:
            raise refuse(f"{domain} is one of this edge's own domains, it cannot be a partner")
    for other in others:
        if other.domain == partner.domain:
            continue
        clash = seen.intersection(other.domains)
        if clash:
            domain = sorted(clash)[0]
            raise refuse(
                f"domain {domain} already belongs to partner {other.domain} "
                "(a domain belongs to one partner only)"
            )
    return verdict.warnings


def normalize_partner(partner: Partner) -> Partner:
    """Normalise every domain name of a partner (IDNA UTS46, lower case) and the proxy FQDN."""
    partner = checked(partner)
    try:
        return msgspec.structs.replace(
            partner,
            domain=normalize_domain(partner.domain),
            additional_domains=tuple(normalize_domain(d) for d in partner.additional_domains),
            proxy_fqdn=normalize_domain(partner.proxy_fqdn) if partner.proxy_fqdn else None,
        )
    except InvalidName as exc:
        raise ChangeRefused(str(exc)) from None


def validate_gateway(settings: GatewaySettings) -> None:
    """SPEC §3: positive limits and timers (enforced by the model), a usable dialback secret."""
    checked(settings)
    if len(settings.dialback_secret) < MIN_SECRET_LENGTH:
        raise refuse(f"the dialback secret must be at least {MIN_SECRET_LENGTH} characters")
    if settings.partner_connection_limit > settings.connection_limit:
        raise refuse("the partner connection limit cannot exceed the total connection limit")


def normalize_policy_identity(text: str) -> str:
    """``global`` | ``site:NAME`` | ``NAME`` (a named user policy); SPEC §5."""
    identity = text.strip()
    if identity.lower() == GLOBAL_POLICY:
        return GLOBAL_POLICY
    if identity[:5].lower() == SITE_PREFIX:
        site = identity[5:].strip()
        if not site or ":" in site:
            raise refuse(f"{text!r} is not a policy identity (site:NAME needs a site name)")
        return SITE_PREFIX + site
    if not identity or ":" in identity or any(c.isspace() for c in identity):
        raise refuse(f"{text!r} is not a policy identity (global, site:NAME or NAME)")
    return identity


def normalize_user(user: User) -> User:
    """Normalise the SIP address and the contact / pending JIDs of a user."""
    user = checked(user)
    try:
        return msgspec.structs.replace(
            user,
            sip=normalize_sip_address(user.sip),
            site=user.site.strip(),
            contacts=tuple(sorted({normalize_bare_jid(c) for c in user.contacts})),
            pending=tuple(sorted({normalize_bare_jid(c) for c in user.pending})),
        )
    except InvalidName as exc:
        raise ChangeRefused(str(exc)) from None


def validate_user(user: User, policies: Iterable[str], our_domains: Iterable[str]) -> None:
    """A user lives in one of our domains; a granted policy exists and is a user policy."""
    ours = set(our_domains)
    if domain_of(user.sip) not in ours:
        raise refuse(f"{user.sip} is not in this edge's domains ({', '.join(sorted(ours))})")
    if ":" in user.site or any(c.isspace() for c in user.site):
        raise refuse(f"{user.site!r} is not a site name")
    if user.policy is not None:
        if user.policy == GLOBAL_POLICY or user.policy.startswith(SITE_PREFIX):
            raise refuse(
                f"only a named user policy can be granted, not {user.policy} "
                "(global and site policies apply by themselves)"
            )
        if user.policy not in set(policies):
            raise refuse(f"no external access policy {user.policy}")
    validate_credentials(user)


_HEX = frozenset("0123456789abcdef")


def validate_credentials(user: User) -> None:
    """A user's SIP digest credentials (issue 14): each HA1 is lower-case hex of its algorithm's
    length, and a user has at most one credential per algorithm and realm."""
    seen: set[tuple[str, str]] = set()
    for credential in user.credentials:
        key = (credential.algorithm, credential.realm)
        if key in seen:
            raise refuse(
                f"{user.sip} has two {credential.algorithm} credentials for realm "
                f"{credential.realm} (one per algorithm and realm)"
            )
        seen.add(key)
        if not credential.realm or any(c.isspace() or c == '"' for c in credential.realm):
            raise refuse(f"{credential.realm!r} is not a digest realm (credential of {user.sip})")
        length = HA1_LENGTH[credential.algorithm]
        if len(credential.ha1) != length or not _HEX.issuperset(credential.ha1):
            raise refuse(
                f"the {credential.algorithm} credential of {user.sip} is not an HA1 "
                f"({length} lower-case hex digits)"
            )


def validate_configuration(config: Configuration, our_domains: Iterable[str]) -> tuple[str, ...]:
    """Validate a whole configuration (``config import``); return the warnings."""
    ours = tuple(our_domains)
    validate_gateway(config.gateway)
    warnings: list[str] = []
    partners = [normalize_partner(p) for p in config.partners]
    if len({p.domain for p in partners}) != len(partners):
        raise refuse("a partner is listed twice")
    for partner in partners:
        for w in validate_partner(partner, partners, ours):
            warnings.append(f"{partner.domain}: {w}")
    identities = [normalize_policy_identity(p.identity) for p in config.policies]
    if len(set(identities)) != len(identities):
        raise refuse("a policy is listed twice")
    if GLOBAL_POLICY not in identities:
        raise refuse("the global policy always exists and cannot be removed")
    users = [normalize_user(u) for u in config.users]
    if len({u.sip for u in users}) != len(users):
        raise refuse("a user is listed twice")
    for user in users:
        validate_user(user, identities, ours)
    return tuple(warnings)
