"""A peer on the loopback channel that stops reading cannot hold the channel (issue 13): a frame
write that blocks longer than ``WRITE_TIMEOUT`` ends the connection; the items it held stay
queued for the next connection (nothing is lost)."""

from __future__ import annotations

import pytest
import trio

from edgeproxy.loopback import endpoint as endpoint_module
from edgeproxy.loopback.client import run_loopback_client
from edgeproxy.loopback.endpoint import ChannelEndpoint
from edgeproxy.loopback.frames import Item, Role, Routed, StanzaKind
from edgeproxy.loopback.server import serve_loopback


async def test_a_gateway_that_stops_reading_is_disconnected_after_the_write_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(endpoint_module, "WRITE_TIMEOUT", 1.0)
    stuck = trio.Event()
    delivered: list[str] = []

    async def edge_items(items: list[Item]) -> None:
        pass

    async def gateway_items(items: list[Item]) -> None:
        for item in items:
            if isinstance(item, Routed):
                delivered.append(item.id)
        if not stuck.is_set():
            stuck.set()
            await trio.sleep_forever()  # a consumer that never returns: the reader stops reading

    edge = ChannelEndpoint(Role.EDGE, on_items=edge_items, on_bounce=lambda items, condition: None)
    gateway = ChannelEndpoint(Role.GATEWAY, on_items=gateway_items, on_bounce=lambda items, condition: None)
    body = "x" * 60_000
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            host, port = await nursery.start(serve_loopback, edge, "127.0.0.1", 0)
            nursery.start_soon(run_loopback_client, gateway, host, port)
            await edge.wait_connected()
            for i in range(400):  # ~24 MB: more than the sockets' buffers hold
                raw = f"<message to='juliet@contoso.test' id='m{i}'><body>{body}</body></message>".encode()
                assert edge.submit(StanzaKind.MESSAGE, "romeo@montague.example/o", "juliet@contoso.test",
                                   "chat", f"m{i}", raw)
            await stuck.wait()
            while edge.statistics().connected:
                await trio.sleep(0.05)
            # nothing was lost: what was not acked is still the edge's to send
            assert edge.statistics().queued > 0
            nursery.cancel_scope.cancel()
