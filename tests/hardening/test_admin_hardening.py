"""Issue 13 on the admin endpoint: no request takes the admin listener (or the server) down.

Malformed requests go to a real ``edgeproxy serve --role edge`` (``fixtures.serve``) over TCP and
get 4xx answers; an injected raising handler (in process, ``serve_admin`` with the ops fakes) gets
500, event EP1007 ``admin-request``, and the next request is served. Addresses: 127.0.0.62.
"""

from __future__ import annotations

import io
import json
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "ops"))
from _ops_fakes import FakeEdge, write_ops_config  # noqa: E402

from edgeproxy.config import load_config  # noqa: E402
from edgeproxy.ops.admin import AdminEndpoint  # noqa: E402
from edgeproxy.ops.events import EventLog  # noqa: E402
from edgeproxy.ops.metrics import Metrics  # noqa: E402
from edgeproxy.web import server as server_module  # noqa: E402
from edgeproxy.web.api import AdminApi  # noqa: E402
from edgeproxy.web.server import serve_admin  # noqa: E402
from fixtures.serve import ServeProcess, start_serve  # noqa: E402

ADDRESS = "127.0.0.62"


def exchange(address: str, port: int, payload: bytes, *, timeout: float = 5) -> bytes:
    """Send ``payload`` on a fresh connection, half-close, read the answer until the server closes."""
    with socket.create_connection((address, port), timeout=timeout) as s:
        try:
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the server may answer and close before everything was sent
        data = b""
        try:
            while chunk := s.recv(65536):
                data += chunk
        except (ConnectionResetError, TimeoutError):
            pass
    return data


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else 0


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> ServeProcess:
    serve = start_serve(tmp_path_factory.mktemp("admin"), address=ADDRESS, role="edge")
    yield serve
    serve.stop()


