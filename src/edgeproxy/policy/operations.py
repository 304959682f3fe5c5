"""Validated changes to the store: what each admin command does, without the argument parsing.

Every function runs one write transaction (``Store.write``), reads the current state inside it,
validates the change against that state (``validation``) and writes only if everything holds; a
``ChangeRefused`` rolls the transaction back, so the stored content is exactly as before. They
return the warnings to print (the negotiation matrix's warning rows). The server uses the same
functions for the directory changes it makes itself (``record_pending_request``).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import msgspec

from edgeproxy.names import InvalidName, normalize_bare_jid, normalize_domain
from edgeproxy.policy.credentials import credentials_for
from edgeproxy.policy.model import (
    GLOBAL_POLICY,
    AccessPolicy,
    Configuration,
    GatewaySettings,
    Partner,
    User,
)
from edgeproxy.policy.store import Store
from edgeproxy.policy.validation import (
    ChangeRefused,
    checked_configuration,
    normalize_partner,
    normalize_policy_identity,
    normalize_user,
    refuse,
    validate_gateway,
    validate_partner,
    validate_user,
)

if TYPE_CHECKING:
    from edgeproxy.policy.transfer import ImportDocument


def partner_domain(text: str) -> str:
    """Normalise a partner domain given on the command line (refusing an invalid one)."""
    try:
        return normalize_domain(text)
    except InvalidName as exc:
        raise ChangeRefused(str(exc)) from None


# -- partners ----------------------------------------------------------------------------------


def new_partner(
    store: Store, our_domains: Iterable[str], partner: Partner
) -> tuple[Partner, tuple[str, ...]]:
    """Add a partner; refused if its primary domain exists or any rule fails. Returns the partner
    as stored (normalised) and the warnings."""
    partner = normalize_partner(partner)
    with store.write() as tx:
        others = tx.partners()
        if any(p.domain == partner.domain for p in others):
            raise refuse(f"partner {partner.domain} already exists (use partner set)")
        warnings = validate_partner(partner, others, our_domains)
        tx.put_partner(partner)
    return partner, warnings


def set_partner(
    store: Store, our_domains: Iterable[str], domain: str, edit: Callable[[Partner], Partner]
) -> tuple[Partner, Partner, tuple[str, ...]]:
    """Change an existing partner with ``edit`` (a pure function of the stored partner).
    Returns the partner before and after the change, and the warnings of the negotiation matrix
    when the change touched its row (TLS, SASL, dialback): an unchanged row was warned about
    when it was set."""
    domain = partner_domain(domain)
    with store.write() as tx:
        others = tx.partners()
        current = next((p for p in others if p.domain == domain), None)
        if current is None:
            raise refuse(f"no partner {domain}")
        changed = normalize_partner(edit(current))
        if changed.domain != current.domain:
            raise refuse("the primary domain identifies a partner and cannot be changed")
        warnings = validate_partner(changed, others, our_domains)
        tx.put_partner(changed)
    if _row(changed) == _row(current):
        warnings = ()
    return current, changed, warnings


def _row(partner: Partner) -> tuple[object, ...]:
    """A partner's row of the negotiation matrix."""
    return (partner.tls, partner.sasl, partner.dialback)


def remove_partner(store: Store, domain: str) -> Partner:
    """Remove a partner named by its primary domain; returns what was removed."""
    domain = partner_domain(domain)
    with store.write() as tx:
        current = next((p for p in tx.partners() if p.domain == domain), None)
        if current is None or not tx.remove_partner(domain):
            raise refuse(f"no partner {domain}")
    return current


# -- gateway settings (docs/spec.md §3) ---------------------------------------------------------


def set_gateway(
    store: Store, edit: Callable[[GatewaySettings], GatewaySettings]
) -> GatewaySettings:
    with store.write() as tx:
        changed = edit(tx.gateway())
        for field in msgspec.structs.fields(changed):
            value = getattr(changed, field.name)
            if isinstance(value, int) and not isinstance(value, bool) and value < 1:
                raise refuse(f"{field.encode_name} must be at least 1")
        validate_gateway(changed)
        tx.put_gateway(changed)
    return changed


# -- external access policies (docs/spec.md §5) -------------------------------------------------


def new_policy(store: Store, policy: AccessPolicy) -> AccessPolicy:
    policy = msgspec.structs.replace(policy, identity=normalize_policy_identity(policy.identity))
    if policy.identity == GLOBAL_POLICY:
        raise refuse("the global policy always exists (use policy set global)")
    with store.write() as tx:
        if tx.policy(policy.identity) is not None:
            raise refuse(f"policy {policy.identity} already exists (use policy set)")
        tx.put_policy(policy)
    return policy


def set_policy(
    store: Store, identity: str, edit: Callable[[AccessPolicy], AccessPolicy]
) -> AccessPolicy:
    identity = normalize_policy_identity(identity)
    with store.write() as tx:
        current = tx.policy(identity)
        if current is None:
            raise refuse(f"no policy {identity}")
        changed = msgspec.structs.replace(edit(current), identity=identity)
        tx.put_policy(changed)
    return changed


def remove_policy(store: Store, identity: str) -> None:
    identity = normalize_policy_identity(identity)
    if identity == GLOBAL_POLICY:
        raise refuse("the global policy cannot be removed")
    with store.write() as tx:
        granted = tx.users_granted(identity)
        if granted:
            raise refuse(
                f"policy {identity} is granted to {len(granted)} user(s) "
                f"({', '.join(granted[:3])}{', …' if len(granted) > 3 else ''}); "
                "grant them another policy first"
            )
        if not tx.remove_policy(identity):
            raise refuse(f"no policy {identity}")


