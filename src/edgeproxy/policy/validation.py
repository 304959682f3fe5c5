"""Save-time validation: the TLS × SASL × dialback negotiation matrix, and the rules of the
partners, the gateway settings, the access policies and the user directory.

Every change is validated *before* it is written; a refused change raises ``ChangeRefused`` whose
message names the rule and what to do (``refused: SASL needs TLS, …``), and the commands map it
to exit status 1. Warnings do not stop the save; they are returned for the caller to print.

The matrix (18 rows; the partner type plays no part in it). Which methods a row allows is the
stream rule, unchanged:

* SASL over TLS ⇔ TLS ≠ NotSupported and SASL ≠ NotSupported;
* TLS dialback ⇔ TLS ≠ NotSupported, dialback on, and not (TLS = SASL = Required);
* TCP dialback ⇔ TLS ≠ Required and dialback on.

What a save says about a row, and why:

* refused ⇔ SASL ≠ NotSupported and TLS = NotSupported (rows 5, 6, 11, 12): SASL EXTERNAL runs
  over TLS only, so SASL could never be negotiated. Lync's Control Panel refuses these at commit
  ("SASL requires TLS", change not saved; "if use of SASL is optional and TLS negotiation support
  is not possible, you must set SASL negotiation to Not Supported").
* refused ⇔ SASL = NotSupported and dialback off (rows 14, 16, 18): no method is left, no stream
  with the partner could ever authenticate.
* warning ⇔ TLS = Optional, SASL = Required, dialback on (row 3): "SASL required" is not what
  happens — a partner may authenticate by dialback instead, over TLS or over plain TCP.
* warning ⇔ dialback off and TLS or SASL Optional (rows 4, 8, 10): SASL over TLS is the only
  method left, so what is "optional" is in effect required.
* silent otherwise, in particular row 1 (the defaults: TLS and SASL required, dialback on): the
  dialback setting is unused there but harmless — it only takes effect as a fallback once TLS or
  SASL is relaxed — and a warning on every default partner would be noise.

Rows 5 and 11 keep the methods of the stream rules (TCP dialback) so that a store written
before they were refused behaves as it did; they can no longer be saved.

``tests/policy/test_matrix_rows.py`` checks all 18 rows, through ``partner new``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from functools import cache, lru_cache
from typing import Any, TypeVar

import msgspec
import msgspec.inspect as mi

from edgeproxy.errors import ConfigError
from edgeproxy.names import (
    InvalidName,
    normalize_bare_jid,
    normalize_domain,
    normalize_sip_address,
)
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
from edgeproxy.xmpp.stanza import domain_of

REFUSED_SASL_NEEDS_TLS = (
    "refused: SASL needs TLS: with TLS not supported SASL could never be negotiated "
    "(set TLS to required or optional, or SASL to not-supported)"
)
REFUSED_NO_METHOD = (
    "refused: SASL or dialback must be enabled: with SASL not supported and dialback off, no "
    "stream with this partner could authenticate"
)
WARN_SASL_NOT_ENFORCED = (
    "SASL is required, but with TLS optional and dialback on a partner may authenticate by "
    "dialback instead, over TLS or over unencrypted TCP (set TLS to required and dialback off "
    "to insist on SASL)"
)
WARN_IN_EFFECT_REQUIRED = (
    "dialback is off, so SASL over TLS is the only way to authenticate: {what} optional but in "
    "effect required (a partner that does not negotiate {it} cannot connect)"
)
MIN_SECRET_LENGTH = 16
#: The TCP port range of a proxy FQDN's ``:PORT``.
MIN_PORT, MAX_PORT = 1, 65535
#: How many problems of an invalid configuration a refusal lists (the rest are counted).
MAX_LISTED_PROBLEMS = 20
#: How many characters of an invalid value a problem quotes.
MAX_SHOWN_VALUE = 60
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
    """One row of the matrix: the methods it allows, and its refusal or its warnings (see the
    module docstring for each rule and its reason)."""
    ns = Negotiation.NOT_SUPPORTED
    req = Negotiation.REQUIRED
    opt = Negotiation.OPTIONAL
    methods: set[AuthMethod] = set()
    if tls is not ns and sasl is not ns:
        methods.add(AuthMethod.SASL_OVER_TLS)
    if tls is not ns and dialback and not (tls is req and sasl is req):
        methods.add(AuthMethod.TLS_DIALBACK)
    if tls is not req and dialback:
        methods.add(AuthMethod.TCP_DIALBACK)
    if sasl is not ns and tls is ns:
        return NegotiationCheck(frozenset(methods), refusal=REFUSED_SASL_NEEDS_TLS)
    if sasl is ns and not dialback:
        return NegotiationCheck(frozenset(methods), refusal=REFUSED_NO_METHOD)
    warnings: list[str] = []
    if tls is opt and sasl is req and dialback:
        warnings.append(WARN_SASL_NOT_ENFORCED)
    optional = [name for name, value in (("TLS", tls), ("SASL", sasl)) if value is opt]
    if not dialback and optional:
        what = " and ".join(optional)
        warnings.append(
            WARN_IN_EFFECT_REQUIRED.format(
                what=f"{what} {'is' if len(optional) == 1 else 'are'}",
                it=what if len(optional) == 1 else "both",
            )
        )
    return NegotiationCheck(frozenset(methods), warnings=tuple(warnings))


def partner_methods(partner: Partner) -> frozenset[AuthMethod]:
    """The authentication methods a partner's row allows (empty for rows 6, 12, 14, 16, 18)."""
    return check_negotiation(partner.tls, partner.sasl, partner.dialback).methods


