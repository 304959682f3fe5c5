"""Pure policy decisions over one ``PolicySnapshot`` (SPEC §2.1, §3, §4, §6).

Theory of operation
-------------------
Nothing here does I/O, keeps state or imports trio: a decision is a function of the snapshot and
a small description of the stream or stanza, so the server, the load generator and the tests call
the same code. The hot path (``decide_inbound`` / ``decide_outbound``) is a few string splits and
dict lookups and returns pre-built decision values; it never parses XML — the tokenizer already
gives the top-level attributes, and the driver says whether the stanza carries a status note or an
unsupported payload (file transfer, Jingle, MUC invitation).

Stream level
  ``partner_for_domain``, ``check_inbound_stream`` (is the peer a partner, are the addressed
  domains ours), ``inbound_offer`` (which features to offer given the TLS state),
  ``auth_method_allowed``, ``outbound_methods`` (strongest first), ``admit_stream`` (limits).

Stanza level, inbound (partner → local user), rules in the order of SPEC §6
  1. ``from`` domain not authenticated on this stream → stream error ``invalid-from``; ``to``
     domain not ours → stream error ``host-unknown``. A partner removed while its stream is open
     → stream error ``policy-violation`` (**Decision**: a removed partner's streams close on their
     next stanza; other streams are unaffected).
  2. Unknown local user, no XMPP access, SBA-homed → ``service-unavailable``.
  3. Partner type (SPEC §4): Federated and PublicVerified contacts may message and subscribe
     freely (``subscribe`` → ``AutoReply("subscribed")``, and the request is delivered so that
     the gateway sets up the SIP subscription). PublicUnverified contacts need authorization (the
     contact is on the user's contact list): an unauthorized ``subscribe`` → ``StorePending``,
     an unauthorized message or iq request → ``service-unavailable`` (RFC 6121 privacy rule), an
     unauthorized ``probe`` → ``AutoReply("unsubscribed")`` without delivery (RFC 6121 §4.3.2).
  4. Unsupported modalities: messages of type ``groupchat`` → ``service-unavailable``; file
     transfer, Jingle, MUC invitations → ``feature-not-implemented``.
  Stanzas addressed to one of our domains itself (no localpart): ``iq`` is allowed (the edge
  answers pings and service discovery); messages and presence get ``service-unavailable``.

Stanza level, outbound (local user → XMPP contact; SPEC §6 "Outbound")
  The sender must federate (XMPP access, not SBA) else ``forbidden``; the target domain must be a
  partner else ``remote-server-not-found``; unsupported modalities as inbound; presence carrying a
  status note to a PublicVerified or PublicUnverified partner → ``AllowTransformed`` (strip
  ``<status/>``, SPEC §4).

A refusal of a stanza of type ``error`` is never answered with another error (RFC 6120 §8.3.1):
``Refuse.bounce`` is false; the driver logs it (nothing is dropped silently, SPEC §6 rule 5).
"""

from __future__ import annotations

import enum

import msgspec

from edgeproxy.names import fast_domain
from edgeproxy.policy.model import AuthMethod, Negotiation, Partner, PartnerType
from edgeproxy.policy.snapshot import PolicySnapshot, StreamOffer, UserEntry

# -- inputs -----------------------------------------------------------------------------------


class StanzaKind(enum.StrEnum):
    MESSAGE = "message"
    PRESENCE = "presence"
    IQ = "iq"


class Stanza(msgspec.Struct, frozen=True):
    """What the engine needs to know about one stanza (top-level attributes plus flags).

    ``type`` is the ``type`` attribute as received (``""`` when absent: a normal message or an
    available presence). ``stream_domains`` are the remote domains the stream has authenticated
    (normalised), for inbound stanzas; unused outbound.
    """

    kind: StanzaKind
    type: str
    from_jid: str
    to_jid: str
    has_status: bool = False
    file_transfer: bool = False
    jingle: bool = False
    muc_invite: bool = False
    stream_domains: frozenset[str] = frozenset()


# -- outputs ----------------------------------------------------------------------------------


class Decision(msgspec.Struct, frozen=True, tag=True):
    """Base of every decision; ``rule`` names the SPEC rule, for the event log."""

    rule: str


