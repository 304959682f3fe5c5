"""Issue 21, point 3: refusals are cheap and connections leave nothing behind.

* A stream refused at its header (its partner's slots are full) gets our header, features and
  stream error in one write (two writes were a tenth of its cost).
* A connection refused at accept gets our header and the stream error without a task of its own
  (the refusals below, and ``test_limits_and_certs``).
* After rounds of streams of every kind — authenticated, refused at the header
  (``partner-connection``), refused at accept (``preauth-per-ip``, ``connection``) — have come
  and gone, the listener's bookkeeping is empty, nothing still references a closed stream, and
  the metrics exposition has not grown. (The memory figures are ``bench/bench_idle.py``'s.)
"""

from __future__ import annotations

import gc
import weakref
from collections.abc import Callable

import pytest
import trio
from _edges import RunningEdge, partner, set_partners, start_edge

from edgeproxy.config import LimitsSection
from edgeproxy.net.session import S2SSession
from edgeproxy.s2s import wire

HEADER = (
    b"<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams'"
    b" xmlns:db='jabber:server:dialback' from='fabrikam.test' to='contoso.test' version='1.0'>"
)
REFUSED = b"<resource-constraint xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>"


async def read_until(stream: trio.abc.Stream, marker: bytes | None = None) -> bytes:
    """Read until ``marker`` is in the data (None: until the peer closes)."""
    data = b""
    while marker is None or marker not in data:
        try:
            chunk = await stream.receive_some(4096)
        except trio.BrokenResourceError:  # a reset after the refusal
            break
        if not chunk:
            break
        data += chunk
    return data


async def authenticated(port: int) -> trio.SocketStream:
    """A stream that claims fabrikam.test and authenticates it by dialback."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(HEADER)
    features = await read_until(stream, b"</stream:features>")
    stream_id = features.split(b" id='", 1)[1].split(b"'", 1)[0].decode()
    key = wire.dialback_key("fab-secret", "contoso.test", "fabrikam.test", stream_id)
    await stream.send_all(wire.db_result_request(from_="fabrikam.test", to="contoso.test", key=key))
    assert b"type='valid'" in await read_until(stream, b"<db:result")
    return stream


async def refused(port: int, source: str) -> bytes:
    stream = await trio.open_tcp_stream("127.0.0.1", port, local_address=source)
    async with stream:
        await stream.send_all(HEADER)
        return await read_until(stream)


async def silent(port: int, source: str, count: int) -> list[trio.SocketStream]:
    return [await trio.open_tcp_stream("127.0.0.1", port, local_address=source) for _ in range(count)]


async def until(condition: Callable[[], bool]) -> None:
    while not condition():
        await trio.sleep(0.01)


async def two_edges(nursery: trio.Nursery, limit: int, total: int) -> RunningEdge:
    """contoso.test, whose partner fabrikam.test (a real edge, authoritative for its keys) may
    have ``limit`` streams and which takes ``total`` in all."""
    contoso = await start_edge(nursery, "contoso.test", ("bob",), "s")
    fabrikam = await start_edge(nursery, "fabrikam.test", ("alice",), "fab-secret")
    set_partners(fabrikam, ("alice",), "fab-secret", partner("contoso.test", contoso.port))
    set_partners(contoso, ("bob",), "s", partner("fabrikam.test", fabrikam.port, connection_limit=limit),
                 connection_limit=total)
    return contoso


async def test_a_refusal_at_the_header_is_one_write(monkeypatch: pytest.MonkeyPatch) -> None:
    writes: dict[int, list[bytes]] = {}  # every socket stream's writes, by stream
    send_all = trio.SocketStream.send_all

    async def recording(self: trio.SocketStream, data: bytes | bytearray | memoryview) -> None:
        writes.setdefault(id(self), []).append(bytes(data))
        await send_all(self, data)

    monkeypatch.setattr(trio.SocketStream, "send_all", recording)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            contoso = await two_edges(nursery, limit=1, total=1000)
            first = await authenticated(contoso.port)
            answer = await refused(contoso.port, "127.0.0.1")
            assert REFUSED in answer and b"<stream:features>" in answer
            (refusal,) = [w for w in writes.values() if any(REFUSED in data for data in w)]
            assert refusal == [answer]
            await first.aclose()
            nursery.cancel_scope.cancel()


async def test_streams_that_came_and_went_leave_nothing_behind() -> None:
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            contoso = await two_edges(nursery, limit=2, total=8)
            contoso.server.ctx.limits = LimitsSection(preauth_per_ip=3)
            inbound, metrics = contoso.server.inbound, contoso.server.telemetry.metrics
            sessions: list[weakref.ref[S2SSession]] = []
            samples: list[int] = []
            for round_ in range(1, 4):
                held = [await authenticated(contoso.port) for _ in range(2)]
                assert REFUSED in await refused(contoso.port, "127.0.0.1")  # at the header
                held += await silent(contoso.port, "127.0.0.2", 3)
                await until(lambda: inbound.counts.preauth_per_ip["127.0.0.2"] == 3)
                assert REFUSED in await refused(contoso.port, "127.0.0.2")  # preauth-per-ip
                held += await silent(contoso.port, "127.0.0.3", 3)
                await until(lambda: inbound.counts.total == 8)
                assert REFUSED in await refused(contoso.port, "127.0.0.4")  # connection
                for limit in ("partner-connection", "preauth-per-ip", "connection"):
                    assert metrics.value("edgeproxy_limit_reached_total", limit=limit) == round_
                sessions += [weakref.ref(s) for s in inbound.sessions]
                for stream in held:
                    await stream.aclose()
                await until(lambda: inbound.counts.total == 0 and not inbound.sessions)
                counts = inbound.counts
                assert (counts.preauth, dict(counts.per_partner), dict(counts.preauth_per_ip),
                        dict(counts.dialback_per_ip)) == (0, {}, {}, {})
                assert not inbound.preauth_order and not inbound.partners
                samples.append(len(metrics.render().splitlines()))
            nursery.cancel_scope.cancel()
    gc.collect()
    assert len(sessions) == 3 * 8 and not [ref for ref in sessions if ref() is not None]
    assert samples[0] == samples[-1]
