"""``dist/edgeproxy``, the one-file executable, on a host as if it had no Python: every command
started with an empty environment (``env -i``: no PATH, no virtualenv, no PYTHONPATH), a real
``serve`` federating with the lab's Prosody — over plain TCP with dialback, and over STARTTLS
with certificates checked both ways and SASL EXTERNAL (the executable's own OpenSSL) — reloading,
and a clean stop on SIGTERM.

Addresses (private to these tests): the edge 127.0.50.2, Prosody (fabrikam.test) 127.0.50.3,
dnsmasq 127.0.50.4; every port a free one. Prosody and dnsmasq are required in CI (``CI=true``:
missing, the test fails) and skipped elsewhere when absent.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import trio
from _distbuild import Dist, EdgeProcess, machine_has_sse2, serve_config

import edgeproxy
from edgeproxy.cli import build_parser
from fixtures.c2s import Client
from fixtures.dnsmasq import start_dnsmasq, xmpp_server
from fixtures.pki import write_domain_certificates
from fixtures.ports import free_port
from fixtures.xmpp_servers import PASSWORD, start_prosody

EDGE_ADDR = "127.0.50.2"
PROSODY_ADDR = "127.0.50.3"
DNS_ADDR = "127.0.50.4"
#: Hang guard for one command of the executable (it unpacks itself before it starts).
COMMAND_TIMEOUT = 60
#: Hang guard for the federation exchange (Prosody dials back to the edge and back again).
EXCHANGE_TIMEOUT = 60


def run_empty_env(binary: Path, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """``env -i BINARY ARGS…``: the executable with no environment at all."""
    return subprocess.run(["/usr/bin/env", "-i", str(binary), *args], capture_output=True, text=True,
                          timeout=COMMAND_TIMEOUT, cwd=cwd)


def test_the_executable_links_no_python_and_shows_its_version(dist: Dist) -> None:
    linked = subprocess.run(["ldd", str(dist.binary)], capture_output=True, text=True, timeout=30)
    assert "libpython" not in linked.stdout, linked.stdout  # Python travels inside the file
    shown = run_empty_env(dist.binary, "--version")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith(f"edgeproxy {edgeproxy.__version__} (tokenizer compiled with Cython ")
    if machine_has_sse2():
        assert "SSE2" in shown.stdout


def test_every_command_of_the_executable_starts_with_an_empty_environment(dist: Dist, tmp_path: Path) -> None:
    commands = next(a for a in build_parser()._actions if a.dest == "command").choices  # type: ignore[union-attr]
    assert {"serve", "check", "partner", "status"} <= set(commands)
    for name in commands:
        helped = run_empty_env(dist.binary, name, "--help", cwd=tmp_path)
        assert helped.returncode == 0 and f"usage: edgeproxy {name}" in helped.stdout, (name, helped.stderr)
    shown = run_empty_env(dist.binary, "config", "show-default", cwd=tmp_path)
    assert shown.returncode == 0 and "[edge]" in shown.stdout, shown.stderr


def test_the_executable_serves_the_control_panel_from_inside_itself(dist: Dist, tmp_path: Path) -> None:
    """The panel's templates and static files are package data: they travel inside the file."""
    config = serve_config(tmp_path / "edge", EDGE_ADDR, admin_extra="ui = true\n")
    edge = EdgeProcess(["/usr/bin/env", "-i", str(dist.binary), "serve", "--config", str(config.path)], config)
    try:
        status, page = edge.admin_get("/ui/login")
        assert status == 200 and b"<title>Log in" in page, (status, page[:300])
        status, css = edge.admin_get("/ui/static/panel.css")
        assert status == 200 and css == (Path(edgeproxy.__file__).parent / "web/static/panel.css").read_bytes()
        assert edge.terminate() == 0, edge.log_text()[-4000:]
    finally:
        edge.kill()


def test_the_executable_runs_edge_workers_and_stops_them_on_sigterm(dist: Dist, tmp_path: Path) -> None:
    """A worker is the executable started again (its bootloader stands between it and the
    supervisor): the workers run, report, and end with the supervisor."""
    config = serve_config(tmp_path / "edge", EDGE_ADDR)
    edge = EdgeProcess(["/usr/bin/env", "-i", str(dist.binary), "serve", "--config", str(config.path),
                        "--workers", "2"], config)
    try:
        deadline = time.monotonic() + COMMAND_TIMEOUT
        workers: list[dict[str, object]] = []
        while time.monotonic() < deadline:
            status, body = edge.admin_get("/status")
            workers = json.loads(body)["workers"] if status == 200 else []
            if len(workers) == 2 and all(w["state"] == "running" for w in workers):
                break
            time.sleep(0.2)
        assert [w["state"] for w in workers] == ["running", "running"], edge.log_text()[-4000:]
        pids = [int(w["pid"]) for w in workers]  # type: ignore[call-overload]
        assert edge.terminate() == 0, edge.log_text()[-4000:]
        assert "EP1012" in edge.log_text()
        assert not [pid for pid in pids if Path(f"/proc/{pid}").exists()]
    finally:
        edge.kill()


#: Per lab mode: the partner row's options, and how the streams with Prosody authenticate.
MODES = {
    # plain TCP, server dialback both ways
    "plain": (["--tls", "not-supported", "--sasl", "not-supported", "--dialback"], "dialback"),
    # STARTTLS with certificates of a lab CA checked both ways, SASL EXTERNAL, no dialback
    "secure": (["--tls", "required", "--sasl", "required", "--no-dialback"], "sasl-over-tls"),
}


