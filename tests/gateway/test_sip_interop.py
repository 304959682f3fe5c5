"""The built-in registrar and local forwarding against real SIPp (Debian package sip-tester).

Layout on loopback addresses: edgeproxy's SIP listener (UDP+TCP) on 127.0.0.1, bob's UA (a SIPp
UAS) on 127.0.0.2, alice's UA (SIPp UACs: REGISTER for bob as a third party, then MESSAGE) on
127.0.0.3. Scenarios live in tests/gateway/sipp/. With CI=true a missing sipp fails the test.
This is the bare SIP stack (transport, registrar, proxy) without the gateway's admission, so
the scenarios do not authenticate (``*_noauth.xml``); digest is tested through the gateway in
``test_sip_auth_acceptance.py`` (issue 14).
"""

from __future__ import annotations

from pathlib import Path

import trio
from _sipp import (
    ALICE_IP,
    BOB_IP,
    GATEWAY_IP,
    SCENARIOS,
    require_sipp,
    run_sipp,
    sipp_command,
)

from edgeproxy.gateway.sip.proxy import LocalProxy
from edgeproxy.gateway.sip.registrar import Registrar
from edgeproxy.gateway.sip.transport import SipTransport
from fixtures.ports import free_port


async def start_gateway(nursery: trio.Nursery) -> tuple[SipTransport, Registrar]:
    registrar = Registrar(["sip.test"])
    transport = SipTransport(GATEWAY_IP, 0, lambda request, ctx: proxy(request, ctx))
    proxy = LocalProxy(registrar, transport)
    await nursery.start(transport.serve)
    return transport, registrar


async def _register_and_message(tmp_path: Path, *, tcp: bool) -> None:
    require_sipp()
    with trio.fail_after(40):
        async with trio.open_nursery() as nursery:
            transport, registrar = await start_gateway(nursery)
            gw = f"{GATEWAY_IP}:{transport.port}"
            bob_port = free_port(BOB_IP, udp_too=True)
            uas_cmd = [
                require_sipp(), "-sf", str(SCENARIOS / "message_uas.xml"), "-i", BOB_IP,
                "-p", str(bob_port), "-m", "1", "-nostdin", "-timeout", "15", "-timeout_error",
                "-default_behaviors", "all,-bye",
            ]  # fmt: skip
            bob_log = tmp_path / "bob.log"
            bob_done = trio.Event()
            bob_text: list[str] = []

            async def bob() -> None:
                bob_text.append(await run_sipp(uas_cmd, bob_log))
                bob_done.set()

            nursery.start_soon(bob)
            reg = sipp_command(
                "register_noauth.xml", ALICE_IP,  # the bare stack: no admission (issue 14)
                "-key", "user", "bob", "-key", "domain", "sip.test",
                "-key", "contact_host", BOB_IP, "-key", "contact_port", str(bob_port),
                "-key", "expires", "600", remote=gw, tcp=tcp,
            )  # fmt: skip
            reg_log = await run_sipp(reg, tmp_path / "reg.log")
            assert "REGISTERED expires=600" in reg_log
            [binding] = registrar.lookup("sip:bob@sip.test", trio.current_time())
            assert str(binding.contact) == f"sip:bob@{BOB_IP}:{bob_port}"

            text = "Grüße from alice ☃"
            msg = sipp_command(
                "message_uac_noauth.xml", ALICE_IP, "-s", "bob",
                "-key", "from_user", "alice", "-key", "from_domain", "sip.test", "-key", "domain", "sip.test", "-key", "text", text,
                remote=gw, tcp=tcp,
            )  # fmt: skip
            msg_log = await run_sipp(msg, tmp_path / "msg.log")
            assert "STATUS 200" in msg_log
            await bob_done.wait()
            nursery.cancel_scope.cancel()
    got = bob_text[0]
    assert f"GOT MESSAGE sip:bob@{BOB_IP}:{bob_port}|" in got
    assert "|from=sip:alice@sip.test|to=sip:bob@sip.test|" in got
    assert "|ctype=text/plain;charset=UTF-8|" in got
    assert f"|body={text}" in got  # sipp appends CRLF to the body it sends


async def test_sipp_registers_and_a_message_reaches_the_registered_ua_over_udp(
    tmp_path: Path,
) -> None:
    await _register_and_message(tmp_path, tcp=False)


async def test_sipp_registers_and_a_message_reaches_the_registered_ua_over_tcp(
    tmp_path: Path,
) -> None:
    await _register_and_message(tmp_path, tcp=True)


async def test_message_to_an_unregistered_user_gets_480(tmp_path: Path) -> None:
    require_sipp()
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            transport, _ = await start_gateway(nursery)
            msg = sipp_command(
                "message_uac_noauth.xml", ALICE_IP, "-s", "carol",
                "-key", "from_user", "alice", "-key", "from_domain", "sip.test", "-key", "domain", "sip.test", "-key", "text", "hi",
                remote=f"{GATEWAY_IP}:{transport.port}",
            )  # fmt: skip
            log = await run_sipp(msg, tmp_path / "msg.log")
            nursery.cancel_scope.cancel()
    assert "STATUS 480" in log

