"""The admin endpoint over real sockets on 127.0.0.1: reads, token-guarded writes, bounds."""

from __future__ import annotations

import json
import os
import stat

import pytest
import trio
from _ops_fakes import FakeEdge, Running, write_ops_config
from prometheus_client.parser import text_string_to_metric_families

from edgeproxy.config import load_config
from edgeproxy.errors import ConfigError
from edgeproxy.names import listen_address
from edgeproxy.ops.lifecycle import ReloadOutcome
from edgeproxy.ops.metrics import Flow, Metrics, StanzaKind, Verdict
from edgeproxy.ops.status import decode_status
from edgeproxy.web.server import serve_admin


async def http(running: Running, method: str, path: str, *, token: str | None = None,
               raw: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
    """One request over a fresh TCP connection; the server closes after answering."""
    with trio.fail_after(5):
        stream = await trio.open_tcp_stream("127.0.0.1", running.endpoint.port)
        async with stream:
            if raw is None:
                auth = f"Authorization: Bearer {token}\r\n" if token is not None else ""
                raw = f"{method} {path} HTTP/1.1\r\nHost: localhost\r\n{auth}Content-Length: 0\r\n\r\n".encode()
            await stream.send_all(raw)
            data = b""
            while chunk := await stream.receive_some(65536):
                data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, v in (h.split(":", 1) for h in header_lines)}
    return int(status_line.split()[1]), headers, body


def token_of(running: Running) -> str:
    return running.endpoint.token_path.read_text().strip()


async def test_status_serves_the_sources_snapshot_as_documented_json(admin: Running):
    code, headers, body = await http(admin, "GET", "/status")
    assert code == 200 and headers["content-type"] == "application/json"
    status = decode_status(body)
    assert status == admin.edge.status()
    data = json.loads(body)
    assert [(li["role"], li["address"]) for li in data["listeners"]] == [
        ("external", "127.0.0.10:5269"), ("internal", "127.0.0.1:23456")]
    assert {s["stream_id"]: s["auth"] for s in data["streams"]} == {"in-1": "sasl-over-tls", "out-1": "tcp-dialback"}


async def test_metrics_reflect_the_traffic_and_the_status_queues(admin: Running):
    for _ in range(4):
        admin.metrics.stanza("fabrikam.test", Flow.IN, StanzaKind.MESSAGE, Verdict.DELIVERED)
    code, headers, body = await http(admin, "GET", "/metrics")
    assert code == 200 and headers["content-type"].startswith("text/plain")
    values = {(s.name, tuple(sorted(s.labels.items()))): s.value
              for f in text_string_to_metric_families(body.decode()) for s in f.samples}
    assert values[("edgeproxy_stanzas_total", (("flow", "in"), ("kind", "message"),
                                               ("partner", "fabrikam.test"), ("verdict", "delivered")))] == 4
    assert values[("edgeproxy_queue_depth", (("queue", "outbound:gtalk.test"),))] == 2
    assert values[("edgeproxy_gateway_channel_state", (("edgeproxy_gateway_channel_state", "connected"),))] == 1


async def test_healthz_is_ok_while_running_and_503_while_draining(admin: Running):
    assert (await http(admin, "GET", "/healthz"))[::2] == (200, b"ok\n")
    admin.edge.state = admin.edge.state.DRAINING
    assert (await http(admin, "GET", "/healthz"))[::2] == (503, b"draining\n")


async def test_writes_without_a_token_are_refused_and_logged(admin: Running):
    code, headers, _ = await http(admin, "POST", "/stop")
    assert code == 401 and headers["www-authenticate"].startswith("Bearer")
    code, _, _ = await http(admin, "POST", "/reload", token="not-the-token")
    assert code == 403
    assert admin.edge.stop_requests == 0 and admin.edge.reloads == 0
    denied = [e for e in admin.events() if e["id"] == "EP8003"]
    assert [(e["path"], e["reason"]) for e in denied] == [("/stop", "no token"), ("/reload", "wrong token")]
    assert token_of(admin) not in admin.log.getvalue()


async def test_stop_with_the_token_requests_a_graceful_stop(admin: Running):
    code, _, body = await http(admin, "POST", "/stop", token=token_of(admin))
    assert code == 202 and json.loads(body)["stopping"] is True
    assert admin.edge.stop_requests == 1


