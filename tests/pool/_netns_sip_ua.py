"""A small SIP user agent over UDP for the pool tests: registers one user at several registrars
(one per edge pool) from one socket, and records every MESSAGE it receives with the address it
came from — which pool delivered it.

* **REGISTER** (RFC 3261 §10) with digest (RFC 7616, qop=auth, MD5: ``fixtures.sipauth``): the
  first attempt meets the registrar's 401, the second answers it. Retransmitted on Timer E
  until a final response (bounded by ``TRANSACTION_BOUND``).
* **MESSAGE**: answered 200 at once; a retransmission (same Call-ID and CSeq) is answered again
  but recorded once.

The socket is bound by the caller (in the lab's fabric namespace: ``fixtures.netns.inside``) and
served by :meth:`SipUa.run` in a trio task.
"""

from __future__ import annotations

import secrets
import socket
from dataclasses import dataclass, field

import trio

from fixtures.sipauth import PASSWORD, authorization, md5_challenge

#: RFC 3261 Timer E: the first retransmission interval (doubling), seconds.
T1 = 0.5
#: Seconds one REGISTER transaction may take at most, retransmissions included.
TRANSACTION_BOUND = 10.0
#: Registration lifetime asked for, seconds.
EXPIRES = 600


@dataclass(frozen=True)
class Received:
    """One MESSAGE as the UA got it."""

    source: str  # the IP address it came from: which pool's gateway sent it
    sender: str  # the From URI
    body: str


def parse(data: bytes) -> tuple[str, dict[str, list[str]], bytes]:
    """First line, headers (lower-case names, compact forms expanded) and body of a SIP message."""
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("utf-8", "replace").split("\r\n")
    compact = {"v": "via", "f": "from", "t": "to", "i": "call-id", "l": "content-length", "m": "contact"}
    headers: dict[str, list[str]] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        key = name.strip().lower()
        headers.setdefault(compact.get(key, key), []).append(value.strip())
    return lines[0], headers, body


def uri_of(value: str) -> str:
    """The URI of a From/To header value (``"name" <sip:x@y>;tag=...`` -> ``sip:x@y``)."""
    if "<" in value:
        return value.partition("<")[2].partition(">")[0]
    return value.partition(";")[0]


@dataclass
class SipUa:
    """``user``@``domain`` on ``sock`` (bound UDP, its address is the Contact)."""

    sock: trio.socket.SocketType
    user: str
    domain: str
    received: list[Received] = field(default_factory=list)
    _seen: set[tuple[str, str]] = field(default_factory=set)
    _pending: dict[str, trio.MemorySendChannel[tuple[str, dict[str, list[str]]]]] = field(default_factory=dict)

    @classmethod
    def bind(cls, address: str, user: str, domain: str) -> SipUa:
        """A UA on a fresh UDP socket on ``address`` (any port), in the calling thread's
        network namespace."""
        raw = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        raw.bind((address, 0))
        return cls(trio.socket.from_stdlib_socket(raw), user, domain)

    @property
    def contact(self) -> str:
        host, port = self.sock.getsockname()
        return f"sip:{self.user}@{host}:{port}"

    def bodies_from(self, source: str) -> list[str]:
        """Bodies of the MESSAGEs that came from ``source``, in arrival order."""
        return [r.body for r in self.received if r.source == source]

    async def run(self) -> None:
        """Serve the socket: answers to our REGISTERs, MESSAGEs to record and answer."""
        while True:
            data, peer = await self.sock.recvfrom(65535)
            first, headers, body = parse(data)
            if first.startswith("SIP/2.0 "):
                call_id = headers.get("call-id", [""])[0]
                waiter = self._pending.get(call_id)
                if waiter is not None and int(first.split()[1]) >= 200:
                    waiter.send_nowait((first, headers))
                continue
            method = first.partition(" ")[0]
            if method == "ACK":
                continue
            if method == "MESSAGE":
                key = (headers.get("call-id", [""])[0], headers.get("cseq", [""])[0])
                if key not in self._seen:
                    self._seen.add(key)
                    sender = uri_of(headers.get("from", [""])[0])
                    self.received.append(Received(peer[0], sender, body.decode("utf-8", "replace")))
            await self.sock.sendto(self._ok(headers), peer)

    @staticmethod
    def _ok(headers: dict[str, list[str]]) -> bytes:
        to = headers.get("to", [""])[0]
        lines = ["SIP/2.0 200 OK", *(f"Via: {v}" for v in headers.get("via", [])),
                 f"From: {headers.get('from', [''])[0]}",
                 f"To: {to}" + ("" if "tag=" in to else f";tag={secrets.token_hex(4)}"),
                 f"Call-ID: {headers.get('call-id', [''])[0]}", f"CSeq: {headers.get('cseq', [''])[0]}",
                 "Content-Length: 0", "", ""]
        return "\r\n".join(lines).encode()

    def _register_request(self, call_id: str, cseq: int, authorization_value: str | None) -> bytes:
        host, port = self.sock.getsockname()
        aor = f"sip:{self.user}@{self.domain}"
        lines = [
            f"REGISTER sip:{self.domain} SIP/2.0",
            f"Via: SIP/2.0/UDP {host}:{port};branch=z9hG4bK{secrets.token_hex(8)};rport",
            f"From: <{aor}>;tag={call_id[:8]}",
            f"To: <{aor}>",
            f"Call-ID: {call_id}",
            f"CSeq: {cseq} REGISTER",
            "Max-Forwards: 70",
            f"Contact: <{self.contact}>",
            f"Expires: {EXPIRES}",
            *([f"Authorization: {authorization_value}"] if authorization_value else []),
            "Content-Length: 0", "", "",
        ]
        return "\r\n".join(lines).encode()

    async def _transaction(self, call_id: str, request: bytes, registrar: tuple[str, int]) -> tuple[str, dict[str, list[str]]]:
        send, receive = trio.open_memory_channel[tuple[str, dict[str, list[str]]]](1)
        self._pending[call_id] = send
        try:
            with trio.fail_after(TRANSACTION_BOUND):
                wait = T1
                while True:
                    await self.sock.sendto(request, registrar)
                    with trio.move_on_after(wait):
                        return await receive.receive()
                    wait *= 2
        finally:
            del self._pending[call_id]

    async def register(self, registrar: tuple[str, int], password: str = PASSWORD) -> int:
        """REGISTER at ``registrar`` (host, port), answering its digest challenge; the final
        status."""
        call_id = secrets.token_hex(12)
        first, headers = await self._transaction(call_id, self._register_request(call_id, 1, None), registrar)
        status = int(first.split()[1])
        if status != 401:
            return status
        challenge = md5_challenge(headers.get("www-authenticate", []))
        value = authorization(challenge, method="REGISTER", uri=f"sip:{self.domain}",
                              username=self.user, password=password)
        first, _ = await self._transaction(call_id, self._register_request(call_id, 2, value), registrar)
        return int(first.split()[1])
