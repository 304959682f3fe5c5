"""``S2SConnection``: one server-to-server XML stream, sans I/O (docs/design.md §1).

Theory of operation
-------------------
The driver feeds received bytes with :meth:`receive_data`, drains :meth:`next_event` (what the
driver must know or do) and acts with :meth:`send` (stanzas, the verdict of a dialback
verification, ``db:verify`` on a verification stream, keep-alives, closing). Bytes leave the core
one way: :meth:`data_to_send` returns, in order, everything queued since the last call — the
replies the core makes by itself (our stream header, features, ``<proceed/>``, SASL results,
dialback answers as authoritative server, stream errors), the opening header an initiating
stream queues with :meth:`initiate` and again after TLS in :meth:`tls_established`, and the bytes
of the driver's actions. TLS is run by the driver when the core says
:class:`StartTls`; it then calls :meth:`tls_established` with a function that checks the peer
certificate for a domain.

Dispatch: a top-level element is classified (:func:`classify`), checked against ``ACCEPTS`` for
the role and state (``s2s.states``), then handed to its role's handler in ``_HANDLERS``, a table
checked at import against ``ACCEPTS`` (every kind a role accepts has a handler, no handler waits
for a kind its role never accepts).

Receiving role (the peer connected to us):

1. Header (RFC 6120 §4.7): ``stream`` in ``http://etherx.jabber.org/streams`` with default
   namespace ``jabber:server`` (else ``invalid-namespace``), ``version`` 1.x (else
   ``unsupported-version``), ``to`` one of our domains (``host-unknown``), ``from`` if present a
   valid domain of a partner (``invalid-from`` / ``policy-violation``: there is no default
   partner, docs/spec.md §2). We answer with our header (fresh ``id``) and the features the
   partner's row allows (``policy.engine.inbound_offer``; docs/spec.md §2.2 — without ``from``,
   what some row could use).
2. ``<starttls/>`` (RFC 6120 §5.4.2): ``<proceed/>`` if offered, else ``<failure/>`` and close.
   Bytes after ``<starttls/>`` are refused (the tokenizer halts there; RFC 6120 §5.4.3.3).
3. ``<auth mechanism='EXTERNAL'>`` (RFC 6120 §6.4, XEP-0178 §3): only on TLS, only if offered,
   for the header's ``from``; an authzid other than that domain is ``invalid-authzid``
   (RFC 6120 §6.4.6); the certificate must prove the domain (driver's check, RFC 6125).
   Success restarts the stream (§6.4.6).
4. ``<db:result from=O to=R>key`` (XEP-0220 §2.1.2): ``R`` ours (else dialback error
   ``item-not-found``, §2.4), ``O`` a partner whose row allows dialback on this kind of stream
   (else stream error ``policy-violation``, docs/spec.md §2.2). The driver verifies the key with
   O's authoritative server and answers with :class:`DialbackVerdict`. Several (R, O) pairs may
   be pending or valid on one stream (XEP-0220 §2.4 multiplexing).
5. ``<db:verify from=R to=O id=I>key`` (XEP-0220 §2.2.2, we are authoritative): valid iff the
   key equals our XEP-0185 key for (R, O, I) — any edge sharing the secret issued it.
6. Stanzas (RFC 6120 §8) need an authenticated pair: ``from`` domain authenticated on this
   stream for ``to`` domain, else ``invalid-from`` (docs/spec.md §6.1); ``to`` ours, else
   ``host-unknown``; missing addresses are ``improper-addressing`` (RFC 6120 §8.1.1.1).

Initiating role (we connect to the partner): header ``from`` our domain ``to`` theirs; on
features we take the strongest method the partner's row allows (``outbound_methods``): STARTTLS
if offered and allowed (a partner row requiring TLS fails if it is not offered), then SASL
EXTERNAL with an empty authzid if offered, else dialback with our XEP-0185 key; SASL failure
falls back to TLS dialback when the row allows it. A stream opened with ``authenticate=False``
only negotiates TLS and then carries ``db:verify`` (XEP-0220 §2.2: the receiving server asking
the authoritative one).

Errors: one boundary, :meth:`_fail`: it writes ``<stream:error/>`` (after our header if none
was sent yet, RFC 6120 §4.9.1.2), closes, and queues :class:`StreamClosed`. Tokenizer errors map
to their ``.condition``; the stanzas completed before the error are processed first.
"""

from __future__ import annotations

import base64
import binascii
import secrets
from collections import deque
from collections.abc import Callable