# -- values in words ----------------------------------------------------------------------------


def shown(value: Any) -> str:
    """A value as a problem quotes it: JSON, cut to ``MAX_SHOWN_VALUE`` characters."""
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= MAX_SHOWN_VALUE else text[: MAX_SHOWN_VALUE - 1] + "…"


def _expected(t: mi.Type) -> str:
    """What a type accepts, in words: ``an integer ≥ 1``, ``true or false``, ``one of …``."""
    if isinstance(t, mi.IntType):
        bounds = [
            f"{sign} {limit}"
            for sign, limit in (("≥", t.ge), (">", t.gt), ("≤", t.le), ("<", t.lt))
            if limit is not None
        ]
        return "an integer" + (" " + " and ".join(bounds) if bounds else "")
    if isinstance(t, mi.StrType):
        return "text"
    if isinstance(t, mi.BoolType):
        return "true or false"
    if isinstance(t, mi.NoneType):
        return "null"
    if isinstance(t, mi.EnumType):
        return "one of " + ", ".join(str(m.value) for m in t.cls)
    if isinstance(t, mi.LiteralType):
        return "one of " + ", ".join(str(v) for v in t.values)
    if isinstance(t, mi.VarTupleType | mi.ListType | mi.TupleType):
        return "a list"
    if isinstance(t, mi.StructType | mi.DictType):
        return "an object"
    if isinstance(t, mi.UnionType):
        return " or ".join(_expected(m) for m in t.types)
    return "a valid value"


def _matches(value: Any, t: mi.Type) -> bool:
    """Whether ``value`` (decoded JSON) has the kind ``t`` wants, constraints aside."""
    if isinstance(t, mi.IntType):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(t, mi.StrType):
        return isinstance(value, str)
    if isinstance(t, mi.BoolType):
        return isinstance(value, bool)
    if isinstance(t, mi.NoneType):
        return value is None
    if isinstance(t, mi.VarTupleType | mi.ListType | mi.TupleType):
        return isinstance(value, list | tuple)
    if isinstance(t, mi.StructType | mi.DictType):
        return isinstance(value, dict)
    return True


def value_problems(value: Any, t: mi.Type, where: tuple[str, ...] = ()) -> list[str]:
    """Every way ``value`` (decoded JSON) falls short of the type ``t``, each in words and
    prefixed with where it is: ``connection-limit: must be an integer ≥ 1, got 0``."""
    prefix = "".join(f"{w}: " for w in where)
    if isinstance(t, mi.UnionType):
        members = [m for m in t.types if not isinstance(m, mi.NoneType)]
        if value is None and len(members) < len(t.types):
            return []
        kind = [m for m in members if _matches(value, m)]
        if len(kind) == 1:
            return value_problems(value, kind[0], where)
        if any(not value_problems(value, m, where) for m in t.types):
            return []
        return [f"{prefix}must be {' or '.join(_expected(m) for m in members)}, got {shown(value)}"]
    if not _matches(value, t):
        return [f"{prefix}must be {_expected(t)}, got {shown(value)}"]
    if isinstance(t, mi.IntType):
        low = t.ge if t.ge is not None else (t.gt + 1 if t.gt is not None else None)
        high = t.le if t.le is not None else (t.lt - 1 if t.lt is not None else None)
        if (low is not None and value < low) or (high is not None and value > high):
            return [f"{prefix}must be {_expected(t)}, got {shown(value)}"]
    elif isinstance(t, mi.EnumType):
        if value not in {m.value for m in t.cls}:
            return [f"{prefix}must be {_expected(t)}, got {shown(value)}"]
    elif isinstance(t, mi.LiteralType):
        if value not in t.values:
            return [f"{prefix}must be {_expected(t)}, got {shown(value)}"]
    elif isinstance(t, mi.VarTupleType | mi.ListType):
        problems: list[str] = []
        for i, item in enumerate(value):
            at = (*where[:-1], f"{where[-1]}[{i}]") if where else (f"[{i}]",)
            problems += value_problems(item, t.item_type, at)
        return problems
    elif isinstance(t, mi.StructType):
        return struct_problems(value, t, where)
    return []