class Allow(Decision, frozen=True, tag="allow"):
    """Deliver the stanza unchanged (forward the received bytes)."""


class AllowTransformed(Decision, frozen=True, tag="allow-transformed"):
    """Deliver the stanza with its ``<status/>`` removed (SPEC §4)."""

    strip_status: bool = True


class Refuse(Decision, frozen=True, tag="refuse"):
    """Refuse: a stanza error to the sender, or (``stream_level``) a stream error and close."""

    condition: str = "service-unavailable"
    stream_level: bool = False
    bounce: bool = True


class AutoReply(Decision, frozen=True, tag="auto-reply"):
    """Answer the sender with a presence of type ``reply``; also deliver if ``deliver``."""

    reply: str = "subscribed"
    deliver: bool = True


class StorePending(Decision, frozen=True, tag="store-pending"):
    """Keep the subscription request as pending until the user adds the contact (SPEC §4)."""


# Pre-built decisions: the hot path allocates nothing but the address splits.
ALLOW = Allow(rule="allowed")
ALLOW_SERVER_IQ = Allow(rule="iq addressed to our domain is answered by the edge")
STRIP_STATUS = AllowTransformed(rule="status note never sent to public partners")
INVALID_FROM = Refuse(
    rule="from domain not authenticated on this stream",
    condition="invalid-from",
    stream_level=True,
)
HOST_UNKNOWN = Refuse(
    rule="to domain is not ours", condition="host-unknown", stream_level=True
)
PARTNER_GONE = Refuse(
    rule="domain is no longer a partner", condition="policy-violation", stream_level=True
)
NOT_TO_SERVER = Refuse(rule="only iq may be addressed to our domain itself")
NO_SUCH_USER = Refuse(rule="unknown local user")
NO_XMPP_ACCESS = Refuse(rule="user's external access policy has no XMPP access")
SBA_USER = Refuse(rule="user homed on a survivable branch appliance")
UNAUTHORIZED = Refuse(rule="PublicUnverified contact not authorized by the user")
GROUPCHAT = Refuse(rule="group chat is not federated")
UNSUPPORTED = Refuse(
    rule="file transfer, Jingle and MUC invitations are not federated",
    condition="feature-not-implemented",
)
AUTO_SUBSCRIBED = AutoReply(rule="subscription auto-approved", reply="subscribed")
PROBE_UNAUTHORIZED = AutoReply(
    rule="probe from an unauthorized contact (RFC 6121 §4.3.2)",
    reply="unsubscribed",
    deliver=False,
)
STORE_PENDING = StorePending(rule="PublicUnverified subscription kept pending")
SENDER_NO_XMPP = Refuse(rule="outbound: sender has no XMPP access", condition="forbidden")
SENDER_UNKNOWN = Refuse(rule="outbound: sender is not a local user", condition="forbidden")
SENDER_SBA = Refuse(rule="outbound: sender homed on an SBA", condition="forbidden")
NOT_A_PARTNER = Refuse(
    rule="target domain is not a partner", condition="remote-server-not-found"
)

_NEEDS_AUTH = PartnerType.PUBLIC_UNVERIFIED
_FEDERATED = PartnerType.FEDERATED
_MESSAGE = StanzaKind.MESSAGE
_PRESENCE = StanzaKind.PRESENCE


def _no_bounce(decision: Refuse) -> Refuse:
    return msgspec.structs.replace(decision, bounce=False)


# Error stanzas are never answered with errors (RFC 6120 §8.3.1).
_NO_BOUNCE = {
    id(d): _no_bounce(d)
    for d in (
        NOT_TO_SERVER,
        NO_SUCH_USER,
        NO_XMPP_ACCESS,
        SBA_USER,
        UNAUTHORIZED,
        GROUPCHAT,
        UNSUPPORTED,
        SENDER_NO_XMPP,
        SENDER_UNKNOWN,
        SENDER_SBA,
        NOT_A_PARTNER,
    )
}


def _refuse(decision: Refuse, stanza_type: str) -> Refuse:
    return _NO_BOUNCE[id(decision)] if stanza_type == "error" else decision