async def test_reload_with_the_token_returns_the_outcome_and_counts_it(admin: Running):
    code, _, body = await http(admin, "POST", "/reload", token=token_of(admin))
    assert code == 200
    assert json.loads(body) == {"ok": True, "message": "", "partners_added": ["northwind.test"],
                                "partners_removed": ["gtalk.test"], "streams_closed": 1}
    admin.edge.next_reload = ReloadOutcome(ok=False, message="partner table invalid")
    code, _, body = await http(admin, "POST", "/reload", token=token_of(admin))
    assert code == 409 and json.loads(body)["message"] == "partner table invalid"
    assert admin.metrics.value("edgeproxy_reloads_total", outcome="ok") == 1
    assert admin.metrics.value("edgeproxy_reloads_total", outcome="failed") == 1


async def test_wrong_method_unknown_path_and_garbage_get_http_errors(admin: Running):
    assert (await http(admin, "GET", "/stop"))[0] == 405
    assert (await http(admin, "POST", "/status", token=token_of(admin)))[0] == 405
    assert (await http(admin, "GET", "/nope"))[0] == 404
    assert (await http(admin, "GET", "/", raw=b"NOT HTTP AT ALL\r\n\r\n"))[0] == 400
    huge = b"GET /status HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 20_000 + b"\r\n\r\n"
    assert (await http(admin, "GET", "/", raw=huge))[0] == 431
    assert admin.edge.stop_requests == 0


async def test_a_silent_client_is_dropped_after_the_request_timeout(admin: Running):
    with trio.fail_after(5):
        stream = await trio.open_tcp_stream("127.0.0.1", admin.endpoint.port)
        async with stream:
            await stream.send_all(b"GET /status HTTP/1.1\r\n")  # never finishes the head
            assert await stream.receive_some(1024) == b""  # closed by the server (2 s timeout)


async def test_connections_above_the_limit_get_503(admin: Running):
    with trio.fail_after(5):
        idle = [await trio.open_tcp_stream("127.0.0.1", admin.endpoint.port) for _ in range(4)]
        await trio.sleep(0.1)
        code, _, body = await http(admin, "GET", "/status")
        assert code == 503 and b"too many" in body
        for s in idle:
            await s.aclose()


async def test_token_file_is_readable_only_by_owner_and_group(admin: Running):
    mode = stat.S_IMODE(os.stat(admin.endpoint.token_path).st_mode)
    assert mode == 0o640  # the service account and its (admin) group, nobody else
    assert len(token_of(admin)) >= 32


async def test_non_loopback_listen_is_refused_unless_allowed(tmp_path):
    config = load_config(write_ops_config(tmp_path / "a", listen="0.0.0.0:0"))
    edge = FakeEdge()
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            with pytest.raises(ConfigError, match="not a loopback address"):
                await nursery.start(lambda task_status: serve_admin(config, edge, Metrics(), edge, task_status=task_status))
    allowed = load_config(write_ops_config(tmp_path / "b", listen="0.0.0.0:0", extra="allow-remote = true\n"))
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            endpoint = await nursery.start(
                lambda task_status: serve_admin(allowed, edge, Metrics(), edge, task_status=task_status))
            assert endpoint.host == "0.0.0.0" and endpoint.port > 0
            nursery.cancel_scope.cancel()


async def test_bind_failure_is_an_event_and_an_oserror(admin: Running, tmp_path):
    import io

    from edgeproxy.ops.events import EventLog

    busy = load_config(write_ops_config(tmp_path / "busy", listen=f"127.0.0.1:{admin.endpoint.port}"))
    out = io.StringIO()
    log = EventLog(out, output="json")
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            with pytest.raises(OSError):
                await nursery.start(lambda task_status: serve_admin(
                    busy, admin.edge, Metrics(), admin.edge, event_log=log, task_status=task_status))
    log.close()
    (record,) = [json.loads(line) for line in out.getvalue().splitlines()]
    assert record["id"] == "EP1001" and record["role"] == "admin"


def test_host_port_parsing():
    assert listen_address("127.0.0.1:9269") == ("127.0.0.1", 9269)
    assert listen_address("[::1]:9269") == ("::1", 9269)
    with pytest.raises(ConfigError):
        listen_address("9269")
