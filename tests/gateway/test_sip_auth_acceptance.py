"""Issue 14 acceptance with SIPp as the user agent: the gateway's built-in registrar and proxy
authenticate every request of our users with digest.

* REGISTER is challenged 401 and registered 200 with the password (``register.xml`` requires the
  401 step: the scenario fails without it);
* a MESSAGE is challenged 407 and, answered, reaches the XMPP side;
* a wrong password, or a user the store does not know, is refused 403 (not challenged again);
* SIPp's own authenticated REGISTER, replayed byte for byte (only a new branch: a new
  transaction) from the same address with the same nonce and nonce count, is not processed: it
  gets a fresh challenge with ``stale=true``.
"""

from __future__ import annotations

import re
from pathlib import Path

import trio
from _sipp import ALICE_IP, credentials, run_sipp, sipp_command

from edgeproxy.gateway.service import GatewayService
from edgeproxy.gateway.sip.message import SipResponse, parse_datagram
from edgeproxy.policy.model import SipCredential
from edgeproxy.xmpp.stanza import parse_stanza
from fixtures.channel_peer import EdgePeer
from fixtures.sipauth import authorization, md5_challenge

KNOWN = ("alice", "bob")


def lookup(aor: str) -> tuple[SipCredential, ...] | None:
    """alice and bob of contoso.test have the test password (MD5); nobody else exists."""
    name, _, domain = aor.removeprefix("sip:").partition("@")
    return credentials(name) if domain == "contoso.test" and name in KNOWN else None


async def start(nursery: trio.Nursery) -> tuple[EdgePeer, GatewayService, str]:
    edge = EdgePeer()
    service = GatewayService(sip_domains=("contoso.test",), sip_host="127.0.0.1", sip_port=0, sip_users=lookup)
    sip_host, sip_port = await edge.run_gateway(nursery, service)
    return edge, service, f"{sip_host}:{sip_port}"


def register_args(user: str = "alice") -> list[str]:
    return ["-key", "user", user, "-key", "domain", "contoso.test", "-key", "contact_host", ALICE_IP,
            "-key", "contact_port", "5999", "-key", "expires", "600"]


