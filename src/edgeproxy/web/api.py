"""The admin API and the front of the admin listener's application.

:class:`AdminApplication` is the ASGI application hypercorn serves on ``[admin] listen``. Before
anything is routed it checks, for every request:

* the ``Host`` header (and an absolute-form target's authority) names this endpoint — DNS
  rebinding: a page under ``evil.example`` resolving to 127.0.0.1 would otherwise read our
  answers — else ``421 Misdirected Request`` with no data (the names are
  :func:`edgeproxy.ops.admin.admin_host_names`);
* the request head is at most ``MAX_HEAD_BYTES`` (431) and the body at most ``MAX_BODY_BYTES``
  (413: up front from ``Content-Length``, else while it is read).

Then ``/metrics``, ``/healthz``, ``/status`` (reads, no token: the status right), POST
``/reload`` and ``/stop`` (``Authorization: Bearer <admin token>``, else 401 / 403 and event
EP8003) are answered by :class:`AdminApi`; ``/ui/…`` goes to the Control Panel when it is on.

Failure boundary (``Surface.ADMIN_REQUEST``): a request whose handling raises is answered
``500`` (when no answer was started yet) and reported (EP1007,
``edgeproxy_input_failures_total{surface="admin-request"}``); the listener goes on.
"""

from __future__ import annotations

import hmac

from edgeproxy.ops import events
from edgeproxy.ops.admin import MAX_BODY_BYTES, MAX_HEAD_BYTES, host_allowed
from edgeproxy.ops.boundary import Surface, contain
from edgeproxy.ops.events import EventLog
from edgeproxy.ops.lifecycle import DRAIN_BOUND_SECONDS, Control
from edgeproxy.ops.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from edgeproxy.ops.metrics import Metrics, Outcome
from edgeproxy.ops.status import ServiceState, StatusSource, encode_status
from edgeproxy.ops.telemetry import Telemetry
from edgeproxy.web.http import (
    JSON,
    ASGIApp,
    BodyTooLarge,
    Message,
    PlainResponse,
    Receive,
    Scope,
    Send,
    bounded_receive,
    head_size,
    header_map,
    json_response,
    peer_of,
    send_plain,
    text,
)

#: The prefix of the Control Panel's pages.
UI_PREFIX = "/ui"


class AdminApi:
    """The five admin resources; holds what every request needs."""

    def __init__(
        self,
        status_source: StatusSource,
        metrics: Metrics,
        control: Control,
        token: str,
        event_log: EventLog | None,
    ) -> None:
        self.status_source = status_source
        self.metrics = metrics
        self.control = control
        self.token = token.encode()
        self.event_log = event_log
        #: path -> (method, name of the method answering it)
        self.routes = {
            "/metrics": ("GET", "get_metrics"),
            "/healthz": ("GET", "get_healthz"),
            "/status": ("GET", "get_status"),
            "/reload": ("POST", "post_reload"),
            "/stop": ("POST", "post_stop"),
        }

    async def handle(self, method: str, path: str, headers: dict[str, str], peer: str) -> PlainResponse:
        """Answer one request for one of :attr:`routes` (the caller checked the path)."""
        allowed, name = self.routes[path]
        if method != allowed and not (method == "HEAD" and allowed == "GET"):
            return text(405, f"{path} accepts {allowed}", ("Allow", allowed))
        if allowed == "POST":
            denied = self.check_token(method, path, headers, peer)
            if denied is not None:
                return denied
        answer: PlainResponse = await getattr(self, name)()
        return answer

    def check_token(self, method: str, path: str, headers: dict[str, str], peer: str) -> PlainResponse | None:
        """None when the request carries the admin token, else the 401/403 answer (and EP8003)."""
        auth = headers.get("authorization", "")
        scheme, _, given = auth.partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            reason, response = "no token", text(
                401, "this operation needs the admin token (Authorization: Bearer …)",
                ("WWW-Authenticate", 'Bearer realm="edgeproxy"'),
            )
        elif not hmac.compare_digest(given.strip().encode(), self.token):
            reason, response = "wrong token", text(403, "wrong admin token")
        else:
            return None
        if self.event_log is not None:
            self.event_log.emit(events.ADMIN_DENIED, method=method, path=path, peer=peer, reason=reason)
        return response

    async def get_metrics(self) -> PlainResponse:
        try:
            self.metrics.observe_status(self.status_source.status())
        except Exception as exc:  # noqa: BLE001 - metrics still render without fresh gauges
            self._internal_error("status for /metrics", exc)
        return PlainResponse(200, self.metrics.render(), METRICS_CONTENT_TYPE)

    async def get_healthz(self) -> PlainResponse:
        try:
            state = self.status_source.status().state
        except Exception as exc:  # noqa: BLE001
            self._internal_error("status for /healthz", exc)
            return text(500, "status unavailable")
        if state is ServiceState.RUNNING:
            return text(200, "ok")
        return text(503, state.value)

    async def get_status(self) -> PlainResponse:
        try:
            body = encode_status(self.status_source.status())
        except Exception as exc:  # noqa: BLE001
            self._internal_error("status", exc)
            return json_response(500, {"error": "status unavailable"})
        return PlainResponse(200, body + b"\n", JSON)

    async def post_reload(self) -> PlainResponse:
        outcome = await self.control.reload()
        self.metrics.reload(Outcome.OK if outcome.ok else Outcome.FAILED)
        return json_response(200 if outcome.ok else 409, outcome)

    async def post_stop(self) -> PlainResponse:
        self.control.request_stop()
        return json_response(202, {"stopping": True, "drain_bound_seconds": DRAIN_BOUND_SECONDS})

    def _internal_error(self, task: str, exc: BaseException) -> None:
        if self.event_log is not None:
            self.event_log.emit(events.INTERNAL_ERROR, task=f"admin {task}", error=exc)


