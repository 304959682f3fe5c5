"""Simulated partner servers: initiating S2S streams towards the target and the authoritative
listener that answers for the simulated domains. Both run the library's sans-IO
:class:`~edgeproxy.s2s.S2SConnection` with a lean trio driver (no timers: a run is short and
bounded by the runner).

Theory of operation
-------------------
* The harness is, for the simulated domains, an ordinary server: its own policy snapshot says
  "our domains are the simulated ones, the target's domain is a partner" whose row is the
  scenario's security mode (:data:`OUTBOUND_ROWS`: row 17 TCP dialback, row 13 STARTTLS +
  dialback, row 2 STARTTLS + SASL EXTERNAL), so the core can only negotiate that mode; all
  streams share one dialback secret.
* :func:`open_stream` connects, sends the header, and lets the core negotiate: on
  :class:`~edgeproxy.s2s.StartTls` it runs the TLS handshake as client (RFC 6120 §5.4.3.3, the
  domain's certificate as client certificate) and hands the core the peer-certificate check of
  :mod:`edgeproxy.certs.peer`; then SASL EXTERNAL (XEP-0178 §3, only to a target whose certificate
  proves its domain under ``partners.trust``) or dialback (XEP-0220 §2.1.1). It returns once
  :class:`~edgeproxy.s2s.StreamReady` says the pair is authenticated, with the set-up time
  split into TCP connect, TLS handshake and the rest, or raises :class:`StreamSetupError`
  naming the cause.
* The target checks our key by connecting back to the simulated domain (SRV/A records point at
  :class:`PartnerListener`) with ``db:verify``; the receiving core answers it (XEP-0220 §2.2.2).
  In the TLS modes the listener's row for the target is "TLS optional, SASL optional, dialback"
  (row 9) and it has the domain's certificate (chosen by the stream header's ``to``), so a target
  whose verification or reply stream requires TLS (Prosody with ``s2s_require_encryption``) or
  authenticates with SASL EXTERNAL (``s2s_secure_auth``) gets what it wants.
* The target delivers replies (echoes, error bounces, iq results) over its own stream to us; the
  listener trusts the target's dialback key without checking it (a load generator is not a
  security boundary: say so, never deploy it as a server) and reports every stanza with a harness
  id to the ledger: ``type='error'`` is a bounce, anything else an echo (delivered).
"""

from __future__ import annotations

import collections
import logging
import re
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from edgeproxy.certs.peer import peer_certificate_check
from edgeproxy.loadtest.accounting import ID_PATTERN, Ledger
from edgeproxy.loadtest.partner_tls import PartnerTls
from edgeproxy.loadtest.scenario import Scenario, Security
from edgeproxy.policy.model import (
    AccessPolicy,
    Configuration,
    GatewaySettings,
    Negotiation,
    Partner,
    PartnerType,
)
from edgeproxy.policy.snapshot import PolicySnapshot, build_snapshot
from edgeproxy.s2s import (
    Authenticated,
    AuthenticationFailed,
    CloseStream,
    DialbackVerdict,
    DialbackVerifyNeeded,
    PeerCertificateRejected,
    Role,
    S2SConnection,
    SendStanza,
    StanzaReceived,
    StartTls,
    State,
    StreamClosed,
    StreamErrorReceived,
    StreamReady,
)

log = logging.getLogger("edgeproxy.loadtest")
MAX_READ = 65536
#: A TLS handshake must finish within this (seconds), like the edge's own (net.session).
TLS_HANDSHAKE_TIMEOUT = 30.0
#: Inbound notes (certificate verdicts, errors) kept for the result (the counts stay exact).
MAX_NOTES = 50

#: Our answers to ``db:verify`` as the simulated domains' authoritative server (XEP-0220 §2.2.2),
#: found in the few bytes the listener's core writes (never in the target's traffic).
_VERIFY_ANSWER = re.compile(rb"<db:verify[^>]*type='(valid|invalid|error)'")

#: The defined condition of a stanza error (RFC 6120 §8.3.2: the first child of ``<error/>`` in
#: the stanzas namespace), found in a bounce's raw bytes.
_ERROR_CONDITION = re.compile(
    rb"<error\b[^>]*>\s*(?:<text\b[^>]*>[^<]*</text>\s*)?<([a-z-]+)\s+xmlns=['\"]urn:ietf:params:xml:ns:xmpp-stanzas['\"]"
)