def struct_problems(
    value: dict[str, Any], t: mi.StructType, where: tuple[str, ...] = ()
) -> list[str]:
    """The problems of an object meant to be the struct ``t``: unknown fields, missing required
    fields, and each field's own problems."""
    prefix = "".join(f"{w}: " for w in where)
    known = {f.encode_name: f for f in t.fields}
    problems = [
        f"{prefix}unknown field {shown(name)} (the fields are: {', '.join(known)})"
        for name in value
        if name not in known
    ]
    for name, field in known.items():
        if name in value:
            problems += value_problems(value[name], field.type, (*where, name))
        elif field.required:
            problems.append(f"{prefix}{name}: missing (it is required)")
    return problems


def problems_of(value: Any, model: type[msgspec.Struct], where: tuple[str, ...] = ()) -> list[str]:
    """``value_problems`` against a model Struct (``Partner``, ``User`` …)."""
    return value_problems(value, _type_info(model), where)


@cache
def _type_info(model: type[msgspec.Struct]) -> mi.Type:
    """``msgspec.inspect.type_info``, once per model."""
    return mi.type_info(model)


def checked(value: _S) -> _S:
    """Re-check a Struct built in code against its declared types and constraints.

    Structs built with keyword arguments are not validated by msgspec; a round trip through
    builtins is (enum values, ``>= 1`` limits). A violation is refused naming the field, in
    words.
    """
    builtins = msgspec.to_builtins(value)
    try:
        return msgspec.convert(builtins, type(value))
    except msgspec.ValidationError:
        problems = problems_of(builtins, type(value)) or [f"not a valid {type(value).__name__}"]
        raise refuse("; ".join(problems)) from None


def refuse(message: str) -> ChangeRefused:
    """Build the exception for a refused change (the message must start with ``refused:``)."""
    return ChangeRefused(message if message.startswith("refused:") else f"refused: {message}")


def reason(exc: ChangeRefused) -> str:
    """A refusal's message without its ``refused:`` (to be placed after where it happened)."""
    return str(exc).removeprefix("refused:").strip()


def item_label(section: str, index: int, name: object) -> str:
    """Where an item of an imported configuration is: ``partners[2] (fabrikam.com)``, or
    ``partners[2]`` when it has no name (its index counts from 0, as in JSON paths)."""
    label = f"{section}[{index}]"
    return f"{label} ({name})" if isinstance(name, str) and name.strip() else label


def refuse_all(problems: list[str]) -> ChangeRefused:
    """One refusal listing ``problems`` (one per line past the first ``MAX_LISTED_PROBLEMS``
    are counted, not listed)."""
    if len(problems) == 1:
        return refuse(problems[0])
    listed = problems[:MAX_LISTED_PROBLEMS]
    more = len(problems) - len(listed)
    lines = [f"refused: {len(problems)} problems, nothing was changed:"]
    lines += [f"  {p}" for p in listed]
    if more:
        lines.append(f"  … and {more} more")
    return ChangeRefused("\n".join(lines))


