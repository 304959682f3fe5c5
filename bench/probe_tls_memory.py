"""RSS per idle server-side ``trio.SSLStream`` (after a TLS 1.3 handshake), against plain TCP.

Usage (from the repository)::

    .venv/bin/python bench/probe_tls_memory.py {plain|stdlib|edge} [N] [--client-cert]
        [--names K] [--verdict] [--num-tickets T] [--skip-openssl-verify] [--socket] [--socket-tls] [--release-chain]

``--names K``: the client certificate names K domains and is sent with its CA (what the load
test's simulator presented until it gave each simulated domain its own certificate: one naming
every simulated domain; ``--names 1`` is what it presents now);
``--verdict``: the server also takes edgeproxy's verdict on the peer certificate per connection
and keeps it (``certs.peer.peer_certificate_check``, what an S2S session keeps);
``--num-tickets T``: TLS 1.3 session tickets the server sends (OpenSSL's default 2);
``--skip-openssl-verify`` (an experiment, ``edge`` only): OpenSSL's chain verification on the
server is replaced by a callback that accepts (``SSL_CTX_set_cert_verify_callback`` through ctypes)
— what OpenSSL caches on the peer certificate while building the chain, which the S2S roles
throw away (their verdict is ``certs.peer``'s). Since ``certs.openssl.defer_verification`` does
the same on every S2S context, it changes nothing for ``edge`` any more.
``--socket``: the server's TLS runs over the socket itself (``SSLContext.wrap_socket``, OpenSSL
reading and writing the file descriptor, as a C server such as Prosody's LuaSec does) instead of
``trio.SSLStream`` over two ``MemoryBIO``s — what trio's objects and the memory BIOs' buffers
(which keep the size of the largest TLS flight they carried) cost per connection.
``--socket-tls``: the server's TLS is edgeproxy's ``certs.socket_tls.SocketTlsStream`` (a trio
stream doing TLS on the socket's descriptor), to compare with ``trio.SSLStream`` and ``--socket``.
``--release-chain``: after the handshake (and the verdict) the server lets OpenSSL free the chain
the client sent (``certs.openssl.release_peer_chain``).
Besides RSS it prints glibc malloc's bytes in use (``mallinfo2().uordblks``) per connection.

``edge`` uses edgeproxy's ``certs.contexts.tls_context`` with role ``S2S_SERVER`` (requests a
client certificate), ``stdlib`` a bare ``ssl.SSLContext``. A client subprocess opens N connections to 127.0.0.99 and holds them;
the server prints its RSS growth per connection. bench/RESULTS.md ("Load test comparison") uses
it to tell TLS' own cost per stream from edgeproxy's.
"""

from __future__ import annotations

import ctypes
import functools
import gc
import resource
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio

ADDR = "127.0.0.99"
sys.path.insert(0, str(Path(__file__).resolve().parent))


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


_CERT_VERIFY = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p)
_ACCEPT = _CERT_VERIFY(lambda _store, _arg: 1)


def skip_openssl_verify(ctx: ssl.SSLContext) -> None:
    """Replace OpenSSL's certificate verification on ``ctx`` by a callback that accepts."""
    from edgeproxy.certs import openssl

    lib, pointer = openssl._libssl(), openssl._ssl_ctx_pointer(ctx)
    if lib is None or pointer is None:
        raise SystemExit("cannot reach the SSL_CTX")
    function = lib.SSL_CTX_set_cert_verify_callback
    function.restype, function.argtypes = None, [ctypes.c_void_p, _CERT_VERIFY, ctypes.c_void_p]
    function(pointer, _ACCEPT, None)


class _MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                "fsmblks", "uordblks", "fordblks", "keepcost")]


def malloc_in_use() -> int:
    """glibc's bytes in use in the main arena and mmapped blocks (pymalloc's arenas excluded:
    they are mmapped by Python itself, not by malloc)."""
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = _MallInfo2
    info = libc.mallinfo2()
    return int(info.uordblks + info.hblkhd)


