"""Fuzz harness (b): the sans-IO S2S core ``edgeproxy.s2s.S2SConnection``, both roles, from the
stream open.

Input layout: ``flags`` byte, ``seed`` byte, then the bytes the peer sends (in chunks drawn
from ``seed``). ``flags``:

* bit 0 — role: RECEIVING (0) or INITIATING (1; the core first writes its header);
* bits 1-2 — the partner row of ``fabrikam.test`` (TLS / SASL / dialback), see ``ROWS``;
* bit 3 — the peer certificate proves ``fabrikam.test`` (the ``cert_check`` given to
  ``tls_established``), else it names a problem;
* bit 4 — dialback verdicts the driver hands back are valid (else invalid);
* bit 5 — prepend the peer's valid stream header (the fuzzer then spends its time after it);
* bit 6 — initiating: a verification-only stream (``authenticate=False``);
* bit 7 — the driver also acts: answers stanzas, sends ``db:verify`` when ready, keep-alives.

The driver is the one of tests/s2s/_s2s_harness.py: ``StartTls`` → ``tls_established``,
``DialbackVerifyNeeded`` → ``send(DialbackVerdict)``; at the end ``KeepAlive``, ``CloseStream``
and ``receive_data(b"")``.

Invariants: only :class:`LocalProtocolError` escapes (from ``send``/``tls_established``;
peer bytes never make ``receive_data`` raise); at most one ``StreamClosed``; everything the core
writes is well-formed for our own tokenizer (a reflected peer value must never break our XML),
through the restarts.
"""

from __future__ import annotations

import functools

from _harness import Finding, Known, harness, random_cuts, split_at

from edgeproxy.policy.model import Configuration, GatewaySettings, Negotiation, Partner
from edgeproxy.policy.snapshot import PolicySnapshot, build_snapshot
from edgeproxy.s2s import (
    CloseStream,
    DialbackVerdict,
    DialbackVerifyNeeded,
    Event,
    KeepAlive,
    LocalProtocolError,
    Role,
    S2SConnection,
    SendStanza,
    StanzaReceived,
    StartTls,
    StreamClosed,
    StreamReady,
    VerifyRequest,
)
from edgeproxy.tokenizer import Tokenizer, TokenizerError

MAX_LEN = 4096
REQ, OPT, NOS = Negotiation.REQUIRED, Negotiation.OPTIONAL, Negotiation.NOT_SUPPORTED
ROWS = ((NOS, NOS, True), (OPT, OPT, True), (REQ, REQ, False), (REQ, OPT, True))
SECRET = "s3cret"
LOCAL, REMOTE = "contoso.test", "fabrikam.test"
NS_HEAD = (
    b"<?xml version='1.0'?><stream:stream xmlns='jabber:server' "
    b"xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' "
)
PEER_HEADER = {
    Role.RECEIVING: NS_HEAD + b"from='fabrikam.test' to='contoso.test' version='1.0'>",
    Role.INITIATING: NS_HEAD + b"from='fabrikam.test' to='contoso.test' id='s1' version='1.0'>",
}

EXPECTED: tuple[type[BaseException], ...] = (LocalProtocolError,)
# Fixed (604abf6): the core wrote a stream error after its own closing tag (_wrote_after_close).
KNOWN: tuple[Known, ...] = ()


@functools.cache
def snapshot(row: int) -> PolicySnapshot:
    tls, sasl, dialback = ROWS[row]
    partners = (
        Partner(domain=REMOTE, tls=tls, sasl=sasl, dialback=dialback,
                additional_domains=("chat.fabrikam.test",)),
        Partner(domain="tailspin.test", tls=NOS, sasl=NOS, dialback=True),
    )
    config = Configuration(gateway=GatewaySettings(dialback_secret=SECRET), partners=partners)
    return build_snapshot(config, [LOCAL, "conference.contoso.test"])


def _wrote_after_close(before: bytes, data: bytes) -> None:
    """RFC 6120 §4.4: after our ``</stream:stream>`` nothing more goes on the stream."""
    raise Finding(f"the core wrote {data[:200]!r} after its closing tag: ...{before[-200:]!r}")


class OutputCheck:
    """Our own tokenizer reading what the core writes (as the peer would)."""

    def __init__(self) -> None:
        self.tok = Tokenizer()
        self.written = bytearray()

    def feed(self, data: bytes) -> None:
        close = b"</stream:stream>"
        if close in data[: -len(close)]:  # check what follows our closing tag on its own
            head, _, rest = data.partition(close)
            self.feed(head + close)
            self.feed(rest)
            return
        if not data:
            return
        if self.tok.closed:
            _wrote_after_close(bytes(self.written), data)
        self.written += data
        try:
            self.tok.feed(data)
            # after our <starttls/>, <proceed/> or <success/>: decide once bytes follow
            while self.tok.halted and self.tok.trailing_bytes:
                trailing = self.tok.trailing_bytes
                header = self.tok.stream_open
                self.tok.reset()
                if trailing.lstrip().startswith((b"<?xml", b"<stream:stream")) or header is None:
                    self.tok.feed(trailing)  # the stream restarted: a new header
                else:  # no restart happened (e.g. the peer's <proceed/> was broken): same stream
                    self.tok.feed(header.raw + trailing)
        except TokenizerError as exc:
            raise Finding(f"the core wrote malformed XML ({exc.condition}: {exc}): "
                          f"{bytes(self.written)[-300:]!r}") from exc