def validate_partner(
    partner: Partner, others: Iterable[Partner], our_domains: Iterable[str]
) -> tuple[str, ...]:
    """Check one partner against docs/spec.md §2 and the other partners; return the warnings.

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


def normalize_proxy_fqdn(text: str) -> str:
    """``HOST`` or ``HOST:PORT`` with HOST a DNS name (normalised as a domain) and PORT 1–65535,
    written back as ``host`` or ``host:port``; refused otherwise."""
    host, colon, port = text.strip().rpartition(":") if ":" in text else (text.strip(), "", "")
    if colon and not (port.isascii() and port.isdigit() and MIN_PORT <= int(port) <= MAX_PORT):
        raise refuse(
            f"proxy FQDN {text!r}: the port must be a number from {MIN_PORT} to {MAX_PORT}"
        )
    try:
        host = normalize_domain(host)
    except InvalidName as exc:
        raise refuse(f"proxy FQDN {text!r}: {reason(exc)}") from None
    return f"{host}:{int(port)}" if colon else host


def normalize_partner(partner: Partner) -> Partner:
    """Normalise every domain name of a partner (IDNA UTS46, lower case) and the proxy FQDN."""
    partner = checked(partner)
    try:
        return msgspec.structs.replace(
            partner,
            domain=normalize_domain(partner.domain),
            additional_domains=tuple(normalize_domain(d) for d in partner.additional_domains),
            proxy_fqdn=normalize_proxy_fqdn(partner.proxy_fqdn) if partner.proxy_fqdn else None,
        )
    except InvalidName as exc:
        raise ChangeRefused(str(exc)) from None


def validate_gateway(settings: GatewaySettings) -> None:
    """docs/spec.md §3: positive limits and timers (enforced by the model), a usable
    dialback secret."""
    checked(settings)
    if len(settings.dialback_secret) < MIN_SECRET_LENGTH:
        raise refuse(f"the dialback secret must be at least {MIN_SECRET_LENGTH} characters")
    if settings.partner_connection_limit > settings.connection_limit:
        raise refuse("the partner connection limit cannot exceed the total connection limit")


def normalize_policy_identity(text: str) -> str:
    """``global`` | ``site:NAME`` | ``NAME`` (a named user policy); docs/spec.md §5."""
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
    """A user's SIP digest credentials: each HA1 is lower-case hex of its algorithm's
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
    return checked_configuration(config, our_domains)[1]


def checked_configuration(
    config: Configuration, our_domains: Iterable[str]
) -> tuple[Configuration, tuple[str, ...]]:
    """Validate a whole configuration (``config import``) and return it normalised, with the
    warnings. Every item is checked; one refusal lists every problem found, each naming its
    item (``partners[2] (fabrikam.com): …``, see ``item_label``)."""
    ours = tuple(our_domains)
    problems: list[str] = []
    warnings: list[str] = []

    def attempt(where: str, check: Any) -> Any:
        try:
            return check()
        except ChangeRefused as exc:
            problems.append(f"{where}: {reason(exc)}")
            return None

    attempt("gateway", lambda: validate_gateway(config.gateway))

    partners: list[Partner] = []
    first_of: dict[str, str] = {}
    for i, raw in enumerate(config.partners):
        where = item_label("partners", i, raw.domain)
        partner = attempt(where, lambda raw=raw: normalize_partner(raw))
        if partner is None:
            continue
        if partner.domain in first_of:
            problems.append(f"{where}: the same partner as {first_of[partner.domain]}")
            continue
        first_of[partner.domain] = where
        found = attempt(where, lambda p=partner: validate_partner(p, partners, ours))
        warnings += [f"{where}: {w}" for w in found or ()]
        partners.append(partner)

    policies = []
    seen_policies: dict[str, str] = {}
    for i, policy in enumerate(config.policies):
        where = item_label("policies", i, policy.identity)
        identity = attempt(where, lambda p=policy: normalize_policy_identity(p.identity))
        if identity is None:
            continue
        if identity in seen_policies:
            problems.append(f"{where}: the same policy as {seen_policies[identity]}")
            continue
        seen_policies[identity] = where
        policies.append(msgspec.structs.replace(policy, identity=identity))
    if GLOBAL_POLICY not in seen_policies:
        problems.append("policies: the global policy is missing (it always exists)")

    users = []
    seen_users: dict[str, str] = {}
    for i, raw_user in enumerate(config.users):
        where = item_label("users", i, raw_user.sip)
        user = attempt(where, lambda u=raw_user: normalize_user(u))
        if user is None:
            continue
        if user.sip in seen_users:
            problems.append(f"{where}: the same user as {seen_users[user.sip]}")
            continue
        seen_users[user.sip] = where
        attempt(where, lambda u=user: validate_user(u, seen_policies, ours))
        users.append(user)

    if problems:
        raise refuse_all(problems)
    normalized = msgspec.structs.replace(
        config, partners=tuple(partners), policies=tuple(policies), users=tuple(users)
    )
    return normalized, tuple(warnings)
