"""Kamailio as the gateway's ``next-hop`` instead of the built-in registrar (issue 5): IM both ways;
and (issue 14) only the next hop may send the gateway requests: the same MESSAGE straight from
the UA's address gets 403.

A real Kamailio (Debian ``kamailio``; fixture ``kamailio/kamailio.cfg.tmpl``) on 127.0.0.1 is
the registrar and proxy of contoso.test and relays everything for montague.example (the XMPP
side) to the gateway. SIPp UAs register at Kamailio, not at the gateway. With CI=true a missing
kamailio or sipp fails the test.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import trio
from _sipp import (
    ALICE_IP,
    BOB_IP,
    GATEWAY_IP,
    bob_uas_registered,
    free_port,
    require_sipp,
    run_sipp,
    sipp_command,
)

from edgeproxy.gateway.service import GatewayService, parse_stanza
from edgeproxy.loopback.endpoint import ChannelEndpoint
from edgeproxy.loopback.frames import Item, Role, Routed, StanzaKind
from edgeproxy.loopback.server import serve_loopback
from fixtures.tools import require_tool

TEMPLATE = Path(__file__).parent / "kamailio" / "kamailio.cfg.tmpl"
NS = "jabber:server"


def require_kamailio() -> str:
    """Path of kamailio (also found in /usr/sbin); in CI a missing one fails the test."""
    return require_tool("kamailio", "kamailio")


def _options_answered(port: int) -> bool:
    probe = (
        f"OPTIONS sip:{GATEWAY_IP}:{port} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {GATEWAY_IP}:9;branch=z9hG4bKprobe;rport\r\n"
        "From: <sip:probe@invalid>;tag=p\r\nTo: <sip:probe@invalid>\r\n"
        "Call-ID: probe\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    ).encode()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(0.2)
        sock.bind((GATEWAY_IP, 0))
        sock.sendto(probe, (GATEWAY_IP, port))
        try:
            return sock.recv(4096).startswith(b"SIP/2.0 200")
        except OSError:
            return False


@asynccontextmanager
async def running_kamailio(run_dir: Path, gateway_port: int) -> AsyncIterator[int]:
    """Kamailio on 127.0.0.1:<port> until the block ends (stopped by its own process id)."""
    kamailio = require_kamailio()
    port = free_port(GATEWAY_IP)
    config = TEMPLATE.read_text()
    for key, value in {
        "SIP_IP": GATEWAY_IP,
        "SIP_PORT": str(port),
        "SIP_DOMAIN": "contoso.test",
        "GW_DOMAIN": "montague.example",
        "GW_URI": f"sip:{GATEWAY_IP}:{gateway_port}",
    }.items():
        config = config.replace(f"@{key}@", value)
    cfg = run_dir / "kamailio.cfg"
    cfg.write_text(config)
    check = subprocess.run([kamailio, "-c", "-f", str(cfg)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr[-1500:]
    log = (run_dir / "kamailio.log").open("wb")
    cmd = [kamailio, "-f", str(cfg), "-P", str(run_dir / "kamailio.pid"), "-Y", str(run_dir)]
    cmd += ["-w", str(run_dir), "-E", "-DD", "-m", "32", "-M", "8"]
    # Its own process group, so that the main process and its workers are stopped together,
    # by the group id of the process we started.
    process = await trio.lowlevel.open_process(cmd, stdout=log, stderr=log, start_new_session=True)
    try:
        with trio.fail_after(10):
            while not await trio.to_thread.run_sync(_options_answered, port):
                assert process.poll() is None, (run_dir / "kamailio.log").read_text()[-1500:]
                await trio.sleep(0.1)
        yield port
    finally:
        with trio.CancelScope(shield=True):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            with trio.move_on_after(5):
                await process.wait()
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            await process.wait()
        log.close()


class Edge:
    def __init__(self) -> None:
        self.received: list[Routed] = []
        self.endpoint = ChannelEndpoint(Role.EDGE, on_items=self.on_items, on_bounce=self.bounce)

    async def on_items(self, items: list[Item]) -> None:
        self.received.extend(i for i in items if isinstance(i, Routed))

    def bounce(self, items: list[Routed], condition: str) -> None:
        raise AssertionError(f"bounced: {condition}")


async def direct_message(gateway_port: int, text: str) -> bytes:
    """A MESSAGE from alice to juliet sent from ALICE_IP straight to the gateway; its answer."""
    sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    await sock.bind((ALICE_IP, 0))
    host, port = sock.getsockname()
    body = text.encode()
    request = (
        "MESSAGE sip:juliet@montague.example SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {host}:{port};branch=z9hG4bK-direct;rport\r\n"
        "From: <sip:alice@contoso.test>;tag=direct\r\nTo: <sip:juliet@montague.example>\r\n"
        f"Call-ID: direct@{host}\r\nCSeq: 1 MESSAGE\r\nMax-Forwards: 70\r\n"
        f"Content-Type: text/plain;charset=UTF-8\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    with sock, trio.fail_after(5):
        await sock.sendto(request, (GATEWAY_IP, gateway_port))
        data, _ = await sock.recvfrom(65535)
    return data


async def test_im_both_ways_with_kamailio_as_the_next_hop(tmp_path: Path) -> None:
    require_sipp()
    require_kamailio()
    gateway_port = free_port(GATEWAY_IP)
    with trio.fail_after(50):
        async with running_kamailio(tmp_path, gateway_port) as kamailio_port:
            kam = f"{GATEWAY_IP}:{kamailio_port}"
            async with trio.open_nursery() as nursery:
                edge = Edge()
                host, port = await nursery.start(serve_loopback, edge.endpoint, "127.0.0.1", 0)
                service = GatewayService(
                    sip_domains=("contoso.test",),
                    sip_host=GATEWAY_IP,
                    sip_port=gateway_port,
                    next_hop=f"sip:{kam}",
                )
                await nursery.start(service.run, host, port)
                await edge.endpoint.wait_connected()
                # Bob registers at Kamailio; an XMPP message reaches him through it.
                bob_port, got = await bob_uas_registered(nursery, kam, tmp_path, digest=False)
                raw = (
                    "<message from='romeo@montague.example/orchard' to='bob@contoso.test' "
                    "type='chat' id='k1'><body>Grüße über Kamailio ☃</body></message>"
                ).encode()
                edge.endpoint.submit(
                    StanzaKind.MESSAGE, "romeo@montague.example/orchard", "bob@contoso.test",
                    "chat", "k1", raw,
                )  # fmt: skip
                while not got:
                    await trio.sleep(0.02)
                # Alice (a SIP user of Kamailio) writes to an XMPP user: Kamailio relays it to
                # the gateway, which hands it to the edge.
                text = "こんにちは via Kamailio"
                alice_log = await run_sipp(
                    sipp_command(
                        "message_uac_noauth.xml",
                        ALICE_IP,
                        "-s",
                        "juliet",
                        "-key",
                        "from_user",
                        "alice",
                        "-key",
                        "from_domain",
                        "contoso.test",
                        "-key",
                        "domain",
                        "montague.example",
                        "-key",
                        "text",
                        text,
                        remote=kam,
                    ),  # fmt: skip
                    tmp_path / "alice.log",
                )
                while not edge.received:
                    await trio.sleep(0.02)
                # issue 14: the same MESSAGE straight from alice's address, not through the next
                # hop, is refused (only the next hop may send the gateway requests).
                direct = await direct_message(gateway_port, text)
                assert direct.startswith(b"SIP/2.0 403 Only The Next Hop\r\n"), direct
                await trio.sleep(0.2)
                assert service.admission.counts["next-hop"] >= 1
                assert service.admission.counts["refused"] == 1
                nursery.cancel_scope.cancel()
    log = got[0]
    assert f"GOT MESSAGE sip:bob@{BOB_IP}:{bob_port}" in log  # Kamailio's location lookup
    assert "|from=sip:romeo@montague.example|to=sip:bob@contoso.test|" in log
    assert "|body=Grüße über Kamailio ☃|" in log
    assert "STATUS 200" in alice_log
    [item] = edge.received  # no error came back for k1
    assert (item.kind, item.from_, item.to, item.type) == (
        StanzaKind.MESSAGE,
        "alice@contoso.test",
        "juliet@montague.example",
        "chat",
    )
    body = parse_stanza(item.raw).find("body", NS)
    assert body is not None and body.text.rstrip("\r\n") == text
