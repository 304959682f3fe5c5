"""Serving the admin listener: our accept loop and connection guards, hypercorn's trio worker for
HTTP.

Each accepted connection first passes the guards — at most ``max_connections`` at once and
``max_per_source`` from one source address (more get ``503``; the per-source one also
``EP6001``, limit ``admin-per-source``) — and is then handed to hypercorn's trio ``TCPServer``
(h11; HTTP/2 with prior knowledge) running :class:`~edgeproxy.web.api.AdminApplication`, under a
deadline of ``request_timeout`` seconds for the whole connection. The guards need the accept
itself (an idle connection holds a slot too), which ``hypercorn.trio.serve`` does not expose; the
protocol side is hypercorn's, configured with our bounds (:func:`hypercorn_config`).

A non-loopback ``[admin] listen`` is refused unless ``allow-remote = true``. Whatever one
connection raises outside its request is reported (EP1007, ``admin-request``) and closes that
connection; the listener always goes on.
"""

from __future__ import annotations

import contextlib
import errno
from collections.abc import Awaitable, Callable
from functools import partial

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import ConnectionState
from hypercorn.utils import wrap_app

from edgeproxy.config import EdgeConfig
from edgeproxy.ops import events
from edgeproxy.ops.admin import (
    MAX_CONNECTIONS_PER_SOURCE,
    MAX_HEAD_BYTES,
    AdminEndpoint,
    admin_host_names,
    admin_token_path,
    check_listen,
    ensure_admin_token,
)
from edgeproxy.ops.boundary import Surface, contain
from edgeproxy.ops.events import EventLog
from edgeproxy.ops.lifecycle import Control
from edgeproxy.ops.metrics import Metrics
from edgeproxy.ops.status import StatusSource
from edgeproxy.ops.telemetry import Telemetry
from edgeproxy.web.api import AdminApi, AdminApplication
from edgeproxy.web.http import ASGIApp

#: Seconds a connection may sit between requests or before its first one (hypercorn's
#: keep-alive); every answer says ``Connection: close`` anyway.
KEEP_ALIVE_SECONDS = 5


def hypercorn_config(request_timeout: float) -> HypercornConfig:
    """hypercorn's settings for the admin listener: our head bound, no server banner, no logs
    of its own (failures are our events), bounded HTTP/2 too."""
    config = HypercornConfig()
    config.h11_max_incomplete_size = MAX_HEAD_BYTES
    config.h2_max_header_list_size = MAX_HEAD_BYTES
    config.h2_max_concurrent_streams = 4
    config.keep_alive_timeout = KEEP_ALIVE_SECONDS
    config.keep_alive_max_requests = 1
    config.read_timeout = max(1, int(request_timeout))
    config.include_server_header = False
    config.accesslog = None
    config.errorlog = None
    config.max_app_queue_size = 4
    return config


def _source(stream: trio.SocketStream) -> str:
    """The peer's address without the port: what the per-source cap counts."""
    try:
        return str(stream.socket.getpeername()[0])
    except OSError:
        return "?"


def _peer(stream: trio.SocketStream) -> str:
    try:
        host, port = stream.socket.getpeername()[:2]
    except OSError:
        return "?"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class _Connection(TCPServer):
    """hypercorn's connection, ending as soon as the client has gone: hypercorn keeps its idle
    timer (``keep_alive_timeout``) running after the client closed, which would hold the
    connection's slot (and its source's share) that long."""

    async def _read_data(self) -> None:
        await super()._read_data()
        await self.idle_task.stop()


async def _serve_connection(stream: trio.SocketStream, app: object, config: HypercornConfig,
                            context: WorkerContext, timeout: float) -> None:
    """One connection through hypercorn, bounded in time."""
    with trio.move_on_after(timeout):
        await _Connection(app, config, context, ConnectionState({}), stream).run()  # type: ignore[arg-type]


async def _refuse_busy(stream: trio.SocketStream, body: bytes = b"too many admin connections\n") -> None:
    with trio.move_on_after(1):
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await stream.send_all(
                b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nConnection: close\r\n"
                b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
            )
        await _linger(stream)
    await trio.aclose_forcefully(stream)