MALFORMED = {
    "binary": (b"\x00\x01\x02\x03\xff\r\n\r\n", 400),
    "no-version": (b"GET /healthz\r\n\r\n", 400),
    "header-without-colon": (b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nnot a header\r\n\r\n", 400),
    "bad-content-length": (b"POST /stop HTTP/1.1\r\nHost: localhost\r\nContent-Length: abc\r\n\r\n", 400),
    "two-content-lengths": (b"POST /stop HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab", 400),
    "negative-content-length": (b"POST /stop HTTP/1.1\r\nHost: localhost\r\nContent-Length: -1\r\n\r\n", 400),
    "bad-chunk": (b"POST /stop HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400),
    "http2-preface": (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 0),  # HTTP/2 with prior knowledge: no HTTP/1.1 answer
    "huge-head": (b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Big: " + b"a" * 40_000 + b"\r\n\r\n", 431),
    "huge-body": (b"POST /stop HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100000\r\n\r\n" + b"a" * 100_000, 413),
    "no-host": (b"GET /healthz HTTP/1.1\r\n\r\n", 400),
    "non-ascii-target": ("GET /h\u00e9\u00e4lthz?\u00ff HTTP/1.1\r\nHost: localhost\r\n\r\n".encode("latin-1"), 400),
    "absolute-target": (b"GET http://evil.example/metrics HTTP/1.1\r\nHost: localhost\r\n\r\n", 421),  # not our name
    "odd-method": (b"BREW /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n", 405),
    "bad-auth": ("POST /reload HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer \u00ff\u00fe\r\n"
                 "Content-Length: 0\r\n\r\n".encode("latin-1"), 403),
}


@pytest.mark.parametrize("name", list(MALFORMED))
def test_a_malformed_request_gets_a_4xx_and_the_admin_endpoint_goes_on(edge: ServeProcess, name: str) -> None:
    payload, expected = MALFORMED[name]
    assert status_of(exchange(edge.address, edge.admin_port, payload)) == expected
    edge.assert_serving()
    assert edge.http_get("/healthz") == (200, b"ok\n")
    assert edge.metric("edgeproxy_input_failures_total", surface="admin-request") == 0


def test_connections_that_say_nothing_or_hang_up_early_do_not_end_the_endpoint(edge: ServeProcess) -> None:
    for payload in (b"", b"GET /sta", b"GET /status HTTP/1.1\r\nHost: localhost\r\n"):
        assert status_of(exchange(edge.address, edge.admin_port, payload)) in (0, 400)
    with socket.create_connection((edge.address, edge.admin_port)) as s:  # a reset mid-request
        s.sendall(b"GET /status HTTP/1.1\r\n")
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    edge.assert_serving()
    assert edge.http_get("/status")[0] == 200
    assert "Traceback" not in edge.events_path.read_text(errors="replace")


# -- in process: an injected raising handler --------------------------------------------------


@pytest.fixture
async def admin(tmp_path: Path) -> AsyncIterator[tuple[AdminEndpoint, Metrics, io.StringIO, EventLog]]:
    config = load_config(write_ops_config(tmp_path / "edge", listen=f"{ADDRESS}:0"))
    edge, metrics, out = FakeEdge(), Metrics(), io.StringIO()
    event_log = EventLog(out, output="json", on_emit=metrics.event_logged)
    async with trio.open_nursery() as nursery:
        endpoint = await nursery.start(lambda task_status: serve_admin(
            config, edge, metrics, edge, event_log=event_log, request_timeout=2.0, task_status=task_status))
        yield endpoint, metrics, out, event_log
        nursery.cancel_scope.cancel()
    event_log.close()


@pytest.mark.parametrize("route", ["get_status", "get_metrics", "post_stop"])
async def test_a_request_whose_handler_raises_gets_500_and_the_next_request_is_served(
    admin: tuple[AdminEndpoint, Metrics, io.StringIO, EventLog], monkeypatch: pytest.MonkeyPatch, route: str
) -> None:
    endpoint, metrics, out, event_log = admin

    async def boom(self: object) -> None:
        raise RuntimeError("injected")

    monkeypatch.setattr(AdminApi, route, boom)
    token = endpoint.token_path.read_text().strip()
    path = {"get_status": "GET /status", "get_metrics": "GET /metrics", "post_stop": "POST /stop"}[route]
    request = f"{path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\nContent-Length: 0\r\n\r\n".encode()
    answer = await trio.to_thread.run_sync(exchange, ADDRESS, endpoint.port, request)
    assert status_of(answer) == 500 and b"EP1007" in answer
    healthz = await trio.to_thread.run_sync(exchange, ADDRESS, endpoint.port,
                                            b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
    assert status_of(healthz) == 200
    event_log.flush()
    [event] = [e for e in map(json.loads, out.getvalue().splitlines()) if e["id"] == "EP1007"]
    assert event["surface"] == "admin-request" and event["answer"] == "HTTP 500"
    assert "RuntimeError: injected" in event["error"]
    assert metrics.registry.get_sample_value("edgeproxy_input_failures_total", {"surface": "admin-request"}) == 1


async def test_a_connection_that_fails_outside_the_request_is_contained_and_the_listener_goes_on(
    admin: tuple[AdminEndpoint, Metrics, io.StringIO, EventLog], monkeypatch: pytest.MonkeyPatch
) -> None:
    endpoint, metrics, out, event_log = admin
    real = server_module._serve_connection
    calls: list[int] = []

    async def serve_connection(*args: object) -> None:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("injected in the parser")
        await real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(server_module, "_serve_connection", serve_connection)
    request = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n"
    assert await trio.to_thread.run_sync(exchange, ADDRESS, endpoint.port, request) == b""  # closed
    assert status_of(await trio.to_thread.run_sync(exchange, ADDRESS, endpoint.port, request)) == 200
    event_log.flush()
    [event] = [e for e in map(json.loads, out.getvalue().splitlines()) if e["id"] == "EP1007"]
    assert event["surface"] == "admin-request" and "injected in the parser" in event["error"]
