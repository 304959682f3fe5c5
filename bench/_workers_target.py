"""``bench/compare.py``'s edgeproxy with edge workers: ``edgeproxy serve --role edge`` with
``[edge] workers = N`` (a real supervisor and N worker processes sharing the S2S port), and a
*channel sink* in a process of its own that takes the place of the gateway.

The sink opens the gateway's end of the loopback channel to every worker
(``ChannelEndpoint(Role.GATEWAY)`` + ``run_loopback_client``, the gateway's own code, with the
channel secret from the state dir), acknowledges every stanza at once and writes its bytes to a
socket that the load test's raw reader takes as delivery (``Sink(kind=RAW)``), like compare.py's
single-process target. What is measured is the edge side: the S2S streams, the policy and the
channel, in the supervisor and its workers (``procstats`` samples the process tree); the
gateway's SIP work is not part of this relay (``bench/bench_product.py`` measures that path).

    python bench/_workers_target.py sink SINK_PORT STATE_DIR HOST:PORT [HOST:PORT ...]

runs the sink (it prints ``ready`` once every channel is connected).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import trio

from edgeproxy.loopback.auth import load_channel_secret
from edgeproxy.loopback.client import run_loopback_client
from edgeproxy.loopback.endpoint import ChannelEndpoint
from edgeproxy.loopback.frames import Item, Role, Routed
from edgeproxy.names import listen_address

#: Bytes the sink holds for its reader before the channel waits (then the workers' queues fill).
SINK_BUFFER = 4 * 1024 * 1024


class _SinkWriter:
    """Stanza bytes queued without waiting and written by one writer, as compare.py's sink."""

    def __init__(self) -> None:
        self.stream: trio.SocketStream | None = None
        self._pending: list[bytes] = []
        self._bytes = 0
        self._wake = trio.Event()
        self._room = trio.Event()

    async def put(self, raw: bytes) -> None:
        while self._bytes >= SINK_BUFFER:
            if self._room.is_set():
                self._room = trio.Event()
            await self._room.wait()
        self._pending.append(raw)
        self._bytes += len(raw)
        self._wake.set()

    async def accept(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self._wake.set()
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            while True:
                await self._wake.wait()
                if self.stream is not stream:
                    return
                self._wake = trio.Event()
                while self._pending and self.stream is stream:
                    chunk = b"".join(self._pending)
                    self._pending.clear()
                    self._bytes = 0
                    self._room.set()
                    await stream.send_all(chunk)


async def channel_sink(sink_port: int, host: str, state_dir: Path, edges: list[tuple[str, int]]) -> None:
    writer = _SinkWriter()
    secret = load_channel_secret(state_dir)
    endpoints: list[ChannelEndpoint] = []

    def taker(index: int) -> Callable[[list[Item]], object]:
        async def take(items: list[Item]) -> None:
            endpoint = endpoints[index]
            for item in items:
                if isinstance(item, Routed):
                    await writer.put(item.raw)
                endpoint.complete(item.seq)

        return take

    for index in range(len(edges)):
        endpoints.append(ChannelEndpoint(Role.GATEWAY, on_items=taker(index), on_bounce=lambda items, why: None,
                                         ack_on_complete=True, secret=secret))
    async with trio.open_nursery() as nursery:
        for endpoint, (edge_host, edge_port) in zip(endpoints, edges, strict=True):
            await nursery.start(functools.partial(run_loopback_client, endpoint, edge_host, edge_port))
        for endpoint in endpoints:
            await endpoint.wait_connected()
        await nursery.start(functools.partial(trio.serve_tcp, writer.accept, sink_port, host=host))
        print("ready", flush=True)


def write_config(directory: Path, *, host: str, port: int, admin_port: int, workers: int,
                 resolver: tuple[str, int], tls_files: tuple[Path, Path, Path] | None) -> Path:
    """The serve configuration: every listener on ``host``; the pre-authentication caps raised
    as compare.py raises them for its single-process target."""
    if tls_files is not None:
        cert, key, ca = tls_files
        tls = f'[tls]\ncertificate = "{cert}"\nkey = "{key}"\ntrust = "{ca}"\n'
    else:
        tls = '[tls]\ncertificate = "no/edge.pem"\nkey = "no/edge.key"\n'
    path = directory / "edgeproxy.toml"
    path.write_text(
        f'[edge]\ndomains = ["contoso.test"]\nlisten = ["{host}:{port}"]\n'
        f'internal-listen = "{host}:0"\nstate-dir = "state"\nworkers = {workers}\n{tls}'
        f'[admin]\nlisten = "{host}:{admin_port}"\n'
        f'[dns]\nresolver = "{resolver[0]}:{resolver[1]}"\n'
        "[limits]\npreauth-per-ip = 100000\npreauth-total = 100000\ndialback-per-ip = 100000\n"
    )
    return path


def _status(host: str, admin_port: int) -> dict[str, object]:
    with urllib.request.urlopen(f"http://{host}:{admin_port}/status", timeout=5) as answer:
        return json.loads(answer.read())


def start_serve_with_workers(
    directory: Path, config: Path, *, host: str, admin_port: int, workers: int, sink_port: int,
) -> tuple[subprocess.Popen[bytes], subprocess.Popen[bytes]]:
    """Start ``edgeproxy serve --role edge`` and the channel sink; both once ready."""
    log = (directory / "serve.log").open("ab")
    serve = subprocess.Popen([sys.executable, "-m", "edgeproxy", "serve", "--config", str(config), "--role", "edge"],
                             stdout=subprocess.DEVNULL, stderr=log, cwd=directory,
                             env={**os.environ, "EDGEPROXY_LOG_FORMAT": "json"})
    deadline = time.monotonic() + 60
    channels: list[str] = []
    while time.monotonic() < deadline:
        assert serve.poll() is None, (directory / "serve.log").read_text()[-3000:]
        with contextlib.suppress(OSError, ValueError):
            status = _status(host, admin_port)
            if workers == 1:
                channels = [li["address"] for li in status["listeners"] if li["role"] == "internal"]  # type: ignore[index, union-attr]
            else:
                rows = status["workers"]
                if len(rows) == workers and all(r["state"] == "running" for r in rows):  # type: ignore[index, union-attr]
                    channels = [r["internal"] for r in rows]  # type: ignore[index, union-attr]
            if channels:
                break
        time.sleep(0.2)
    assert channels, "serve did not start"
    sink = subprocess.Popen([sys.executable, __file__, "sink", str(sink_port), host, str(directory / "state"),
                             *channels], stdout=subprocess.PIPE, stderr=log)
    assert sink.stdout is not None and sink.stdout.readline().strip() == b"ready"
    return serve, sink


def main(argv: list[str]) -> int:
    if len(argv) >= 5 and argv[0] == "sink":
        sink_port, host, state_dir = int(argv[1]), argv[2], Path(argv[3])
        edges = [listen_address(a) for a in argv[4:]]
        trio.run(channel_sink, sink_port, host, state_dir, edges)
        return 0
    if argv[:1] in (["--help"], ["-h"]):
        print(__doc__)
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
