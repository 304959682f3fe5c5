"""RSS per idle server-side ``trio.SSLStream`` (after a TLS 1.3 handshake), against plain TCP.

Usage (from the repository)::

    .venv/bin/python bench/probe_tls_memory.py {plain|stdlib|edge} [N] [--client-cert]

``edge`` uses edgeproxy's ``certs.contexts.tls_context`` with role ``S2S_SERVER`` (requests a
client certificate), ``stdlib`` a bare ``ssl.SSLContext``. A client subprocess opens N connections to 127.0.0.99 and holds them;
the server prints its RSS growth per connection. bench/RESULTS.md ("Load test comparison") uses
it to tell TLS' own cost per stream from edgeproxy's.
"""

from __future__ import annotations

import functools
import resource
import ssl
import subprocess
import sys
import tempfile
from pathlib import Path

import trio

ADDR = "127.0.0.99"
sys.path.insert(0, str(Path(__file__).resolve().parent))


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


async def server(kind: str, n: int, pki: Path, client_cert: bool) -> None:
    from edgeproxy.certs.contexts import TlsRole, tls_context

    files = (pki / "contoso.test.crt", pki / "contoso.test.key", pki / "ca.crt")
    if kind == "edge":
        ctx: ssl.SSLContext = tls_context(TlsRole.S2S_SERVER, *files)
    else:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(files[0], files[1])
    held: list[trio.abc.Stream] = []
    done = trio.Event()

    async def handle(stream: trio.abc.Stream) -> None:
        if kind != "plain":
            tls = trio.SSLStream(stream, ctx, server_side=True)
            await tls.do_handshake()
            stream = tls
        held.append(stream)
        if len(held) == n:
            done.set()
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(functools.partial(trio.serve_tcp, handle, 0, host=ADDR))
        port = listeners[0].socket.getsockname()[1]
        base = rss_kib()
        cmd = [sys.executable, __file__, "--client", str(n), str(port), kind, str(pki)]
        client = subprocess.Popen(cmd + (["--client-cert"] if client_cert else []))
        with trio.fail_after(300):
            await done.wait()
        await trio.sleep(2)
        print(f"{kind}{' (client certificate)' if client_cert else ''}: "
              f"{(rss_kib() - base) / n:.1f} KiB per idle server connection ({n})")
        client.terminate()
        client.wait()
        nursery.cancel_scope.cancel()


async def client(n: int, port: int, kind: str, pki: Path, client_cert: bool) -> None:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if client_cert:
        ctx.load_cert_chain(pki / "contoso.test.crt", pki / "contoso.test.key")
    held = []
    for _ in range(n):
        stream: trio.abc.Stream = await trio.open_tcp_stream(ADDR, port)
        if kind != "plain":
            tls = trio.SSLStream(stream, ctx, server_hostname="contoso.test")
            await tls.do_handshake()
            stream = tls
        held.append(stream)
    await trio.sleep_forever()


def main() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    args = [a for a in sys.argv[1:] if a != "--client-cert"]
    client_cert = "--client-cert" in sys.argv
    if args[0] == "--client":
        trio.run(client, int(args[1]), int(args[2]), args[3], Path(args[4]), client_cert)
        return
    import compare

    with tempfile.TemporaryDirectory(prefix="probe-tls-") as tmp:
        pki = compare.make_pki(Path(tmp) / "pki", ("contoso.test",))
        trio.run(server, args[0], int(args[1]) if len(args) > 1 else 2000, pki, client_cert)


if __name__ == "__main__":
    main()