async def test_register_is_challenged_401_then_registered_with_the_password(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            _, service, gw = await start(nursery)
            log = await run_sipp(sipp_command("register.xml", ALICE_IP, *register_args(), remote=gw),
                                 tmp_path / "register.log")
            assert "REGISTERED [600]" in log or "REGISTERED" in log
            assert service.registrar.lookup("sip:alice@contoso.test", trio.current_time())
            assert service.admission.counts["challenged"] == 1
            assert service.admission.counts["digest"] == 1
            nursery.cancel_scope.cancel()


async def test_a_message_is_challenged_407_and_then_delivered(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            edge, service, gw = await start(nursery)
            log = await run_sipp(
                sipp_command(
                    "message_uac.xml", ALICE_IP, "-s", "juliet",
                    "-key", "from_user", "alice", "-key", "from_domain", "contoso.test",
                    "-key", "domain", "montague.example", "-key", "text", "authenticated ☃",
                    remote=gw,
                ),  # fmt: skip
                tmp_path / "message.log",
            )
            assert "STATUS 200" in log
            [item] = edge.received
            assert (item.from_.partition("/")[0], item.to) == ("alice@contoso.test", "juliet@montague.example")
            assert parse_stanza(item.raw).find("body", "jabber:server").text.strip() == "authenticated ☃"  # type: ignore[union-attr]
            assert service.admission.counts["challenged"] == 1
            nursery.cancel_scope.cancel()


async def test_a_wrong_password_and_an_unknown_user_are_refused_403(tmp_path: Path) -> None:
    with trio.fail_after(40):
        async with trio.open_nursery() as nursery:
            _, service, gw = await start(nursery)
            wrong = await run_sipp(
                sipp_command("register_refused.xml", ALICE_IP, "-au", "alice", "-ap", "not-the-password",
                             "-auth_uri", "contoso.test", *register_args(), remote=gw),
                tmp_path / "wrong.log",
            )
            assert "REFUSED 403" in wrong
            # An unknown user is offered every algorithm, SHA-256 first, which SIPp 3.6 cannot
            # answer (MD5 only): a raw UA answers the MD5 one.
            host, port = gw.rsplit(":", 1)
            sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
            await sock.bind((ALICE_IP, 0))
            first = await exchange(sock, (host, int(port)), raw_register(sock, "mallory", "u1"))
            assert first.status == 401
            offered = first.headers.get_all("WWW-Authenticate")
            assert ["SHA-256" in offered[0], "MD5" in offered[1]] == [True, True]
            value = authorization(md5_challenge(offered), method="REGISTER", uri="sip:contoso.test",
                                  username="mallory")
            refused = await exchange(sock, (host, int(port)), raw_register(sock, "mallory", "u2", value))
            assert refused.status == 403
            sock.close()
            assert not service.registrar.lookup("sip:alice@contoso.test", trio.current_time())
            assert not service.registrar.lookup("sip:mallory@contoso.test", trio.current_time())
            nursery.cancel_scope.cancel()


def raw_register(sock: trio.socket.SocketType, user: str, branch: str, authorization: str | None = None) -> bytes:
    host, port = sock.getsockname()[:2]
    lines = [
        "REGISTER sip:contoso.test SIP/2.0",
        f"Via: SIP/2.0/UDP {host}:{port};branch=z9hG4bK-{branch};rport",
        f"From: <sip:{user}@contoso.test>;tag=raw",
        f"To: <sip:{user}@contoso.test>",
        f"Call-ID: raw-{user}@{host}",
        f"CSeq: {len(branch)} REGISTER",
        f"Contact: <sip:{user}@{host}:{port}>",
        "Max-Forwards: 70",
        *([f"Authorization: {authorization}"] if authorization else []),
        "Content-Length: 0",
        "",
        "",
    ]
    return "\r\n".join(lines).encode()


async def exchange(sock: trio.socket.SocketType, server: tuple[str, int], data: bytes) -> SipResponse:
    await sock.sendto(data, server)
    reply, _ = await sock.recvfrom(65535)
    response = parse_datagram(reply)
    assert isinstance(response, SipResponse)
    return response


def last_authorized_register(messages: str) -> bytes:
    """The last REGISTER with an Authorization that SIPp sent (its -trace_msg file)."""
    blocks = re.split(r"^-{10,}.*$", messages, flags=re.MULTILINE)
    sent = [b for b in blocks if re.search(r"message sent", b) and "Authorization:" in b]
    assert sent, messages[-2000:]
    text = sent[-1].split("message sent", 1)[1].split("\n", 1)[1].lstrip("\r\n")
    head, _, _ = text.replace("\r\n", "\n").partition("\n\n")
    lines = [line.strip() for line in head.splitlines() if line.strip()]
    assert lines[0].startswith("REGISTER ")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def test_a_replayed_authorization_is_not_processed_and_gets_a_stale_challenge(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            _, service, gw = await start(nursery)
            messages = tmp_path / "messages.log"
            await run_sipp(
                sipp_command("register.xml", ALICE_IP, *register_args(), "-trace_msg",
                             "-message_file", str(messages), remote=gw),
                tmp_path / "register.log",
            )
            assert service.admission.counts["digest"] == 1
            original = last_authorized_register(messages.read_text(errors="replace"))
            # the same request as a new transaction (new branch, higher CSeq), from the same address
            replay = re.sub(rb"branch=[^;\r\n]+", b"branch=z9hG4bK-replayed", original)
            replay = re.sub(rb"CSeq: \d+", b"CSeq: 3", replay)
            replay = re.sub(rb"Expires: \d+", b"Expires: 0", replay)  # it would remove the binding
            sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
            await sock.bind((ALICE_IP, 0))
            host, port = gw.rsplit(":", 1)
            answer = await exchange(sock, (host, int(port)), replay)
            assert answer.status == 401, answer
            assert "stale=true" in (answer.headers.get("WWW-Authenticate") or "")
            assert service.admission.counts["digest"] == 1  # not admitted again
            assert service.registrar.lookup("sip:alice@contoso.test", trio.current_time())  # the binding is still there
            sock.close()
            nursery.cancel_scope.cancel()