@pytest.mark.parametrize("mode", sorted(MODES))
async def test_the_executable_serves_federates_with_prosody_and_stops_on_sigterm(
    dist: Dist, tmp_path: Path, mode: str
) -> None:
    partner_options, auth = MODES[mode]
    certs = None
    if mode != "plain":
        certs = write_domain_certificates(tmp_path / "certs", ("contoso.test", "fabrikam.test"), "Dist Lab CA")
    edge_port, p_s2s, p_c2s = free_port(EDGE_ADDR), free_port(PROSODY_ADDR), free_port(PROSODY_ADDR)
    dns = start_dnsmasq(tmp_path / "dns", [
        *xmpp_server("contoso.test", EDGE_ADDR, edge_port),
        *xmpp_server("fabrikam.test", PROSODY_ADDR, p_s2s),
    ], address=DNS_ADDR)  # fmt: skip
    prosody = None
    edge: EdgeProcess | None = None
    try:
        prosody = start_prosody("fabrikam.test", PROSODY_ADDR, (dns.address, dns.port), mode=mode,
                                users=("carol",), c2s_port=p_c2s, s2s_port=p_s2s,
                                certs=certs["fabrikam.test"] if certs else None)
        workdir = tmp_path / "edge"
        edge_config = serve_config(workdir, EDGE_ADDR, s2s_port=edge_port,
                                   tls=certs["contoso.test"] if certs else None,
                                   extra=f'[dns]\nresolver = "{dns.resolver}"\n')
        cli = ["--config", str(edge_config.path)]
        # The directory, set up with the executable's own commands: fabrikam.test (as the mode
        # says), a global policy letting users exchange XMPP traffic, the SIP user bob.
        for command in (
            ["partner", "new", "fabrikam.test", "--type", "federated", *partner_options, *cli],
            ["policy", "set", "global", "--xmpp", "--federation", *cli],
            ["user", "new", "sip:bob@contoso.test", *cli],
        ):
            done = run_empty_env(dist.binary, *command, cwd=workdir)
            assert done.returncode == 0, (command, done.stdout, done.stderr)

        edge = EdgeProcess(["/usr/bin/env", "-i", str(dist.binary), "serve", *cli], edge_config)
        await wait_for_status(dist.binary, cli, workdir, lambda s: s["channel"]["state"] == "connected")

        with trio.fail_after(EXCHANGE_TIMEOUT):
            carol = await Client.login(PROSODY_ADDR, p_c2s, "carol", "fabrikam.test", PASSWORD)
            try:
                # bob is in the directory but has no registered SIP UA: the gateway's refusal
                # comes back to Prosody over federation as an error from bob, with carol's id.
                await carol.send("<message to='bob@contoso.test' type='chat' id='bin1'>"
                                 "<body>Hallo?</body></message>")
                while (error := await carol.next()).name != "message":
                    pass
                assert error.type == "error" and error.id == "bin1", error.raw
                assert (error.from_ or "").partition("/")[0] == "bob@contoso.test"
                assert b"recipient-unavailable" in error.raw
            finally:
                await carol.aclose()
        status = await wait_for_status(dist.binary, cli, workdir, lambda s: any(
            st["partner"] == "fabrikam.test" and st["state"] == "established" for st in s["streams"]))
        assert status["running"] and status["version"] == edgeproxy.__version__
        streams = [st for st in status["streams"] if st["partner"] == "fabrikam.test"]
        assert all(auth in str(st["auth"]) for st in streams), streams

        # Reload through the admin endpoint (the command), then by SIGHUP to the process we
        # started (the executable passes it on to edgeproxy): a config-reloaded event each.
        reloaded = run_empty_env(dist.binary, "reload", *cli, cwd=workdir)
        assert reloaded.returncode == 0, reloaded.stdout + reloaded.stderr
        edge.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + COMMAND_TIMEOUT
        while edge.log_text().count('"EP8001"') < 2:
            assert time.monotonic() < deadline, edge.log_text()[-4000:]
            await trio.sleep(0.1)

        assert edge.terminate() == 0, edge.log_text()[-6000:]
        assert "Traceback" not in edge.log_text(), edge.log_text()[-6000:]
    except BaseException:
        if prosody is not None:
            print("---- prosody.log (tail) ----\n" + prosody.log_text()[-6000:])
        if edge is not None:
            print("---- edgeproxy serve (tail) ----\n" + edge.log_text()[-6000:])
        raise
    finally:
        if edge is not None:
            edge.kill()
        if prosody is not None:
            prosody.stop()
        dns.stop()


async def wait_for_status(
    binary: Path, cli: list[str], cwd: Path, ready: Callable[[dict], bool], timeout: float = 30
) -> dict:
    """``edgeproxy status --json`` from the executable, until ``ready(status)`` holds."""
    deadline = time.monotonic() + timeout
    while True:
        shown = await trio.to_thread.run_sync(lambda: run_empty_env(binary, "status", "--json", *cli, cwd=cwd))
        try:
            status = json.loads(shown.stdout)
        except ValueError:
            status = None
        if status is not None and ready(status):
            return status
        assert time.monotonic() < deadline, f"status never ready: {shown.stdout} {shown.stderr}"
        await trio.sleep(0.2)