async def _linger(stream: trio.SocketStream) -> None:
    """After an early answer: read (a bounded amount of) what the client still sends, so that
    closing with unread data does not reset the connection before the client reads the answer."""
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
        await stream.send_eof()
        for _ in range(8):
            if not await stream.receive_some(MAX_HEAD_BYTES):
                break


async def serve_admin(
    config: EdgeConfig,
    status_source: StatusSource,
    metrics: Metrics,
    control: Control,
    *,
    event_log: EventLog | None = None,
    max_connections: int = 16,
    max_per_source: int = MAX_CONNECTIONS_PER_SOURCE,
    request_timeout: float = 10.0,
    ui: Callable[[str], ASGIApp] | None = None,
    task_status: trio.TaskStatus[AdminEndpoint] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the admin listener on ``[admin] listen`` until cancelled.

    Use with ``nursery.start``: it returns the bound ``AdminEndpoint`` (the real port when the
    configuration says port 0) once the socket listens. ``ui`` builds the Control Panel from the
    admin token (default: :func:`edgeproxy.web.control_panel.control_panel` when ``[admin] ui = true``).
    Raises ``ConfigError`` for a non-loopback address without ``allow-remote`` and ``OSError``
    when the address cannot be bound (both also logged as events). Cancellation closes the
    listener and every open admin connection.
    """
    host, port = check_listen(config, event_log)
    token_path = admin_token_path(config)
    token = ensure_admin_token(token_path)
    try:
        listeners = await trio.open_tcp_listeners(port, host=host)
    except OSError as exc:
        if event_log is not None:
            event_log.emit(events.BIND_FAILED, role="admin", address=config.admin.listen, error=exc)
        raise
    bound = listeners[0].socket.getsockname()
    endpoint = AdminEndpoint(host=bound[0], port=bound[1], token_path=token_path)
    telemetry = Telemetry(metrics, event_log)
    if ui is None and config.admin.ui:
        from edgeproxy.web.control_panel import control_panel

        ui = partial(control_panel, config, status_source, event_log)
    application = AdminApplication(
        AdminApi(status_source, metrics, control, token, event_log),
        admin_host_names(host, endpoint.port), endpoint.port, telemetry,
        ui(token) if ui is not None else None,
    )
    app = wrap_app(application, 0, "asgi")  # type: ignore[arg-type]
    hconfig = hypercorn_config(request_timeout)
    context = WorkerContext(None)
    limiter = trio.CapacityLimiter(max_connections)
    per_source: dict[str, int] = {}

    async def one(stream: trio.SocketStream) -> None:
        source = _source(stream)
        if per_source.get(source, 0) >= max_per_source:
            telemetry.limit_reached("admin-per-source", max_per_source)
            await _refuse_busy(stream, b"too many admin connections from your address\n")
            return
        try:
            limiter.acquire_nowait()
        except trio.WouldBlock:
            await _refuse_busy(stream)
            return
        per_source[source] = per_source.get(source, 0) + 1
        try:
            # the request itself has its own boundary (HTTP 500); this one holds the rest
            await contain(Surface.ADMIN_REQUEST, _peer(stream), telemetry,
                          partial(_serve_connection, stream, app, hconfig, context, request_timeout))
        finally:
            limiter.release()
            per_source[source] -= 1
            if not per_source[source]:
                del per_source[source]
            await trio.aclose_forcefully(stream)

    async with trio.open_nursery() as nursery:
        for listener in listeners:
            nursery.start_soon(_accept_loop, listener, one, nursery, event_log, endpoint.address)
        task_status.started(endpoint)


async def _accept_loop(
    listener: trio.SocketListener,
    one: Callable[[trio.SocketStream], Awaitable[None]],
    nursery: trio.Nursery,
    event_log: EventLog | None,
    address: str,
) -> None:
    """Accept forever; descriptor exhaustion is logged and retried after a pause."""
    async with listener:
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS):
                    if event_log is not None:
                        event_log.emit(events.ACCEPT_FAILED, address=address, error=exc)
                    await trio.sleep(0.1)
                    continue
                raise
            nursery.start_soon(one, stream)
