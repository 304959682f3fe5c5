"""A light SIP user agent for the product-path benchmark (``bench_product.py``), trio, UDP or TCP.

SIPp saturates near 4,000 MESSAGEs/s; this UA does only what the bench needs, with as little
Python per message as it can, so that it is not what limits the measured path:

* **REGISTER** with digest (RFC 3261 §22; RFC 7616 §3.4.1, qop=auth): of the challenges the
  registrar offers, the MD5 one is answered (``tests/fixtures/sipauth.py`` computes the answer).
  Over UDP the Contact is the UA's socket; over TCP it carries RFC 5626 ``;ob``, so the gateway
  sends its requests over the connection the UA registered on (its flow reuse; the UA runs no
  TCP server).
* **As UAS**: every MESSAGE is answered 200 at once (over TCP, all the answers to one read in
  one write). A request seen again — same Call-ID and CSeq — is a retransmission: counted and
  answered again. ``on_message(body, now)`` sees each new MESSAGE's body.
* **As UAC**: :meth:`LightUA.send_messages` sends MESSAGEs open loop (optionally at most
  ``window`` unanswered), each with a preemptive ``Proxy-Authorization`` that reuses the nonce of
  the last challenge with the next nonce count (RFC 7616 §3.4.5): only a request without a
  usable nonce — the first, or one the gateway refuses as stale or replayed — meets a 407,
  which is counted and answered by sending the request again (new branch, next CSeq). Over UDP
  a request is retransmitted on Timer E (T1, doubling up to T2) until a final response or
  Timer F (RFC 3261 §17.1.2.2); the retransmissions are counted.

Bounded: a request is given up after Timer F (over TCP too; counted as status 408); everything
runs in the nursery of :func:`open_ua`, cancelled when its block ends.
"""

from __future__ import annotations

import collections
import heapq
import secrets
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # tests/fixtures

from fixtures.sipauth import authorization, md5_challenge  # noqa: E402

#: RFC 3261 §17.1.2.2 timers (seconds): retransmission interval start and cap, give-up time.
T1, T2, TIMER_F = 0.5, 4.0, 32.0
#: Socket buffers asked for (the kernel caps them at net.core.[rw]mem_max).
SOCKET_BUFFER = 4 * 1024 * 1024
#: MESSAGEs written per TCP write when sending open loop (and per scheduler turn over UDP).
BATCH = 50
#: With a ``rate``: seconds between two writes of ``send_messages``.
PACE_TICK = 0.005
#: Datagrams read per wake-up at most.
DRAIN = 256
#: Compact header names (RFC 3261 §7.3.3) the UA reads.
_COMPACT = {"v": "via", "f": "from", "t": "to", "i": "call-id", "l": "content-length"}
_FINAL_STATUS_TIMEOUT = 408


@dataclass(slots=True)
class Parsed:
    """One SIP message, split: the start line, the header lines (name lower-cased, compact forms
    expanded; the original line kept for echoing), the body."""

    start: str
    headers: dict[str, list[str]]
    lines: dict[str, list[str]]
    body: bytes

    def first(self, name: str) -> str:
        values = self.headers.get(name)
        return values[0] if values else ""


def parse(data: bytes) -> Parsed:
    head, _, body = data.partition(b"\r\n\r\n")
    text = head.decode("utf-8", "replace").split("\r\n")
    headers: dict[str, list[str]] = {}
    lines: dict[str, list[str]] = {}
    for line in text[1:]:
        name, _, value = line.partition(":")
        key = name.strip().lower()
        key = _COMPACT.get(key, key)
        headers.setdefault(key, []).append(value.strip())
        lines.setdefault(key, []).append(line)
    return Parsed(text[0], headers, lines, body)


def branch_of(via: str) -> str:
    start = via.find("branch=")
    if start < 0:
        return ""
    end = start + 7
    while end < len(via) and via[end] not in ";, ":
        end += 1
    return via[start + 7 : end]


def ok_response(request: Parsed, to_tag: str) -> bytes:
    """200 OK for ``request``: its Via, From, To (with our tag), Call-ID and CSeq lines."""
    to = request.lines["to"][0]
    if ";tag=" not in to:
        to += f";tag={to_tag}"
    head = [
        "SIP/2.0 200 OK",
        *request.lines["via"],
        request.lines["from"][0],
        to,
        request.lines["call-id"][0],
        request.lines["cseq"][0],
        "Content-Length: 0",
    ]
    return ("\r\n".join(head) + "\r\n\r\n").encode()