def error_condition(raw: bytes) -> str | None:
    """The stanza error condition in ``raw`` (``service-unavailable``…), None if it names none."""
    match = _ERROR_CONDITION.search(raw)
    return match.group(1).decode() if match else None


_REQ, _OPT, _NOS = Negotiation.REQUIRED, Negotiation.OPTIONAL, Negotiation.NOT_SUPPORTED
#: The harness' row for the target per security mode (TLS, SASL, dialback).
OUTBOUND_ROWS: dict[Security, tuple[Negotiation, Negotiation, bool]] = {
    Security.PLAIN: (_NOS, _NOS, True),  # row 17: TCP dialback
    Security.STARTTLS_DIALBACK: (_REQ, _NOS, True),  # row 13: TLS dialback
    Security.STARTTLS_SASL: (_REQ, _REQ, False),  # row 2: SASL over TLS only
}
#: The partner listener's row: whatever the target chooses on its streams to us (row 9 once we
#: have certificates; row 17 in plain mode, where the listener has no TLS).
LISTENER_ROW_TLS = (_OPT, _OPT, True)


class StreamSetupError(Exception):
    """A simulated stream could not be authenticated."""


def partner_snapshot(
    scenario: Scenario, row: tuple[Negotiation, Negotiation, bool] | None = None
) -> PolicySnapshot:
    """The simulated servers' own policy: the target's domain is a partner with ``row``
    (default: the scenario's security mode, :data:`OUTBOUND_ROWS`)."""
    tls, sasl, dialback = row or OUTBOUND_ROWS[scenario.partners.security]
    row_ = Partner(
        domain=scenario.target.domain,
        type=PartnerType.FEDERATED,
        tls=tls,
        sasl=sasl,
        dialback=dialback,
        keepalive=False,
    )
    config = Configuration(
        gateway=GatewaySettings(dialback_secret=scenario.partners.secret),
        partners=(row_,),
        policies=(AccessPolicy(identity="global", xmpp=True, federation=True),),
    )
    return build_snapshot(config, scenario.partners.domain_names())


def listener_snapshot(scenario: Scenario) -> PolicySnapshot:
    """The partner listener's policy (see :data:`LISTENER_ROW_TLS`)."""
    if scenario.partners.security.tls:
        return partner_snapshot(scenario, LISTENER_ROW_TLS)
    return partner_snapshot(scenario, OUTBOUND_ROWS[Security.PLAIN])


async def _tls_handshake(
    transport: trio.abc.Stream, ctx: ssl.SSLContext, *, server_side: bool, sni: str | None
) -> trio.SSLStream[trio.abc.Stream]:
    """STARTTLS proper (RFC 6120 §5.4.3.3); handshake failures become :class:`StreamSetupError`."""
    tls = trio.SSLStream(transport, ctx, server_side=server_side, server_hostname=sni)
    try:
        with trio.fail_after(TLS_HANDSHAKE_TIMEOUT):
            await tls.do_handshake()
    except (ssl.SSLError, trio.BrokenResourceError) as exc:
        cause = exc.__cause__ if isinstance(exc, trio.BrokenResourceError) and exc.__cause__ else exc
        raise StreamSetupError(f"TLS handshake failed: {cause!r}") from exc
    return tls