def _bare(jid: str) -> str:
    """The folded bare JID (``local@domain`` or ``domain``); the resource is dropped."""
    slash = jid.find("/")
    if slash >= 0:
        jid = jid[:slash]
    if jid.isascii():
        return jid.lower()
    local, at, domain = jid.rpartition("@")
    return f"{local.lower()}{at}{fast_domain(domain)}"


# -- stanza level -----------------------------------------------------------------------------


def decide_inbound(snapshot: PolicySnapshot, stanza: Stanza) -> Decision:
    """Decide a stanza received from a partner for a local user (SPEC §4, §6)."""
    sender = _bare(stanza.from_jid)
    from_domain = sender[sender.find("@") + 1 :]
    target = _bare(stanza.to_jid)
    at = target.find("@")
    # Rule 1: anti-spoofing and addressing.
    if from_domain not in stanza.stream_domains:
        return INVALID_FROM
    if target[at + 1 :] not in snapshot.our_domains:
        return HOST_UNKNOWN
    partner = snapshot.partner_by_domain.get(from_domain)
    if partner is None:
        return PARTNER_GONE
    kind = stanza.kind
    stype = stanza.type
    if at < 0:
        return ALLOW_SERVER_IQ if kind == StanzaKind.IQ else _refuse(NOT_TO_SERVER, stype)
    # Rule 2: the local user must exist and federate.
    entry = snapshot.users.get(target)
    if entry is None:
        return _refuse(NO_SUCH_USER, stype)
    if not entry.federates:
        return _refuse(SBA_USER if entry.user.sba else NO_XMPP_ACCESS, stype)
    # Rule 3: partner type (SPEC §4).
    authorized = partner.type is not _NEEDS_AUTH or sender in entry.contacts
    if kind == _PRESENCE:
        if stype == "subscribe":
            return AUTO_SUBSCRIBED if authorized else STORE_PENDING
        if stype == "probe" and not authorized:
            return PROBE_UNAUTHORIZED
    elif not authorized and stype != "error" and stype != "result":
        return UNAUTHORIZED
    # Rule 4: unsupported modalities.
    if stanza.file_transfer or stanza.jingle or stanza.muc_invite:
        return _refuse(UNSUPPORTED, stype)
    if stype == "groupchat" and kind == _MESSAGE:
        return GROUPCHAT
    return ALLOW


def decide_outbound(snapshot: PolicySnapshot, stanza: Stanza) -> Decision:
    """Decide a stanza a local user sends to an XMPP contact (SPEC §4, §6 outbound)."""
    stype = stanza.type
    entry: UserEntry | None = snapshot.users.get(_bare(stanza.from_jid))
    if entry is None:
        return _refuse(SENDER_UNKNOWN, stype)
    if not entry.federates:
        return _refuse(SENDER_SBA if entry.user.sba else SENDER_NO_XMPP, stype)
    target = _bare(stanza.to_jid)
    partner = snapshot.partner_by_domain.get(target[target.find("@") + 1 :])
    if partner is None:
        return _refuse(NOT_A_PARTNER, stype)
    if stanza.file_transfer or stanza.jingle or stanza.muc_invite:
        return _refuse(UNSUPPORTED, stype)
    kind = stanza.kind
    if stype == "groupchat" and kind == _MESSAGE:
        return GROUPCHAT
    if kind == _PRESENCE and stanza.has_status and partner.type is not _FEDERATED:
        return STRIP_STATUS
    return ALLOW


# -- stream level -----------------------------------------------------------------------------


def partner_for_domain(snapshot: PolicySnapshot, domain: str) -> Partner | None:
    """The partner a (primary or additional) domain belongs to, or None (SPEC §2: no default)."""
    return snapshot.partner_by_domain.get(fast_domain(domain))