def split_stream(buffer: bytearray) -> list[bytes]:
    """Complete messages at the front of a TCP ``buffer`` (RFC 3261 §18.3 framing by
    Content-Length), removed from it."""
    out: list[bytes] = []
    start = 0
    while True:
        while buffer.startswith(b"\r\n", start):  # keep-alive CRLFs
            start += 2
        end = buffer.find(b"\r\n\r\n", start)
        if end < 0:
            break
        length = 0
        head = bytes(buffer[start:end]).lower()
        for marker in (b"\ncontent-length:", b"\nl:"):
            at = head.find(marker)
            if at >= 0:
                eol = head.find(b"\r", at + len(marker))
                length = int(head[at + len(marker) : eol if eol >= 0 else len(head)])
                break
        stop = end + 4 + length
        if stop > len(buffer):
            break
        out.append(bytes(buffer[start:stop]))
        start = stop
    del buffer[:start]
    return out


@dataclass(slots=True)
class Outgoing:
    """A client transaction of ours (one request until its final response)."""

    method: str
    uri: str
    to: str
    extra: str
    body: str
    call_id: str
    cseq: int
    branch: str = ""
    data: bytes = b""
    started: float = 0.0
    interval: float = T1
    challenges: int = 0
    status: int = 0
    done: trio.Event = field(default_factory=trio.Event)


