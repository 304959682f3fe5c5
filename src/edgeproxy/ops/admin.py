"""The admin endpoint: ``/metrics``, ``/healthz``, ``/status``, POST ``/reload`` and ``/stop``.

A deliberately small HTTP/1.1 server (h11 over trio streams), one request per connection:

* reads (``GET /metrics``, ``/healthz``, ``/status``) need no token: viewing status is the lesser
  right of SPEC §10, and the endpoint listens on loopback only by default;
* writes (``POST /reload``, ``POST /stop``) need ``Authorization: Bearer <token>``, the token in
  ``[admin] token-file`` (default ``<state-dir>/admin.token``, created mode 0640 at start
  whatever the umask, :mod:`edgeproxy.secretfiles`; an existing one that grants more is
  refused), so that only the service account and its group, the admin group — who can read
  that file — can change anything.

Only for its own names (issue 14, DNS rebinding): a web page can make a browser on this host
send requests to 127.0.0.1 under the page's own name (``evil.example`` resolving to 127.0.0.1);
the browser then lets the page read the answers, ``/status`` included. Such a request carries
``Host: evil.example:9269``. So every request's ``Host`` (and the authority of an absolute-form
target) must name this endpoint — the ``[admin] listen`` host, ``localhost``, ``127.0.0.1`` or
``[::1]`` (any IP address when listening on a wildcard: a page reads only answers from its own
origin, and an IP-literal origin is that address itself, not a name its author can re-point) —
with the bound port, or no port; anything else
is answered ``421 Misdirected Request`` before routing, with no data. The name is what a
rebinding page cannot choose; the port check only keeps other local services' names apart.

Bounded: at most ``max_connections`` connections at once and ``MAX_CONNECTIONS_PER_SOURCE`` from
one source address (more get ``503``; the per-source one also ``EP6001``, limit
``admin-per-source``), a request head of 16 KiB, a body of 64 KiB and ``request_timeout`` seconds
per connection. A non-loopback ``[admin] listen`` is refused unless ``allow-remote = true``.

Failure boundary (``ops.boundary``, ``Surface.ADMIN_REQUEST``): a request h11 cannot parse is
answered with h11's status hint (400, or 431/413 for our bounds) — an expected refusal, no event.
A request whose handling raises anything (a status source, a reload, a bug) is answered ``500``
and reported (EP1007, ``edgeproxy_input_failures_total{surface="admin-request"}``); whatever else
one connection raises is reported and closes that connection. The listener always goes on.
"""

from __future__ import annotations

import contextlib
import errno
import hmac
import ipaddress
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import h11
import msgspec
import trio

from edgeproxy.config import EdgeConfig
from edgeproxy.errors import ConfigError
from edgeproxy.ops import events
from edgeproxy.ops.boundary import Surface, contain
from edgeproxy.ops.events import EventLog
from edgeproxy.ops.lifecycle import DRAIN_BOUND_SECONDS, Control
from edgeproxy.ops.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from edgeproxy.ops.metrics import Metrics, Outcome
from edgeproxy.ops.status import ServiceState, StatusSource, encode_status
from edgeproxy.ops.telemetry import Telemetry
from edgeproxy.secretfiles import GROUP_READABLE, ensure_private_dir, ensure_secret

#: Connections one source address may hold at once (issue 14): one local user must not hold
#: every one of the ``max_connections`` (16) slots. ``edgeproxy status|reload|stop`` uses one
#: connection at a time and a Prometheus scraper one; 4 leaves room for a retry or a browser tab,
#: and 16 / 4 = at least four sources (local users, the scraper) are always served. A source is
#: an address: on Linux a local user may bind any 127.0.0.0/8 source, so this bounds a careless
#: client more than a determined local one (counting per user would need the peer socket's uid).
MAX_CONNECTIONS_PER_SOURCE = 4
MAX_HEAD_BYTES = 16 * 1024
MAX_BODY_BYTES = 64 * 1024
JSON = "application/json"
TEXT = "text/plain; charset=utf-8"

