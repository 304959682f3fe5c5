"""A minimal XMPP client (RFC 6120 c2s: SASL PLAIN on plaintext, bind) to drive a real server."""

from __future__ import annotations

import base64

import trio

from edgeproxy.tokenizer import Stanza, Tokenizer

NS_SASL = "urn:ietf:params:xml:ns:xmpp-sasl"


class Client:
    def __init__(self, stream: trio.SocketStream, domain: str) -> None:
        self.stream, self.domain = stream, domain
        self.tok = Tokenizer()
        self.queue: list[Stanza] = []

    @classmethod
    async def login(cls, address: str, port: int, user: str, domain: str, password: str) -> Client:
        client = cls(await trio.open_tcp_stream(address, port), domain)
        await client._header()
        await client.expect("features")
        creds = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
        await client.send(f"<auth xmlns='{NS_SASL}' mechanism='PLAIN'>{creds}</auth>")
        success = await client.expect("success", "failure")
        assert success.name == "success", success.raw
        client.tok.reset()
        await client._header()
        await client.expect("features")
        await client.send(
            "<iq type='set' id='bind'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
            "<resource>interop</resource></bind></iq>"
        )
        await client.expect("iq")
        # Requesting the roster makes this resource "interested" (RFC 6121 §2.1.6): it then
        # receives roster pushes and subscription state changes.
        await client.send("<iq type='get' id='roster'><query xmlns='jabber:iq:roster'/></iq>")
        await client.expect("iq")
        await client.send("<presence/>")
        return client

    async def _header(self) -> None:
        await self.send(
            f"<stream:stream to='{self.domain}' xmlns='jabber:client' "
            "xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>"
        )

    async def send(self, text: str) -> None:
        await self.stream.send_all(text.encode())

    async def next(self) -> Stanza:
        while not self.queue:
            data = await self.stream.receive_some(65536)
            assert data, "server closed the client stream"
            self.queue.extend(t for t in self.tok.feed(data) if isinstance(t, Stanza))
        return self.queue.pop(0)

    async def expect(self, *names: str) -> Stanza:
        while True:
            stanza = await self.next()
            if stanza.name in names:
                return stanza

    async def aclose(self) -> None:
        await self.stream.aclose()