async def server(kind: str, n: int, pki: Path, client_cert: bool, options: dict[str, int]) -> None:
    from edgeproxy.certs.contexts import TlsRole, tls_context

    files = (pki / "contoso.test.crt", pki / "contoso.test.key", pki / "ca.crt")
    if kind == "edge":
        ctx: ssl.SSLContext = tls_context(TlsRole.S2S_SERVER, *files)
    else:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(files[0], files[1])
    if "num_tickets" in options:
        ctx.num_tickets = options["num_tickets"]
    if options.get("skip_openssl_verify"):
        skip_openssl_verify(ctx)
    held: list[object] = []
    if options.get("socket"):
        socket_server(kind, n, pki, client_cert, options, ctx, held)
        return
    done = trio.Event()

    async def handle(stream: trio.abc.Stream) -> None:
        if kind != "plain":
            if options.get("socket_tls"):
                from edgeproxy.certs.socket_tls import SocketTlsStream

                tls: trio.abc.Stream = SocketTlsStream(stream, ctx, server_side=True)  # type: ignore[arg-type]
            else:
                tls = trio.SSLStream(stream, ctx, server_side=True)
            await tls.do_handshake()
            stream = tls
            if options.get("verdict"):
                from edgeproxy.certs.peer import peer_certificate_check

                held.append(peer_certificate_check(tls))
            if options.get("release_chain"):
                from edgeproxy.certs.openssl import release_peer_chain

                release_peer_chain(tls)
        held.append(stream)
        if len(held) == n * (2 if options.get("verdict") and kind != "plain" else 1):
            done.set()
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(functools.partial(trio.serve_tcp, handle, 0, host=ADDR))
        port = listeners[0].socket.getsockname()[1]
        gc.collect()
        base, base_malloc = rss_kib(), malloc_in_use()
        cmd = [sys.executable, __file__, "--client", str(n), str(port), kind, str(pki)]
        client = subprocess.Popen(cmd + (["--client-cert"] if client_cert else []))
        with trio.fail_after(300):
            await done.wait()
        await trio.sleep(2)
        gc.collect()
        print(f"{kind}{' (client certificate)' if client_cert else ''} {options}: "
              f"{(rss_kib() - base) / n:.1f} KiB RSS per idle server connection ({n}); malloc in use "
              f"{(malloc_in_use() - base_malloc) / 1024 / n:.1f} KiB")
        client.terminate()
        client.wait()
        nursery.cancel_scope.cancel()


def socket_server(kind: str, n: int, pki: Path, client_cert: bool, options: dict[str, int],
                  ctx: ssl.SSLContext, held: list[object]) -> None:
    """The server side of ``--socket``: accept ``n`` connections one after the other, each
    handshaken by OpenSSL on the socket's descriptor (blocking), and hold them."""
    import socket

    listener = socket.create_server((ADDR, 0), backlog=128)
    port = listener.getsockname()[1]
    gc.collect()
    base, base_malloc = rss_kib(), malloc_in_use()
    cmd = [sys.executable, __file__, "--client", str(n), str(port), kind, str(pki)]
    client = subprocess.Popen(cmd + (["--client-cert"] if client_cert else []))
    listener.settimeout(60)
    try:
        for _ in range(n):
            conn, _address = listener.accept()
            conn.settimeout(60)
            tls = ctx.wrap_socket(conn, server_side=True)
            if options.get("verdict"):
                from edgeproxy.certs.peer import certificate_check

                held.append(certificate_check(tls.getpeercert(binary_form=True), ctx.peer_trust))  # type: ignore[attr-defined]
            held.append(tls)
        time.sleep(2)
        gc.collect()
        print(f"{kind}{' (client certificate)' if client_cert else ''} {options}: "
              f"{(rss_kib() - base) / n:.1f} KiB RSS per idle server connection ({n}); malloc in use "
              f"{(malloc_in_use() - base_malloc) / 1024 / n:.1f} KiB")
    finally:
        client.terminate()
        client.wait()


async def client(n: int, port: int, kind: str, pki: Path, client_cert: bool) -> None:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if client_cert:
        name = "partners" if (pki / "partners.crt").exists() else "contoso.test"
        ctx.load_cert_chain(pki / f"{name}.crt", pki / f"{name}.key")
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
    argv = sys.argv[1:]
    options: dict[str, int] = {}
    names = 0
    for flag in ("--names", "--num-tickets"):
        if flag in argv:
            i = argv.index(flag)
            value = int(argv[i + 1])
            del argv[i:i + 2]
            if flag == "--names":
                names = value
            else:
                options["num_tickets"] = value
    if "--skip-openssl-verify" in argv:
        argv.remove("--skip-openssl-verify")
        options["skip_openssl_verify"] = 1
    if "--release-chain" in argv:
        argv.remove("--release-chain")
        options["release_chain"] = 1
    if "--socket-tls" in argv:
        argv.remove("--socket-tls")
        options["socket_tls"] = 1
    if "--socket" in argv:
        argv.remove("--socket")
        options["socket"] = 1
    if "--verdict" in argv:
        argv.remove("--verdict")
        options["verdict"] = 1
    args = [a for a in argv if a != "--client-cert"]
    client_cert = "--client-cert" in sys.argv
    if args[0] == "--client":
        trio.run(client, int(args[1]), int(args[2]), args[3], Path(args[4]), client_cert)
        return
    import compare

    with tempfile.TemporaryDirectory(prefix="probe-tls-") as tmp:
        pki = compare.make_pki(Path(tmp) / "pki", ("contoso.test",))
        if names:
            partners_certificate(pki, names)
        trio.run(server, args[0], int(args[1]) if len(args) > 1 else 2000, pki, client_cert, options)


def partners_certificate(pki: Path, names: int) -> None:
    """``partners.crt`` (leaf naming sim1..simK.test, then its CA) and ``partners.key``."""
    from edgeproxy.certs import selfsigned
    from edgeproxy.certs.pem import certificates_pem, private_key_pem

    authority = selfsigned.make_authority("probe partners CA")
    key = selfsigned.new_ec_key()
    cert = selfsigned.issue(authority, key.public_key(), [f"sim{i}.test" for i in range(1, names + 1)])
    (pki / "partners.crt").write_bytes(certificates_pem([cert, authority.certificate]))
    (pki / "partners.key").write_bytes(private_key_pem(key))


if __name__ == "__main__":
    main()