@dataclass
class OutboundStream:
    """One authenticated initiating stream from ``local`` to ``remote``, with its set-up record:
    total time to authentication, of which TCP connect and TLS handshake; the TLS version
    (None: plain TCP) and the authentication method the core used."""

    local: str
    remote: str
    conn: S2SConnection
    transport: trio.abc.Stream
    setup_seconds: float
    connect_seconds: float = 0.0
    tls_seconds: float | None = None
    tls_version: str | None = None
    auth_method: str | None = None
    errors: list[str] = field(default_factory=list)
    closed: trio.Event = field(default_factory=trio.Event)
    #: One writer at a time: the traffic writer and the reader (which answers what the server
    #: sends, e.g. a stream's close while stanzas are being written) share the stream.
    sending: trio.Lock = field(default_factory=trio.Lock)

    async def send_raw(self, data: bytes) -> None:
        async with self.sending:
            await self.transport.send_all(data)

    def frame(self, raw: bytes) -> bytes:
        """The bytes for one stanza (checked by the core: the pair must be authenticated)."""
        self.conn.send(SendStanza(raw, self.local, self.remote))
        return self.conn.data_to_send()

    async def read_until_closed(self) -> None:
        """Keep reading (keep-alives, stream errors) until the stream ends."""
        try:
            while self.conn.state is not State.CLOSED:
                data = await self.transport.receive_some(MAX_READ)
                self.conn.receive_data(data)
                if out := self.conn.data_to_send():
                    async with self.sending:
                        await self.transport.send_all(out)
                while (event := self.conn.next_event()) is not None:
                    if isinstance(event, StreamErrorReceived):
                        self.errors.append(f"stream error {event.condition}: {event.text}")
                if not data:
                    break
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self.errors.append(f"transport: {exc!r}")
        finally:
            self.closed.set()

    async def aclose(self, grace: float = 2.0) -> None:
        """Close politely (``</stream:stream>``), give the peer ``grace`` s, then drop it."""
        try:
            self.conn.send(CloseStream())
            if data := self.conn.data_to_send():
                async with self.sending:
                    await self.transport.send_all(data)
            with trio.move_on_after(grace):
                await self.closed.wait()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            with trio.move_on_after(grace):
                await self.transport.aclose()


async def open_stream(
    scenario: Scenario,
    policy: Callable[[], PolicySnapshot],
    local: str,
    tls: PartnerTls | None = None,
) -> OutboundStream:
    """Connect to the target and authenticate ``local`` the scenario's way (STARTTLS with
    ``tls``'s context for ``local`` when the mode says so); bounded by connect_timeout."""
    target = scenario.target
    started = trio.current_time()
    conn = S2SConnection(
        Role.INITIATING,
        policy=policy,
        secret=scenario.partners.secret,
        local_domain=local,
        remote_domain=target.domain,
    )
    with trio.fail_after(scenario.partners.connect_timeout):
        transport: trio.abc.Stream = await trio.open_tcp_stream(target.host, target.port)
        connected = trio.current_time()
        record = OutboundStream(local, target.domain, conn, transport, 0.0, connected - started)
        try:
            conn.initiate()
            await transport.send_all(conn.data_to_send())
            while True:
                data = await transport.receive_some(MAX_READ)
                conn.receive_data(data)
                if out := conn.data_to_send():
                    await transport.send_all(out)
                while (event := conn.next_event()) is not None:
                    if isinstance(event, StartTls):
                        if tls is None:
                            raise StreamSetupError(f"{local} -> {target.domain}: STARTTLS without TLS material")
                        begun = trio.current_time()
                        try:
                            secure = await _tls_handshake(
                                transport, tls.client(local), server_side=False, sni=target.domain
                            )
                        except StreamSetupError as exc:
                            raise StreamSetupError(f"{local} -> {target.domain}: {exc}") from exc
                        transport = record.transport = secure
                        record.tls_seconds = trio.current_time() - begun
                        record.tls_version = secure.version()
                        conn.tls_established(peer_certificate_check(secure))
                        await transport.send_all(conn.data_to_send())
                    elif isinstance(event, Authenticated):
                        record.auth_method = str(event.method)
                    elif isinstance(event, PeerCertificateRejected):
                        record.errors.append(f"target certificate: {event.reason}")
                    elif isinstance(event, StreamReady) and event.authenticated:
                        record.setup_seconds = trio.current_time() - started
                        return record
                    elif isinstance(event, AuthenticationFailed):
                        raise StreamSetupError(f"{local} -> {target.domain}: {event.reason}")
                    elif isinstance(event, StreamErrorReceived | StreamClosed):
                        raise StreamSetupError(f"{local} -> {target.domain}: {event!r}")
                if not data:
                    raise StreamSetupError(f"{local} -> {target.domain}: connection closed")
        except BaseException:
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                await transport.aclose()
            raise


