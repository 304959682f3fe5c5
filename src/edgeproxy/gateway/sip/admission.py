"""Who may send the gateway a SIP request: digest, sender identity, the next hop (issue 14), sans-IO.

Theory of operation
-------------------
Every new request the transport reads (not a retransmission: its transaction answers that) is
put to :meth:`Admission.admit` before anything acts on it — the registrar, the proxy, the
presence agent, the XMPP side. The answer is :class:`Admitted` with the identity the request may
act as, or the response that refuses it.

With ``[gateway] next-hop`` (an existing SIP server, e.g. Kamailio, in front of the users)
    The next hop authenticated its users; the gateway trusts it as Lync trusts only its own
    pool: a request from the next hop's address (``next_hop_hosts``; over TLS with a verified
    client certificate when the next hop is ``;transport=tls``) is admitted with no digest, as
    its From; a request from any other address gets ``403 Only The Next Hop``.

Without a next hop (the built-in registrar)
    1. The From must be a user of our SIP domains: nobody else has an account here, and the
       gateway sends requests to users, never receives them from elsewhere (403 otherwise).
    2. An in-dialog request (To tag) of a dialog created by an authenticated request
       (``dialog_owner``: the presence agent's SUBSCRIBE dialogs) from that dialog's user is
       admitted as that user (RFC 3261 §22.1 leaves it to the server; a refresh or
       un-SUBSCRIBE then needs no new challenge).
    3. Otherwise digest (``digest.py``): REGISTER is challenged with 401 and
       ``WWW-Authenticate`` (§22.1, we are the registrar), every other method with 407 and
       ``Proxy-Authenticate`` (§22.3, we are our users' proxy). The realm is the From's domain;
       the challenge offers the algorithms the user has credentials for (SHA-256 first,
       RFC 8760 §2.4) — all of them for an unknown user. Offering only the user's own matters:
       UAs that take the first challenge whatever its algorithm (SIPp 3.6, baresip 1.0 /
       libre 1.1 know only MD5) can then authenticate a user who has only an MD5 credential.
    4. A user who exists but has no credential at all cannot register or send:
       ``403 Password Not Set`` (``edgeproxy user set-password`` sets one).
    5. Wrong password or unknown user: **403 Forbidden**, not a repeated 401/407. RFC 3261
       §22.4 lets the UAC re-prompt on a repeated challenge, which automated UAs turn into a
       loop; §21.4.4 403 says "authorization will not help", which is true of the same
       password. A stale nonce or a replayed nonce count gets a fresh challenge with
       ``stale=true`` (the right password then succeeds without the user).
    6. Sender identity: the authenticated user must be the From (403 ``From Is Not The
       Authenticated User``), and for REGISTER also the To (§10.3 step 3: third-party
       registration is not authorized).

Credentials come from the policy snapshot (``User.credentials``, HA1 hashes only) through the
``users`` lookup: AoR → the user's credentials, or None for no such user.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from edgeproxy.gateway.sip import digest
from edgeproxy.gateway.sip.message import SipParseError, SipRequest, SipResponse, response_to
from edgeproxy.gateway.sip.uri import SipUri, parse_name_addr
from edgeproxy.policy.model import SipCredential

#: AoR (``sip:user@domain``) → the user's digest credentials; None: no such user.
UserLookup = Callable[[str], "tuple[SipCredential, ...] | None"]
#: An in-dialog request → the AoR of the user who created its dialog (authenticated), or None.
DialogOwner = Callable[[SipRequest], "str | None"]


@dataclass(frozen=True, slots=True)
class Admitted:
    """The request may go on, acting as ``identity`` (the From's AoR); ``how`` it was proven:
    ``digest``, ``dialog`` or ``next-hop``."""

    identity: str
    how: str


@dataclass(frozen=True, slots=True)
class Peer:
    """Where a request came from: the source address, the transport, and for TLS whether the
    client presented a certificate that verified for ``certificate_for``."""

    host: str
    transport: str = "udp"
    certificate_names: frozenset[str] = frozenset()


class Admission:
    """Decides every new request (see the module docstring)."""

    def __init__(
        self,
        domains: Iterable[str],
        users: UserLookup,
        *,
        authenticator: digest.DigestAuthenticator | None = None,
        next_hop_hosts: frozenset[str] | None = None,
        next_hop_tls_name: str | None = None,
        dialog_owner: DialogOwner | None = None,
    ) -> None:
        self.domains = frozenset(d.lower() for d in domains)
        self.users = users
        self.authenticator = authenticator or digest.DigestAuthenticator()
        #: None: no next hop (built-in registrar); else the addresses requests must come from.
        self.next_hop_hosts = next_hop_hosts
        #: With a ``;transport=tls`` next hop: the name its client certificate must carry.
        self.next_hop_tls_name = next_hop_tls_name
        self.dialog_owner = dialog_owner
        self.counts = {"digest": 0, "dialog": 0, "next-hop": 0, "challenged": 0, "refused": 0}

    def set_next_hop_hosts(self, hosts: frozenset[str]) -> None:
        """The next hop's addresses, once its name is resolved: run-time data (the gateway
        service resolves it when it starts, after building this admission)."""
        self.next_hop_hosts = hosts

    def admit(self, request: SipRequest, peer: Peer, now: float) -> Admitted | SipResponse:
        """:class:`Admitted`, or the response that refuses ``request`` (401/407/403/400).
        Raises :class:`SipParseError` for a From the parser cannot read (answered 400)."""
        verdict = self._admit(request, peer, now)
        if isinstance(verdict, Admitted):
            self.counts[verdict.how] += 1
        elif verdict.status in (401, 407):
            self.counts["challenged"] += 1
        else:
            self.counts["refused"] += 1
        return verdict

    def _admit(self, request: SipRequest, peer: Peer, now: float) -> Admitted | SipResponse:
        from_uri = parse_name_addr(request.headers.get("From") or "").uri
        if self.next_hop_hosts is not None:
            if peer.host not in self.next_hop_hosts or not self._next_hop_tls(peer):
                return self._refuse(request, 403, "Only The Next Hop")
            return Admitted(from_uri.aor, "next-hop")
        if from_uri.user is None or from_uri.host.lower() not in self.domains:
            return self._refuse(request, 403, "Not A User Of This Domain")
        aor = from_uri.aor
        if self.dialog_owner is not None and _to_tag(request):
            owner = self.dialog_owner(request)
            if owner is not None and owner == aor:
                return Admitted(aor, "dialog")
        return self._digest(request, peer, now, from_uri)

    def _next_hop_tls(self, peer: Peer) -> bool:
        if self.next_hop_tls_name is None:
            return True
        return peer.transport == "tls" and self.next_hop_tls_name.lower() in peer.certificate_names

    def _digest(
        self, request: SipRequest, peer: Peer, now: float, from_uri: SipUri
    ) -> Admitted | SipResponse:
        register = request.method == "REGISTER"
        realm = from_uri.host.lower()
        header = "Authorization" if register else "Proxy-Authorization"
        credentials = self.users(from_uri.aor)
        offered = _algorithms(credentials, realm)
        answer: digest.Credentials | None = None
        for value in request.headers.get_all(header):
            try:
                parsed = digest.parse_credentials(value)
            except digest.DigestError as exc:
                raise SipParseError(f"{header}: {exc}") from None
            if parsed.realm == realm:
                answer = parsed
                break
        if answer is None:
            return self._challenge(request, peer, now, realm, offered)
        user = f"sip:{answer.username}@{realm}"
        stored = credentials if user == from_uri.aor else self.users(user)
        if stored is not None and not stored:
            return self._refuse(request, 403, "Password Not Set")
        ha1 = next(
            (c.ha1 for c in stored or () if c.algorithm == answer.algorithm and c.realm == realm),
            None,
        )
        verdict = self.authenticator.verify(
            answer,
            method=request.method,
            request_uri=request.uri,
            realm=realm,
            ha1=ha1,
            now=now,
            source=peer.host,
        )
        if isinstance(verdict, digest.Challenge):
            return self._challenge(request, peer, now, realm, offered, stale=verdict.stale)
        if isinstance(verdict, digest.Refused):
            return self._refuse(request, verdict.status, verdict.reason)
        identity = f"sip:{verdict.username}@{verdict.realm}"
        if identity != from_uri.aor:
            return self._refuse(request, 403, "From Is Not The Authenticated User")
        if register:
            to_uri = parse_name_addr(request.headers.get("To") or "").uri
            if to_uri.aor != identity:
                return self._refuse(request, 403, "To Is Not The Authenticated User")
        return Admitted(identity, "digest")

    def _challenge(
        self,
        request: SipRequest,
        peer: Peer,
        now: float,
        realm: str,
        algorithms: tuple[str, ...],
        *,
        stale: bool = False,
    ) -> SipResponse:
        register = request.method == "REGISTER"
        response = response_to(request, 401 if register else 407, to_tag="auth")
        name = "WWW-Authenticate" if register else "Proxy-Authenticate"
        for value in self.authenticator.challenges(
            realm, now, peer.host, stale=stale, algorithms=algorithms
        ):
            response.headers.add(name, value)
        return response

    @staticmethod
    def _refuse(request: SipRequest, status: int, reason: str) -> SipResponse:
        return response_to(request, status, reason, to_tag="auth")


def _algorithms(credentials: tuple[SipCredential, ...] | None, realm: str) -> tuple[str, ...]:
    """The algorithms to offer: the user's own in ``realm`` (all when there are none, so that an
    unknown user and a user without a password are challenged like any other)."""
    if credentials:
        own = {c.algorithm for c in credentials if c.realm == realm}
        if own:
            return tuple(a for a in digest.ALGORITHMS if a in own)
    return digest.ALGORITHMS


def _to_tag(request: SipRequest) -> str | None:
    value = request.headers.get("To") or ""
    if "tag" not in value.lower():
        return None  # no tag parameter (the usual out-of-dialog request): nothing to parse
    try:
        return parse_name_addr(value).tag
    except SipParseError:
        return None


def users_from_snapshot(snapshot_users: Callable[[], dict[str, object]]) -> UserLookup:
    """A :data:`UserLookup` over a policy snapshot's users (bare JID → ``UserEntry``)."""

    def lookup(aor: str) -> tuple[SipCredential, ...] | None:
        entry = snapshot_users().get(aor[4:] if aor.startswith("sip:") else aor)
        if entry is None:
            return None
        return entry.user.credentials  # type: ignore[attr-defined]

    return lookup
