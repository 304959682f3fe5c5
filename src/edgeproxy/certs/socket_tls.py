"""TLS on a connected socket's own descriptor, as a trio stream: what an idle TLS stream need not keep.

Theory of operation
-------------------
``trio.SSLStream`` runs OpenSSL over two ``ssl.MemoryBIO``s and moves bytes between them and the
transport stream in Python. That costs every TLS connection, for its whole life, the two memory
BIOs — each keeps a buffer the size of the largest TLS flight it carried (OpenSSL's memory BIO
never shrinks it) — and about a dozen Python objects (locks, conflict detectors, the handshake's
one-shot, the ``SSLObject``): measured with ``bench/probe_tls_memory.py`` (2,000 idle server
connections, a client certificate and its CA), 32.2 KiB per connection against 24.8 KiB for the
same context on the socket's descriptor (``--socket``), 3.9 of the 7.4 KiB in C; with this stream
(``--socket-tls``, the trio socket stream it came from still referenced) 27.6 KiB.

:class:`SocketTlsStream` takes the socket of a ``trio.SocketStream`` over (the transport must not
be used afterwards) and lets OpenSSL read and write the descriptor itself, as a C server does: an
``ssl.SSLSocket`` in non-blocking mode, each operation retried after ``trio.lowlevel.wait_readable``
or ``wait_writable`` when OpenSSL asks for it. A read may need the socket writable (a TLS 1.3 key
update is answered from inside ``SSL_read``) and a write readable; when the other direction's task
already waits on that readiness (trio lets one task wait per direction), the operation waits for
that task to be woken instead (:class:`_Direction`).

Semantics follow ``trio.SSLStream`` (without ``https_compatible``) where the S2S session relies
on them: a failed handshake raises the ``ssl.SSLError`` (OpenSSL has already written its alert
to the socket, so there is nothing pending to send), a broken connection
``trio.BrokenResourceError`` (an EOF without ``close_notify`` too), use after ``aclose``
``trio.ClosedResourceError``, two concurrent sends or receives ``trio.BusyResourceError``, a send
after one cancelled midway (OpenSSL may hold part of a record that only those bytes can finish)
``trio.BrokenResourceError``;
``receive_some`` returns ``b""`` after the peer's ``close_notify``; ``aclose`` sends ``close_notify``
(best effort, without waiting for the peer's), drops input nobody will read (else the kernel
answers the close with a reset, and the peer may lose our last bytes: a failed handshake's alert)
and closes the socket.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
from collections.abc import Callable
from typing import Any, TypeVar

import trio

T = TypeVar("T")

#: Bytes of unread input ``aclose`` drops before closing, so that the close is not a reset.
DISCARD_LIMIT = 256 * 1024
#: Largest read when ``receive_some`` is given no size (trio.SSLStream's default refill).
DEFAULT_RECEIVE_SIZE = 65536


class _Direction:
    """One readiness (readable or writable) of the socket: at most one task waits on it at a
    time (trio's rule); a second waiter waits for the first to be woken."""

    __slots__ = ("_wait", "_woken", "busy")

    def __init__(self, wait: Callable[[Any], Any]) -> None:
        self._wait = wait
        self.busy = False
        self._woken: trio.Event | None = None

    async def ready(self, sock: socket.socket) -> None:
        if self.busy:
            if self._woken is None:
                self._woken = trio.Event()
            await self._woken.wait()
            return
        self.busy = True
        try:
            await self._wait(sock)
        finally:
            self.busy = False
            if self._woken is not None:
                self._woken.set()
                self._woken = None


class SocketTlsStream(trio.abc.Stream):
    """A TLS stream on the descriptor of ``transport``'s socket (see the module docstring)."""

    __slots__ = ("_closed", "_readable", "_receiving", "_send_broken", "_sending", "_ssl_object", "_writable",
                 "context", "transport_stream")

    def __init__(
        self,
        transport: trio.SocketStream,
        ssl_context: ssl.SSLContext,
        *,
        server_side: bool = False,
        server_hostname: str | None = None,
    ) -> None:
        self.transport_stream = transport
        self.context = ssl_context
        trio_socket = transport.socket
        # The descriptor moves to a standard socket OpenSSL can own (``wrap_socket`` takes it over
        # in turn); the trio socket is left detached (closing it later is a no-op).
        sock = socket.socket(trio_socket.family, trio_socket.type, trio_socket.proto, fileno=trio_socket.detach())
        sock.setblocking(False)
        self._ssl_object = ssl_context.wrap_socket(
            sock, server_side=server_side, server_hostname=server_hostname,
            do_handshake_on_connect=False, suppress_ragged_eofs=False,
        )
        self._readable = _Direction(trio.lowlevel.wait_readable)
        self._writable = _Direction(trio.lowlevel.wait_writable)
        self._sending = self._receiving = self._closed = self._send_broken = False

    async def _retry(self, operation: Callable[..., T], *args: Any) -> T:
        """Run one OpenSSL operation to completion, waiting for the readiness it asks for.
        Checkpoints once at least (trio's rule for stream methods)."""
        await trio.lowlevel.checkpoint_if_cancelled()
        waited = False
        while True:
            if self._closed:
                raise trio.ClosedResourceError("the TLS stream was closed")
            try:
                result = operation(*args)
            except ssl.SSLWantReadError:
                await self._readable.ready(self._ssl_object)
            except ssl.SSLWantWriteError:
                await self._writable.ready(self._ssl_object)
            else:
                if not waited:
                    await trio.lowlevel.cancel_shielded_checkpoint()
                return result
            waited = True

    async def do_handshake(self) -> None:
        """The TLS handshake; a failure raises OpenSSL's ``ssl.SSLError`` (or an ``OSError``).
        A handshake that fails or is cancelled closes the stream at once (OpenSSL has written its
        alert): the descriptor is the stream's, and the transport it came from no longer has it."""
        try:
            await self._retry(self._ssl_object.do_handshake)
        except BaseException:
            self._close_now(send_close_notify=False)
            raise

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._sending:
            raise trio.BusyResourceError("another task is sending on this TLS stream")
        if self._send_broken and not self._closed:
            await trio.lowlevel.checkpoint()
            raise trio.BrokenResourceError("an earlier send on this TLS stream was interrupted midway")
        self._sending = True
        view = memoryview(data)
        try:
            while view:
                sent = await self._retry(self._ssl_object.send, view)
                view = view[sent:]
            if not data:
                await trio.lowlevel.checkpoint()
        except trio.Cancelled:
            # OpenSSL may hold part of a record it must finish with these very bytes: like
            # trio.SSLStream, the stream cannot send any more.
            self._send_broken = self._send_broken or len(view) > 0
            raise
        except (ssl.SSLError, OSError) as exc:
            if self._closed:
                raise trio.ClosedResourceError("the TLS stream was closed") from exc
            raise trio.BrokenResourceError(str(exc)) from exc
        finally:
            self._sending = False

    async def wait_send_all_might_not_block(self) -> None:
        await self._writable.ready(self._ssl_object)

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._receiving:
            raise trio.BusyResourceError("another task is receiving on this TLS stream")
        if max_bytes is None:
            max_bytes = DEFAULT_RECEIVE_SIZE
        elif max_bytes < 1:
            raise ValueError("max_bytes must be >= 1")
        self._receiving = True
        try:
            return await self._retry(self._ssl_object.recv, max_bytes)
        except ssl.SSLZeroReturnError:
            return b""  # the peer's close_notify
        except (ssl.SSLError, OSError) as exc:
            if self._closed:
                raise trio.ClosedResourceError("the TLS stream was closed") from exc
            raise trio.BrokenResourceError(str(exc)) from exc
        finally:
            self._receiving = False

    async def aclose(self) -> None:
        """Send ``close_notify`` if the socket takes it at once, then close the socket."""
        self._close_now(send_close_notify=True)
        await trio.lowlevel.checkpoint()

    def _close_now(self, *, send_close_notify: bool) -> None:
        if self._closed:
            return
        self._closed = True
        if send_close_notify:
            # Not written, not shaken hands yet, or the peer already gone: it closes anyway.
            with contextlib.suppress(ssl.SSLError, OSError, ValueError):
                self._ssl_object.unwrap()
        self._discard_unread()
        trio.lowlevel.notify_closing(self._ssl_object)
        self._ssl_object.close()

    def _discard_unread(self) -> None:
        """Read and drop what the peer sent that nobody will read (up to DISCARD_LIMIT bytes):
        closing a socket with unread data makes the kernel reset the connection, and the peer
        may then lose what we wrote last — the alert of a failed handshake, our close_notify."""
        left = DISCARD_LIMIT
        with contextlib.suppress(OSError):
            while left > 0 and (chunk := socket.socket.recv(self._ssl_object, min(left, 65536))):
                left -= len(chunk)

    # What the S2S session and the peer check read after the handshake.

    def getpeercert(self, binary_form: bool = False) -> Any:
        return self._ssl_object.getpeercert(binary_form)

    def version(self) -> str | None:
        return self._ssl_object.version()

    def cipher(self) -> tuple[str, str, int] | None:
        return self._ssl_object.cipher()
