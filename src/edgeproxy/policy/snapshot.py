"""One immutable policy snapshot with its indexes (DESIGN principle 3).

``build_snapshot`` turns a ``Configuration`` (as read from the store in one transaction) into a
``PolicySnapshot``: frozen Structs plus dict indexes so that every engine decision is a handful of
dict lookups:

* ``partner_by_domain`` — every domain (primary and additional) → its ``Partner`` (SPEC §2);
* ``methods`` — primary domain → the authentication methods its row allows (SPEC §2.1);
* ``users`` — a local user's bare JID (``alice@contoso.test``) → ``UserEntry`` with the effective
  external access policy already resolved, user > site > global (SPEC §5), and ``federates``
  (policy has XMPP access and the user is not homed on an SBA).

The indexes are plain dicts for lookup speed; nothing mutates them after ``build_snapshot``. A
change builds a new snapshot; holders swap the reference atomically.
"""

from __future__ import annotations

from collections.abc import Iterable

import msgspec

from edgeproxy.names import normalize_domain
from edgeproxy.policy.model import (
    GLOBAL_POLICY,
    SITE_PREFIX,
    AccessPolicy,
    AuthMethod,
    Configuration,
    GatewaySettings,
    Negotiation,
    Partner,
    User,
)
from edgeproxy.policy.validation import partner_methods


class UserEntry(msgspec.Struct, frozen=True):
    """A local user with the effective policy resolved (SPEC §5)."""

    user: User
    policy: AccessPolicy
    federates: bool
    contacts: frozenset[str]


class StreamOffer(msgspec.Struct, frozen=True):
    """What an inbound stream offers the peer (SPEC §2.1, decision "stream level")."""

    starttls: bool
    starttls_required: bool
    sasl_external: bool
    dialback: bool


class PolicySnapshot(msgspec.Struct, frozen=True):
    """Everything the engine decides from; immutable once built."""

    generation: int
    our_domains: frozenset[str]
    gateway: GatewaySettings
    partners: tuple[Partner, ...]
    partner_by_domain: dict[str, Partner]
    methods: dict[str, frozenset[AuthMethod]]
    policies: dict[str, AccessPolicy]
    users: dict[str, UserEntry]
    #: Offers for a peer whose stream header has no ``from``: index 0 before TLS, 1 after.
    unknown_peer_offers: tuple[StreamOffer, StreamOffer]


def effective_policy(user: User, policies: dict[str, AccessPolicy]) -> AccessPolicy:
    """SPEC §5 precedence: the granted user policy, else the user's site policy, else global."""
    if user.policy is not None and user.policy in policies:
        return policies[user.policy]
    if user.site:
        site_policy = policies.get(SITE_PREFIX + user.site)
        if site_policy is not None:
            return site_policy
    return policies.get(GLOBAL_POLICY) or AccessPolicy(identity=GLOBAL_POLICY)


def _unknown_peer_offers(
    partners: Iterable[Partner], methods: dict[str, frozenset[AuthMethod]]
) -> tuple[StreamOffer, StreamOffer]:
    """SPEC §2.1: without ``from``, offer what at least one partner row could use."""
    rows = list(partners)
    any_tls = any(p.tls is not Negotiation.NOT_SUPPORTED for p in rows)
    all_tls_required = bool(rows) and all(p.tls is Negotiation.REQUIRED for p in rows)
    any_tcp_dialback = any(AuthMethod.TCP_DIALBACK in methods[p.domain] for p in rows)
    any_tls_dialback = any(AuthMethod.TLS_DIALBACK in methods[p.domain] for p in rows)
    any_sasl = any(AuthMethod.SASL_OVER_TLS in methods[p.domain] for p in rows)
    before = StreamOffer(
        starttls=any_tls,
        starttls_required=all_tls_required,
        sasl_external=False,
        dialback=any_tcp_dialback,
    )
    after = StreamOffer(
        starttls=False,
        starttls_required=False,
        sasl_external=any_sasl,
        dialback=any_tls_dialback,
    )
    return before, after


def build_snapshot(
    config: Configuration, our_domains: Iterable[str], *, generation: int = 0
) -> PolicySnapshot:
    """Index a configuration. ``our_domains`` are the edge's XMPP domains (``edge.domains``)."""
    partner_by_domain: dict[str, Partner] = {}
    methods: dict[str, frozenset[AuthMethod]] = {}
    for partner in config.partners:
        methods[partner.domain] = partner_methods(partner)
        for domain in partner.domains:
            partner_by_domain[domain] = partner
    policies = {p.identity: p for p in config.policies}
    users: dict[str, UserEntry] = {}
    for user in config.users:
        policy = effective_policy(user, policies)
        users[user.jid] = UserEntry(
            user=user,
            policy=policy,
            federates=policy.xmpp and not user.sba,
            contacts=frozenset(user.contacts),
        )
    return PolicySnapshot(
        generation=generation,
        our_domains=frozenset(normalize_domain(d) for d in our_domains),
        gateway=config.gateway,
        partners=config.partners,
        partner_by_domain=partner_by_domain,
        methods=methods,
        policies=policies,
        users=users,
        unknown_peer_offers=_unknown_peer_offers(config.partners, methods),
    )
