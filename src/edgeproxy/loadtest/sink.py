"""Where delivery is seen on the target's side.

* :class:`C2SSink` — a minimal raw client-to-server sink (RFC 6120: SASL PLAIN on a plain
  stream, resource binding, roster get and initial presence so that it receives subscription
  requests too). After login it never parses: it reads bytes and scans them for harness ids, so
  measuring Prosody or ejabberd is not limited by a slow client.
* :class:`DeliveryProbe` — for an in-process edgeproxy: it has the shape of
  ``edgeproxy.net.delivery.LocalDelivery`` (``async deliver(item)``) and counts what the edge
  hands to local delivery.
"""

from __future__ import annotations

import base64
from typing import Protocol

import trio

from edgeproxy.loadtest.accounting import Ledger
from edgeproxy.loadtest.scenario import Sink, SinkKind
from edgeproxy.tokenizer import Stanza, Tokenizer

NS_SASL = "urn:ietf:params:xml:ns:xmpp-sasl"
NS_BIND = "urn:ietf:params:xml:ns:xmpp-bind"
MAX_READ = 65536
#: Bytes of the previous read kept so that an id split across two reads is still found.
OVERLAP = 32
LOGIN_TIMEOUT = 15.0


class SinkError(Exception):
    """The sink could not log in."""


class _HasRaw(Protocol):
    raw: bytes


class DeliveryProbe:
    """In-process local delivery that reports every harness id it is handed as delivered."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self.items = 0

    async def deliver(self, item: _HasRaw) -> None:
        self.items += 1
        self.ledger.scan_delivered(item.raw, trio.current_time())


class C2SSink:
    """A logged-in c2s stream that counts harness ids in the bytes it receives."""

    def __init__(self, config: Sink, domain: str, ledger: Ledger) -> None:
        self.config = config
        self.domain = domain
        self.ledger = ledger
        self.bytes_read = 0
        self._stream: trio.SocketStream | None = None
        self._tok = Tokenizer()
        self._pending: list[Stanza] = []

    async def login(self) -> None:
        with trio.fail_after(LOGIN_TIMEOUT):
            self._stream = await trio.open_tcp_stream(self.config.host, self.config.port)
            if self.config.kind is SinkKind.RAW:
                return
            await self._header()
            await self._expect("features")
            creds = f"\0{self.config.user}\0{self.config.password}".encode()
            await self._send(
                f"<auth xmlns='{NS_SASL}' mechanism='PLAIN'>{base64.b64encode(creds).decode()}</auth>"
            )
            if (await self._expect("success", "failure")).name != "success":
                raise SinkError(f"SASL PLAIN refused for {self.config.user}@{self.domain}")
            self._tok.reset()
            await self._header()
            await self._expect("features")
            await self._send(
                f"<iq type='set' id='bind'><bind xmlns='{NS_BIND}'>"
                f"<resource>{self.config.resource}</resource></bind></iq>"
            )
            await self._expect("iq")
            await self._send("<iq type='get' id='roster'><query xmlns='jabber:iq:roster'/></iq>")
            await self._expect("iq")
            await self._send("<presence/>")

    async def run(self) -> None:
        """Read and scan until cancelled or the server closes the stream."""
        assert self._stream is not None
        for stanza in self._pending:
            self.ledger.scan_delivered(stanza.raw, trio.current_time())
        tail = b""
        while True:
            try:
                data = await self._stream.receive_some(MAX_READ)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return
            if not data:
                return
            self.bytes_read += len(data)
            self.ledger.scan_delivered(tail + data, trio.current_time())
            tail = data[-OVERLAP:]

    async def aclose(self) -> None:
        if self._stream is not None:
            await self._stream.aclose()

    async def _header(self) -> None:
        await self._send(
            f"<stream:stream to='{self.domain}' xmlns='jabber:client' "
            "xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>"
        )

    async def _send(self, text: str) -> None:
        assert self._stream is not None
        await self._stream.send_all(text.encode())

    async def _expect(self, *names: str) -> Stanza:
        assert self._stream is not None
        for _ in range(10_000):
            while self._pending:
                stanza = self._pending.pop(0)
                if stanza.name in names:
                    return stanza
            data = await self._stream.receive_some(MAX_READ)
            if not data:
                raise SinkError("the server closed the sink's stream during login")
            self._pending.extend(t for t in self._tok.feed(data) if isinstance(t, Stanza))
        raise SinkError(f"no <{'/'.join(names)}/> from the server")
