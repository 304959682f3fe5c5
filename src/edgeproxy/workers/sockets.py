"""The external listeners shared by the edge workers: one ``SO_REUSEPORT`` socket per worker.

The supervisor binds them before any worker starts, so that an address in use is one
``EP1001`` at start (as with one process), and hands worker *i* its sockets as inherited file
descriptors. With ``SO_REUSEPORT`` (Linux ≥ 3.9, ``socket(7)``) each socket has its own accept
queue and the kernel spreads new connections over them by a hash of their addresses: no worker
wakes for another's connection. The supervisor keeps its copies, so that a restarted worker is
given the same socket back (connections that arrived meanwhile wait in its queue instead of
being refused) and closes them when it stops.

A second edgeproxy must not quietly join the group (the kernel lets any socket of the same user
with ``SO_REUSEPORT`` bind the port): each address is first bound once *without* it, which
fails with ``EADDRINUSE`` when anything listens there already.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Sequence

#: The listen backlog of each worker's socket (the kernel caps it at net.core.somaxconn), as
#: trio's own listeners ask.
LISTEN_BACKLOG = 0xFFFF


def _addresses(host: str | None, port: int) -> list[tuple[socket.AddressFamily, tuple[object, ...]]]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    found: list[tuple[socket.AddressFamily, tuple[object, ...]]] = []
    for family, _kind, _proto, _name, address in infos:
        if (family, address) not in found:
            found.append((family, address))
    return found


def _listening(family: socket.AddressFamily, address: tuple[object, ...], *, reuse_port: bool) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
        if reuse_port:
            sock.listen(LISTEN_BACKLOG)
    except BaseException:
        sock.close()
        raise
    return sock


def bind_shared(listen: Sequence[tuple[str | None, int]], workers: int) -> list[list[socket.socket]]:
    """For each worker, its listening sockets for every address of ``listen`` (port 0: one free
    port, the same for every worker). Raises ``OSError`` (e.g. ``EADDRINUSE``) having closed
    whatever it opened."""
    per_worker: list[list[socket.socket]] = [[] for _ in range(workers)]
    try:
        for host, port in listen:
            for family, address in _addresses(host, port):
                if port != 0:
                    # nothing may listen there yet: a plain bind says so (see the docstring)
                    _listening(family, address, reuse_port=False).close()
                first = _listening(family, address, reuse_port=True)
                per_worker[0].append(first)
                bound = (address[0], first.getsockname()[1], *address[2:])
                for sockets in per_worker[1:]:
                    sockets.append(_listening(family, bound, reuse_port=True))
    except BaseException:
        close_all(per_worker)
        raise
    return per_worker


def close_all(per_worker: Sequence[Sequence[socket.socket]]) -> None:
    """Close every socket (the supervisor's copies, when it stops)."""
    for sockets in per_worker:
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.close()
