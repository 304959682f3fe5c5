"""SIP over TLS at the gateway with a real UA: baresip (Debian baresip-core) on 127.0.0.102/.103.

The gateway's TLS comes from the configuration (``gateway.tls.gateway_tls``: ``[tls]`` certificate
and key, ``sip-tls-listen`` absent → the sip-listen port + 1, here port 0 → any), with
certificates from a private CA (trustme) naming the hosts' IP addresses. The edge side is a real
``ChannelEndpoint`` behind ``serve_loopback`` that records what the gateway sends it
(``fixtures.channel_peer.EdgePeer``). baresip runs
with its SIP trace on (``-s``): what it received and answered is read from its output.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from pathlib import Path

import pytest
import trio
from _sipp import PASSWORD, every_user, require_sipp, run_sipp, sipp_command

from edgeproxy.config import parse_config
from edgeproxy.gateway.service import GatewayService
from edgeproxy.gateway.sip.transport import Destination, destination_for
from edgeproxy.gateway.sip.uri import parse_uri
from edgeproxy.gateway.tls import gateway_tls
from edgeproxy.loopback.frames import StanzaKind
from fixtures.baresip import free_sip_port
from fixtures.channel_peer import EdgePeer
from fixtures.private_ca import PrivateCa
from fixtures.tools import require_tool

GATEWAY_IP, ALICE_IP, BOB_IP, SIPP_IP = "127.0.0.101", "127.0.0.102", "127.0.0.103", "127.0.0.104"


class Baresip:
    """One baresip process: SIP on ``host:port`` (TLS on port + 1), ctrl_tcp for commands."""

    def __init__(self, directory: Path, host: str, account: str, *, certificate: Path | None, ca: Path,
                 contacts: str = "") -> None:
        self.directory, self.host = directory, host
        self.port = free_sip_port(host)
        self.ctrl_port = free_sip_port(host)
        directory.mkdir()
        (directory / "accounts").write_text(account + "\n")
        (directory / "contacts").write_text(contacts)
        certificate_line = f"sip_certificate\t{certificate}\n" if certificate else ""
        (directory / "config").write_text(
            f"poll_method\tepoll\nnet_interface\t{host}\nsip_listen\t{host}:{self.port}\n"
            f"sip_cafile\t{ca}\n{certificate_line}"
            "audio_player\taufile,/dev/null\naudio_source\tausine,440\n"
            "module_path\t/usr/lib/baresip/modules\nmodule\tg711.so\nmodule\taufile.so\nmodule\tausine.so\n"
            "module_tmp\taccount.so\nmodule_app\tcontact.so\nmodule_app\tmenu.so\n"
            f"module_app\tctrl_tcp.so\nctrl_tcp_listen\t{host}:{self.ctrl_port}\n"
        )
        self.output = directory / "baresip.out"

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        baresip = require_tool("baresip", "baresip-core")
        with self.output.open("wb") as out:
            await trio.run_process([baresip, "-f", str(self.directory), "-s"], stdout=out, stderr=out,
                                   check=False, deliver_cancel=_kill, task_status=task_status)

    def trace(self) -> str:
        return self.output.read_text(errors="replace") if self.output.exists() else ""

    def command(self, command: str, params: str = "") -> dict[str, object]:
        """One ctrl_tcp command (netstring-framed JSON), blocking; run in a thread."""
        with socket.create_connection((self.host, self.ctrl_port), timeout=10) as sock:
            data = json.dumps({"command": command, "params": params, "token": "t"}).encode()
            sock.sendall(b"%d:%s," % (len(data), data))
            buffer = b""
            while True:
                chunk = sock.recv(65536)
                assert chunk, "baresip closed the control connection"
                buffer += chunk
                length, _, rest = buffer.partition(b":")
                if length.isdigit() and len(rest) > int(length):
                    reply = json.loads(rest[: int(length)])
                    if reply.get("response"):
                        return reply  # type: ignore[no-any-return]
                    buffer = rest[int(length) + 1:]


async def _kill(process: trio.Process) -> None:
    process.kill()  # our own child, by PID; SIGTERM would make it unregister at a gateway going away


async def wait_for(predicate: Callable[[], object], timeout: float = 20) -> None:
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.05)


async def start_gateway(
    nursery: trio.Nursery, tmp_path: Path, pki: PrivateCa, next_hop: str = ""
) -> tuple[EdgePeer, GatewayService]:
    pki.write_leaf("gateway", GATEWAY_IP)
    pki.write_ca()
    config = parse_config(
        f'[tls]\ncertificate = "gateway.pem"\nkey = "gateway.key"\ntrust = "ca.pem"\n'
        f'[gateway]\nsip-listen = ["{GATEWAY_IP}:0"]\nnext-hop = "{next_hop}"\n',
        source="test.toml", base_dir=str(tmp_path),
    )
    tls = gateway_tls(config)
    assert tls.sip is not None and tls.sip.port == 0  # derived: sip-listen port + 1, 0 stays "any"
    edge = EdgePeer()
    service = GatewayService(sip_domains=("contoso.test",), sip_host=GATEWAY_IP, sip_port=0,
                             next_hop=config.gateway.next_hop, sip_tls=tls.sip, sip_users=every_user())
    await edge.run_gateway(nursery, service, GATEWAY_IP)
    return edge, service


async def register_third_party(service: GatewayService, tmp_path: Path, user: str, contact: str) -> None:
    """A SIPp REGISTER over UDP binding ``user`` to a contact on another host (third party)."""
    host, _, port_and_params = contact.partition(":")
    cmd = sipp_command(
        "register.xml", SIPP_IP,
        "-key", "user", user, "-key", "domain", "contoso.test",
        "-key", "contact_host", host, "-key", "contact_port", port_and_params, "-key", "expires", "600",
        remote=f"{GATEWAY_IP}:{service.sip.port}",
    )  # fmt: skip
    assert "REGISTERED expires=600" in await run_sipp(cmd, tmp_path / f"register-{user}.log")


async def test_baresip_registers_over_tls_and_messages_flow_both_ways_on_that_connection(tmp_path: Path) -> None:
    require_tool("baresip", "baresip-core")
    pki = PrivateCa(tmp_path)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            edge, service = await start_gateway(nursery, tmp_path, pki)
            # No certificate of its own: baresip has no TLS server, so it is reachable only over
            # the connection it registered on.
            alice = Baresip(
                tmp_path / "alice", ALICE_IP,
                f'<sip:alice@contoso.test>;outbound="sip:{GATEWAY_IP}:{service.sip.tls_port};transport=tls"'
                f";regint=600;answermode=manual;auth_pass={PASSWORD}",  # issue 14: digest (MD5)
                certificate=None, ca=pki.write_ca(), contacts='"Romeo" <sip:romeo@montague.example>\n',
            )  # fmt: skip
            await nursery.start(alice.run)
            await wait_for(lambda: service.registrar.lookup("sip:alice@contoso.test", trio.current_time()))
            [binding] = service.registrar.lookup("sip:alice@contoso.test", trio.current_time())
            assert binding.transport == "tls" and binding.contact.transport == "tls"
            assert service.sip.statistics()["tls_connections"] == 1

            edge.send_message("alice@contoso.test", "Grüße over TLS ☃")
            await wait_for(lambda: "SIP/2.0 200 OK" in alice.trace().partition("Grüße over TLS ☃")[2])
            trace = alice.trace()
            before, _, _ = trace.partition("Grüße over TLS ☃")
            header = before.rpartition("MESSAGE sip:")[2]
            assert f"Via: SIP/2.0/TLS {GATEWAY_IP}:{service.sip.tls_port};" in header
            assert service.sip.statistics()["tls_connections"] == 1  # the registration's, reused

            reply = await trio.to_thread.run_sync(alice.command, "message", "hi Romeo, TLS here")
            assert reply.get("ok"), reply
            await wait_for(lambda: any(b"hi Romeo, TLS here" in r.raw for r in edge.received))
            [routed] = [r for r in edge.received if r.kind == StanzaKind.MESSAGE and r.type == "chat"]
            assert (routed.from_, routed.to) == ("alice@contoso.test", "romeo@montague.example")
            await wait_for(lambda: "To: <sip:romeo@montague.example>;tag=gw" in alice.trace())  # our 200
            assert [r for r in edge.received if r.type == "error"] == []

            # A SIP user over UDP -> the built-in proxy -> alice over her TLS connection.
            require_sipp()
            carol = sipp_command(
                "message_uac.xml", SIPP_IP, "-s", "alice", "-key", "from_user", "carol",
                "-key", "from_domain", "contoso.test", "-key", "domain", "contoso.test", "-key", "text", "from carol",
                remote=f"{GATEWAY_IP}:{service.sip.port}",
            )  # fmt: skip
            assert "STATUS 200" in await run_sipp(carol, tmp_path / "carol.log")
            header = alice.trace().partition("from carol")[0].rpartition("MESSAGE sip:")[2]
            assert f"Via: SIP/2.0/TLS {GATEWAY_IP}:{service.sip.tls_port};" in header
            assert service.sip.statistics()["tls_connections"] == 1
            nursery.cancel_scope.cancel()


async def _message_to_tls_contact(
    tmp_path: Path, *, trusted: bool, next_hop: bool = False
) -> tuple[EdgePeer, Baresip, GatewayService]:
    """bob is a baresip with a TLS server (certificate from our CA, or from an unknown one),
    reached as a third-party registered ``;transport=tls`` contact, or as the TLS next hop."""
    require_tool("baresip", "baresip-core")
    pki = PrivateCa(tmp_path)
    cert, key = pki.write_leaf("bob", BOB_IP, rogue=not trusted)
    bundle = tmp_path / "bob-bundle.pem"  # baresip's sip_certificate: key and chain in one file
    bundle.write_bytes(key.read_bytes() + cert.read_bytes())
    bob = Baresip(tmp_path / "bob", BOB_IP, "<sip:bob@contoso.test>;regint=0;answermode=manual",
                  certificate=bundle, ca=pki.write_ca())
    tls_port = bob.port + 1
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            hop = f"sip:{BOB_IP}:{tls_port};transport=tls" if next_hop else ""
            edge, service = await start_gateway(nursery, tmp_path, pki, next_hop=hop)
            await nursery.start(bob.run)
            with trio.fail_after(10):
                while True:  # baresip's TLS listener is up
                    try:
                        await (await trio.open_tcp_stream(BOB_IP, tls_port)).aclose()
                        break
                    except OSError:
                        await trio.sleep(0.05)
            if not next_hop:
                require_sipp()
                await register_third_party(service, tmp_path, "bob", f"{BOB_IP}:{tls_port};transport=tls")
            edge.send_message("bob@contoso.test", "hello Bob over TLS")
            if trusted:
                await wait_for(lambda: "hello Bob over TLS" in bob.trace() and f"TLS {BOB_IP}:{tls_port} -> " in
                               bob.trace().split("hello Bob over TLS", 1)[1])
                await trio.sleep(0.3)  # an error reply would reach the edge now
            else:
                await wait_for(lambda: edge.received)
            nursery.cancel_scope.cancel()
    return edge, bob, service


async def test_a_message_to_a_tls_contact_goes_over_a_connection_verified_against_the_trust(tmp_path: Path) -> None:
    edge, bob, _ = await _message_to_tls_contact(tmp_path, trusted=True)
    trace = bob.trace()
    assert f"MESSAGE sip:bob@{BOB_IP}:{bob.port + 1};transport=tls SIP/2.0" in trace
    assert "SIP/2.0 200 OK" in trace.split("hello Bob over TLS", 1)[1]
    assert edge.received == []  # 200: nothing back to the XMPP sender


async def test_the_next_hop_with_transport_tls_is_reached_over_verified_tls(tmp_path: Path) -> None:
    edge, bob, _ = await _message_to_tls_contact(tmp_path, trusted=True, next_hop=True)
    trace = bob.trace()
    assert "MESSAGE sip:bob@contoso.test SIP/2.0" in trace  # the AoR: the next hop routes it
    assert "SIP/2.0 200 OK" in trace.split("hello Bob over TLS", 1)[1]
    assert edge.received == []


def test_tls_destinations_default_to_port_5061() -> None:
    assert destination_for(parse_uri("sips:proxy.contoso.test")) == Destination("proxy.contoso.test", 5061, "tls")
    assert destination_for(parse_uri("sip:192.0.2.1;transport=TLS")) == Destination("192.0.2.1", 5061, "tls")
    assert destination_for(parse_uri("sip:bob@[::1]:5071;transport=tls")) == Destination("::1", 5071, "tls")
    assert destination_for(parse_uri("sip:192.0.2.1;transport=tcp")) == Destination("192.0.2.1", 5060, "tcp")
    assert destination_for(parse_uri("sip:192.0.2.1")) == Destination("192.0.2.1", 5060, "udp")


async def test_a_tls_contact_whose_certificate_is_from_an_unknown_ca_does_not_get_the_message(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    edge, bob, _ = await _message_to_tls_contact(tmp_path, trusted=False)
    assert "MESSAGE sip:" not in bob.trace()
    [error] = edge.received
    assert error.type == "error" and error.to == "romeo@montague.example/orchard"
    assert b"<service-unavailable " in error.raw and b"503 Destination Unreachable" in error.raw
    assert any(
        f"TLS handshake with {BOB_IP}:{bob.port + 1} failed" in r.getMessage() and "issuer" in r.getMessage()
        for r in caplog.records
    )