def check_inbound_stream(
    snapshot: PolicySnapshot, from_domain: str | None, to_domain: str | None
) -> Refuse | None:
    """Accept or refuse an inbound stream header (RFC 6120 §4.7.1, SPEC §2).

    ``to`` must be one of our domains (else ``host-unknown``); a ``from`` that is present must be
    a partner (else ``policy-violation``). A missing ``from`` is accepted for now: the partner's
    row is enforced once its domain is known (``auth_method_allowed``).
    """
    if to_domain is not None and fast_domain(to_domain) not in snapshot.our_domains:
        return HOST_UNKNOWN
    if from_domain is not None and partner_for_domain(snapshot, from_domain) is None:
        return Refuse(
            rule="no default partner", condition="policy-violation", stream_level=True
        )
    return None


def allowed_methods(
    snapshot: PolicySnapshot, partner: Partner, tls_active: bool
) -> frozenset[AuthMethod]:
    """Methods the partner's row allows on a stream that is (or is not yet) TLS-protected."""
    methods = snapshot.methods.get(partner.domain, frozenset())
    if tls_active:
        return methods & {AuthMethod.SASL_OVER_TLS, AuthMethod.TLS_DIALBACK}
    return methods & {AuthMethod.TCP_DIALBACK}


def auth_method_allowed(
    snapshot: PolicySnapshot, partner: Partner, method: AuthMethod, tls_active: bool
) -> bool:
    """May the peer authenticate with ``method`` now? If not: stream error ``policy-violation``."""
    return method in allowed_methods(snapshot, partner, tls_active)


def inbound_offer(
    snapshot: PolicySnapshot, partner: Partner | None, tls_active: bool
) -> StreamOffer:
    """The stream features to offer (SPEC §2.1 "Decision (stream level)").

    Before TLS: ``<starttls/>`` if the row allows TLS (``<required/>`` if TLS is Required) and
    ``<dialback/>`` if TCP dialback is allowed. After TLS: SASL EXTERNAL if SASL over TLS is
    allowed (the driver still checks the certificate) and ``<dialback/>`` if TLS dialback is.
    Without a known partner: what at least one partner row could use.
    """
    if partner is None:
        return snapshot.unknown_peer_offers[1 if tls_active else 0]
    methods = snapshot.methods.get(partner.domain, frozenset())
    if tls_active:
        return StreamOffer(
            starttls=False,
            starttls_required=False,
            sasl_external=AuthMethod.SASL_OVER_TLS in methods,
            dialback=AuthMethod.TLS_DIALBACK in methods,
        )
    tls_possible = bool(methods & {AuthMethod.SASL_OVER_TLS, AuthMethod.TLS_DIALBACK})
    return StreamOffer(
        starttls=tls_possible,
        starttls_required=tls_possible and partner.tls is Negotiation.REQUIRED,
        sasl_external=False,
        dialback=AuthMethod.TCP_DIALBACK in methods,
    )


_STRENGTH = (AuthMethod.SASL_OVER_TLS, AuthMethod.TLS_DIALBACK, AuthMethod.TCP_DIALBACK)


def outbound_methods(snapshot: PolicySnapshot, partner: Partner) -> tuple[AuthMethod, ...]:
    """Methods to try on an outbound stream, strongest first (SPEC §2.1)."""
    methods = snapshot.methods.get(partner.domain, frozenset())
    return tuple(m for m in _STRENGTH if m in methods)


def partner_connection_limit(snapshot: PolicySnapshot, partner: Partner) -> int:
    """The partner's own limit, else the gateway's per-partner limit (SPEC §2, §3)."""
    if partner.connection_limit is not None:
        return partner.connection_limit
    return snapshot.gateway.partner_connection_limit


def admit_stream(
    snapshot: PolicySnapshot, partner: Partner, total_open: int, partner_open: int
) -> Refuse | None:
    """May one more stream with ``partner`` be opened, given the streams already open?

    Refused with stream error ``resource-constraint`` at the total limit (SPEC §3, default 1000)
    or the partner's limit (default 20, overridden by the partner's own).
    """
    if total_open >= snapshot.gateway.connection_limit:
        return Refuse(
            rule="total connection limit reached",
            condition="resource-constraint",
            stream_level=True,
        )
    if partner_open >= partner_connection_limit(snapshot, partner):
        return Refuse(
            rule=f"connection limit for partner {partner.domain} reached",
            condition="resource-constraint",
            stream_level=True,
        )
    return None
