"""The admin endpoint's guards of issue 14: the Host check against DNS rebinding and the
per-source connection cap. Real sockets; the endpoint listens on 127.0.0.90, clients connect
from 127.0.0.91 and 127.0.0.92 (addresses 127.0.0.90–99 belong to the issue 14 tests)."""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio
import trio.testing
from _ops_fakes import FakeEdge, write_ops_config

from edgeproxy.config import load_config
from edgeproxy.ops.admin import (
    MAX_CONNECTIONS_PER_SOURCE,
    AdminEndpoint,
    admin_host_names,
    host_allowed,
)
from edgeproxy.ops.events import EventLog
from edgeproxy.ops.metrics import Metrics
from edgeproxy.web.server import serve_admin

LISTEN = "127.0.0.90"
CLIENT = "127.0.0.91"
OTHER_CLIENT = "127.0.0.92"


@dataclass
class Guarded:
    endpoint: AdminEndpoint
    edge: FakeEdge
    metrics: Metrics
    log: io.StringIO
    event_log: EventLog

    def events(self, event_id: str) -> list[dict[str, object]]:
        self.event_log.flush()
        return [e for e in map(json.loads, self.log.getvalue().splitlines()) if e["id"] == event_id]


@pytest.fixture
async def guarded(tmp_path: Path) -> AsyncIterator[Guarded]:
    config = load_config(write_ops_config(tmp_path / "edge", listen=f"{LISTEN}:0"))
    edge, metrics, out = FakeEdge(), Metrics(), io.StringIO()
    event_log = EventLog(out, output="json", on_emit=metrics.event_logged)
    async with trio.open_nursery() as nursery:
        endpoint = await nursery.start(lambda task_status: serve_admin(
            config, edge, metrics, edge, event_log=event_log, max_connections=16, request_timeout=5.0,
            task_status=task_status))
        yield Guarded(endpoint, edge, metrics, out, event_log)
        nursery.cancel_scope.cancel()
    event_log.close()


async def connect(port: int, source: str = CLIENT) -> trio.SocketStream:
    return await trio.open_tcp_stream(LISTEN, port, local_address=source)


async def exchange(stream: trio.SocketStream, request: bytes) -> tuple[int, bytes]:
    """Send ``request``, read until the server closes; the status and the body."""
    with trio.fail_after(5):
        async with stream:
            await stream.send_all(request)
            data = b""
            while chunk := await stream.receive_some(65536):
                data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def get(path: str, host: str | None, *, token: str | None = None, method: str = "GET") -> bytes:
    lines = [f"{method} {path} HTTP/1.1"]
    if host is not None:
        lines.append(f"Host: {host}")
    if token is not None:
        lines.append(f"Authorization: Bearer {token}")
    return ("\r\n".join([*lines, "Content-Length: 0", "", ""])).encode()


# -- Host ----------------------------------------------------------------------------------------


async def test_requests_that_name_the_endpoint_are_served(guarded: Guarded) -> None:
    port = guarded.endpoint.port
    for host in (f"{LISTEN}:{port}", f"localhost:{port}", f"LocalHost:{port}", f"127.0.0.1:{port}",
                 f"[::1]:{port}", "localhost", LISTEN):
        status, body = await exchange(await connect(port), get("/status", host))
        assert status == 200, host
        assert json.loads(body)["domains"] == ["contoso.test"]


async def test_a_rebinding_name_is_refused_with_421_and_no_data(guarded: Guarded) -> None:
    port = guarded.endpoint.port
    status, body = await exchange(await connect(port), get("/status", f"evil.example:{port}"))
    assert status == 421
    assert b"contoso.test" not in body and b"{" not in body
    for path in ("/metrics", "/healthz", "/nope"):
        assert (await exchange(await connect(port), get(path, f"evil.example:{port}")))[0] == 421


async def test_a_write_under_a_foreign_name_is_refused_even_with_the_token(guarded: Guarded) -> None:
    port = guarded.endpoint.port
    token = guarded.endpoint.token_path.read_text().strip()
    request = get("/stop", f"evil.example:{port}", token=token, method="POST")
    assert (await exchange(await connect(port), request))[0] == 421
    assert guarded.edge.stop_requests == 0


