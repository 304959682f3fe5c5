"""Outbound SRV order and failover against a real dnsmasq (RFC 2782, RFC 6120 §3.2)."""

from __future__ import annotations

import sys
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from edgeproxy.net.connector import ConnectFailed, Connector, ConnectorSettings  # noqa: E402
from fixtures.dnsmasq import host, srv, start_dnsmasq  # noqa: E402


def dead_port(address: str) -> int:
    import socket

    with socket.socket() as s:
        s.bind((address, 0))
        return int(s.getsockname()[1])


async def test_srv_targets_are_tried_in_priority_order_and_a_down_target_is_skipped(tmp_path: Path) -> None:
    live_listeners = await trio.open_tcp_listeners(0, host="127.0.0.32")
    live_port = live_listeners[0].socket.getsockname()[1]
    down = dead_port("127.0.0.31")
    dns = start_dnsmasq(tmp_path / "dns", [
        srv("_xmpp-server._tcp.fabrikam.test", "down.fabrikam.test", down, priority=10),
        srv("_xmpp-server._tcp.fabrikam.test", "live.fabrikam.test", live_port, priority=20),
        srv("_xmpp-server._tcp.fabrikam.test", "later.fabrikam.test", 5269, priority=30),
        host("down.fabrikam.test", "127.0.0.31"),
        host("live.fabrikam.test", "127.0.0.32"),
        host("later.fabrikam.test", "127.0.0.33"),
    ])
    try:
        connector = Connector(ConnectorSettings(resolver=(dns.address, dns.port), attempt_delay=2))
        with trio.fail_after(10):
            targets = await connector.targets("fabrikam.test")
            assert targets == [("down.fabrikam.test", down), ("live.fabrikam.test", live_port),
                               ("later.fabrikam.test", 5269)]
            start = trio.current_time()
            stream = await connector.connect("fabrikam.test")
            # The refused first target makes the next start at once, not after attempt_delay.
            assert trio.current_time() - start < 1.5
            assert stream.socket.getpeername() == ("127.0.0.32", live_port)
            await stream.aclose()
    finally:
        dns.stop()
        for listener in live_listeners:
            await listener.aclose()


async def test_domain_without_srv_falls_back_to_its_address_on_5269_and_reports_failure(tmp_path: Path) -> None:
    dns = start_dnsmasq(tmp_path / "dns", [host("nosrv.test", "127.0.0.34")])
    try:
        connector = Connector(ConnectorSettings(resolver=(dns.address, dns.port), timeout=3))
        with trio.fail_after(10):
            assert await connector.targets("nosrv.test") == [("nosrv.test", 5269)]
            try:
                await connector.connect("nosrv.test")
            except ConnectFailed as exc:
                assert "127.0.0.34:5269" in str(exc)
            else:
                raise AssertionError("nothing listens on 127.0.0.34:5269")
    finally:
        dns.stop()