from edgeproxy.names import fast_domain
from edgeproxy.policy import engine
from edgeproxy.policy.model import AuthMethod, Negotiation, Partner
from edgeproxy.policy.snapshot import PolicySnapshot, StreamOffer
from edgeproxy.s2s import wire
from edgeproxy.s2s.events import (
    Authenticated,
    AuthenticationFailed,
    CloseStream,
    DialbackVerdict,
    DialbackVerifyNeeded,
    DialbackVerifyResponse,
    Event,
    KeepAlive,
    PeerCertificateRejected,
    SendStanza,
    StanzaReceived,
    StartTls,
    StreamClosed,
    StreamErrorReceived,
    StreamOpened,
    StreamReady,
    ToPeer,
    VerifyRequest,
)
from edgeproxy.s2s.states import ACCEPTS, Kind, Role, State, unexpected_condition
from edgeproxy.tokenizer import Stanza, StreamClose, StreamOpen, Tokenizer, TokenizerError
from edgeproxy.xmpp.jid import InvalidJid, prepare_domain
from edgeproxy.xmpp.namespaces import (
    NS_DIALBACK,
    NS_DIALBACK_FEATURE,
    NS_SASL,
    NS_SERVER,
    NS_STREAM_ERRORS,
    NS_STREAMS,
    NS_TLS,
)
from edgeproxy.xmpp.stanza import domainpart

#: ``check(domain) -> None`` if the peer certificate is valid for ``domain``, else the reason.
CertificateCheck = Callable[[str], str | None]

_STANZA_NAMES = frozenset(("message", "presence", "iq"))
#: States in which a whitespace keep-alive would break the stream.
_NO_KEEPALIVE = frozenset((State.AWAIT_PROCEED, State.TLS_HANDSHAKE, State.CLOSED))
#: Namespace prefixes a stream header binds when it binds none of its own (RFC 6120 §4.8).
_PLAIN_PREFIXES = frozenset(("", "stream", "db"))
#: Bounded: at most this many dialback pairs pending verification on one stream
#: (docs/design.md §4); the edge passes ``[limits] dialback-per-stream`` (default 8) instead.
MAX_PENDING_DIALBACK = 64
#: Verifications one stream may cause in its whole life, as a multiple of its pending bound: a
#: stream that keeps asking (each request costs a connection to the partner) is closed.
DIALBACK_REQUESTS_PER_PENDING = 4
#: SASL attempts allowed on one stream before it is closed (RFC 6120 §6.4.5 leaves it to us).
MAX_SASL_ATTEMPTS = 2


class LocalProtocolError(Exception):
    """The driver asked for something the stream's state does not allow (a bug, not the peer)."""


def classify(stanza: Stanza) -> Kind:
    """Which kind of top-level element this is (drives the state table)."""
    ns, name = stanza.namespace, stanza.name
    if ns == NS_SERVER:
        return Kind.STANZA if name in _STANZA_NAMES else Kind.OTHER
    if ns == NS_DIALBACK:
        return {"result": Kind.DB_RESULT, "verify": Kind.DB_VERIFY}.get(name, Kind.OTHER)
    if ns == NS_STREAMS:
        return {"features": Kind.FEATURES, "error": Kind.STREAM_ERROR}.get(name, Kind.OTHER)
    if ns == NS_TLS:
        return {
            "starttls": Kind.STARTTLS,
            "proceed": Kind.PROCEED,
            "failure": Kind.TLS_FAILURE,
        }.get(name, Kind.OTHER)
    if ns == NS_SASL:
        return {
            "auth": Kind.SASL_AUTH,
            "success": Kind.SASL_SUCCESS,
            "failure": Kind.SASL_FAILURE,
        }.get(name, Kind.OTHER)
    return Kind.OTHER


_Handler = Callable[["S2SConnection", Stanza], None]


