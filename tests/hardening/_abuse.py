"""Abusers for the soak test (``test_soak_abuse.py``), run as a child process of the test so that
they share neither the server's nor the measuring test's interpreter lock.

    python tests/hardening/_abuse.py --target HOST:PORT --duration SECONDS [options]

Two kinds of abuse run at once, every loop bounded by ``--duration`` (the process ends by itself
and closes every socket; it prints one JSON line of counts on stdout when it is done):

* **slow-loris** (``--loris`` sockets, ``--per-ip`` per source address, source addresses
  ``--loris-net``.1, .2, …; each socket is bound to its source address before ``connect``): each
  sends a valid-looking S2S stream header one byte per second and never finishes it (past the
  last byte but one it sends spaces, still inside the start tag). Whatever the server writes is
  read (so a stream error is seen, never a write-timeout of ours); when the server closes the
  connection (a limit refusing it at once, or the establishment timeout) the socket is closed and
  a new one connects after ``--reconnect`` seconds (+ up to as much jitter), so that about
  ``--loris`` attempts stay alive for the whole run.
* **dialback-repeat flood** (``--flood`` streams from ``--flood-ips`` source addresses after the
  loris ones): each opens a complete stream header claiming ``from='fabrikam.test'`` and then
  writes the same ``<db:result from='fabrikam.test' to='contoso.test'>KEY</db:result>`` again and
  again (batches of ``BATCH``, at most ``--flood-per-stream`` per connection) as fast as the
  server takes them; when the server closes the stream (the key is invalid: ``not-authorized``
  after its one verification) it reconnects after ``--flood-reconnect`` seconds.

The process runs at a lower CPU priority (``--nice``, default 10): on a test machine the abusers
share the server's CPUs, which real abusers on other hosts do not.

Counts reported: connections made, connect failures, closes seen by the kind of ending (a stream
error condition the server wrote, else ``eof``/``reset``), bytes and db:results written.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import re
import socket
import sys
import time

import trio

STREAM_OPEN = (
    "<?xml version='1.0'?><stream:stream xmlns='jabber:server'"
    " xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback'"
    " from='{frm}' to='{to}' version='1.0'>"
)
DB_RESULT = "<db:result from='{frm}' to='{to}'>{key}</db:result>"
#: db:results per write of the flood.
BATCH = 100
#: Stream-error conditions (RFC 6120 §4.9.3) the server may write; used to classify closes.
_CONDITION = re.compile(rb"<([a-z-]+) xmlns=['\"]urn:ietf:params:xml:ns:xmpp-streams['\"]")
CONNECT_TIMEOUT = 5.0


class Counts:
    def __init__(self) -> None:
        self.c: collections.Counter[str] = collections.Counter()

    def add(self, key: str, n: int = 1) -> None:
        self.c[key] += n


async def _connect(source: str, target: tuple[str, int]) -> trio.SocketStream:
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        await sock.bind((source, 0))
        with trio.fail_after(CONNECT_TIMEOUT):
            await sock.connect(target)
    except BaseException:
        sock.close()
        raise
    return trio.SocketStream(sock)


async def _read_until_closed(stream: trio.SocketStream, ended: trio.CancelScope, seen: list[bytes]) -> None:
    """Read what the server writes until it closes; then cancel ``ended`` (the writer). The
    stream error, if any, is among the last bytes (the server may have answered each repeated
    db:result before it)."""
    tail = b""
    try:
        while True:
            data = await stream.receive_some(65536)
            if not data:
                seen.append(b"eof")
                break
            tail = (tail + data)[-4096:]
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        seen.append(b"reset")
    finally:
        found = _CONDITION.search(tail)
        if found:
            seen.insert(0, found.group(1))
        ended.cancel()


async def _one_connection(
    kind: str, source: str, target: tuple[str, int], counts: Counts, writer, deadline: float
) -> None:
    """Connect from ``source``, run ``writer(stream)`` beside a reader until the server closes
    the connection or ``deadline`` passes; count how it ended; always close the socket."""
    try:
        stream = await _connect(source, target)
    except (OSError, trio.TooSlowError) as exc:
        counts.add(f"{kind}.connect_failed")
        counts.add(f"{kind}.connect_failed.{type(exc).__name__}")
        return
    counts.add(f"{kind}.connections")
    seen: list[bytes] = []
    try:
        with trio.move_on_at(deadline) as timed:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_read_until_closed, stream, nursery.cancel_scope, seen)
                try:
                    await writer(stream)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass  # the reader says how it ended
                else:
                    await trio.sleep_forever()  # the writer is done: wait for the server
        if timed.cancelled_caught:
            counts.add(f"{kind}.open_at_end")
        else:
            counts.add(f"{kind}.closed." + (seen[0].decode() if seen else "unknown"))
    finally:
        with trio.CancelScope(shield=True):
            await stream.aclose()


async def pause(seconds: float, deadline: float) -> None:
    """Sleep ``seconds``, but never past ``deadline``."""
    await trio.sleep_until(min(trio.current_time() + seconds, deadline))


async def loris(index: int, args: argparse.Namespace, counts: Counts, deadline: float) -> None:
    source = f"{args.loris_net}.{1 + index // args.per_ip}"
    header = STREAM_OPEN.format(frm=args.claim, to=args.domain).encode()
    target = (args.host, args.port)

    async def writer(stream: trio.SocketStream) -> None:
        for i in range(10_000):  # one byte per second: bounded by the deadline long before
            byte = header[i : i + 1] if i < len(header) - 1 else b" "
            await stream.send_all(byte)
            counts.add("loris.bytes")
            await trio.sleep(1.0)

    await pause(random.uniform(0, args.ramp), deadline)
    while trio.current_time() < deadline:
        await _one_connection("loris", source, target, counts, writer, deadline)
        await pause(args.reconnect + random.uniform(0, args.reconnect), deadline)


async def flood(index: int, args: argparse.Namespace, counts: Counts, deadline: float) -> None:
    source = f"{args.loris_net}.{args.loris // args.per_ip + 1 + index % args.flood_ips}"
    header = STREAM_OPEN.format(frm=args.claim, to=args.domain).encode()
    batch = DB_RESULT.format(frm=args.claim, to=args.domain, key=args.key).encode() * BATCH
    target = (args.host, args.port)

    async def writer(stream: trio.SocketStream) -> None:
        await stream.send_all(header)
        for _ in range(args.flood_per_stream // BATCH):
            await stream.send_all(batch)
            counts.add("flood.db_results", BATCH)

    while trio.current_time() < deadline:
        await _one_connection("flood", source, target, counts, writer, deadline)
        await pause(args.flood_reconnect, deadline)


async def main(args: argparse.Namespace) -> dict[str, object]:
    counts = Counts()
    started = time.monotonic()
    deadline = trio.current_time() + args.duration
    async with trio.open_nursery() as nursery:
        for i in range(args.loris):
            nursery.start_soon(loris, i, args, counts, deadline)
        for j in range(args.flood):
            nursery.start_soon(flood, j, args, counts, deadline)
    return {"seconds": round(time.monotonic() - started, 2), **dict(sorted(counts.c.items()))}


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--target", required=True, help="HOST:PORT of the S2S listener")
    p.add_argument("--duration", type=float, required=True)
    p.add_argument("--domain", default="contoso.test", help="the server's domain (to=)")
    p.add_argument("--claim", default="fabrikam.test", help="the partner domain claimed (from=)")
    p.add_argument("--key", default="0" * 64, help="the (invalid) dialback key repeated")
    p.add_argument("--loris", type=int, default=1000)
    p.add_argument("--per-ip", type=int, default=20)
    p.add_argument("--loris-net", default="127.0.1")
    p.add_argument("--ramp", type=float, default=1.0, help="loris connects spread over this")
    p.add_argument("--reconnect", type=float, default=1.0)
    p.add_argument("--flood", type=int, default=4)
    p.add_argument("--flood-ips", type=int, default=2)
    p.add_argument("--flood-per-stream", type=int, default=5000)
    p.add_argument("--flood-reconnect", type=float, default=0.5)
    p.add_argument("--nice", type=int, default=10,
                   help="lower our CPU priority: real abusers do not share the server's CPUs")
    args = p.parse_args(argv)
    host, _, port = args.target.rpartition(":")
    args.host, args.port = host, int(port)
    if args.loris // args.per_ip + args.flood_ips > 254:
        p.error("too many source addresses for one /24")
    return args


if __name__ == "__main__":
    arguments = parse(sys.argv[1:])
    os.nice(arguments.nice)
    print(json.dumps(trio.run(main, arguments)), flush=True)