_json = msgspec.json.Encoder()


def split_host_port(value: str) -> tuple[str, int]:
    """``"127.0.0.1:9269"`` → ``("127.0.0.1", 9269)``; ``"[::1]:9269"`` → ``("::1", 9269)``."""
    host, _, port = value.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"not a host:port address: {value!r}")
    return host, int(port)


def join_host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def client_host(host: str) -> str:
    """Where a client on this machine connects for a listener bound to ``host``."""
    return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)


def admin_host_names(listen_host: str, port: int) -> frozenset[str]:
    """The ``Host`` values the admin endpoint answers to (see the module docstring), lower case:
    each name with ``:port`` and without a port; ``*`` stands for any IP address (wildcard)."""
    names = {listen_host.lower(), "localhost", "127.0.0.1", "::1"}
    if listen_host in ("", "0.0.0.0", "::"):
        names.add("*")
    return frozenset(names)


def host_allowed(value: str, names: frozenset[str], port: int) -> bool:
    """Whether the ``Host`` header (or absolute-form authority) ``value`` names this endpoint."""
    value = value.strip().lower()
    if value.startswith("["):
        host, bracket, rest = value[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            return False
        given_port = rest[1:] if rest else None
    elif value.count(":") == 1:
        host, _, given_port = value.partition(":")
    elif ":" in value:  # an unbracketed IPv6 address is not a valid Host
        return False
    else:
        host, given_port = value, None
    if given_port is not None and given_port != str(port):
        return False
    if host in names:
        return True
    if "*" in names:
        try:
            ipaddress.ip_address(host)
        except ValueError:
            return False
        return True
    return False


def admin_token_path(config: EdgeConfig) -> Path:
    """``[admin] token-file``, else ``<state-dir>/admin.token``."""
    if config.admin.token_file:
        return config.path(config.admin.token_file)
    return config.state_dir / "admin.token"


def ensure_admin_token(path: Path) -> str:
    """Read the token, creating it (random, mode 0640 whatever the umask: owner and the admin
    group) when the file does not exist yet; a missing directory is created 0750.

    Raises ``SecretFileError`` when the existing file grants more than 0640, ``OSError`` when it
    cannot be read or created, ``ValueError`` when it is empty.
    """
    ensure_private_dir(path.parent)
    return ensure_secret(path, GROUP_READABLE)


def read_admin_token(path: Path) -> str:
    """The token in ``path`` (first line, stripped). Raises OSError, ValueError if empty."""
    token = path.read_text(encoding="utf-8").strip()
    if not token:
        raise ValueError(f"admin token file {path} is empty")
    return token


@dataclass(frozen=True, slots=True)
class AdminEndpoint:
    """What ``serve_admin`` reports through ``task_status.started``."""

    host: str
    port: int
    token_path: Path

    @property
    def address(self) -> str:
        return join_host_port(self.host, self.port)


@dataclass(frozen=True, slots=True)
class _Response:
    status: int
    body: bytes
    content_type: str = TEXT
    headers: tuple[tuple[str, str], ...] = ()


def _text(status: int, text: str, *headers: tuple[str, str]) -> _Response:
    return _Response(status, (text + "\n").encode(), TEXT, headers)


def _json_response(status: int, value: object) -> _Response:
    return _Response(status, _json.encode(value) + b"\n", JSON)


class _Handler:
    """Routes one request; holds what every request needs."""

    def __init__(
        self,
        status_source: StatusSource,
        metrics: Metrics,
        control: Control,
        token: str,
        event_log: EventLog | None,
        host_names: frozenset[str],
        port: int,
    ) -> None:
        self.status_source = status_source
        self.metrics = metrics
        self.control = control
        self.token = token.encode()
        self.event_log = event_log
        self.host_names = host_names
        self.port = port

    async def handle(self, method: str, target: str, headers: dict[str, str], peer: str) -> _Response:
        if not self.addressed_to_us(target, headers):
            return _text(421, "misdirected request: not a name of this admin endpoint")
        path = target.split("?", 1)[0]
        routes = {
            "/metrics": ("GET", self.get_metrics),
            "/healthz": ("GET", self.get_healthz),
            "/status": ("GET", self.get_status),
            "/reload": ("POST", self.post_reload),
            "/stop": ("POST", self.post_stop),
        }
        if path not in routes:
            return _text(404, f"no such resource: {path}")
        allowed, handler = routes[path]
        if method != allowed and not (method == "HEAD" and allowed == "GET"):
            return _text(405, f"{path} accepts {allowed}", ("Allow", allowed))
        if allowed == "POST":
            denied = self.check_token(method, path, headers, peer)
            if denied is not None:
                return denied
        return await handler()

    def addressed_to_us(self, target: str, headers: dict[str, str]) -> bool:
        """The ``Host`` header — and an absolute-form target's authority — name this endpoint."""
        if not host_allowed(headers.get("host", ""), self.host_names, self.port):
            return False
        scheme, sep, rest = target.partition("://")
        if sep and scheme.lower() in ("http", "https"):
            return host_allowed(rest.split("/", 1)[0].rsplit("@", 1)[-1], self.host_names, self.port)
        return True

    def check_token(self, method: str, path: str, headers: dict[str, str], peer: str) -> _Response | None:
        auth = headers.get("authorization", "")
        scheme, _, given = auth.partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            reason, response = "no token", _text(
                401, "this operation needs the admin token (Authorization: Bearer …)",
                ("WWW-Authenticate", 'Bearer realm="edgeproxy"'),
            )
        elif not hmac.compare_digest(given.strip().encode(), self.token):
            reason, response = "wrong token", _text(403, "wrong admin token")
        else:
            return None
        if self.event_log is not None:
            self.event_log.emit(events.ADMIN_DENIED, method=method, path=path, peer=peer, reason=reason)
        return response

    async def get_metrics(self) -> _Response:
        try:
            self.metrics.observe_status(self.status_source.status())
        except Exception as exc:  # noqa: BLE001 - metrics still render without fresh gauges
            self._internal_error("status for /metrics", exc)
        return _Response(200, self.metrics.render(), METRICS_CONTENT_TYPE)

    async def get_healthz(self) -> _Response:
        try:
            state = self.status_source.status().state
        except Exception as exc:  # noqa: BLE001
            self._internal_error("status for /healthz", exc)
            return _text(500, "status unavailable")
        if state is ServiceState.RUNNING:
            return _text(200, "ok")
        return _text(503, state.value)

    async def get_status(self) -> _Response:
        try:
            body = encode_status(self.status_source.status())
        except Exception as exc:  # noqa: BLE001
            self._internal_error("status", exc)
            return _json_response(500, {"error": "status unavailable"})
        return _Response(200, body + b"\n", JSON)

    async def post_reload(self) -> _Response:
        outcome = await self.control.reload()
        self.metrics.reload(Outcome.OK if outcome.ok else Outcome.FAILED)
        return _json_response(200 if outcome.ok else 409, outcome)

    async def post_stop(self) -> _Response:
        self.control.request_stop()
        return _json_response(202, {"stopping": True, "drain_bound_seconds": DRAIN_BOUND_SECONDS})

    def _internal_error(self, task: str, exc: BaseException) -> None:
        if self.event_log is not None:
            self.event_log.emit(events.INTERNAL_ERROR, task=f"admin {task}", error=exc)


async def _receive_request(
    conn: h11.Connection, stream: trio.abc.Stream
) -> tuple[h11.Request, int] | int:
    """The request and its body size; or an HTTP status to answer with when it is unacceptable."""
    request: h11.Request | None = None
    body = 0
    head = 0
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError as exc:
            return exc.error_status_hint
        if event is h11.NEED_DATA:
            data = await stream.receive_some(8192)
            if request is None:
                head += len(data)
                if head > MAX_HEAD_BYTES:  # h11 only bounds a head that arrives incomplete
                    return 431
            conn.receive_data(data)
            continue
        if isinstance(event, h11.Request):
            request = event
        elif isinstance(event, h11.Data):
            body += len(event.data)
            if body > MAX_BODY_BYTES:
                return 413
        elif isinstance(event, h11.EndOfMessage) and request is not None:
            return request, body
        elif isinstance(event, h11.ConnectionClosed):
            return 0


async def _send(conn: h11.Connection, stream: trio.abc.Stream, response: _Response, *, head_only: bool) -> None:
    headers = [
        ("Content-Type", response.content_type),
        ("Content-Length", str(len(response.body))),
        ("Connection", "close"),
        ("Cache-Control", "no-store"),
        *response.headers,
    ]
    await stream.send_all(conn.send(h11.Response(status_code=response.status, headers=headers)))
    if not head_only:
        await stream.send_all(conn.send(h11.Data(data=response.body)))
    await stream.send_all(conn.send(h11.EndOfMessage()))


def _source(stream: trio.SocketStream) -> str:
    """The peer's address without the port: what the per-source cap counts."""
    try:
        return str(stream.socket.getpeername()[0])
    except OSError:
        return "?"


def _peer(stream: trio.SocketStream) -> str:
    try:
        peer_host, peer_port = stream.socket.getpeername()[:2]
        return join_host_port(peer_host, peer_port)
    except OSError:
        return "?"


async def _serve_connection(
    stream: trio.SocketStream, handler: _Handler, timeout: float, telemetry: Telemetry | None = None
) -> None:
    peer = _peer(stream)
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
    try:
        with trio.move_on_after(timeout):
            received = await _receive_request(conn, stream)
            if received == 0:
                return
            if isinstance(received, int):  # h11 still lets a server answer a broken request
                await _send(conn, stream, _text(received, "request refused"), head_only=False)
                await _linger(stream)
                return
            request, _ = received
            method = request.method.decode("ascii", "replace")
            target = request.target.decode("ascii", "replace")
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in request.headers}
            answered: list[_Response] = []

            async def handle() -> None:
                answered.append(await handler.handle(method, target, headers, peer))

            if not await contain(Surface.ADMIN_REQUEST, peer, telemetry, handle, answer_name="HTTP 500"):
                answered.append(_text(500, "internal error: the request failed (event EP1007 has the cause)"))
            await _send(conn, stream, answered[-1], head_only=method == "HEAD")
    except (trio.BrokenResourceError, trio.ClosedResourceError, h11.LocalProtocolError):
        pass
    finally:
        await trio.aclose_forcefully(stream)


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