class LightUA:
    """One SIP user (``user@domain``) with one transport to the gateway at ``server``."""

    def __init__(
        self, user: str, domain: str, password: str, *, transport: str, host: str, server: tuple[str, int]
    ) -> None:
        assert transport in ("udp", "tcp")
        self.user, self.domain, self.password = user, domain, password
        self.transport, self.host, self.server = transport, host, server
        self.aor = f"sip:{user}@{domain}"
        self.tag = secrets.token_hex(4)
        self.prefix = secrets.token_hex(5)
        self.on_message: Callable[[bytes, float], None] | None = None
        #: MESSAGEs received (new ones) and received again (retransmissions by the gateway).
        self.received = 0
        self.retransmissions_received = 0
        #: Requests of ours sent again on Timer E (UDP), and 401/407 challenges met.
        self.retransmitted = 0
        self.challenged = 0
        #: Final statuses of our MESSAGE transactions (408: given up after Timer F).
        self.finals: collections.Counter[int] = collections.Counter()
        self._seen: set[tuple[str, str]] = set()
        self._pending: dict[str, Outgoing] = {}
        self._timers: list[tuple[float, str]] = []
        self._timer_wake = trio.Event()
        self._room = trio.Event()
        self._auth: dict[str, tuple[str, int, str]] = {}  # header → (challenge, last nc, cnonce)
        self._counter = 0
        self._udp: socket.socket | None = None
        self._tcp: trio.SocketStream | None = None
        self._tcp_lock = trio.Lock()
        self.local_port = 0

    # -- set-up --------------------------------------------------------------------------------

    async def _open(self) -> None:
        if self.transport == "udp":
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER)
            sock.bind((self.host, 0))
            sock.setblocking(False)
            self._udp = sock
            self.local_port = sock.getsockname()[1]
        else:
            self._tcp = await trio.open_tcp_stream(*self.server, local_address=self.host)
            self._tcp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER)
            self.local_port = self._tcp.socket.getsockname()[1]

    def close(self) -> None:
        if self._udp is not None:
            self._udp.close()

    @property
    def contact(self) -> str:
        tail = ";transport=tcp;ob" if self.transport == "tcp" else ""
        return f"<sip:{self.user}@{self.host}:{self.local_port}{tail}>"

    # -- sending -------------------------------------------------------------------------------

    def _build(self, tx: Outgoing) -> bytes:
        """The request's bytes for a new transmission (new branch), with credentials when a
        challenge for its header is known."""
        self._counter += 1
        tx.branch = f"z9hG4bK{self.prefix}{self._counter}"
        header = "Authorization" if tx.method == "REGISTER" else "Proxy-Authorization"
        auth = ""
        cached = self._auth.get(header)
        if cached is not None:
            challenge, nc, cnonce = cached
            self._auth[header] = (challenge, nc + 1, cnonce)
            value = authorization(challenge, method=tx.method, uri=tx.uri, username=self.user,
                                  password=self.password, nc=nc + 1, cnonce=cnonce)
            auth = f"{header}: {value}\r\n"
        body = tx.body.encode()
        content = "Content-Type: text/plain;charset=UTF-8\r\n" if body else ""
        tx.data = (
            f"{tx.method} {tx.uri} SIP/2.0\r\n"
            f"Via: SIP/2.0/{self.transport.upper()} {self.host}:{self.local_port};branch={tx.branch};rport\r\n"
            f"Max-Forwards: 70\r\nFrom: <{self.aor}>;tag={self.tag}\r\nTo: {tx.to}\r\n"
            f"Call-ID: {tx.call_id}\r\nCSeq: {tx.cseq} {tx.method}\r\n{tx.extra}{auth}{content}"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode() + body
        self._pending[tx.branch] = tx
        return tx.data

    def _arm(self, tx: Outgoing, now: float) -> None:
        """Timer E (UDP: the first retransmission) or, over TCP, Timer F alone."""
        tx.interval = T1
        heapq.heappush(self._timers, (now + (T1 if self.transport == "udp" else TIMER_F), tx.branch))
        self._timer_wake.set()

    async def _send(self, data: bytes, to: tuple[str, int] | None = None) -> None:
        if self._udp is not None:
            while True:
                try:
                    self._udp.sendto(data, to or self.server)
                    return
                except BlockingIOError:
                    await trio.lowlevel.wait_writable(self._udp)
        assert self._tcp is not None
        async with self._tcp_lock:
            await self._tcp.send_all(data)

    def _new(self, method: str, uri: str, to: str, extra: str = "", body: str = "") -> Outgoing:
        self._counter += 1
        return Outgoing(method, uri, to, extra, body, f"{self.prefix}-{self._counter}@{self.host}", 1)

    async def _request(self, tx: Outgoing) -> int:
        """Send ``tx`` and wait for its final status (challenges answered on the way)."""
        data = self._build(tx)
        tx.started = trio.current_time()
        self._arm(tx, tx.started)
        await self._send(data)
        await tx.done.wait()
        return tx.status

    async def register(self, expires: int = 3600) -> int:
        """REGISTER our contact (``expires`` 0: remove it); the final status."""
        extra = f"Contact: {self.contact}\r\nExpires: {expires}\r\n"
        return await self._request(self._new("REGISTER", f"sip:{self.domain}", f"<{self.aor}>", extra))

    async def message(self, uri: str, body: str) -> int:
        """One MESSAGE to ``uri``, waiting for its final status."""
        return await self._request(self._new("MESSAGE", uri, f"<{uri}>", body=body))

    async def send_messages(
        self, uri: str, count: int, body: Callable[[int], str], *, window: int = 0, rate: float = 0.0
    ) -> None:
        """``count`` MESSAGEs to ``uri`` as fast as the transport takes them (``window`` > 0: at
        most that many unanswered; ``rate`` > 0: paced at that many per second, one write per
        ``PACE_TICK``); ``body(n)`` is called just before message ``n`` is sent.
        Returns once all are sent (their answers come later: :meth:`drained`)."""
        n = 0
        step = BATCH if not rate else max(1, round(rate * PACE_TICK))
        t0 = trio.current_time()
        while n < count:
            if rate:
                await trio.sleep_until(t0 + n / rate)
            chunk: list[bytes] = []
            now = trio.current_time()
            for _ in range(min(step, count - n)):
                while window and len(self._pending) >= window:
                    if chunk:
                        await self._send(b"".join(chunk))
                        chunk = []
                    self._room = trio.Event()
                    await self._room.wait()
                    now = trio.current_time()
                tx = self._new("MESSAGE", uri, f"<{uri}>", body=body(n))
                data = self._build(tx)
                tx.started = now
                self._arm(tx, now)
                if self._udp is not None:
                    await self._send(data)
                else:
                    chunk.append(data)
                n += 1
            if chunk:
                await self._send(b"".join(chunk))
            await trio.lowlevel.checkpoint()

    def outstanding(self) -> int:
        """Our transactions still without a final response."""
        return len(self._pending)

    # -- receiving -----------------------------------------------------------------------------

    def _on_data(self, data: bytes, out: list[bytes]) -> None:
        message = parse(data)
        if message.start.startswith("SIP/2.0 "):
            self._on_response(message, int(message.start[8:11]), out)
        else:
            self._on_request(message, out)

    def _on_request(self, request: Parsed, out: list[bytes]) -> None:
        method = request.start.partition(" ")[0]
        if method == "ACK":
            return
        key = (request.first("call-id"), request.first("cseq"))
        if key in self._seen:
            self.retransmissions_received += 1
        else:
            self._seen.add(key)
            if method == "MESSAGE":
                self.received += 1
                if self.on_message is not None:
                    self.on_message(request.body, time.perf_counter())
        out.append(ok_response(request, self.tag))

    def _on_response(self, response: Parsed, status: int, out: list[bytes]) -> None:
        tx = self._pending.get(branch_of(response.first("via")))
        if tx is None or status < 200:
            if tx is not None:
                tx.interval = T2  # §17.1.2.2: after a provisional, retransmit at T2
            return
        del self._pending[tx.branch]
        if status in (401, 407) and tx.challenges < 2:
            self.challenged += 1
            tx.challenges += 1
            header = "www-authenticate" if status == 401 else "proxy-authenticate"
            values = response.headers.get(header)
            if values:
                name = "Authorization" if status == 401 else "Proxy-Authorization"
                self._auth[name] = (md5_challenge(values), 0, secrets.token_hex(8))
                tx.cseq += 1
                out.append(self._build(tx))
                self._arm(tx, trio.current_time())
                return
        tx.status = status
        if tx.method == "MESSAGE":
            self.finals[status] += 1
        tx.done.set()
        self._room.set()

    async def _udp_reader(self) -> None:
        sock = self._udp
        assert sock is not None
        while True:
            await trio.lowlevel.wait_readable(sock)
            for _ in range(DRAIN):  # what is queued, before the next wait (others get a turn)
                try:
                    data, source = sock.recvfrom(65535)
                except BlockingIOError:
                    break
                out: list[bytes] = []
                self._on_data(data, out)
                for answer in out:
                    await self._send(answer, source)

    async def _tcp_reader(self) -> None:
        stream = self._tcp
        assert stream is not None
        buffer = bytearray()
        while data := await stream.receive_some(1 << 20):
            buffer += data
            out: list[bytes] = []
            for message in split_stream(buffer):
                self._on_data(message, out)
            if out:
                await self._send(b"".join(out))

    async def _timer(self) -> None:
        """Timer E retransmissions (UDP) and Timer F give-ups of our requests."""
        while True:
            if not self._timers:
                self._timer_wake = trio.Event()
                await self._timer_wake.wait()
                continue
            due, branch = self._timers[0]
            now = trio.current_time()
            if due > now:
                with trio.move_on_after(due - now):
                    self._timer_wake = trio.Event()
                    await self._timer_wake.wait()
                continue
            heapq.heappop(self._timers)
            tx = self._pending.get(branch)
            if tx is None:
                continue
            if now - tx.started >= TIMER_F:
                del self._pending[branch]
                tx.status = _FINAL_STATUS_TIMEOUT
                if tx.method == "MESSAGE":
                    self.finals[tx.status] += 1
                tx.done.set()
                self._room.set()
                continue
            self.retransmitted += 1
            await self._send(tx.data)
            tx.interval = min(tx.interval * 2, T2)
            heapq.heappush(self._timers, (now + tx.interval, branch))


@asynccontextmanager
async def open_ua(
    user: str, domain: str, password: str, *, transport: str, host: str, server: tuple[str, int]
) -> AsyncIterator[LightUA]:
    """A :class:`LightUA` with its socket open and its reader (and timer) running; all of it
    stops when the block ends."""
    ua = LightUA(user, domain, password, transport=transport, host=host, server=server)
    await ua._open()
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ua._udp_reader if transport == "udp" else ua._tcp_reader)
            nursery.start_soon(ua._timer)
            yield ua
            nursery.cancel_scope.cancel()
    finally:
        ua.close()
        if ua._tcp is not None:
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                await ua._tcp.aclose()
