"""``edgeproxy status | stop | reload`` against a running serve_admin with a fake edge behind it."""

from __future__ import annotations

import json
import re
import signal
import socket

import pytest
import trio
from _ops_fakes import FakeEdge, Running, write_ops_config

from edgeproxy.cli import main
from edgeproxy.ops.lifecycle import ReloadOutcome, serve_signals
from edgeproxy.ops.status import STATUS_FORMAT


async def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """The CLI blocks (sync HTTP): run it in a thread so the endpoint keeps serving."""
    capsys.readouterr()
    with trio.fail_after(20):
        code = await trio.to_thread.run_sync(main, list(args))
    out, err = capsys.readouterr()
    return code, out, err


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_status_json_prints_the_documented_json(admin: Running, capsys):
    code, out, _ = await run_cli(capsys, "status", "--json", "--config", str(admin.config_path))
    assert code == 0
    data = json.loads(out)
    assert data["format"] == STATUS_FORMAT and data["running"] is True
    assert {li["role"] for li in data["listeners"]} == {"external", "internal"}
    assert [(s["partner"], s["direction"], s["auth"]) for s in data["streams"]] == [
        ("fabrikam.test", "inbound", "sasl-over-tls"), ("gtalk.test", "outbound", "tcp-dialback")]


async def test_status_table_shows_listeners_streams_and_auth_names(admin: Running, capsys):
    code, out, _ = await run_cli(capsys, "status", "--config", str(admin.config_path))
    assert code == 0
    assert out.startswith(f"edgeproxy 0.1.0: running (admin 127.0.0.1:{admin.endpoint.port})")
    assert re.search(r"external\s+127\.0\.0\.10:5269", out)
    assert re.search(r"internal\s+127\.0\.0\.1:23456", out)
    assert re.search(r"fabrikam\.test\s+inbound\s+127\.0\.0\.1:40000\s+SASL EXTERNAL\s+TLSv1\.3", out)
    assert re.search(r"gtalk\.test\s+outbound\s+127\.0\.0\.1:5269\s+TCP dialback\s+none", out)
    assert "Gateway channel: connected" in out


async def test_reload_prints_what_changed(admin: Running, capsys):
    code, out, _ = await run_cli(capsys, "reload", "--config", str(admin.config_path))
    assert code == 0 and admin.edge.reloads == 1
    assert out.startswith("reloaded: partners added northwind.test; removed gtalk.test; 1 streams closed")


async def test_reload_json_prints_the_outcome(admin: Running, capsys):
    code, out, _ = await run_cli(capsys, "reload", "--json", "--config", str(admin.config_path))
    assert code == 0
    assert json.loads(out) == {"ok": True, "message": "", "partners-added": ["northwind.test"],
                               "partners-removed": ["gtalk.test"], "streams-closed": 1}
    admin.edge.next_reload = ReloadOutcome(ok=False, message="edge.domains must list at least one domain")
    code, out, err = await run_cli(capsys, "reload", "--json", "--config", str(admin.config_path))
    assert code == 1 and json.loads(out)["ok"] is False
    assert err.startswith("edgeproxy: reload refused: edge.domains must list")


async def test_refused_reload_exits_1_with_the_reason(admin: Running, capsys):
    admin.edge.next_reload = ReloadOutcome(ok=False, message="edge.domains must list at least one domain")
    code, _, err = await run_cli(capsys, "reload", "--config", str(admin.config_path))
    assert code == 1 and "reload refused: edge.domains must list" in err


async def test_stop_asks_for_a_graceful_stop_and_waits_until_gone(admin: Running, capsys):
    async def stop_serving_when_asked() -> None:
        await admin.edge.stopped.wait()
        await trio.sleep(0.3)
        admin.cancel_admin()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(stop_serving_when_asked)
        code, out, _ = await run_cli(capsys, "stop", "--timeout", "10", "--config", str(admin.config_path))
    assert code == 0 and out.strip() == "edgeproxy stopped"
    assert admin.edge.stop_requests == 1


async def test_stop_without_a_readable_token_is_refused(admin: Running, capsys):
    admin.endpoint.token_path.unlink()
    code, _, err = await run_cli(capsys, "stop", "--no-wait", "--config", str(admin.config_path))
    assert code == 1 and "cannot read the admin token" in err
    assert admin.edge.stop_requests == 0


@pytest.mark.parametrize("command", [["status"], ["status", "--json"], ["stop"], ["reload"]])
async def test_commands_say_not_running_when_nothing_listens(tmp_path, capsys, command):
    port = free_port()
    config = write_ops_config(tmp_path / "edge", listen=f"127.0.0.1:{port}")
    code, out, err = await run_cli(capsys, *command, "--config", str(config))
    assert code == 1
    assert f"edgeproxy is not running (nothing on 127.0.0.1:{port})" in out + err
    if command == ["status", "--json"]:
        assert json.loads(out) == {"format": STATUS_FORMAT, "running": False, "admin": f"127.0.0.1:{port}"}


async def test_sighup_reloads_and_sigterm_requests_stop():
    edge = FakeEdge()
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            await nursery.start(serve_signals, edge)
            signal.raise_signal(signal.SIGHUP)
            while edge.reloads == 0:
                await trio.sleep(0.01)
            signal.raise_signal(signal.SIGTERM)
            await edge.stopped.wait()
            nursery.cancel_scope.cancel()
    assert (edge.reloads, edge.stop_requests) == (1, 1)