def _check_listen(config: EdgeConfig, event_log: EventLog | None) -> tuple[str, int]:
    host, port = split_host_port(config.admin.listen)
    if not is_loopback(host) and not config.admin.allow_remote:
        if event_log is not None:
            event_log.emit(events.ADMIN_LISTEN_REFUSED, address=config.admin.listen)
        raise ConfigError(
            f"{config.source}: admin.listen {config.admin.listen} is not a loopback address; "
            "set admin.allow-remote = true to serve it there"
        )
    return host, port


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
    task_status: trio.TaskStatus[AdminEndpoint] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the admin endpoint on ``[admin] listen`` until cancelled.

    Use with ``nursery.start``: it returns the bound ``AdminEndpoint`` (the real port when the
    configuration says port 0) once the socket listens. Raises ``ConfigError`` for a non-loopback
    address without ``allow-remote`` and ``OSError`` when the address cannot be bound (both also
    logged as events). Cancellation closes the listener and every open admin connection.
    """
    host, port = _check_listen(config, event_log)
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
    handler = _Handler(status_source, metrics, control, token, event_log,
                       admin_host_names(host, endpoint.port), endpoint.port)
    limiter = trio.CapacityLimiter(max_connections)
    per_source: dict[str, int] = {}
    telemetry = Telemetry(metrics, event_log)

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
                          partial(_serve_connection, stream, handler, request_timeout, telemetry))
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
