"""A SIP TCP/TLS peer that does not read cannot hold its connection or grow our queue (issue 13):
one write may block ``TCP_WRITE_TIMEOUT`` seconds, and at most ``TCP_MAX_QUEUED_BYTES`` wait
behind it; beyond either the connection is closed and the sender sees BrokenResourceError."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from edgeproxy.gateway.sip import transport
from edgeproxy.gateway.sip.transport import TCP_MAX_QUEUED_BYTES, TCP_WRITE_TIMEOUT, _TcpConnection


async def test_a_write_the_peer_never_reads_closes_the_connection_after_the_write_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    ours, theirs = trio.testing.lockstep_stream_pair()  # send_all blocks until the peer reads
    conn = _TcpConnection(ours, ("127.0.0.1", 5060))  # type: ignore[arg-type]
    started = trio.current_time()
    with trio.fail_after(TCP_WRITE_TIMEOUT * 2), pytest.raises(trio.BrokenResourceError, match="write blocked"):
        await conn.send(b"SIP/2.0 200 OK\r\n\r\n")
    assert trio.current_time() - started == pytest.approx(TCP_WRITE_TIMEOUT, abs=0.1)
    assert conn.broken
    with pytest.raises(trio.BrokenResourceError):
        await conn.send(b"more")
    with pytest.raises(trio.ClosedResourceError):
        await ours.send_all(b"x")  # the stream itself is closed
    del theirs


async def test_responses_queued_behind_a_blocked_write_are_bounded(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(transport, "TCP_WRITE_TIMEOUT", 3600.0)  # only the queue bound acts here
    ours, theirs = trio.testing.lockstep_stream_pair()
    conn = _TcpConnection(ours, ("127.0.0.1", 5060))  # type: ignore[arg-type]
    response = b"SIP/2.0 200 OK\r\n" + b"X: " + b"y" * 1000 + b"\r\n\r\n"
    failures: list[BaseException] = []

    async def one() -> None:
        try:
            await conn.send(response)
        except trio.BrokenResourceError as exc:
            failures.append(exc)

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for _ in range(TCP_MAX_QUEUED_BYTES // len(response) + 10):
                nursery.start_soon(one)
    assert conn.broken
    assert any("queued" in str(exc) for exc in failures)
    del theirs


async def test_a_peer_that_reads_gets_everything_in_order() -> None:
    ours, theirs = trio.testing.memory_stream_pair()
    conn = _TcpConnection(ours, ("127.0.0.1", 5060))  # type: ignore[arg-type]
    for n in range(5):
        await conn.send(b"m%d;" % n)
    got = b""
    while len(got) < 15:
        got += await theirs.receive_some()
    assert got == b"m0;m1;m2;m3;m4;"
    assert not conn.broken