@pytest.mark.parametrize("request_bytes", [
    pytest.param(lambda port: get("/status", f"localhost:{port + 1}"), id="our-name-another-port"),
    pytest.param(lambda port: get(f"http://evil.example:{port}/status", f"localhost:{port}"), id="absolute-form"),
    pytest.param(lambda port: b"GET /status HTTP/1.0\r\n\r\n", id="http-1.0-without-host"),
    pytest.param(lambda port: get("/status", f"127.0.0.1.evil.example:{port}"), id="our-address-as-a-label"),
])
async def test_requests_that_do_not_name_the_endpoint_get_421(guarded: Guarded, request_bytes) -> None:  # type: ignore[no-untyped-def]
    port = guarded.endpoint.port
    assert (await exchange(await connect(port), request_bytes(port)))[0] == 421


@pytest.mark.parametrize(("listen_host", "value", "allowed"), [
    ("127.0.0.1", "localhost:9269", True),
    ("127.0.0.1", "[::1]:9269", True),
    ("127.0.0.1", "127.0.0.1", True),
    ("127.0.0.1", "evil.example:9269", False),
    ("127.0.0.1", "localhost:9270", False),
    ("127.0.0.1", "localhost:", False),
    ("127.0.0.1", "::1:9269", False),  # an IPv6 address needs brackets
    ("127.0.0.1", "[::1", False),
    ("127.0.0.1", "10.0.0.5:9269", False),
    ("0.0.0.0", "10.0.0.5:9269", True),  # a wildcard listener: any IP literal (not forgeable by a page)
    ("0.0.0.0", "evil.example:9269", False),
    ("admin.contoso.test", "ADMIN.contoso.test:9269", True),
])
def test_host_names_of_the_endpoint(listen_host: str, value: str, allowed: bool) -> None:
    assert host_allowed(value, admin_host_names(listen_host, 9269), 9269) is allowed


# -- per-source cap ------------------------------------------------------------------------------


async def test_one_source_cannot_hold_more_than_its_share_of_admin_connections(guarded: Guarded) -> None:
    port = guarded.endpoint.port
    assert MAX_CONNECTIONS_PER_SOURCE == 4
    idle = [await connect(port) for _ in range(MAX_CONNECTIONS_PER_SOURCE)]
    await trio.testing.wait_all_tasks_blocked()
    status, body = await exchange(await connect(port), get("/healthz", "localhost"))
    assert (status, body) == (503, b"too many admin connections from your address\n")
    # another address is still served while the first holds its four
    assert (await exchange(await connect(port, OTHER_CLIENT), get("/healthz", "localhost")))[0] == 200
    assert guarded.metrics.registry.get_sample_value(
        "edgeproxy_limit_reached_total", {"limit": "admin-per-source"}) == 1
    [event] = guarded.events("EP6001")
    assert event["limit"] == "admin-per-source" and event["value"] == MAX_CONNECTIONS_PER_SOURCE
    # a slot given back is a slot the source can use again
    await idle.pop().aclose()
    await trio.testing.wait_all_tasks_blocked()
    assert (await exchange(await connect(port), get("/healthz", "localhost")))[0] == 200
    for stream in idle:
        await stream.aclose()


# -- HTTP/2 (prior knowledge) gets the same Host check ---------------------------------------------


async def h2_status(port: int, authority: str) -> int:
    """GET /status over HTTP/2 with prior knowledge, ``:authority`` = ``authority``."""
    import h2.config
    import h2.connection
    import h2.events

    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    conn.send_headers(1, [(":method", "GET"), (":path", "/status"), (":scheme", "http"),
                          (":authority", authority)], end_stream=True)
    with trio.fail_after(5):
        async with await connect(port) as stream:
            await stream.send_all(conn.data_to_send())
            while True:
                data = await stream.receive_some(65536)
                assert data, "closed without an answer"
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.ResponseReceived):
                        return int(dict(event.headers)[b":status"])
                await stream.send_all(conn.data_to_send())


async def test_http2_requests_get_the_same_host_check(guarded: Guarded) -> None:
    port = guarded.endpoint.port
    assert await h2_status(port, f"localhost:{port}") == 200
    assert await h2_status(port, f"evil.example:{port}") == 421
