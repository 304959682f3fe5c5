"""Two in-memory edges whose sans-IO cores talk to each other (no sockets, no trio).

``Edge`` is one server: its domains, its policy snapshot (partners with negotiation rows) and its
dialback secret. ``Pipe`` connects an initiating core of one edge to a receiving core of the
other and moves bytes until nothing moves. Dialback verification (XEP-0220 §2.2) is done like a
real receiving server does it: a *second* pipe, a verification-only stream from the receiving
edge to the originating edge's authoritative core, carrying ``db:verify``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from edgeproxy.policy.model import Configuration, GatewaySettings, Negotiation, Partner
from edgeproxy.policy.snapshot import PolicySnapshot, build_snapshot
from edgeproxy.s2s import (
    DialbackVerdict,
    DialbackVerifyNeeded,
    DialbackVerifyResponse,
    Event,
    Role,
    S2SConnection,
    StartTls,
    StreamReady,
    VerifyRequest,
)

REQ, OPT, NOS = Negotiation.REQUIRED, Negotiation.OPTIONAL, Negotiation.NOT_SUPPORTED


def row(domain: str, tls: Negotiation, sasl: Negotiation, dialback: bool, **kw: object) -> Partner:
    return Partner(domain=domain, tls=tls, sasl=sasl, dialback=dialback, **kw)  # type: ignore[arg-type]


@dataclass
class Edge:
    domain: str
    partners: tuple[Partner, ...]
    secret: str
    #: Domains whose certificates this edge's peers present validly (for SASL EXTERNAL).
    cert_valid: set[str] = field(default_factory=set)

    @property
    def snapshot(self) -> PolicySnapshot:
        config = Configuration(
            gateway=GatewaySettings(dialback_secret=self.secret), partners=self.partners
        )
        return build_snapshot(config, [self.domain])

    def receiving(self) -> S2SConnection:
        snap = self.snapshot
        return S2SConnection(Role.RECEIVING, policy=lambda: snap, secret=self.secret)

    def initiating(self, remote: str, *, authenticate: bool = True) -> S2SConnection:
        snap = self.snapshot
        return S2SConnection(
            Role.INITIATING,
            policy=lambda: snap,
            secret=self.secret,
            local_domain=self.domain,
            remote_domain=remote,
            authenticate=authenticate,
        )


def cert_check_for(valid: set[str]) -> Callable[[str], str | None]:
    return lambda domain: None if domain in valid else f"certificate does not cover {domain}"


@dataclass
class Pipe:
    """initiator (of edge ``a``) → receiver (of edge ``b``)."""

    a: Edge
    b: Edge
    initiator: S2SConnection
    receiver: S2SConnection
    a_events: list[Event] = field(default_factory=list)
    b_events: list[Event] = field(default_factory=list)
    to_b: list[bytes] = field(default_factory=list)
    to_a: list[bytes] = field(default_factory=list)
    verify_answers: bool | None = None  # None: real verification via the authoritative core
    a_sent: bytearray = field(default_factory=bytearray)
    b_sent: bytearray = field(default_factory=bytearray)

    @classmethod
    def open(cls, a: Edge, b: Edge, **kw: object) -> Pipe:
        pipe = cls(a, b, a.initiating(b.domain, **kw), b.receiving())  # type: ignore[arg-type]
        pipe.initiator.initiate()
        pipe.to_b.append(pipe.initiator.data_to_send())
        pipe.run()
        return pipe

    def inject(self, data: bytes) -> None:
        """Bytes from the initiating side that the core did not produce (adversarial peer)."""
        self.to_b.append(data)
        self.run()

    def run(self, limit: int = 200) -> None:
        for _ in range(limit):
            moved = False
            while self.to_b:
                moved = True
                chunk = self.to_b.pop(0)
                self.a_sent += chunk
                self.receiver.receive_data(chunk)
                self._drain(self.receiver, self.b_events, self.to_a, self.a, server=True)
            while self.to_a:
                moved = True
                chunk = self.to_a.pop(0)
                self.b_sent += chunk
                self.initiator.receive_data(chunk)
                self._drain(self.initiator, self.a_events, self.to_b, self.b, server=False)
            if not moved:
                return
        raise AssertionError("pipe did not settle")

    def _drain(
        self, conn: S2SConnection, log: list[Event], out: list[bytes], peer: Edge, *, server: bool
    ) -> None:
        data = conn.data_to_send()
        if data:
            out.append(data)
        while (event := conn.next_event()) is not None:
            log.append(event)
            if isinstance(event, StartTls):
                # The "TLS handshake": each side gets a check of the other's certificate.
                valid = self.a.cert_valid if server else self.b.cert_valid
                conn.tls_established(cert_check_for(valid))
                if restart := conn.data_to_send():  # b"" would mean "connection closed"
                    out.append(restart)
            elif isinstance(event, DialbackVerifyNeeded):
                conn.send(self._verify(event))
                out.append(conn.data_to_send())
        data = conn.data_to_send()
        if data:
            out.append(data)

    def _verify(self, need: DialbackVerifyNeeded) -> DialbackVerdict:
        """Ask the originating edge (``a``) over a verification-only stream from ``b``."""
        if self.verify_answers is not None:
            return DialbackVerdict(need.originating, need.receiving, self.verify_answers)
        check = Pipe.open(self.b, self.a, authenticate=False)
        assert any(isinstance(e, StreamReady) for e in check.a_events), check.a_events
        check.initiator.send(
            VerifyRequest(need.receiving, need.originating, need.stream_id, need.key)
        )
        check.to_b.append(check.initiator.data_to_send())
        check.run()
        answers = [e for e in check.a_events if isinstance(e, DialbackVerifyResponse)]
        assert len(answers) == 1, check.a_events
        return DialbackVerdict(need.originating, need.receiving, answers[0].valid)

