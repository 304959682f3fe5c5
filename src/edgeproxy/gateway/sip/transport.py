"""SIP over UDP, TCP and TLS with trio: listeners, connections, transaction tables (RFC 3261 §17, §18).

Theory of operation
-------------------
:class:`SipTransport` binds one UDP socket and one TCP listener on the same address (SPEC §7 /
``[gateway] sip-listen``: "udp and tcp on each address"). Every received message is parsed by the
sans-IO core (``message.py``) and matched against the transaction tables (``transaction.py``):

* a request that matches a server transaction is a retransmission: the transaction answers it
  (or absorbs it) and the user never sees it; otherwise a new server transaction is created and
  the request goes to the *transaction user* (``handler``) with a :class:`ServerContext` whose
  ``respond`` sends through the transaction;
* a response is matched to its client transaction (``client_key``) and, if final, wakes the
  task waiting in :meth:`SipTransport.finish`; unmatched responses are dropped (§18.1.2).

Order: :meth:`SipTransport.begin_request` starts a client transaction without a checkpoint:
over UDP its datagram is sent at once; over TCP/TLS its first transmission is queued for the
destination and one writer task per destination sends the queue in order, all of it in one write
(a transport error answers each queued transaction 503). A caller that begins requests in order
has them sent in order (trio starts tasks in no particular order, so "one task per request"
would not). The same on the way in: ``take_now`` (the owner's hook) sees each new request as it
is read, before any task starts.

UDP without a checkpoint per datagram: the socket is a plain non-blocking one, drained on every
wake-up until it would block (``_drain_udp``, at most ``UDP_DRAIN_BATCH`` at a time), and
written with ``sendto`` directly (a full send buffer queues the datagram for ``_udp_writer``).
Reads come before writes: the timer task drains the socket before it retransmits anything, so
an answer already received ends its transaction instead of drawing a retransmission. The
socket's buffers are ``UDP_SOCKET_BUFFER``.

Responses go back where the request came from (§18.2.2 with ``rport``, RFC 3581: the source
address and port of the datagram, or the same TCP connection). Outgoing requests to a TCP
destination reuse or open a connection (§18.1.1). One timer task runs every transaction's
timers (retransmissions over UDP, Timers F and J; a client transaction is forgotten at its final
response, also over UDP — see ``_dispatch``) from ``trio.current_time()``, popping the
transactions whose deadline has come from one heap (``transaction.TimerQueue``): nothing per
transaction but its heap entry — no task, no cancel scope, no scan of the tables. A
transaction is forgotten as soon as it terminates (over TCP/TLS: with its final response).

TLS (RFC 3261 §26.2, RFC 5630 §3): with a :class:`SipTls` the transport also listens TLS on
its own address (``[gateway] sip-tls-listen``, by default the UDP/TCP port + 1, 5060 → 5061).
TLS connections live in their own table; they are reliable like TCP (no retransmissions). An
outgoing TLS connection verifies the peer's certificate against ``[tls] trust`` and the host it
connects to (RFC 5922 §7.2, as an IP address or DNS name); a failed handshake is a transport
error (503 locally). :meth:`SipTransport.route` picks the destination of a registered contact:
for a TLS contact registered over TLS (or an RFC 5626 ``;ob`` contact over TCP) the connection
the UA registered on while it is open (§5.3 flow reuse — a UA behind NAT or without a TLS
server of its own can only be reached that way), else its Contact (``sips:`` or
``;transport=tls``: TLS, default port 5061).

Bounded: the transaction tables (``MAX_TRANSACTIONS``, new requests beyond it get 503),
TCP connections (``MAX_TCP_CONNECTIONS``), the stream parser's limits per connection, and the
handler tasks (``MAX_CONCURRENT_REQUESTS``).

Backpressure, not refusals (issue 21): a request that finds every handler slot taken waits for
one, and a slot given back goes to the first waiting (``_release_slot``), in arrival order.
Over TCP/TLS the reader takes the slot before it hands a request on (``_take_slot``): with none
free it stops reading that connection until one is, and TCP's flow control holds the UA back —
no 503 for a UA that waits for its answers. Over UDP nothing holds the sender back, so the
request is kept: its server transaction is created at once (a retransmission is absorbed in
Trying, §17.2.2) and it waits in a FIFO of at most ``MAX_WAITING_REQUESTS``; only beyond that is
it answered 503 Service Unavailable with Retry-After (§21.5.4), as is a request beyond
``MAX_TRANSACTIONS``, each counted (``edgeproxy_sip_busy_total{transport,limit}``). No 100
Trying is sent for a waiting request: RFC 4320 §4.1 forbids a 100 to a non-INVITE request over
UDP before the client's Timer E has reached T2, and after that it would not slow the client's
retransmissions (every T2 either way).

Failure boundaries (issue 13; ``ops.boundary``): no datagram, connection or request can end the
transport. Malformed SIP (:class:`SipParseError`, from the parser or from a header found
malformed where it is used) is answered with its status — 400 with a Warning, 413, 505, 513 —
when enough of the request is known (Via, From, To, Call-ID, CSeq: §8.2.6.2), else dropped; both
are counted (``edgeproxy_sip_malformed_total{transport,answer}``). Anything else raised while
handling one datagram (``Surface.SIP_DATAGRAM``), one TCP/TLS connection
(``Surface.SIP_CONNECTION``: that connection alone is closed) or one request's handler task
(the transaction user: 500 Server Internal Error on that transaction) is contained: answered
500 where a request is known, reported (event EP1007, ``edgeproxy_input_failures_total``), and
the loop goes on. A failure to send (the peer went away) is logged, not raised (§17.2.4 / §18.4:
the transport tells the transaction user, which has nothing more to do).

UDP amplification (``UDP_AMPLIFICATION_FACTOR``): a UDP source address may be spoofed, and the
answers to unauthenticated requests (digest challenges and refusals, issue 14) go to whatever
address a request claims. A response over UDP is therefore
never larger than the request it answers: a larger one is replaced by its minimal form
(``message.minimal_response``: the copied headers and those its status needs), and when even
that does not fit it is not sent (the request is still absorbed by its transaction). A 401/407
may exceed its request by ``UDP_CHALLENGE_ALLOWANCE`` bytes (its challenges must get through). Both count
as ``edgeproxy_limit_reached_total{limit="sip-udp-response-size"}``. Over TCP/TLS the handshake
proves the source address and the full response is sent.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import secrets
import socket
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

import trio

from edgeproxy.certs.handshake import send_pending_alert, tls_failure
from edgeproxy.gateway.sip.message import (
    OutgoingRequest,
    SipParseError,
    SipParser,
    SipRequest,
    SipResponse,
    minimal_response,
    parse_datagram,
    response_from_head,
    response_to,
    serialize,
    warning_text,
)
from edgeproxy.gateway.sip.transaction import (
    ClientTransaction,
    Deliver,
    Retransmit,
    ServerTransaction,
    State,
    TimerQueue,
    client_key,
    server_key,
)
from edgeproxy.gateway.sip.uri import SipUri
from edgeproxy.ops.boundary import Surface, contain

if TYPE_CHECKING:
    from edgeproxy.ops.telemetry import Telemetry

log = logging.getLogger(__name__)

#: Live transactions per table; ~64·T1 = 32 s of traffic at 1,000 requests/s plus headroom.
#: Timer J keeps a UDP server transaction 32 s, so this caps sustained requests over UDP at
#: ~1,500/s; 32 s at 10,000/s (320,000) would be ~230 MB per table (~720 B each, tracemalloc).
MAX_TRANSACTIONS = 50_000
MAX_TCP_CONNECTIONS = 1024
#: Handler tasks (transaction users) running at once; a request beyond it waits for a slot.
MAX_CONCURRENT_REQUESTS = 1024
#: Requests that wait for a handler slot (over UDP; a TCP/TLS connection is not read instead),
#: each with its parsed request and server transaction; beyond it: 503 with Retry-After.
#: One open-loop burst of 10,000 MESSAGEs (issue 21) plus the slots' 1,024.
MAX_WAITING_REQUESTS = 10_000
#: Largest UDP datagram read (IPv4 maximum payload).
UDP_RECV_BYTES = 65535
#: Datagrams read and handled in one go when the UDP socket is readable; then the other tasks
#: get a turn (a flood cannot starve them) and the reading goes on.
UDP_DRAIN_BATCH = 256
#: Bytes asked for the UDP socket's receive and send buffers (the kernel caps them at
#: net.core.rmem_max / wmem_max; Linux's default is 208 KiB): the answers to a burst of requests
#: (``service.MAX_SIP_IN_FLIGHT`` = 512 MESSAGEs, ~500 B each) or a burst of requests from the
#: UAs arrive while the gateway is busy, and what the buffer cannot hold is lost (then
#: retransmitted, §17.1.2.2: work on top of work).
UDP_SOCKET_BUFFER = 4 << 20
#: Bytes of datagrams waiting for the UDP socket's send buffer to drain; beyond it a datagram
#: is dropped (logged), as the network would drop it (retransmissions recover, §17.1.2.2).
UDP_MAX_QUEUED_BYTES = 1 << 20
#: Timer task granularity, seconds (T1/5).
TIMER_TICK = 0.1
#: Seconds for a TLS handshake, either direction (Timer F's 32 s would let a stalled peer hold
#: a connection slot for as long as a whole transaction).
TLS_HANDSHAKE_TIMEOUT = 10.0
#: Default ports (RFC 3261 §19.1.2): 5060 for UDP and TCP, 5061 for TLS and sips:.
SIP_PORT, SIPS_PORT = 5060, 5061
#: Largest ratio of a UDP response's bytes to its request's (issue 13). 1: we never send more
#: towards an unauthenticated source than it sent us, so a spoofed request cannot turn us into
#: an amplifier (the registrar's 200 listed every binding: a 257-byte REGISTER drew ~15 KB).
#: RFC 3261 has no such rule; it leaves reflection to authentication (§26.3.2), which the
#: registrar does not have yet (issue 14). Over TCP/TLS there is no limit.
UDP_AMPLIFICATION_FACTOR = 1
#: Bytes a digest challenge (401/407) over UDP may exceed its request by (issue 14): its two
#: challenges (SHA-256 and MD5, ~100 B each) make it larger than a small REGISTER, and without
#: them no UA could authenticate over UDP. Bounded: at most this much more than was sent.
UDP_CHALLENGE_ALLOWANCE = 256
_RELIABLE = frozenset(("tcp", "tls"))
#: What a send raises when the peer or the network is gone: logged, never raised further.
_TRANSPORT_ERRORS = (OSError, trio.BrokenResourceError, trio.ClosedResourceError)

Address = tuple[str, int]


@dataclass(slots=True)
class Destination:
    host: str
    port: int
    transport: str = "udp"  # "udp" | "tcp" | "tls"


@dataclass(frozen=True, slots=True)
class SipTls:
    """SIP over TLS: where to listen, the context UAs connect to, the context we connect with."""

    host: str
    port: int
    server: ssl.SSLContext
    client: ssl.SSLContext


def destination_for(uri: SipUri) -> Destination:
    """Where a request for ``uri`` goes without DNS (RFC 3263 §4 with a numeric or given host):
    ``sips:`` or ``;transport=tls`` → TLS (port 5061 by default), else the ``transport``
    parameter (UDP by default, port 5060)."""
    transport = "tls" if uri.scheme == "sips" else uri.transport
    default = SIPS_PORT if transport == "tls" else SIP_PORT
    return Destination(uri.host.strip("[]"), uri.port or default, transport)


def surface_of(source: Destination) -> Surface:
    """The failure-boundary surface of input from ``source``."""
    return Surface.SIP_DATAGRAM if source.transport == "udp" else Surface.SIP_CONNECTION


def peer_of(source: Destination) -> str:
    return f"{source.transport}:{source.host}:{source.port}"


class ServerContext:
    """What the transaction user gets with a request: where it came from, and ``respond``.

    ``request_size``: the bytes of the request's datagram over UDP (the response may be no
    larger, ``UDP_AMPLIFICATION_FACTOR``); None over TCP/TLS."""

    def __init__(
        self,
        transport: SipTransport,
        tx: ServerTransaction,
        key: ServerKey,
        reply_to: Destination,
        request_size: int | None = None,
    ) -> None:
        self._transport = transport
        self._tx = tx
        self._key = key
        self.source = reply_to
        self.request_size = request_size
        #: The AoR the request was admitted as (issue 14, ``admission.py``); None when the
        #: transport runs without the gateway's admission (unit tests of the stack).
        self.identity: str | None = None
        #: Names of a verified TLS client certificate (``tls_peer_names``); empty otherwise.
        self.certificate_names: frozenset[str] = transport.peer_names(reply_to)
        #: Taken with ``ANSWER_LATER``: the request's handler slot, given back by ``respond_later``.
        self._holds_slot = False

    @property
    def responded(self) -> bool:
        return self._tx.state in (State.COMPLETED, State.TERMINATED)

    async def respond(self, response: SipResponse) -> None:
        data = self._transport.answer(self._tx, self._key, response, self.request_size)
        if data is not None:
            await self._transport.send_bytes(data, self.source)

    def respond_later(self, response: SipResponse) -> None:
        """The final answer of a request its owner took with ``ANSWER_LATER``: sent without a
        checkpoint (over TCP/TLS queued for the connection's writer), and the handler slot the
        request held is given back. Nothing happens if it was answered already."""
        if self._holds_slot:
            self._holds_slot = False
            self._transport._release_slot()
        if self.responded:
            return
        data = self._transport.answer(self._tx, self._key, response, self.request_size)
        if data is not None:
            self._transport.send_soon(data, self.source)


Handler = Callable[[SipRequest, ServerContext], Awaitable[None]]
TxKey = tuple[str, str]
ServerKey = tuple[str, ...]


class AnswerLater:
    """``take_now``'s answer "taken: I answer with ``ctx.respond_later``" (no task)."""

    def __repr__(self) -> str:
        return "ANSWER_LATER"


#: What ``take_now`` returns for a request it answers itself, later, from a callback: no handler
#: task runs; the request keeps its handler slot until ``ServerContext.respond_later``.
ANSWER_LATER = AnswerLater()
TakeNow = Callable[
    [SipRequest, "ServerContext"], Callable[[], Awaitable[None]] | AnswerLater | None
]
#: Called once with a client transaction's final response (a locally made 408 / 503 on a
#: timeout or transport error), from the transport's own tasks, without a checkpoint.
OnFinal = Callable[[SipResponse], None]


@dataclass(slots=True)
class PendingRequest:
    """A client transaction begun by :meth:`SipTransport.begin_request`: where it goes, and
    its final response once ``done`` is set (None: Timer F fired)."""

    tx: ClientTransaction
    dest: Destination
    result: SipResponse | None = None
    refused: SipResponse | None = None  # answered locally at once (the table is full)
    on_final: OnFinal | None = None
    settled: bool = False
    #: Made by the first ``finish`` that waits (a transaction with ``on_final`` has none).
    waiter: trio.Event | None = None

    def settle(self, result: SipResponse | None = None) -> None:
        """The transaction's outcome is known: ``result`` (None: Timer F or a transport error
        after the request was sent, a local 408). Wakes ``finish`` and calls ``on_final``
        once; a failing ``on_final`` is logged, never raised into the transport."""
        if self.settled:
            return
        if result is not None:
            self.result = result
        self.settled = True
        if self.waiter is not None:
            self.waiter.set()
        on_final, self.on_final = self.on_final, None
        if on_final is not None:
            try:
                on_final(self.final_response())
            except Exception:
                log.exception("sip: the owner of a %s transaction failed on its response", self.tx.key[1])

    def final_response(self) -> SipResponse:
        """The final response once ``done``: the one received, else a locally made 408."""
        if self.refused is not None:
            return self.refused
        if self.result is not None:
            return self.result
        return response_to(self.tx.outgoing.parsed(), 408)


#: Longest one write on a SIP TCP/TLS connection may block (seconds): a UA that stops reading
#: is cut off instead of holding its connection and our queue (issue 13; the S2S streams'
#: ``[limits] write-timeout`` has the same default).
TCP_WRITE_TIMEOUT = 30.0
#: Bytes queued for one SIP TCP/TLS connection while a write is under way; beyond it the
#: connection is closed (a peer sending requests without reading the responses would
#: otherwise grow the queue without bound). 1 MiB ≈ 2,000 typical responses.
TCP_MAX_QUEUED_BYTES = 1 << 20


class _TcpConnection:
    def __init__(
        self, stream: trio.SocketStream | trio.SSLStream[trio.SocketStream], peer: Address, transport: str = "tcp"
    ) -> None:
        self.stream = stream
        self.peer = peer
        self.transport = transport
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._writing = False
        self.broken = False

    async def send(self, data: bytes) -> None:
        """Write ``data``; messages queued while another write is under way go out together
        (one ``send_all`` for all of them, not one system call per message). A write that
        blocks longer than ``TCP_WRITE_TIMEOUT``, or a queue above ``TCP_MAX_QUEUED_BYTES``,
        closes the connection and raises ``trio.BrokenResourceError``."""
        if self.broken:
            raise trio.BrokenResourceError("connection closed: the peer did not read")
        self._pending.append(data)
        self._pending_bytes += len(data)
        if self._pending_bytes > TCP_MAX_QUEUED_BYTES:
            await self._abort("more than TCP_MAX_QUEUED_BYTES queued")
        if self._writing:
            return  # the task writing now takes our bytes with its next write
        await self._write_pending()

    def send_soon(self, data: bytes, nursery: trio.Nursery) -> None:
        """Queue ``data`` without a checkpoint; a writer task is started in ``nursery`` when none
        is writing (one task per batch, not per message). Errors end the connection and are
        logged by the writer (a response's sender has nothing more to do with it, §17.2.4)."""
        if self.broken:
            return
        self._pending.append(data)
        self._pending_bytes += len(data)
        if self._writing:
            if self._pending_bytes > TCP_MAX_QUEUED_BYTES:
                nursery.start_soon(self._abort_quietly, "more than TCP_MAX_QUEUED_BYTES queued")
            return
        self._writing = True  # before the task runs: the next send_soon joins this batch
        nursery.start_soon(self._write_soon)

    async def _write_soon(self) -> None:
        try:
            await self._write_pending()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            log.info("sip: %s connection %s: cannot answer: %s", self.transport.upper(), self.peer, exc)

    async def _abort_quietly(self, why: str) -> None:
        if self.broken:
            return
        with contextlib.suppress(trio.BrokenResourceError):
            await self._abort(why)

    async def _write_pending(self) -> None:
        """Write what is queued, all of it per write, until nothing is."""
        self._writing = True
        try:
            # One scheduling round for the other tasks of this round (e.g. a batch of stanzas
            # from the channel) to add their messages: one write for all of them.
            await trio.lowlevel.checkpoint()
            while self._pending:
                chunk = b"".join(self._pending) if len(self._pending) > 1 else self._pending[0]
                self._pending.clear()
                self._pending_bytes = 0
                with trio.move_on_after(TCP_WRITE_TIMEOUT) as scope:
                    await self.stream.send_all(chunk)
                if scope.cancelled_caught:
                    await self._abort(f"write blocked for {TCP_WRITE_TIMEOUT:g} s")
        finally:
            self._writing = False

    async def _abort(self, why: str) -> None:
        self.broken = True
        self._pending.clear()
        self._pending_bytes = 0
        log.warning("sip: %s connection from %s closed: %s", self.transport, self.peer, why)
        await trio.aclose_forcefully(self.stream)
        raise trio.BrokenResourceError(f"connection closed: {why}")


@dataclass(slots=True)
class _Inbound:
    """What one datagram or connection has delivered so far: the boundary's answer uses it."""

    request: SipRequest | None = None
    ctx: ServerContext | None = None
    data: bytes | None = None  # a datagram's bytes: answered from its raw head if need be
    slot: bool = False  # a TCP/TLS reader took a handler slot for the request it hands on


class SipTransport:
    """UDP + TCP (+ TLS) on one address, with transaction tables (see the module docstring)."""

    def __init__(
        self,
        host: str,
        port: int,
        handler: Handler,
        *,
        take_now: TakeNow | None = None,
        tls: SipTls | None = None,
        telemetry: Telemetry | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.handler = handler
        #: Where contained failures (EP1007) and limits are reported; None in unit tests.
        self.telemetry = telemetry
        #: Optional: takes a request at once, in arrival order (see ``_dispatch``).
        self.take_now = take_now
        self.tls = tls
        #: The bound TLS port (``tls.port`` until ``serve`` binds it; port 0 picks one).
        self.tls_port = tls.port if tls is not None else None
        #: The UDP socket, non-blocking, read and written directly (``_drain_udp``, ``_udp_send``).
        self._udp: socket.socket | None = None
        #: Datagrams the send buffer had no room for, in order, and their bytes.
        self._udp_backlog: collections.deque[tuple[bytes, Address]] = collections.deque()
        self._udp_backlog_bytes = 0
        #: Datagrams dropped since the backlog was last empty (``UDP_MAX_QUEUED_BYTES``).
        self._udp_send_drops = 0
        self._tcp: dict[Address, _TcpConnection] = {}
        self._tls: dict[Address, _TcpConnection] = {}
        self._connecting: dict[tuple[str, int, str], trio.Event] = {}
        self._server_txs: dict[ServerKey, ServerTransaction] = {}
        self._client_txs: dict[TxKey, PendingRequest] = {}
        #: Every live transaction's next deadline, run by ``_timer_loop``.
        self._timers: TimerQueue[PendingRequest | ServerKey] = TimerQueue()
        # first transmissions waiting for their destination's writer, in the order begun;
        # bounded by MAX_TRANSACTIONS (each entry is a transaction of _client_txs)
        self._outboxes: dict[tuple[str, int, str], list[tuple[bytes, PendingRequest]]] = {}
        #: Handler slots free (``MAX_CONCURRENT_REQUESTS``), and who waits for one, in order:
        #: a UDP request's start or a TCP/TLS reader's wake-up (``_release_slot``).
        self._free_slots = MAX_CONCURRENT_REQUESTS
        self._slot_waiters: collections.deque[Callable[[], None]] = collections.deque()
        self._waiting_requests = 0  # of those, requests kept (``MAX_WAITING_REQUESTS``)
        self._busy = 0  # requests answered 503 with Retry-After
        self._nursery: trio.Nursery | None = None
        self._malformed = {"answered": 0, "dropped": 0}
        self._udp_responses_shrunk = 0
        self._udp_responses_withheld = 0

    # -- lifecycle ---------------------------------------------------------------------------

    async def serve(
        self, *, task_status: trio.TaskStatus[Address] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Bind UDP and TCP on (host, port) — port 0 picks one free for both — and serve."""
        udp, listeners = await self._bind()
        self._udp = socket.socket(fileno=udp.detach())
        self._udp.setblocking(False)
        for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            self._udp.setsockopt(socket.SOL_SOCKET, option, UDP_SOCKET_BUFFER)
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._udp_loop)
                nursery.start_soon(self._timer_loop)
                nursery.start_soon(trio.serve_listeners, partial(self._connection_handler, "tcp"), listeners)
                if self.tls is not None:
                    tls_listeners = await trio.open_tcp_listeners(self.tls.port, host=self.tls.host)
                    self.tls_port = tls_listeners[0].socket.getsockname()[1]
                    nursery.start_soon(
                        trio.serve_listeners, partial(self._connection_handler, "tls"), tls_listeners
                    )
                task_status.started((self.host, self.port))
        finally:
            trio.lowlevel.notify_closing(self._udp)
            self._udp.close()

    async def _bind(self) -> tuple[trio.socket.SocketType, list[trio.SocketListener]]:
        for _ in range(20):
            udp = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
            await udp.bind((self.host, self.port))
            port = udp.getsockname()[1]
            try:
                listeners = await trio.open_tcp_listeners(port, host=self.host)
            except OSError:
                udp.close()
                if self.port:
                    raise
                continue  # the TCP side of a random UDP port was taken: try another
            self.port = port
            return udp, listeners
        raise OSError("no port free for both UDP and TCP")

    def peer_names(self, source: Destination) -> frozenset[str]:
        """The DNS and IP subjectAltNames of the verified client certificate of the TLS
        connection ``source`` came in on (the server context must ask for one: it does when
        the next hop is ``;transport=tls``, ``gateway/tls.py``); empty for UDP/TCP or no certificate."""
        if source.transport != "tls":
            return frozenset()
        conn = self._tls.get((source.host, source.port))
        if conn is None or not isinstance(conn.stream, trio.SSLStream):
            return frozenset()
        cert = conn.stream.getpeercert()
        if not cert:
            return frozenset()
        names = cert.get("subjectAltName", ())
        return frozenset(str(value).lower() for kind, value in names if kind in ("DNS", "IP Address"))

    @property
    def via_host(self) -> str:
        return f"{self.host}:{self.port}"

    def via_for(self, transport: str) -> str:
        """Our sent-by for a request over ``transport`` (§18.1.1): the TLS address for TLS."""
        if transport == "tls" and self.tls is not None:
            return f"{self.tls.host}:{self.tls_port}"
        return self.via_host

    def contact_for(self, transport: str) -> str:
        """Our Contact URI for a dialog over ``transport`` (§8.1.1.8: reachable the same way)."""
        if transport == "tls" and self.tls is not None:
            return f"sip:{self.via_for('tls')};transport=tls"
        return f"sip:{self.via_host}"

    def route(self, contact: SipUri, source: Address | None = None, source_transport: str = "udp") -> Destination:
        """Where a request to a registered ``contact`` goes: the connection the REGISTER came on
        (``source``), while it is open, for a TLS contact registered over TLS or a contact with
        RFC 5626's ``;ob`` registered over the same transport (§5.3: user agents rarely run a
        TLS server of their own, and one behind NAT is reachable no other way); else the contact
        itself (``destination_for`` — a third-party registration over TCP names another UA)."""
        dest = destination_for(contact)
        if source is None or dest.transport != source_transport or source_transport not in _RELIABLE:
            return dest
        if source_transport == "tls" or contact.param("ob") is not None:
            table = self._tls if source_transport == "tls" else self._tcp
            if source in table:
                return Destination(source[0], source[1], source_transport)
        return dest

    # -- sending -----------------------------------------------------------------------------

    async def send_bytes(self, data: bytes, dest: Destination) -> None:
        """Send a response's bytes; a transport failure is logged, not raised (§17.2.4: the
        transaction user has nothing more to do with it)."""
        try:
            await self._send(data, dest)
        except _TRANSPORT_ERRORS as exc:
            log.info("sip: cannot answer %s: %s", peer_of(dest), exc)

    def send_soon(self, data: bytes, dest: Destination) -> None:
        """Send a response's bytes without a checkpoint: over UDP now, over TCP/TLS queued for
        the connection's writer (``send_bytes`` in a task when the connection must be opened
        again, §18.2.2). Failures are logged, not raised (as ``send_bytes``)."""
        assert self._nursery is not None
        if dest.transport in _RELIABLE:
            table = self._tls if dest.transport == "tls" else self._tcp
            conn = table.get((dest.host, dest.port))
            if conn is None:
                self._nursery.start_soon(self.send_bytes, data, dest)
            else:
                conn.send_soon(data, self._nursery)
            return
        try:
            self._udp_send(data, (dest.host, dest.port))
        except OSError as exc:
            log.info("sip: cannot answer %s: %s", peer_of(dest), exc)

    def fit_response(
        self, response: SipResponse, request_size: int | None
    ) -> tuple[SipResponse, bytes | None]:
        """The response to send and its bytes under ``UDP_AMPLIFICATION_FACTOR`` (see the module
        docstring): as it is, its minimal form, or (None) nothing."""
        data = serialize(response)
        if request_size is None:
            return response, data
        allowed = request_size * UDP_AMPLIFICATION_FACTOR
        if response.status in (401, 407):
            allowed += UDP_CHALLENGE_ALLOWANCE
        if len(data) <= allowed:
            return response, data
        if self.telemetry is not None:
            self.telemetry.metrics.limit_reached("sip-udp-response-size")
        small = minimal_response(response)
        data = serialize(small)
        if len(data) <= allowed:
            self._udp_responses_shrunk += 1
            return small, data
        self._udp_responses_withheld += 1
        log.debug("sip: %d response withheld over UDP (%d > %d bytes)", response.status, len(data), request_size)
        return small, None

    def answer(
        self, tx: ServerTransaction, key: ServerKey, response: SipResponse, request_size: int | None
    ) -> bytes | None:
        """``response`` in its server transaction: the bytes to send (fitted, see
        ``fit_response``), or None to send nothing. A transaction it ends is forgotten now,
        one it completes waits for Timer J in the timer queue."""
        response, data = self.fit_response(response, request_size)
        tx.send_response(response, trio.current_time(), data)
        if tx.state is State.TERMINATED:
            if self._server_txs.get(key) is tx:
                del self._server_txs[key]
        else:
            self._timers.schedule(tx, key)
        return data

    async def _send(self, data: bytes, dest: Destination) -> None:
        if dest.transport in _RELIABLE:
            table = self._tls if dest.transport == "tls" else self._tcp
            conn = table.get((dest.host, dest.port))
            if conn is None:
                conn = await self._connect_once(dest)
            await conn.send(data)
        else:
            self._udp_send(data, (dest.host, dest.port))

    def _udp_send(self, data: bytes, addr: Address) -> None:
        """Send one datagram now, without a checkpoint; when the socket's send buffer is full,
        queue it behind the others for ``_udp_writer``. OSError: it cannot be sent at all."""
        if not self._udp_backlog:
            assert self._udp is not None
            try:
                self._udp.sendto(data, addr)
                return
            except BlockingIOError:
                pass
        if self._udp_backlog_bytes + len(data) > UDP_MAX_QUEUED_BYTES:
            if not self._udp_send_drops:  # once, not per datagram: a flood would flood the log
                log.warning("sip: UDP send buffer full and %d bytes queued: datagrams dropped", self._udp_backlog_bytes)
            self._udp_send_drops += 1
            return
        if not self._udp_backlog:
            assert self._nursery is not None
            self._nursery.start_soon(self._udp_writer)
        self._udp_backlog.append((data, addr))
        self._udp_backlog_bytes += len(data)

    async def _udp_writer(self) -> None:
        """Send the queued datagrams, in order, as the send buffer drains."""
        sock, backlog = self._udp, self._udp_backlog
        assert sock is not None
        while backlog:
            await trio.lowlevel.wait_writable(sock)
            while backlog:
                data, addr = backlog[0]
                try:
                    sock.sendto(data, addr)
                except BlockingIOError:
                    break
                except OSError as exc:
                    log.info("sip: cannot send to %s:%d: %s", *addr, exc)
                backlog.popleft()
                self._udp_backlog_bytes -= len(data)
        if self._udp_send_drops:
            log.warning("sip: %d UDP datagrams were dropped while the send buffer was full", self._udp_send_drops)
            self._udp_send_drops = 0

    async def _send_stateless(
        self, response: SipResponse, dest: Destination, request_size: int | None
    ) -> None:
        """A response outside any server transaction (a refusal, 503 busy), size-fitted."""
        _, data = self.fit_response(response, request_size)
        if data is not None:
            await self.send_bytes(data, dest)

    async def _connect_once(self, dest: Destination) -> _TcpConnection:
        """The connection to ``dest``: opened by the first task that needs it; the tasks that
        need it meanwhile wait for that attempt instead of opening one each (a burst of
        requests to a new destination would otherwise open a connection per request)."""
        key = (dest.host, dest.port, dest.transport)
        while (attempt := self._connecting.get(key)) is not None:
            await attempt.wait()
            table = self._tls if dest.transport == "tls" else self._tcp
            conn = table.get((dest.host, dest.port))
            if conn is not None:
                return conn
        attempt = self._connecting[key] = trio.Event()
        try:
            return await self._connect(dest)
        finally:
            del self._connecting[key]
            attempt.set()

    async def _connect(self, dest: Destination) -> _TcpConnection:
        if len(self._tcp) + len(self._tls) >= MAX_TCP_CONNECTIONS:
            raise OSError("too many TCP connections")
        if dest.transport == "tls":
            conn = await self._connect_tls(dest)
            self._tls[conn.peer] = conn
        else:
            conn = _TcpConnection(await trio.open_tcp_stream(dest.host, dest.port), (dest.host, dest.port))
            self._tcp[conn.peer] = conn
        assert self._nursery is not None
        self._nursery.start_soon(self._tcp_reader, conn)
        return conn

    async def _connect_tls(self, dest: Destination) -> _TcpConnection:
        """A verified TLS connection to ``dest`` (OSError naming the cause if it cannot be had)."""
        if self.tls is None:
            raise OSError("SIP over TLS is not configured (no [tls] certificate)")
        try:
            with trio.fail_after(TLS_HANDSHAKE_TIMEOUT):
                stream = await trio.open_tcp_stream(dest.host, dest.port)
        except trio.TooSlowError:
            raise OSError(f"TCP connection to {dest.host}:{dest.port} timed out") from None
        tls = trio.SSLStream(stream, self.tls.client, server_hostname=dest.host)
        try:
            with trio.fail_after(TLS_HANDSHAKE_TIMEOUT):
                await tls.do_handshake()
        except (trio.BrokenResourceError, trio.TooSlowError) as exc:
            await send_pending_alert(tls)
            await trio.aclose_forcefully(tls)
            reason = tls_failure(exc)
            log.warning("sip: TLS handshake with %s:%d failed: %s", dest.host, dest.port, reason)
            raise OSError(f"TLS handshake with {dest.host}:{dest.port} failed: {reason}") from None
        return _TcpConnection(tls, (dest.host, dest.port), "tls")

    def new_branch(self) -> str:
        return "z9hG4bK" + secrets.token_hex(8)

    def begin_request(
        self,
        request: SipRequest | OutgoingRequest,
        dest: Destination,
        on_final: OnFinal | None = None,
    ) -> PendingRequest:
        """Start a client transaction now, without waiting: its first transmission is queued
        for ``dest`` behind every request begun before it. One writer per destination writes
        them in that order, all that is queued in one write (TCP/TLS), so a caller that begins
        requests in order (the gateway's stanzas of one sender) has them sent in order.
        The final response goes to ``on_final`` (called once, from the transport's tasks —
        possibly before this returns, when the request cannot be sent or the table is full),
        or ``await finish(pending)`` gets it."""
        tx = ClientTransaction(request, reliable=dest.transport in _RELIABLE, now=trio.current_time())
        pending = PendingRequest(tx, dest, on_final=on_final)
        if len(self._client_txs) >= MAX_TRANSACTIONS:
            pending.refused = response_to(tx.outgoing.parsed(), 503, "Too Many Transactions")
            pending.settle()
            return pending
        self._client_txs[tx.key] = pending
        self._timers.schedule(tx, pending)
        if dest.transport == "udp":  # sent now: the socket keeps the order
            try:
                self._udp_send(tx.outgoing.data, (dest.host, dest.port))
            except OSError as exc:
                log.info("sip: cannot send to %s: %s", dest, exc)
                self._fail_transaction(pending, "Destination Unreachable")
            return pending
        where = (dest.host, dest.port, dest.transport)
        outbox = self._outboxes.get(where)
        if outbox is None:
            outbox = self._outboxes[where] = []
            assert self._nursery is not None
            self._nursery.start_soon(self._write_outbox, dest, outbox)
        outbox.append((tx.outgoing.data, pending))
        return pending

    async def finish(self, pending: PendingRequest) -> SipResponse:
        """The final response of a begun request: a timeout (Timer F) or a transport error
        gives a locally made 408 / 503 (§8.1.3.1). Cancellation abandons the transaction
        (its timers end it)."""
        if not pending.settled:
            if pending.waiter is None:
                pending.waiter = trio.Event()
            await pending.waiter.wait()
        return pending.final_response()

    async def request(self, request: SipRequest, dest: Destination) -> SipResponse:
        """Send a request in a client transaction; return the final response."""
        return await self.finish(self.begin_request(request, dest))

    def _ended(self, pending: PendingRequest) -> None:
        """Forget a terminated client transaction (its waiter holds ``pending`` itself)."""
        key = pending.tx.key
        if self._client_txs.get(key) is pending:
            del self._client_txs[key]

    async def _write_outbox(self, dest: Destination, outbox: list[tuple[bytes, PendingRequest]]) -> None:
        """The writer of ``dest``'s (TCP/TLS) queued first transmissions, until the queue is empty."""
        try:
            while outbox:
                batch = outbox[:]
                outbox.clear()
                try:
                    table = self._tls if dest.transport == "tls" else self._tcp
                    conn = table.get((dest.host, dest.port))
                    if conn is None:
                        conn = await self._connect_once(dest)
                    await conn.send(b"".join([data for data, _ in batch]))
                except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                    log.info("sip: cannot send to %s: %s", dest, exc)
                    for _, pending in batch:
                        self._fail_transaction(pending, "Destination Unreachable")
        finally:
            # No checkpoint between the last look at the queue and this: a request begun
            # from now on finds no writer and starts one.
            where = (dest.host, dest.port, dest.transport)
            if self._outboxes.get(where) is outbox:
                del self._outboxes[where]

    def _fail_transaction(self, pending: PendingRequest, reason: str) -> None:
        """§17.1.4: a transport error ends the transaction; the user gets a local 503."""
        if pending.settled:
            return
        pending.tx.on_transport_error()
        self._ended(pending)
        pending.settle(response_to(pending.tx.outgoing.parsed(), 503, reason))

    # -- receiving ---------------------------------------------------------------------------

    async def _udp_loop(self) -> None:
        assert self._udp is not None
        while True:
            await trio.lowlevel.wait_readable(self._udp)
            await self._drain_udp()

    async def _drain_udp(self) -> None:
        """Read and handle the datagrams waiting on the UDP socket until it would block (at most
        ``UDP_DRAIN_BATCH``, then a checkpoint): every wake-up takes all there is, so a burst
        of answers is read before anything else is sent (a 200 left unread would have its
        request retransmitted). Handling a datagram never waits: UDP sends do not block."""
        sock = self._udp
        assert sock is not None
        for _ in range(UDP_DRAIN_BATCH):
            try:
                data, addr = sock.recvfrom(UDP_RECV_BYTES)
            except BlockingIOError:
                return
            except (ConnectionResetError, ConnectionRefusedError) as exc:
                # an ICMP error for an earlier send, reported on the socket (not on Linux for an
                # unconnected socket; on other systems): about no datagram of ours to read
                log.debug("sip: UDP socket reports %s", exc)
                continue
            await self._on_udp_datagram(data, addr)
        await trio.lowlevel.checkpoint()

    async def _on_udp_datagram(self, data: bytes, addr: Address) -> None:
        if not data.strip():
            return  # keep-alive CRLFs (RFC 5626 §3.5.1)
        source = Destination(addr[0], addr[1], "udp")
        inbound = _Inbound(data=data)
        await contain(
            Surface.SIP_DATAGRAM,
            peer_of(source),
            self.telemetry,
            partial(self._on_datagram, data, source, inbound),
            answer=partial(self._answer_failure, inbound, source, len(data)),
            answer_name="500",
        )

    async def _on_datagram(self, data: bytes, source: Destination, inbound: _Inbound) -> None:
        try:
            message = parse_datagram(data)
        except SipParseError as exc:
            await self._refuse(exc, source, len(data))
            return
        await self._dispatch(message, source, inbound, len(data))

    async def _refuse(self, exc: SipParseError, source: Destination, request_size: int | None) -> None:
        """Answer a message the parser refused, from its raw head, or drop it (§8.2.6.2 needs
        Via, From, To, Call-ID and CSeq to build a response at all; none to a response or ACK)."""
        response = response_from_head(exc.head, exc.status, to_tag="bad") if exc.head else None
        answer = str(exc.status) if response is not None else "dropped"
        self._malformed["answered" if response is not None else "dropped"] += 1
        if self.telemetry is not None:
            self.telemetry.metrics.sip_malformed(source.transport, answer)
        log.info("sip: malformed message from %s (%s): %s", peer_of(source), answer, exc)
        if response is not None:
            response.headers.add("Warning", warning_text(str(exc)))
            await self._send_stateless(response, source, request_size)

    async def _refuse_request(
        self, request: SipRequest, exc: SipParseError, ctx: ServerContext | None, source: Destination,
        request_size: int | None,
    ) -> None:
        """Answer a request whose header was found malformed where it was used (after parsing)."""
        self._malformed["answered"] += 1
        if self.telemetry is not None:
            self.telemetry.metrics.sip_malformed(source.transport, str(exc.status))
        log.info("sip: malformed %s from %s: %s", request.method, peer_of(source), exc)
        if request.method == "ACK":
            return
        response = response_to(request, exc.status, to_tag="bad")
        response.headers.add("Warning", warning_text(str(exc)))
        if ctx is None:
            await self._send_stateless(response, source, request_size)
        elif not ctx.responded:
            await ctx.respond(response)

    async def _answer_failure(
        self, inbound: _Inbound, source: Destination, request_size: int | None, exc: BaseException
    ) -> None:
        """The boundary's answer to a failed datagram or connection: 500 to the request being
        handled, through its transaction if it has one (retransmissions then get it too)."""
        del exc
        request = inbound.request
        if request is None:
            # failed before a request was known (the parser itself): from the raw head, if any
            if inbound.data is not None:
                head = inbound.data.partition(b"\r\n\r\n")[0]
                response = response_from_head(head, 500, to_tag="err")
                if response is not None:
                    await self._send_stateless(response, source, request_size)
            return
        if request.method == "ACK":
            return
        response = response_to(request, 500, to_tag="err")
        if inbound.ctx is None:
            await self._send_stateless(response, source, request_size)
        elif not inbound.ctx.responded:
            await inbound.ctx.respond(response)

    async def _connection_handler(self, transport: str, stream: trio.SocketStream) -> None:
        """One accepted TCP or TLS (``transport``) connection, inside its failure boundary."""
        try:
            peer = stream.socket.getpeername()
        except OSError:  # reset before we looked
            await trio.aclose_forcefully(stream)
            return
        source = Destination(peer[0], peer[1], transport)
        accept = self._accept_tls if transport == "tls" else self._accept_tcp
        try:
            await contain(
                Surface.SIP_CONNECTION, peer_of(source), self.telemetry,
                partial(accept, stream, source),
            )
        finally:
            await trio.aclose_forcefully(stream)

    async def _accept_tcp(self, stream: trio.SocketStream, source: Destination) -> None:
        if len(self._tcp) >= MAX_TCP_CONNECTIONS:
            return
        conn = _TcpConnection(stream, (source.host, source.port))
        self._tcp[conn.peer] = conn
        await self._tcp_reader(conn)

    async def _accept_tls(self, stream: trio.SocketStream, source: Destination) -> None:
        if len(self._tcp) + len(self._tls) >= MAX_TCP_CONNECTIONS:
            return
        assert self.tls is not None
        tls = trio.SSLStream(stream, self.tls.server, server_side=True)
        try:
            with trio.fail_after(TLS_HANDSHAKE_TIMEOUT):
                await tls.do_handshake()
        except (trio.BrokenResourceError, trio.TooSlowError) as exc:
            log.info("sip: TLS handshake from %s:%d failed: %s", source.host, source.port, tls_failure(exc))
            await send_pending_alert(tls)
            await trio.aclose_forcefully(tls)
            return
        conn = _TcpConnection(tls, (source.host, source.port), "tls")
        self._tls[conn.peer] = conn
        await self._tcp_reader(conn)

    async def _tcp_reader(self, conn: _TcpConnection) -> None:
        """Read one connection until it ends, inside its failure boundary: whatever happens,
        this connection is closed and forgotten, nothing else."""
        source = Destination(conn.peer[0], conn.peer[1], conn.transport)
        inbound = _Inbound()
        try:
            await contain(
                Surface.SIP_CONNECTION,
                peer_of(source),
                self.telemetry,
                partial(self._read_connection, conn, source, inbound),
                answer=partial(self._answer_failure, inbound, source, None),
                answer_name="500, closed",
            )
        finally:
            table = self._tls if conn.transport == "tls" else self._tcp
            if table.get(conn.peer) is conn:
                del table[conn.peer]
            await trio.aclose_forcefully(conn.stream)

    async def _read_connection(self, conn: _TcpConnection, source: Destination, inbound: _Inbound) -> None:
        parser = SipParser()
        try:
            async for chunk in conn.stream:
                parser.feed(chunk)
                while (message := parser.next_message()) is not None:
                    if isinstance(message, SipRequest) and message.method != "ACK":
                        # none free: this connection is not read until one is (TCP holds the UA)
                        await self._take_slot()
                        inbound.slot = True
                    try:
                        await self._dispatch(message, source, inbound, None)
                    finally:
                        if inbound.slot:  # not handed to a handler task
                            inbound.slot = False
                            self._release_slot()
                    inbound.request, inbound.ctx = None, None  # its handler task answers now
        except SipParseError as exc:
            # §18.3: a stream cannot be resynchronised; answer what can be answered, then close
            log.info("sip: %s connection %s ends: %s", conn.transport.upper(), conn.peer, exc)
            await self._refuse(exc, source, None)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            log.info("sip: %s connection %s ends: %s", conn.transport.upper(), conn.peer, exc)

    async def _dispatch(
        self,
        message: SipRequest | SipResponse,
        source: Destination,
        inbound: _Inbound | None = None,
        request_size: int | None = None,
    ) -> None:
        """Hand one parsed message to its transaction or the transaction user. ``request_size``:
        the datagram's bytes over UDP (responses are fitted to it)."""
        if isinstance(message, SipResponse):
            try:
                key = client_key(message)
            except SipParseError as exc:
                log.info("sip: malformed response from %s dropped: %s", peer_of(source), exc)
                return  # §18.1.2: a response nobody can match is dropped
            pending = self._client_txs.get(key)
            if pending is None:
                return  # §18.1.2: no transaction, drop
            tx = pending.tx
            delivered = None
            for action in tx.on_response(message, trio.current_time()):
                if isinstance(action, Deliver):
                    delivered = action.response
            if delivered is not None or tx.state is State.TERMINATED:
                # Final: forgotten now, also over UDP. Completed's only work until Timer K
                # (§17.1.2.2) is to absorb retransmissions of the final response, which is what
                # §18.1.2's drop of a response that matches no transaction does here — the user
                # sees neither. Keeping ~10 objects per message for T4 = 5 s made every full
                # garbage collection scan them (a ~100 ms pause at 3,500 messages/s).
                self._ended(pending)
            else:
                self._timers.schedule(tx, pending)
            if delivered is not None:
                pending.settle(delivered)
            return
        if inbound is not None:
            inbound.request = message
        if message.method == "ACK":
            return  # no transaction: we never send INVITE responses that an ACK would follow
        try:
            key = server_key(message)
        except SipParseError as exc:
            await self._refuse_request(message, exc, None, source, request_size)
            return
        existing = self._server_txs.get(key)
        if existing is not None:
            for action in existing.on_request_retransmission():
                if isinstance(action, Retransmit):
                    await self.send_bytes(action.data, source)
            return
        held = inbound is not None and inbound.slot  # taken by the TCP/TLS reader
        if len(self._server_txs) >= MAX_TRANSACTIONS:
            await self._answer_busy(message, source, request_size, "MAX_TRANSACTIONS")
            return
        if not held and not self._free_slots and self._waiting_requests >= MAX_WAITING_REQUESTS:
            await self._answer_busy(message, source, request_size, "MAX_WAITING_REQUESTS")
            return
        tx = ServerTransaction(message, reliable=source.transport in _RELIABLE, now=trio.current_time())
        self._server_txs[key] = tx
        ctx = ServerContext(self, tx, key, source, request_size)
        if inbound is not None:
            inbound.ctx = ctx
        if held:
            assert inbound is not None
            inbound.slot = False  # passes to the handler task
        elif self._free_slots:
            self._free_slots -= 1
        else:  # kept in its transaction (retransmissions absorbed) until a slot is given back
            self._waiting_requests += 1
            self._slot_waiters.append(partial(self._start_waiting, message, ctx))
            return
        try:
            self._start(message, ctx)
        except BaseException:
            self._release_slot()
            raise

    def _start(self, message: SipRequest, ctx: ServerContext) -> None:
        """Start the transaction user of a request that holds a handler slot (its task gives it
        back). The owner may take the request now, in the order requests were read (a MESSAGE
        queued for the XMPP side: trio starts tasks in no particular order); it returns what is
        left to do (wait, answer), which runs as the handler would."""
        work: Callable[[], Awaitable[None]]
        try:
            rest = self.take_now(message, ctx) if self.take_now is not None else None
        except SipParseError as exc:
            work = partial(self._refuse_request, message, exc, ctx, ctx.source, ctx.request_size)
        else:
            if rest is ANSWER_LATER:
                ctx._holds_slot = True  # given back by ctx.respond_later
                return
            assert not isinstance(rest, AnswerLater)
            work = rest if rest is not None else partial(self.handler, message, ctx)
        assert self._nursery is not None
        self._nursery.start_soon(self._run_handler, message, ctx, work)

    def _start_waiting(self, message: SipRequest, ctx: ServerContext) -> None:
        """A kept request gets the slot just given back (``_release_slot``)."""
        self._waiting_requests -= 1
        try:
            self._start(message, ctx)
        except Exception as exc:  # noqa: BLE001 - the owner's hook failed: contained in the task
            assert self._nursery is not None
            self._nursery.start_soon(self._run_handler, message, ctx, partial(_raise, exc))

    async def _take_slot(self) -> None:
        """A handler slot for a TCP/TLS reader: at once if one is free (no checkpoint), else
        the first given back after those waiting before it."""
        if self._free_slots:
            self._free_slots -= 1
            return
        taken = trio.Event()
        self._slot_waiters.append(taken.set)
        try:
            await taken.wait()
        except BaseException:
            if taken.is_set():
                self._release_slot()
            else:
                self._slot_waiters.remove(taken.set)
            raise

    def _release_slot(self) -> None:
        """Give a handler slot back: to the first waiting for one, if any."""
        if self._slot_waiters:
            self._slot_waiters.popleft()()
        else:
            self._free_slots += 1

    async def _answer_busy(
        self, request: SipRequest, source: Destination, request_size: int | None, limit: str
    ) -> None:
        """503 with Retry-After (§21.5.4): ``limit`` is full. Counted, per transport and limit."""
        self._busy += 1
        if self.telemetry is not None:
            self.telemetry.sip_busy(source.transport, limit)
        busy = response_to(request, 503, to_tag="busy")
        busy.headers.add("Retry-After", "5")
        await self._send_stateless(busy, source, request_size)

    async def _run_handler(
        self, request: SipRequest, ctx: ServerContext, work: Callable[[], Awaitable[None]]
    ) -> None:
        """One request's transaction user, in its failure boundary: a malformed header found
        there gets its status, anything else raised a 500 (reported); no final response at all
        is a 500 too. Gives back the slot it was started with."""
        try:
            await contain(
                surface_of(ctx.source),
                peer_of(ctx.source),
                self.telemetry,
                partial(self._handle, request, ctx, work),
                answer=partial(self._answer_in_transaction, request, ctx),
                answer_name="500",
            )
            if not ctx.responded:
                try:
                    await ctx.respond(response_to(request, 500, "No Response", to_tag="err"))
                except Exception:  # noqa: BLE001 - the handler left its transaction in a state we cannot answer
                    log.exception("sip: %s from %s left unanswered", request.method, peer_of(ctx.source))
        finally:
            self._release_slot()

    async def _handle(self, request: SipRequest, ctx: ServerContext, work: Callable[[], Awaitable[None]]) -> None:
        try:
            await work()
        except SipParseError as exc:
            await self._refuse_request(request, exc, ctx, ctx.source, ctx.request_size)

    async def _answer_in_transaction(self, request: SipRequest, ctx: ServerContext, exc: BaseException) -> None:
        del exc
        if not ctx.responded:
            await ctx.respond(response_to(request, 500, to_tag="err"))

    # -- timers ------------------------------------------------------------------------------

    async def _timer_loop(self) -> None:
        """Every ``TIMER_TICK``: the transactions whose deadline has come (``TimerQueue``),
        after the datagrams already received (reads before writes: an answer waiting on the
        socket ends its transaction instead of drawing a retransmission)."""
        while True:
            await trio.sleep(TIMER_TICK)
            if self._udp is not None:
                await self._drain_udp()
            now = trio.current_time()
            for tx, owner in self._timers.due(now):
                if isinstance(owner, PendingRequest):
                    await self._client_timer(owner, now)
                else:
                    tx.on_timer(now)  # Timer J
                    if tx.state is State.TERMINATED and self._server_txs.get(owner) is tx:
                        del self._server_txs[owner]

    async def _client_timer(self, pending: PendingRequest, now: float) -> None:
        tx = pending.tx
        for action in tx.on_timer(now):
            if isinstance(action, Retransmit):
                try:
                    await self._send(action.data, pending.dest)
                except _TRANSPORT_ERRORS:
                    tx.on_transport_error()
            # TimedOut (Timer F) terminates the transaction: settled below
        if tx.state is State.TERMINATED:
            self._ended(pending)
            pending.settle()  # Timer F or a transport error: a local 408
        else:
            self._timers.schedule(tx, pending)

    def statistics(self) -> dict[str, int]:
        return {
            "server_transactions": len(self._server_txs),
            "client_transactions": len(self._client_txs),
            "tcp_connections": len(self._tcp),
            "tls_connections": len(self._tls),
            "malformed_answered": self._malformed["answered"],
            "malformed_dropped": self._malformed["dropped"],
            "udp_responses_shrunk": self._udp_responses_shrunk,
            "udp_responses_withheld": self._udp_responses_withheld,
            "waiting_requests": self._waiting_requests,
            "handlers_busy": MAX_CONCURRENT_REQUESTS - self._free_slots,
            "busy": self._busy,
        }



async def _raise(exc: Exception) -> None:
    """Raise ``exc`` in a handler task's failure boundary (a failure before the task started)."""
    raise exc
