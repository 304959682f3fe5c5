"""Helpers to run SIPp (Debian package sip-tester) in tests: ports, commands, logs.

With CI=true a missing sipp fails the test instead of skipping it.
"""

from __future__ import annotations

from pathlib import Path

import trio

from fixtures.ports import free_port
from fixtures.sipauth import PASSWORD, credentials, every_user, sipp_auth
from fixtures.tools import require_tool

SCENARIOS = Path(__file__).parent / "sipp"
GATEWAY_IP, BOB_IP, ALICE_IP = "127.0.0.1", "127.0.0.2", "127.0.0.3"
__all__ = ["PASSWORD", "credentials", "every_user", "sipp_auth"]


def require_sipp() -> str:
    """Path of sipp; in CI a missing sipp fails the test (fixtures.tools.require_tool)."""
    return require_tool("sipp", "sip-tester")


def sipp_command(
    scenario: str, ip: str, *args: str, remote: str | None = None, tcp: bool = False
) -> list[str]:
    sipp = require_sipp()
    cmd = [sipp, "-sf", str(SCENARIOS / scenario), "-i", ip, "-p", str(free_port(ip, udp_too=True)), "-m", "1"]
    cmd += ["-nostdin", "-timeout", "15", "-timeout_error", "-default_behaviors", "all,-bye"]
    if tcp:
        cmd += ["-t", "t1"]
    if "-au" not in args and "-ap" not in args:
        cmd += sipp_auth(SCENARIOS / scenario, args)
    cmd += list(args)
    if remote:
        cmd.append(remote)
    return cmd


async def run_sipp(cmd: list[str], log: Path) -> str:
    result = await trio.run_process(
        cmd + ["-trace_logs", "-log_file", str(log)],
        check=False,
        capture_stdout=True,
        capture_stderr=True,
    )
    text = log.read_text(encoding="utf-8") if log.exists() else ""
    assert result.returncode == 0, (
        f"sipp failed ({result.returncode}): {result.stderr.decode()[-800:]}\n{text}"
    )
    return text


async def bob_uas_registered(
    nursery: trio.Nursery, registrar: str, tmp_path: Path, messages: int = 1, *, digest: bool = True
) -> tuple[int, list[str]]:
    """A SIPp UAS for bob taking ``messages`` MESSAGEs, registered at ``registrar`` (host:port:
    the gateway's built-in registrar, or Kamailio); its log lands in the returned list."""
    bob_port = free_port(BOB_IP, udp_too=True)
    uas = [
        require_sipp(), "-sf", str(SCENARIOS / "message_uas.xml"), "-i", BOB_IP,
        "-p", str(bob_port), "-m", str(messages), "-nostdin", "-timeout", "30", "-timeout_error",
    ]  # fmt: skip
    got: list[str] = []

    async def bob() -> None:
        got.append(await run_sipp(uas, tmp_path / "bob.log"))

    nursery.start_soon(bob)
    await run_sipp(
        sipp_command(
            "register.xml" if digest else "register_noauth.xml", ALICE_IP,
            "-key", "user", "bob", "-key", "domain", "contoso.test",
            "-key", "contact_host", BOB_IP, "-key", "contact_port", str(bob_port),
            "-key", "expires", "600",
            remote=registrar,
        ),  # fmt: skip
        tmp_path / "reg.log",
    )
    return bob_port, got
