"""``edgeproxy status`` lists the gateway's SIP listeners (UDP, TCP, TLS, with their addresses)
along with the edge's own, in the table and in ``--json``."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
import trio
from _ops_fakes import Running

from edgeproxy.ops.status import (
    EdgeStatus,
    Role,
    Transport,
    decode_status,
    render_table,
    sip_listeners,
)
from fixtures.serve import ServeProcess, start_serve

SIP = sip_listeners([("127.0.0.1", 5060)], tls=[("127.0.0.1", 5061)])


async def status_cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The real CLI in a thread, so that the in-process admin endpoint keeps serving."""
    command = [sys.executable, "-m", "edgeproxy", "status", "--config", str(config), *args]
    with trio.fail_after(30):
        return await trio.to_thread.run_sync(
            lambda: subprocess.run(command, capture_output=True, text=True, timeout=25))


def with_sip(admin: Running) -> None:
    plain = admin.edge.status
    admin.edge.status = lambda: msgspec.structs.replace(  # type: ignore[method-assign]
        plain(), listeners=(*plain().listeners, *SIP))


def test_sip_rows_are_udp_and_tcp_on_each_address_and_tls_on_its_own() -> None:
    assert [(li.role, li.address, li.transport) for li in SIP] == [
        (Role.SIP, "127.0.0.1:5060", Transport.UDP),
        (Role.SIP, "127.0.0.1:5060", Transport.TCP),
        (Role.SIP, "127.0.0.1:5061", Transport.TLS),
    ]
    assert sip_listeners([("::1", 5060)])[0].address == "[::1]:5060"


async def test_the_table_lists_the_sip_listeners_with_their_transport(admin: Running) -> None:
    with_sip(admin)
    done = await status_cli(admin.config_path)
    assert done.returncode == 0, done.stderr
    assert re.search(r"ROLE\s+ADDRESS\s+TRANSPORT", done.stdout)
    assert re.search(r"external\s+127\.0\.0\.10:5269\s+tcp", done.stdout)
    for transport, port in (("udp", 5060), ("tcp", 5060), ("tls", 5061)):
        assert re.search(rf"sip\s+127\.0\.0\.1:{port}\s+{transport}\n", done.stdout), done.stdout


async def test_the_json_lists_the_sip_listeners(admin: Running) -> None:
    with_sip(admin)
    done = await status_cli(admin.config_path, "--json")
    assert done.returncode == 0, done.stderr
    listeners = json.loads(done.stdout)["listeners"]
    assert {"role": "external", "address": "127.0.0.10:5269", "transport": "tcp"} in listeners
    assert [li for li in listeners if li["role"] == "sip"] == [
        {"role": "sip", "address": "127.0.0.1:5060", "transport": "udp"},
        {"role": "sip", "address": "127.0.0.1:5060", "transport": "tcp"},
        {"role": "sip", "address": "127.0.0.1:5061", "transport": "tls"},
    ]


def test_a_status_without_transport_keys_reads_as_tcp() -> None:
    """The JSON of an edge from before the key was added still decodes and renders."""
    old = (b'{"format":"edgeproxy-status/1","running":true,"version":"0.1.0","pid":1,'
           b'"listeners":[{"role":"external","address":"0.0.0.0:5269"}]}')
    status = decode_status(old)
    assert isinstance(status, EdgeStatus) and status.listeners[0].transport is Transport.TCP
    assert re.search(r"external\s+0\.0\.0\.0:5269\s+tcp", render_table(status))


@pytest.fixture
def edge(tmp_path: Path) -> Iterator[ServeProcess]:
    serve = start_serve(tmp_path / "edge", address="127.0.31.7")
    try:
        yield serve
    finally:
        serve.stop()


def test_a_running_edge_and_gateway_list_their_sip_listeners(edge: ServeProcess) -> None:
    done = subprocess.run([sys.executable, "-m", "edgeproxy", "status", "--json", "--config",
                           str(edge.workdir / "edgeproxy.toml")], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    sip = [(li["address"], li["transport"]) for li in json.loads(done.stdout)["listeners"] if li["role"] == "sip"]
    assert sip == [(f"127.0.31.7:{edge.sip_port}", "udp"), (f"127.0.31.7:{edge.sip_port}", "tcp")]