class PartnerListener:
    """The simulated domains' S2S listener: answers ``db:verify`` and receives the target's
    replies (echoes and bounces) for the ledger."""

    def __init__(
        self,
        scenario: Scenario,
        policy: Callable[[], PolicySnapshot],
        ledger: Ledger,
        tls: PartnerTls | None = None,
    ) -> None:
        self.scenario = scenario
        self.policy = policy
        self.ledger = ledger
        self.tls = tls
        self.accepted = 0
        #: The target's dialback keys on its own streams to us (accepted unchecked).
        self.verifications = 0
        #: ``db:verify`` answered for our keys, by verdict (the target checking our streams).
        self.verify_answers: collections.Counter[str] = collections.Counter()
        #: Inbound streams that ran STARTTLS, by TLS version.
        self.tls_versions: collections.Counter[str] = collections.Counter()
        #: Domain pairs the target authenticated on its streams to us, by method.
        self.auth_methods: collections.Counter[str] = collections.Counter()
        #: Why the target's certificate did not prove its domain (no SASL EXTERNAL offered).
        self.certificate_notes: list[str] = []
        self.errors: list[str] = []

    async def serve(
        self, *, task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED
    ) -> None:
        p = self.scenario.partners
        listeners = await trio.open_tcp_listeners(p.listen_port, host=p.listen_host)
        await trio.serve_listeners(self._handle, listeners, task_status=task_status)

    async def _handle(self, transport: trio.SocketStream) -> None:
        self.accepted += 1
        conn = S2SConnection(Role.RECEIVING, policy=self.policy, secret=self.scenario.partners.secret)
        stream: trio.abc.Stream = transport
        try:
            while conn.state is not State.CLOSED:
                data = await stream.receive_some(MAX_READ)
                conn.receive_data(data)
                out = bytearray(conn.data_to_send())
                now = trio.current_time()
                while (event := conn.next_event()) is not None:
                    if isinstance(event, StanzaReceived):
                        self._observe(event, now)
                    elif isinstance(event, StartTls):
                        await stream.send_all(bytes(out))  # <proceed/>
                        out.clear()
                        stream = await self._start_tls(stream, conn)
                    elif isinstance(event, DialbackVerifyNeeded):
                        self.verifications += 1
                        conn.send(DialbackVerdict(event.originating, event.receiving, valid=True))
                        out += conn.data_to_send()
                    elif isinstance(event, Authenticated):
                        self.auth_methods[str(event.method)] += 1
                    elif isinstance(event, PeerCertificateRejected):
                        self._note(self.certificate_notes, f"{event.domain}: {event.reason}")
                    elif isinstance(event, StreamClosed) and event.error:
                        self._note(self.errors, f"inbound stream: {event.error}: {event.reason}")
                out += conn.data_to_send()
                if out:
                    if b"<db:verify" in out:
                        self.verify_answers.update(m.decode() for m in _VERIFY_ANSWER.findall(out))
                    await stream.send_all(bytes(out))
                if not data:
                    break
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError, StreamSetupError) as exc:
            # One inbound stream's failure (reset, failed or slow handshake) never ends the run.
            self._note(self.errors, f"inbound transport: {exc!r}")
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                await stream.aclose()

    async def _start_tls(self, stream: trio.abc.Stream, conn: S2SConnection) -> trio.abc.Stream:
        """Server side of STARTTLS with the certificate of the domain the target asked for."""
        if self.tls is None or conn.local_domain is None:  # the plain listener offers no TLS
            raise StreamSetupError("STARTTLS on a listener without TLS material")
        secure = await _tls_handshake(stream, self.tls.server(conn.local_domain), server_side=True, sni=None)
        self.tls_versions[secure.version() or "?"] += 1
        conn.tls_established(peer_certificate_check(secure))
        if out := conn.data_to_send():
            await secure.send_all(out)
        return secure

    @staticmethod
    def _note(notes: list[str], text: str) -> None:
        if len(notes) < MAX_NOTES:
            notes.append(text)

    def _observe(self, event: StanzaReceived, now: float) -> None:
        stanza = event.stanza
        sid = stanza.id
        if not sid or not ID_PATTERN.fullmatch(f"id='{sid}'".encode()):
            return  # not ours (e.g. a subscription push of the target's own)
        if stanza.type == "error":
            self.ledger.saw_bounced(sid, now, error_condition(stanza.raw))
        else:
            self.ledger.saw_delivered(sid, now)