def _one_shot(send: Send, started: list[bool]) -> Send:
    """``send`` that marks every answer ``Connection: close``, ``Cache-Control: no-store`` and
    ``X-Content-Type-Options: nosniff`` (one request per connection, as the per-source connection
    cap counts connections; no admin answer is cached or sniffed) and remembers whether an answer
    was started."""

    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start":
            started[0] = True
            names = {k.lower() for k, _ in message.get("headers", ())}
            extra = [(b"connection", b"close")]
            if b"cache-control" not in names:
                extra.append((b"cache-control", b"no-store"))
            if b"x-content-type-options" not in names:  # assets too: a type is never guessed
                extra.append((b"x-content-type-options", b"nosniff"))
            message = {**message, "headers": [*message.get("headers", ()), *extra]}
        await send(message)

    return wrapped


class AdminApplication:
    """The ASGI application of the admin listener (see the module docstring)."""

    def __init__(
        self,
        api: AdminApi,
        host_names: frozenset[str],
        port: int,
        telemetry: Telemetry | None,
        ui: ASGIApp | None = None,
    ) -> None:
        self.api = api
        self.host_names = host_names
        self.port = port
        self.telemetry = telemetry
        self.ui = ui

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":  # no WebSocket here
            await send({"type": "websocket.close", "code": 1008})
            return
        started = [False]
        send = _one_shot(send, started)
        head_only = scope.get("method") == "HEAD"

        async def handle() -> None:
            try:
                await self.dispatch(scope, bounded_receive(receive, MAX_BODY_BYTES), send)
            except BodyTooLarge:
                if not started[0]:
                    await send_plain(send, text(413, "request body too large"), head_only=head_only)

        contained = await contain(Surface.ADMIN_REQUEST, peer_of(scope), self.telemetry, handle,
                                  answer_name="HTTP 500")
        if not contained and not started[0]:
            await send_plain(send, text(500, "internal error: the request failed (event EP1007 has the cause)"),
                                 head_only=head_only)

    def addressed_to_us(self, scope: Scope, headers: dict[str, str]) -> bool:
        """The ``Host`` header — and an absolute-form target's authority — name this endpoint."""
        if not host_allowed(headers.get("host", ""), self.host_names, self.port):
            return False
        target = bytes(scope.get("raw_path") or b"").decode("latin-1")
        scheme, sep, rest = target.partition("://")
        if sep and scheme.lower() in ("http", "https"):
            return host_allowed(rest.split("/", 1)[0].rsplit("@", 1)[-1], self.host_names, self.port)
        return True

    async def dispatch(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Guards, then the API, the Control Panel, or 404."""
        headers = header_map(scope)
        head_only = scope["method"] == "HEAD"
        length = headers.get("content-length", "0")
        if head_size(scope) > MAX_HEAD_BYTES:  # the bounds first, as a parser would
            response = text(431, "request head too large")
        elif not length.isdigit() or int(length) > MAX_BODY_BYTES:
            response = text(413, "request body too large")
        elif not self.addressed_to_us(scope, headers):
            response = text(421, "misdirected request: not a name of this admin endpoint")
        else:
            path = scope["path"]
            if path in self.api.routes:
                response = await self.api.handle(scope["method"], path, headers, peer_of(scope))
            elif self.ui is not None and (path == UI_PREFIX or path.startswith(UI_PREFIX + "/") or path == "/"):
                await self.ui(scope, receive, send)
                return
            else:
                response = text(404, f"no such resource: {path}")
        await send_plain(send, response, head_only=head_only)


async def _lifespan(receive: Receive, send: Send) -> None:
    """Answer the ASGI lifespan protocol: nothing to start or stop."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