class S2SConnection:
    """One S2S stream in either role; see the module docstring for the protocol."""

    def __init__(
        self,
        role: Role,
        *,
        policy: Callable[[], PolicySnapshot],
        secret: str,
        local_domain: str | None = None,
        remote_domain: str | None = None,
        authenticate: bool = True,
        stream_id_factory: Callable[[], str] = lambda: secrets.token_hex(16),
        max_pending_dialback: int = MAX_PENDING_DIALBACK,
    ) -> None:
        self.role: Role = role
        self.state: State = State.AWAIT_HEADER
        self._handlers: dict[Kind, _Handler] = _HANDLERS[role]
        self._policy: Callable[[], PolicySnapshot] = policy
        self._secret: str = secret
        self._new_id: Callable[[], str] = stream_id_factory
        self._tok: Tokenizer = Tokenizer()
        #: Bytes for the peer, in order, until :meth:`data_to_send` takes them.
        self._out: list[bytes] = []
        self._events: deque[Event] = deque()
        self.tls_active: bool = False
        self.header_sent: bool = False
        #: The peer's stream header bound no prefixes beyond the default namespace, ``stream``
        #: and ``db``: every namespace a stanza uses is then spelled in its own bytes (the
        #: router's ``routing_view`` relies on it).
        self.plain_scope: bool = False
        self.stream_id: str | None = None
        #: Receiving role: the domain in the peer's stream header ``from``.
        self.peer_from: str | None = None
        self.local_domain: str | None = local_domain
        self.remote_domain: str | None = remote_domain
        self._cert_check: CertificateCheck | None = None
        self._cert_reported: bool = False
        #: (local domain, remote domain) pairs authenticated on this stream.
        self.authenticated: set[tuple[str, str]] = set()
        #: Replaced, never mutated: the router reads it for every stanza (no copy per stanza).
        self._remote_domains: frozenset[str] = frozenset()
        #: Receiving role: dialback pairs (receiving, originating) waiting for a verdict.
        self._pending: set[tuple[str, str]] = set()
        #: Repeats of a pending request, answered with its verdict.
        self._pending_repeats: dict[tuple[str, str], int] = {}
        self._max_pending: int = max_pending_dialback
        self._dialback_requests: int = 0
        self._sasl_attempts: int = 0
        #: The partner row of the peer (receiving: of the header's ``from``, if any).
        self._partner: Partner | None = None
        #: Initiating role: authenticate (else a verification-only stream), by which methods.
        self._authenticate: bool = authenticate
        self._methods: tuple[AuthMethod, ...] = ()
        #: Initiating role: the peer's header declared the dialback namespace (XEP-0220 §2.1.1).
        self._dialback_declared: bool = False
        if role is Role.INITIATING:
            if not local_domain or not remote_domain:
                raise ValueError("an initiating stream needs local_domain and remote_domain")
            partner = engine.partner_for_domain(policy(), remote_domain)
            if partner is None:
                raise ValueError(f"{remote_domain} is not a partner (there is no default partner)")
            self._partner = partner
            self._methods = engine.outbound_methods(policy(), partner)

    # -- driver API ---------------------------------------------------------------------------

    def initiate(self) -> None:
        """Initiating role: queue the opening stream header (RFC 6120 §4.7)."""
        if self.role is not Role.INITIATING or self.header_sent:
            raise LocalProtocolError("initiate() is for a fresh initiating stream")
        self._out.append(self._opening_header())

    def receive_data(self, data: bytes) -> None:
        """Feed bytes from the peer (``b""`` means the peer closed the connection)."""
        if self.state is State.CLOSED:
            return
        if self.state is State.TLS_HANDSHAKE:
            self._fail("policy-violation", "data received while TLS should be negotiated")
            return
        if not data:
            self._events.append(StreamClosed(reason="connection closed by peer"))
            self.state = State.CLOSED
            return
        try:
            tokens = self._tok.feed(data)
        except TokenizerError as exc:
            for token in exc.tokens:
                self._dispatch(token)
                if self.state is State.CLOSED:
                    return
            self._fail(exc.condition, str(exc))
            return
        for token in tokens:
            self._dispatch(token)
            if self.state in (State.CLOSED, State.TLS_HANDSHAKE):
                break
        if self._tok.halted and self._tok.trailing_bytes and self.state is not State.CLOSED:
            self._fail("policy-violation", "bytes after a stream restart point (RFC 6120 §5.4.3.3)")

    def data_to_send(self) -> bytes:
        """Every byte for the peer queued since the last call (replies and driver actions)."""
        out = b"".join(self._out)
        self._out.clear()
        return out

    def next_event(self) -> Event | None:
        """The next event, or None when the driver must feed more data."""
        return self._events.popleft() if self._events else None

    def tls_established(self, cert_check: CertificateCheck | None) -> None:
        """The TLS handshake finished; the stream restarts (RFC 6120 §5.4.3.3).

        ``cert_check(domain)`` says whether the peer's certificate proves ``domain`` (None if the
        peer sent none). Initiating: the new stream header is queued for :meth:`data_to_send`.
        """
        if self.state is not State.TLS_HANDSHAKE:
            raise LocalProtocolError("tls_established() without StartTls")
        self._cert_check = cert_check
        self.tls_active = True
        self._restart()
        if self.role is Role.INITIATING:
            self._out.append(self._opening_header())

    def send(self, event: ToPeer) -> None:
        """Queue the bytes of a driver action for :meth:`data_to_send`; raises
        :class:`LocalProtocolError` (queueing nothing) if the stream's state does not allow it."""
        if isinstance(event, SendStanza):
            if self.state is not State.OPEN or (event.from_domain, event.to_domain) not in (
                self.authenticated
            ):
                raise LocalProtocolError(
                    f"stream not authenticated for {event.from_domain} -> {event.to_domain}"
                )
            self._out.append(event.raw)
        elif isinstance(event, KeepAlive):
            # Not between <starttls/> and the TLS handshake's end: no byte may pass there
            # (RFC 6120 §5.4.3.3; a receiving peer refuses bytes after <starttls/>).
            if self.header_sent and self.state not in _NO_KEEPALIVE:
                self._out.append(wire.KEEPALIVE)
        elif isinstance(event, CloseStream):
            self._close(event.condition, event.text, finish=event.finish)
        elif isinstance(event, DialbackVerdict):
            self._verdict(event)
        elif isinstance(event, VerifyRequest):
            if self.role is not Role.INITIATING or self.state is not State.OPEN:
                raise LocalProtocolError("db:verify goes on a ready initiating stream")
            self._out.append(
                wire.db_verify_request(
                    from_=event.receiving,
                    to=event.originating,
                    stream_id=event.stream_id,
                    key=event.key,
                )
            )
        else:
            raise LocalProtocolError(f"cannot send {event!r}")

    @property
    def remote_domains(self) -> frozenset[str]:
        """Remote domains authenticated on this stream (for the policy engine)."""
        return self._remote_domains

    # -- error boundary -----------------------------------------------------------------------

    def _fail(self, condition: str, text: str | None = None) -> None:
        if self.state is State.CLOSED:
            return
        if self.state is State.CLOSING:
            # Our </stream:stream> is already out: nothing may follow it (RFC 6120 §4.4; found
            # by fuzzing). The stream just ends, with the cause in the event.
            self.state = State.CLOSED
            self._events.append(StreamClosed(error=condition, reason=text))
            return
        if not self.header_sent:
            self._send_header(to=self.peer_from, from_=self.local_domain)
        self._out.append(wire.stream_error(condition, text))
        self.state = State.CLOSED
        self._events.append(StreamClosed(error=condition, reason=text))

    def _close(self, condition: str | None, text: str | None, *, finish: bool = False) -> None:
        if self.state is State.CLOSED:
            return
        if condition is not None and not (finish and self.state is not State.CLOSING):
            self._fail(condition, text)
            return
        if not self.header_sent:
            self._send_header(to=self.peer_from, from_=self.local_domain)
        # the error (if any) and our closing tag; then what the peer sent before it read them is
        # still taken until its own closing tag (CLOSING accepts stanzas on a receiving stream)
        self._out.append(wire.stream_error(condition, text) if condition is not None else wire.CLOSE)
        self.state = State.CLOSING

    # -- dispatch -----------------------------------------------------------------------------

    def _dispatch(self, token: StreamOpen | Stanza | StreamClose) -> None:
        if isinstance(token, StreamOpen):
            self.plain_scope = token.namespaces.keys() <= _PLAIN_PREFIXES
            if self.state is not State.AWAIT_HEADER:
                self._fail("invalid-xml", "unexpected stream header")
            elif self.role is Role.RECEIVING:
                self._receiving_header(token)
            else:
                self._initiating_header(token)
            return
        if isinstance(token, StreamClose):
            if self.state is not State.CLOSING:
                self._out.append(wire.CLOSE)
            self.state = State.CLOSED
            self._events.append(StreamClosed(reason="closed by peer"))
            return
        kind = classify(token)
        if kind not in ACCEPTS.get((self.role, self.state), frozenset()):
            self._fail(
                unexpected_condition(kind, bool(self.authenticated)),
                f"<{token.name}/> ({token.namespace}) not allowed in state {self.state.value}",
            )
            return
        self._handlers[kind](self, token)

    def _restart(self) -> None:
        self._tok.reset()
        self.state = State.AWAIT_HEADER
        self.header_sent = False

    def _opening_header(self) -> bytes:
        """Initiating role: our stream header, at the start and at each restart."""
        self.header_sent = True
        return wire.stream_header(from_=self.local_domain, to=self.remote_domain, stream_id=None)

    def _send_header(self, *, to: str | None, from_: str | None) -> None:
        if self.role is Role.RECEIVING and self.stream_id is None:
            self.stream_id = self._new_id()
        self._out.append(
            wire.stream_header(
                from_=from_,
                to=to,
                stream_id=self.stream_id if self.role is Role.RECEIVING else None,
            )
        )
        self.header_sent = True

    def _check_header(self, header: StreamOpen) -> bool:
        # The tokenizer refuses a root other than <stream:stream> (invalid-namespace).
        if header.default_namespace != NS_SERVER:
            self._fail("invalid-namespace", "server-to-server streams use jabber:server")
            return False
        version = header.version
        if version is None or version.partition(".")[0] != "1":
            self._fail("unsupported-version", "edgeproxy speaks XMPP 1.0 streams only")
            return False
        return True

    # -- receiving role -----------------------------------------------------------------------

    def _receiving_header(self, header: StreamOpen) -> None:
        snapshot = self._policy()
        try:
            to = prepare_domain(header.to) if header.to else None
        except InvalidJid:
            self.stream_id = self._new_id()
            self._fail("host-unknown", "the stream 'to' is not a domain")
            return
        self.local_domain = to or (min(snapshot.our_domains) if snapshot.our_domains else None)
        self.stream_id = self._new_id()
        try:
            self.peer_from = prepare_domain(header.from_) if header.from_ else None
        except InvalidJid:
            self._fail("invalid-from", "the stream 'from' is not a domain")
            return
        if not self._check_header(header):
            return
        refused = engine.check_inbound_stream(snapshot, self.peer_from, to)
        if refused is not None:
            self._fail(refused.condition, refused.rule)
            return
        if self.peer_from is not None:
            self._partner = engine.partner_for_domain(snapshot, self.peer_from)
        self._send_header(to=header.from_, from_=self.local_domain)
        self._events.append(
            StreamOpened(to=to, from_=self.peer_from, stream_id=self.stream_id, tls=self.tls_active)
        )
        offer = self._offer(snapshot)
        if not (offer.starttls or offer.sasl_external or offer.dialback) and not self.authenticated:
            reason = "no authentication method of the partner's row is possible on this stream"
            if self._partner is not None and self._cert_check is not None and self.peer_from:
                problem = self._cert_check(self.peer_from)
                if problem:
                    reason = f"certificate not valid for {self.peer_from}: {problem}"
            self._fail("not-authorized", reason)
            return
        self._out.append(
            wire.features(
                starttls=offer.starttls,
                starttls_required=offer.starttls_required,
                sasl_external=offer.sasl_external,
                dialback=offer.dialback,
            )
        )
        self.state = State.OPEN if self.authenticated else State.NEGOTIATING

    def _offer(self, snapshot: PolicySnapshot) -> StreamOffer:
        offer = engine.inbound_offer(snapshot, self._partner, self.tls_active)
        if self.authenticated:
            # After SASL, only dialback for further domain pairs remains (XEP-0220 §2.4).
            return StreamOffer(False, False, False, offer.dialback)
        if offer.sasl_external:
            problem = self._certificate_problem()
            if problem is not None:
                # XEP-0178 §3: EXTERNAL only for a certificate that proves the domain; the stream
                # goes on (TLS dialback where the row allows it) and the cause is reported once.
                offer = StreamOffer(offer.starttls, offer.starttls_required, False, offer.dialback)
        return offer

    def _certificate_problem(self) -> str | None:
        """None if the peer certificate proves the header's ``from``; else the named cause,
        reported once per stream as :class:`PeerCertificateRejected`."""
        domain = self.peer_from
        if domain is None:
            problem = "no stream 'from': no domain for the certificate to prove"
        elif self._cert_check is None:
            problem = "no certificate: the peer presented none"
        else:
            problem = self._cert_check(domain)
        if problem is not None and not self._cert_reported:
            self._cert_reported = True
            self._events.append(PeerCertificateRejected(domain or "", problem))
        return problem

    def _on_starttls(self, _token: Stanza) -> None:
        offer = self._offer(self._policy())
        if self.tls_active or not offer.starttls:
            self._out.append(wire.TLS_FAILURE + wire.CLOSE)
            self.state = State.CLOSED
            self._events.append(StreamClosed(error="tls-failure", reason="STARTTLS not offered"))
            return
        if self._tok.trailing_bytes:
            return  # receive_data refuses the trailing bytes
        self._out.append(wire.PROCEED)
        self.state = State.TLS_HANDSHAKE
        self._events.append(StartTls(server_side=True))

    def _on_sasl_auth(self, token: Stanza) -> None:
        element = token.element()
        snapshot = self._policy()
        self._sasl_attempts += 1
        if self._sasl_attempts > MAX_SASL_ATTEMPTS:
            self._fail("policy-violation", "too many SASL attempts")
            return
        domain = self.peer_from
        if element.get("mechanism") != "EXTERNAL":
            self._out.append(wire.sasl_failure("invalid-mechanism"))
            return
        if not self.tls_active or self._partner is None or domain is None:
            self._fail("policy-violation", "SASL EXTERNAL needs TLS and a stream 'from' partner")
            return
        if not engine.auth_method_allowed(snapshot, self._partner, AuthMethod.SASL_OVER_TLS, True):
            self._fail("policy-violation", f"SASL is not allowed for partner {self._partner.domain}")
            return
        text = element.text.strip()
        authzid: str | None = None
        if text and text != "=":
            try:
                authzid = base64.b64decode(text, validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                self._out.append(wire.sasl_failure("incorrect-encoding"))
                return
        if authzid:
            try:
                same = prepare_domain(authzid) == domain
            except InvalidJid:
                same = False
            if not same:
                self._out.append(wire.sasl_failure("invalid-authzid"))
                return
        if self._certificate_problem() is not None:
            self._out.append(wire.sasl_failure("not-authorized"))
            return
        self._out.append(wire.SASL_SUCCESS)
        assert self.local_domain is not None
        self._authenticate_pair(self.local_domain, domain, AuthMethod.SASL_OVER_TLS)
        self._restart()

    def _authenticate_pair(self, local: str, remote: str, method: AuthMethod) -> None:
        self.authenticated.add((local, remote))
        self._remote_domains = self._remote_domains | {remote}
        self._events.append(Authenticated(local_domain=local, remote_domain=remote, method=method))

    def _on_db_result_request(self, token: Stanza) -> None:
        snapshot = self._policy()
        try:
            originating = prepare_domain(token.from_ or "")
            receiving = prepare_domain(token.to or "")
        except InvalidJid:
            self._fail("improper-addressing", "db:result needs valid 'from' and 'to'")
            return
        if token.type is not None:
            self._fail("policy-violation", "db:result with a type on a receiving stream")
            return
        if receiving not in snapshot.our_domains:
            self._out.append(
                wire.db_result_response(
                    from_=receiving, to=originating, valid=False, error="item-not-found"
                )
            )
            return
        partner = engine.partner_for_domain(snapshot, originating)
        if partner is None:
            self._fail(
                "policy-violation", f"{originating} is not a partner (there is no default partner)"
            )
            return
        # Another partner's domain than the header's is allowed (XEP-0220), judged on its row.
        method = AuthMethod.TLS_DIALBACK if self.tls_active else AuthMethod.TCP_DIALBACK
        if not engine.auth_method_allowed(snapshot, partner, method, self.tls_active):
            needs_tls = not self.tls_active and partner.tls is Negotiation.REQUIRED
            reason = "TLS is required before dialback" if needs_tls else f"{method} not allowed"
            self._fail("policy-violation", f"partner {partner.domain}: {reason}")
            return
        pair = (receiving, originating)
        if pair in self._pending:
            # A repeat of a request still being verified starts nothing (else one stream
            # repeating db:result would open a connection per repeat); the verdict on the first
            # answers it too (fewer bytes out than the repeats brought in).
            self._pending_repeats[pair] = self._pending_repeats.get(pair, 0) + 1
            return
        if pair in self.authenticated:
            # Already proven on this stream: answered at once, nothing to verify again.
            self._out.append(wire.db_result_response(from_=receiving, to=originating, valid=True))
            return
        if len(self._pending) >= self._max_pending:
            self._fail("resource-constraint", "too many pending dialback requests")
            return
        self._dialback_requests += 1
        if self._dialback_requests > self._max_pending * DIALBACK_REQUESTS_PER_PENDING:
            self._fail("policy-violation", "too many dialback requests on one stream")
            return
        self._pending.add(pair)
        self._events.append(
            DialbackVerifyNeeded(
                originating=originating,
                receiving=receiving,
                stream_id=self.stream_id or "",
                key=token.element().text.strip(),
            )
        )

    def _verdict(self, verdict: DialbackVerdict) -> None:
        pair = (verdict.receiving, verdict.originating)
        if self.role is not Role.RECEIVING or pair not in self._pending:
            raise LocalProtocolError(f"no dialback request pending for {pair}")
        self._pending.discard(pair)
        repeats = self._pending_repeats.pop(pair, 0)
        if self.state is State.CLOSED:
            return
        self._out.append(
            wire.db_result_response(
                from_=verdict.receiving,
                to=verdict.originating,
                valid=verdict.valid,
                error=verdict.error,
            )
            * (1 + repeats)
        )
        if verdict.valid and verdict.error is None:
            method = AuthMethod.TLS_DIALBACK if self.tls_active else AuthMethod.TCP_DIALBACK
            self._authenticate_pair(verdict.receiving, verdict.originating, method)
            if self.state is State.NEGOTIATING:
                self.state = State.OPEN
        elif not self.authenticated and not self._pending and verdict.error is None:
            # XEP-0220 §2.1.3: an invalid key ends a stream that has nothing else to carry.
            self._fail("not-authorized", f"dialback key for {verdict.originating} is invalid")

    def _on_db_verify(self, token: Stanza) -> None:
        if token.type is not None:
            self._on_db_verify_answer(token)
            return
        snapshot = self._policy()
        try:
            receiving = prepare_domain(token.from_ or "")
            originating = prepare_domain(token.to or "")
        except InvalidJid:
            self._fail("improper-addressing", "db:verify needs valid 'from' and 'to'")
            return
        stream_id = token.id or ""
        if originating not in snapshot.our_domains:
            self._out.append(
                wire.db_verify_response(
                    from_=originating,
                    to=receiving,
                    stream_id=stream_id,
                    valid=False,
                    error="item-not-found",
                )
            )
            return
        expected = wire.dialback_key(self._secret, receiving, originating, stream_id)
        valid = bool(stream_id) and wire.keys_equal(expected, token.element().text.strip())
        self._out.append(
            wire.db_verify_response(
                from_=originating, to=receiving, stream_id=stream_id, valid=valid
            )
        )

    def _on_stanza(self, token: Stanza) -> None:
        if not self.authenticated:  # NEGOTIATING and CLOSING accept stanzas before authentication
            self._fail("not-authorized", "stanza before authentication")
            return
        # folded domainparts (hot path: no full RFC 7622 preparation); "" when absent or invalid
        from_domain = fast_domain(domainpart(token.from_ or ""))
        to_domain = fast_domain(domainpart(token.to or ""))
        if not from_domain or not to_domain:
            self._fail("improper-addressing", "s2s stanzas need 'from' and 'to'")
            return
        if (to_domain, from_domain) in self.authenticated:
            self._events.append(StanzaReceived(token, from_domain, to_domain))
            return
        if from_domain in self._remote_domains and to_domain not in self._policy().our_domains:
            self._fail("host-unknown", f"{to_domain} is not served here")
            return
        self._fail("invalid-from", f"{from_domain} is not authenticated on this stream for {to_domain}")

    def _on_stream_error(self, token: Stanza) -> None:
        element = token.element()
        condition, text = "undefined-condition", None
        for child in element.elements():
            if child.namespace == NS_STREAM_ERRORS:
                if child.name == "text":
                    text = child.text
                else:
                    condition = child.name
        self._events.append(StreamErrorReceived(condition, text))
        if self.state is not State.CLOSING:
            self._out.append(wire.CLOSE)
        self.state = State.CLOSED
        self._events.append(StreamClosed(reason=f"peer sent stream error {condition}"))

    # -- initiating role ----------------------------------------------------------------------

    def _initiating_header(self, header: StreamOpen) -> None:
        if not self._check_header(header):
            return
        if not header.id:
            self._fail("invalid-xml", "the receiving server's header has no id (RFC 6120 §4.7.3)")
            return
        self.stream_id = header.id
        self.state = State.AWAIT_FEATURES
        self._dialback_declared = NS_DIALBACK in header.namespaces.values()
        self._events.append(
            StreamOpened(to=header.to, from_=header.from_, stream_id=header.id, tls=self.tls_active)
        )

    def _on_features(self, token: Stanza) -> None:
        assert self._partner is not None
        element = token.element()
        starttls = element.find("starttls", NS_TLS)
        mechanisms = element.find("mechanisms", NS_SASL)
        external = mechanisms is not None and any(
            m.text.strip() == "EXTERNAL" for m in mechanisms.findall("mechanism", NS_SASL)
        )
        dialback = (
            element.find("dialback", NS_DIALBACK_FEATURE) is not None or self._dialback_declared
        )
        if self.authenticated:
            self.state = State.OPEN
            self._events.append(StreamReady(authenticated=True))
            return
        if not self.tls_active:
            tls_allowed = self._partner.tls is not Negotiation.NOT_SUPPORTED
            if starttls is not None and tls_allowed:
                self._out.append(wire.STARTTLS)
                self.state = State.AWAIT_PROCEED
                return
            if self._partner.tls is Negotiation.REQUIRED:
                self._give_up("partner row requires TLS; the peer does not offer STARTTLS")
                return
            if starttls is not None and starttls.find("required", NS_TLS) is not None:
                self._give_up("the peer requires TLS; the partner row does not support it")
                return
        if not self._authenticate:
            self.state = State.OPEN
            self._events.append(StreamReady(authenticated=False))
            return
        if self.tls_active and AuthMethod.SASL_OVER_TLS in self._methods and external:
            # XEP-0178 §3 / RFC 6125: authenticate ourselves with EXTERNAL only to a peer whose
            # certificate proves the partner domain. Otherwise TLS dialback where the row allows
            # it (TLS then only encrypts; trust rests on dialback, XEP-0220), else give up.
            assert self.remote_domain is not None
            problem = self._cert_check(self.remote_domain) if self._cert_check else (
                "no certificate: the peer presented none"
            )
            if problem is None:
                self._out.append(wire.sasl_auth_external(None))
                self.state = State.AWAIT_SASL_RESULT
                return
            self._events.append(PeerCertificateRejected(self.remote_domain, problem))
            if AuthMethod.TLS_DIALBACK not in self._methods:
                self._give_up(f"peer certificate rejected, SASL EXTERNAL not attempted: {problem}")
                return
        self._try_dialback(dialback)

    def _try_dialback(self, offered: bool) -> None:
        method = AuthMethod.TLS_DIALBACK if self.tls_active else AuthMethod.TCP_DIALBACK
        if method not in self._methods:
            self._give_up(f"no allowed method is offered ({', '.join(self._methods) or 'none'})")
            return
        if not offered:
            self._give_up("the peer offers no dialback")
            return
        assert self.local_domain and self.remote_domain and self.stream_id
        key = wire.dialback_key(self._secret, self.remote_domain, self.local_domain, self.stream_id)
        self._out.append(
            wire.db_result_request(from_=self.local_domain, to=self.remote_domain, key=key)
        )
        self.state = State.AWAIT_DIALBACK

    def _give_up(self, reason: str) -> None:
        assert self.local_domain and self.remote_domain
        self._events.append(AuthenticationFailed(self.local_domain, self.remote_domain, reason))
        self._fail("policy-violation", reason)

    def _on_proceed(self, _token: Stanza) -> None:
        if self._tok.trailing_bytes:
            return  # receive_data refuses them
        self.state = State.TLS_HANDSHAKE
        self._events.append(StartTls(server_side=False))

    def _on_tls_failure(self, _token: Stanza) -> None:
        assert self.local_domain and self.remote_domain
        self._events.append(
            AuthenticationFailed(self.local_domain, self.remote_domain, "the peer refused TLS")
        )
        self.state = State.CLOSED
        self._events.append(StreamClosed(reason="TLS failure"))

    def _on_sasl_success(self, _token: Stanza) -> None:
        assert self.local_domain and self.remote_domain
        if self._tok.trailing_bytes:
            return
        self._authenticate_pair(self.local_domain, self.remote_domain, AuthMethod.SASL_OVER_TLS)
        self._restart()
        self._out.append(self._opening_header())

    def _on_sasl_failure(self, token: Stanza) -> None:
        if AuthMethod.TLS_DIALBACK in self._methods:
            self._try_dialback(True)
            return
        conditions = [c.name for c in token.element().elements()]
        self._give_up(f"SASL EXTERNAL refused ({', '.join(conditions) or 'no condition'})")

    def _on_db_result_answer(self, token: Stanza) -> None:
        assert self.local_domain and self.remote_domain
        if self.state is not State.AWAIT_DIALBACK:
            self._fail("policy-violation", "unexpected db:result")
            return
        if token.type == "valid":
            method = AuthMethod.TLS_DIALBACK if self.tls_active else AuthMethod.TCP_DIALBACK
            self._authenticate_pair(self.local_domain, self.remote_domain, method)
            self.state = State.OPEN
            self._events.append(StreamReady(authenticated=True))
            return
        element = token.element()
        error = element.find("error")
        detail = error.elements()[0].name if error is not None and error.elements() else token.type
        self._events.append(
            AuthenticationFailed(self.local_domain, self.remote_domain, f"dialback {detail}")
        )
        self._close_after_failure()

    def _close_after_failure(self) -> None:
        self._out.append(wire.CLOSE)
        self.state = State.CLOSING

    def _on_db_verify_answer(self, token: Stanza) -> None:
        error = None
        if token.type == "error":
            err = token.element().find("error")
            error = err.elements()[0].name if err is not None and err.elements() else "undefined"
        self._events.append(
            DialbackVerifyResponse(
                originating=fast_domain(token.from_ or ""),
                receiving=fast_domain(token.to or ""),
                stream_id=token.id or "",
                valid=token.type == "valid",
                error=error,
            )
        )


def _checked(tables: dict[Role, dict[Kind, _Handler]]) -> dict[Role, dict[Kind, _Handler]]:
    """The handler tables, if they match ``ACCEPTS`` exactly (else the import fails)."""
    if tables.keys() != set(Role):
        raise TypeError(f"handler tables for {set(tables)}, not for every role")
    for role, table in tables.items():
        accepted = set().union(*(kinds for (r, _), kinds in ACCEPTS.items() if r is role))
        if accepted != table.keys():
            raise TypeError(
                f"{role} handlers do not match ACCEPTS: missing {accepted - table.keys()},"
                f" never reached {table.keys() - accepted}"
            )
    return tables


#: The handler of each kind of element, per role (``_dispatch`` calls it once ``ACCEPTS`` allows
#: the element in the current state).
_HANDLERS: dict[Role, dict[Kind, _Handler]] = _checked(
    {
        Role.RECEIVING: {
            Kind.STARTTLS: S2SConnection._on_starttls,
            Kind.SASL_AUTH: S2SConnection._on_sasl_auth,
            Kind.DB_RESULT: S2SConnection._on_db_result_request,
            Kind.DB_VERIFY: S2SConnection._on_db_verify,
            Kind.STANZA: S2SConnection._on_stanza,
            Kind.STREAM_ERROR: S2SConnection._on_stream_error,
        },
        Role.INITIATING: {
            Kind.FEATURES: S2SConnection._on_features,
            Kind.PROCEED: S2SConnection._on_proceed,
            Kind.TLS_FAILURE: S2SConnection._on_tls_failure,
            Kind.SASL_SUCCESS: S2SConnection._on_sasl_success,
            Kind.SASL_FAILURE: S2SConnection._on_sasl_failure,
            Kind.DB_RESULT: S2SConnection._on_db_result_answer,
            Kind.DB_VERIFY: S2SConnection._on_db_verify,
            Kind.STREAM_ERROR: S2SConnection._on_stream_error,
        },
    }
)
