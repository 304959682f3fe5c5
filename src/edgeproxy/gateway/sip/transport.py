"""SIP over UDP and TCP with trio: listeners, connections, transaction tables (RFC 3261 §17, §18).

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
  task waiting in :meth:`SipTransport.request`; unmatched responses are dropped (§18.1.2).

Responses go back where the request came from (§18.2.2 with ``rport``, RFC 3581: the source
address and port of the datagram, or the same TCP connection). Outgoing requests to a TCP
destination reuse or open a connection (§18.1.1). A single timer task runs every transaction's
timers (retransmissions over UDP, Timer F timeouts, cleanup) from ``trio.current_time()``.

Bounded: the transaction tables (``MAX_TRANSACTIONS``, new requests beyond it get 503),
TCP connections (``MAX_TCP_CONNECTIONS``), the stream parser's limits per connection, and the
handler tasks (``MAX_CONCURRENT_REQUESTS``, a semaphore; over it: 503 Service Unavailable with
Retry-After, §21.5.4).
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio

from edgeproxy.gateway.sip.message import (
    SipParseError,
    SipParser,
    SipRequest,
    SipResponse,
    parse_datagram,
    response_to,
    serialize,
)
from edgeproxy.gateway.sip.transaction import (
    ClientTransaction,
    Deliver,
    Retransmit,
    ServerTransaction,
    State,
    TimedOut,
    client_key,
    server_key,
)

log = logging.getLogger(__name__)

#: Live transactions per table; ~64·T1 = 32 s of traffic at 1,000 requests/s plus headroom.
MAX_TRANSACTIONS = 50_000
MAX_TCP_CONNECTIONS = 1024
MAX_CONCURRENT_REQUESTS = 1024
#: Largest UDP datagram read (IPv4 maximum payload).
UDP_RECV_BYTES = 65535
#: Timer task granularity, seconds (T1/5).
TIMER_TICK = 0.1

Address = tuple[str, int]


@dataclass(slots=True)
class Destination:
    host: str
    port: int
    transport: str = "udp"  # "udp" | "tcp"


class ServerContext:
    """What the transaction user gets with a request: where it came from, and ``respond``."""

    def __init__(
        self, transport: SipTransport, tx: ServerTransaction, reply_to: Destination
    ) -> None:
        self._transport = transport
        self._tx = tx
        self.source = reply_to

    @property
    def responded(self) -> bool:
        return self._tx.state in (State.COMPLETED, State.TERMINATED)

    async def respond(self, response: SipResponse) -> None:
        self._tx.send_response(response, trio.current_time())
        await self._transport.send_to(response, self.source)


Handler = Callable[[SipRequest, ServerContext], Awaitable[None]]


class _TcpConnection:
    def __init__(self, stream: trio.SocketStream, peer: Address) -> None:
        self.stream = stream
        self.peer = peer
        self.lock = trio.Lock()

    async def send(self, data: bytes) -> None:
        async with self.lock:
            await self.stream.send_all(data)


class SipTransport:
    """UDP + TCP on one address, with transaction tables (see the module docstring)."""

    def __init__(self, host: str, port: int, handler: Handler) -> None:
        self.host = host
        self.port = port
        self.handler = handler
        self._udp: trio.socket.SocketType | None = None
        self._tcp: dict[Address, _TcpConnection] = {}
        self._server_txs: dict[tuple[str, ...], ServerTransaction] = {}
        self._client_txs: dict[
            tuple[str, str], tuple[ClientTransaction, Destination, trio.Event]
        ] = {}
        self._results: dict[tuple[str, str], SipResponse | None] = {}
        self._slots = trio.Semaphore(MAX_CONCURRENT_REQUESTS)
        self._nursery: trio.Nursery | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    async def serve(
        self, *, task_status: trio.TaskStatus[Address] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Bind UDP and TCP on (host, port) — port 0 picks one free for both — and serve."""
        udp, listeners = await self._bind()
        self._udp = udp
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._udp_loop)
            nursery.start_soon(self._timer_loop)
            nursery.start_soon(trio.serve_listeners, self._tcp_handler, listeners)
            task_status.started((self.host, self.port))

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

    @property
    def via_host(self) -> str:
        return f"{self.host}:{self.port}"

    # -- sending -----------------------------------------------------------------------------

    async def send_to(self, message: SipRequest | SipResponse, dest: Destination) -> None:
        data = serialize(message)
        if dest.transport == "tcp":
            conn = self._tcp.get((dest.host, dest.port))
            if conn is None:
                conn = await self._connect(dest)
            await conn.send(data)
        else:
            assert self._udp is not None
            await self._udp.sendto(data, (dest.host, dest.port))

    async def _connect(self, dest: Destination) -> _TcpConnection:
        if len(self._tcp) >= MAX_TCP_CONNECTIONS:
            raise OSError("too many TCP connections")
        stream = await trio.open_tcp_stream(dest.host, dest.port)
        conn = _TcpConnection(stream, (dest.host, dest.port))
        self._tcp[conn.peer] = conn
        assert self._nursery is not None
        self._nursery.start_soon(self._tcp_reader, conn)
        return conn

    def new_branch(self) -> str:
        return "z9hG4bK" + secrets.token_hex(8)

    async def request(self, request: SipRequest, dest: Destination) -> SipResponse:
        """Send a request in a client transaction; return the final response.

        A timeout (Timer F) or a transport error returns a locally made 408 / 503 (§8.1.3.1).
        Cancellation abandons the transaction.
        """
        now = trio.current_time()
        tx = ClientTransaction(request, reliable=dest.transport == "tcp", now=now)
        if len(self._client_txs) >= MAX_TRANSACTIONS:
            return response_to(request, 503, "Too Many Transactions")
        done = trio.Event()
        self._client_txs[tx.key] = (tx, dest, done)
        try:
            try:
                await self.send_to(request, dest)
            except OSError as exc:
                log.info("sip: cannot send to %s: %s", dest, exc)
                return response_to(request, 503, "Destination Unreachable")
            await done.wait()
            result = self._results.pop(tx.key, None)
            return result if result is not None else response_to(request, 408)
        finally:
            self._results.pop(tx.key, None)
            if tx.state is State.TERMINATED:
                self._client_txs.pop(tx.key, None)

    # -- receiving ---------------------------------------------------------------------------

    async def _udp_loop(self) -> None:
        assert self._udp is not None
        while True:
            data, addr = await self._udp.recvfrom(UDP_RECV_BYTES)
            if not data.strip():
                continue  # keep-alive CRLFs (RFC 5626 §3.5.1)
            try:
                message = parse_datagram(data)
            except SipParseError as exc:
                await self._refuse_datagram(data, exc, Destination(addr[0], addr[1], "udp"))
                continue
            await self._dispatch(message, Destination(addr[0], addr[1], "udp"))

    async def _refuse_datagram(self, data: bytes, exc: SipParseError, source: Destination) -> None:
        log.info("sip: malformed datagram from %s: %s", source, exc)

    async def _tcp_handler(self, stream: trio.SocketStream) -> None:
        peer = stream.socket.getpeername()
        conn = _TcpConnection(stream, (peer[0], peer[1]))
        if len(self._tcp) >= MAX_TCP_CONNECTIONS:
            await stream.aclose()
            return
        self._tcp[conn.peer] = conn
        await self._tcp_reader(conn)

    async def _tcp_reader(self, conn: _TcpConnection) -> None:
        parser = SipParser()
        source = Destination(conn.peer[0], conn.peer[1], "tcp")
        try:
            async for chunk in conn.stream:
                parser.feed(chunk)
                while (message := parser.next_message()) is not None:
                    await self._dispatch(message, source)
        except (SipParseError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            log.info("sip: TCP connection %s ends: %s", conn.peer, exc)
        finally:
            if self._tcp.get(conn.peer) is conn:
                del self._tcp[conn.peer]
            await conn.stream.aclose()

    async def _dispatch(self, message: SipRequest | SipResponse, source: Destination) -> None:
        if isinstance(message, SipResponse):
            entry = self._client_txs.get(client_key(message))
            if entry is None:
                return  # §18.1.2: no transaction, drop
            tx, _, done = entry
            for action in tx.on_response(message, trio.current_time()):
                if isinstance(action, Deliver):
                    self._results[tx.key] = action.response
                    done.set()
            return
        if message.method == "ACK":
            return  # no transaction: we never send INVITE responses that an ACK would follow
        key = server_key(message)
        existing = self._server_txs.get(key)
        if existing is not None:
            for action in existing.on_request_retransmission():
                if isinstance(action, Retransmit):
                    await self.send_to(action.message, source)
            return
        if len(self._server_txs) >= MAX_TRANSACTIONS or self._slots.value == 0:
            busy = response_to(message, 503, to_tag="busy")
            busy.headers.add("Retry-After", "5")
            await self.send_to(busy, source)
            return
        tx = ServerTransaction(message, reliable=source.transport == "tcp", now=trio.current_time())
        self._server_txs[key] = tx
        assert self._nursery is not None
        self._nursery.start_soon(self._run_handler, message, ServerContext(self, tx, source))

    async def _run_handler(self, request: SipRequest, ctx: ServerContext) -> None:
        async with self._slots:
            try:
                await self.handler(request, ctx)
            except Exception:
                log.exception("sip: handler failed for %s", request.method)
                if not ctx.responded:
                    await ctx.respond(response_to(request, 500, to_tag="err"))
            if not ctx.responded:
                await ctx.respond(response_to(request, 500, "No Response", to_tag="err"))

    # -- timers ------------------------------------------------------------------------------

    async def _timer_loop(self) -> None:
        while True:
            await trio.sleep(TIMER_TICK)
            now = trio.current_time()
            for key, (tx, dest, done) in list(self._client_txs.items()):
                deadline = tx.deadline
                if deadline is not None and deadline <= now:
                    for action in tx.on_timer(now):
                        if isinstance(action, Retransmit):
                            try:
                                await self.send_to(action.message, dest)
                            except OSError:
                                tx.on_transport_error()
                                done.set()
                        elif isinstance(action, TimedOut):
                            done.set()
                if tx.state is State.TERMINATED and done.is_set() and key not in self._results:
                    self._client_txs.pop(key, None)
            for key, stx in list(self._server_txs.items()):
                deadline = stx.deadline
                if deadline is not None and deadline <= now:
                    stx.on_timer(now)
                if stx.state is State.TERMINATED:
                    del self._server_txs[key]

    def statistics(self) -> dict[str, int]:
        return {
            "server_transactions": len(self._server_txs),
            "client_transactions": len(self._client_txs),
            "tcp_connections": len(self._tcp),
        }