@harness(EXPECTED, KNOWN)
def check(data: bytes) -> None:
    if len(data) < 2:
        return
    flags, seed, payload = data[0], data[1], data[2:]
    role = Role.INITIATING if flags & 1 else Role.RECEIVING
    snap = snapshot((flags >> 1) & 3)
    cert_ok = bool(flags & 8)
    verdict_valid = bool(flags & 16)
    acting = bool(flags & 128)
    if flags & 32:
        payload = PEER_HEADER[role] + payload
    ids = iter(f"id{n}" for n in range(1_000_000))
    if role is Role.INITIATING:
        conn = S2SConnection(role, policy=lambda: snap, secret=SECRET, local_domain=LOCAL,
                             remote_domain=REMOTE, authenticate=not flags & 64,
                             stream_id_factory=lambda: next(ids))
    else:
        conn = S2SConnection(role, policy=lambda: snap, secret=SECRET,
                             stream_id_factory=lambda: next(ids))
    out = OutputCheck()
    closed = 0

    def cert_check(domain: str) -> str | None:
        return None if cert_ok and domain in (REMOTE, "chat.fabrikam.test") else "name mismatch"

    def drain() -> None:
        nonlocal closed
        out.feed(conn.data_to_send())
        while (event := conn.next_event()) is not None:
            if not isinstance(event, Event):
                raise Finding(f"next_event() returned {event!r}")
            if isinstance(event, StreamClosed):
                closed += 1
                if closed > 1:
                    raise Finding(f"a second StreamClosed: {event!r}")
            elif isinstance(event, StartTls):
                out.feed(conn.data_to_send())
                conn.tls_established(cert_check)
                out.feed(conn.data_to_send())
            elif isinstance(event, DialbackVerifyNeeded):
                error = "remote-server-not-found" if seed % 7 == 0 else None
                conn.send(DialbackVerdict(event.originating, event.receiving, verdict_valid, error))
            elif acting and isinstance(event, StanzaReceived):
                conn.send(SendStanza(b"<message/>", event.to_domain, event.from_domain))
            elif acting and isinstance(event, StreamReady) and not event.authenticated:
                conn.send(VerifyRequest(LOCAL, REMOTE, "sid", "k" * 64))
            out.feed(conn.data_to_send())

    if role is Role.INITIATING:
        conn.initiate()
        out.feed(conn.data_to_send())
    for chunk in split_at(payload, random_cuts(payload, seed)):
        if not chunk:
            continue
        conn.receive_data(chunk)
        drain()
        if acting:
            conn.send(KeepAlive())
            out.feed(conn.data_to_send())
    if acting:
        conn.send(CloseStream("policy-violation" if seed & 1 else None, "bye"))
        drain()
    conn.receive_data(b"")
    drain()


TestOneInput = check

_RECV = PEER_HEADER[Role.RECEIVING]
_INIT = PEER_HEADER[Role.INITIATING]
SEEDS = [
    b"\x20\x00<db:result from='fabrikam.test' to='contoso.test'>abcdef</db:result>"
    b"<message from='a@fabrikam.test' to='b@contoso.test'><body>x</body></message>",
    b"\xb0\x05<db:result from='fabrikam.test' to='contoso.test'>k</db:result>"
    b"<iq type='get' id='p' from='fabrikam.test' to='contoso.test'><ping xmlns='urn:xmpp:ping'/></iq>"
    b"<db:verify from='fabrikam.test' to='contoso.test' id='x'>k</db:verify></stream:stream>",
    b"\x2a\x00<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>",
    b"\x0a\x00" + _RECV + b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>" + _RECV
    + b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='EXTERNAL'>=</auth>" + _RECV
    + b"<presence from='a@fabrikam.test/r' to='b@contoso.test'/>",
    b"\x21\x00<stream:features><dialback xmlns='urn:xmpp:features:dialback'><errors/></dialback>"
    b"</stream:features><db:result from='fabrikam.test' to='contoso.test' type='valid'/>",
    b"\x2b\x03<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/>"
    b"</starttls></stream:features><proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>",
    b"\x0b\x03" + _INIT + b"<stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>"
    b"<mechanism>EXTERNAL</mechanism></mechanisms></stream:features>"
    b"<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>",
    b"\xe1\x00<stream:features/><db:verify from='fabrikam.test' to='contoso.test' id='sid' type='valid'/>",
    b"\x20\x00<stream:error><host-unknown xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>"
    b"<text xmlns='urn:ietf:params:xml:ns:xmpp-streams'>no</text></stream:error>",
    b"\x00\x00<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams'"
    b" to='contoso.test' version='1.0'>",
]