def grant_policy(store: Store, our_domains: Iterable[str], sip: str, identity: str | None) -> User:
    """Grant a named user policy to a user, or (``None``) return them to site/global."""
    if identity is not None:
        identity = normalize_policy_identity(identity)
    return set_user(
        store,
        our_domains,
        sip,
        lambda u: msgspec.structs.replace(u, policy=identity),
    )


# -- users and contact lists (docs/spec.md §5) --------------------------------------------------


def new_user(store: Store, our_domains: Iterable[str], user: User) -> User:
    user = normalize_user(user)
    with store.write() as tx:
        if tx.user(user.sip) is not None:
            raise refuse(f"user {user.sip} already exists (use user set)")
        validate_user(user, (p.identity for p in tx.policies()), our_domains)
        tx.put_user(user)
    return user


def set_user(
    store: Store, our_domains: Iterable[str], sip: str, edit: Callable[[User], User]
) -> User:
    sip = normalize_user(User(sip=sip)).sip
    with store.write() as tx:
        current = tx.user(sip)
        if current is None:
            raise refuse(f"no user {sip}")
        changed = normalize_user(edit(current))
        if changed.sip != sip:
            raise refuse("the SIP address identifies a user and cannot be changed")
        validate_user(changed, (p.identity for p in tx.policies()), our_domains)
        tx.put_user(changed)
    return changed


def remove_user(store: Store, sip: str) -> None:
    sip = normalize_user(User(sip=sip)).sip
    with store.write() as tx:
        if not tx.remove_user(sip):
            raise refuse(f"no user {sip}")


def set_password(store: Store, our_domains: Iterable[str], sip: str, password: str) -> User:
    """Store the digest credentials of ``password`` for an existing user (replacing any earlier
    ones); refused for an empty password or a user that does not exist. Only hashes are kept."""
    sip = normalize_user(User(sip=sip)).sip
    try:
        credentials = credentials_for(sip, password)
    except ValueError as exc:
        raise refuse(str(exc)) from None
    with store.write() as tx:
        current = tx.user(sip)
        if current is None:
            raise refuse(
                f"no user {sip}: a password is set for an existing user only "
                "(create it with user new first)"
            )
        changed = msgspec.structs.replace(current, credentials=credentials)
        validate_user(changed, (p.identity for p in tx.policies()), our_domains)
        tx.put_user(changed)
    return changed


def clear_password(store: Store, sip: str) -> bool:
    """Remove every digest credential of a user; True if there was one. Refused for a user that
    does not exist."""
    sip = normalize_user(User(sip=sip)).sip
    with store.write() as tx:
        current = tx.user(sip)
        if current is None:
            raise refuse(f"no user {sip}")
        had = bool(current.credentials)
        tx.put_user(msgspec.structs.replace(current, credentials=()))
    return had


#: The demo user of the embedded default configuration (``edgeproxy serve`` at first start).
DEMO_USER = "sip:alice@contoso.test"


def create_demo_user(store: Store, our_domains: Iterable[str]) -> str:
    """Create ``DEMO_USER`` with a generated password and return the password (to be shown
    once). Refused (``ChangeRefused``) if the user exists or is not in ``our_domains``."""
    password = secrets.token_urlsafe(12)
    user = normalize_user(User(sip=DEMO_USER, name="Alice (demo)"))
    new_user(store, our_domains, msgspec.structs.replace(user, credentials=credentials_for(user.sip, password)))
    return password


def add_contact(store: Store, our_domains: Iterable[str], sip: str, jid: str) -> bool:
    """Authorize an XMPP contact; return True if it approved a pending request (docs/spec.md
    §4)."""
    contact = _contact(jid)
    approved = False

    def edit(user: User) -> User:
        nonlocal approved
        approved = contact in user.pending
        return msgspec.structs.replace(
            user,
            contacts=(*user.contacts, contact),
            pending=tuple(p for p in user.pending if p != contact),
        )

    set_user(store, our_domains, sip, edit)
    return approved


def remove_contact(store: Store, our_domains: Iterable[str], sip: str, jid: str) -> None:
    contact = _contact(jid)

    def edit(user: User) -> User:
        if contact not in user.contacts:
            raise refuse(f"{contact} is not on the contact list of {user.sip}")
        return msgspec.structs.replace(
            user, contacts=tuple(c for c in user.contacts if c != contact)
        )

    set_user(store, our_domains, sip, edit)


def record_pending_request(store: Store, our_domains: Iterable[str], sip: str, jid: str) -> None:
    """Keep an unauthorized PublicUnverified subscription request (engine ``StorePending``)."""
    contact = _contact(jid)
    set_user(
        store,
        our_domains,
        sip,
        lambda u: msgspec.structs.replace(u, pending=(*u.pending, contact)),
    )


def _contact(jid: str) -> str:
    try:
        return normalize_bare_jid(jid)
    except InvalidName as exc:
        raise ChangeRefused(str(exc)) from None


# -- whole configuration ----------------------------------------------------------------------


def import_configuration(
    store: Store, our_domains: Iterable[str], config: Configuration | ImportDocument
) -> tuple[str, ...]:
    """Validate a whole configuration, then replace the stored one with it (one transaction):
    nothing is written unless every item holds. Returns the warnings.

    An ``ImportDocument`` (``config import``) is completed inside the transaction: the secrets it
    leaves out (a document exported without ``--include-secrets``) are taken from the stored
    configuration it replaces.
    """
    ours = tuple(our_domains)
    with store.write() as tx:
        if not isinstance(config, Configuration):
            config = config.complete(tx.configuration())
        normalized, warnings = checked_configuration(config, ours)
        tx.replace_all(normalized)
    return warnings
