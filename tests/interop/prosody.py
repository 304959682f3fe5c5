"""A real Prosody 0.12 for the interop tests: rendered config, own DNS, run as user prosody.

Prosody refuses to run as root, so it runs as the packaged ``prosody`` user through ``setpriv``
(which execs: the PID we hold is Prosody's own, and it is the only process we ever signal).
Its files live in a private directory under ``/tmp`` owned by ``prosody`` (pytest's tmp_path is
not traversable by other users). Name resolution: libunbound forwarded to the test's dnsmasq
(see ``../shared/lab/README.md``: Prosody ignores /etc/hosts and refuses ``.test`` otherwise).
In CI (``CI=true``) a missing Prosody fails the test; locally it is skipped.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from fixtures.tools import require_tool

TEMPLATE = Path(__file__).parent / "templates" / "prosody.cfg.lua.tmpl"
PASSWORD = "interop-secret"


def free_port(address: str) -> int:
    with socket.socket() as s:
        s.bind((address, 0))
        return int(s.getsockname()[1])


def _listening(address: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex((address, port)) == 0


@dataclass
class Prosody:
    domain: str
    address: str
    c2s_port: int
    s2s_port: int
    run_dir: Path
    process: subprocess.Popen[bytes]

    def log_text(self) -> str:
        try:
            return (self.run_dir / "prosody.log").read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()  # Prosody's own PID (setpriv execs)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        shutil.rmtree(self.run_dir, ignore_errors=True)


def start_prosody(
    domain: str,
    address: str,
    dns: tuple[str, int],
    *,
    mode: str = "plain",
    users: tuple[str, ...] = ("alice", "bob"),
    certs: tuple[Path, Path, Path] | None = None,
    c2s_port: int | None = None,
    s2s_port: int | None = None,
) -> Prosody:
    """Start Prosody for ``domain`` on ``address`` (mode: plain | starttls | secure)."""
    binary = require_tool("prosody", "prosody")
    prosodyctl = require_tool("prosodyctl", "prosody")
    user = pwd.getpwnam("prosody")
    run_dir = Path(tempfile.mkdtemp(prefix="edgeproxy-prosody-"))
    (run_dir / "data").mkdir()
    ssl_line = ""
    if certs is not None:
        cert, key, ca = (shutil.copy(p, run_dir / p.name) for p in certs)
        ssl_line = f'\tssl = {{ certificate = "{cert}"; key = "{key}"; cafile = "{ca}"; }}'
    tls = mode != "plain"
    values = {
        "DOMAIN": domain, "MODE": mode, "RUN": str(run_dir), "ADDR": address,
        "C2S_PORT": str(c2s_port or free_port(address)),
        "S2S_PORT": str(s2s_port or free_port(address)),
        "DNS_ADDR": dns[0], "DNS_PORT": str(dns[1]),
        "TLS_MODULE": '"tls";' if tls else "",
        "S2S_ALLOW_TLS": str(tls).lower(), "S2S_REQUIRE_TLS": str(tls).lower(),
        "S2S_SECURE_AUTH": str(mode == "secure").lower(), "SSL": ssl_line,
    }
    text = TEMPLATE.read_text()
    for key, value in values.items():
        text = text.replace("{{" + key + "}}", value)
    config = run_dir / "prosody.cfg.lua"
    config.write_text(text)
    for path in [run_dir, *run_dir.rglob("*")]:
        os.chown(path, user.pw_uid, user.pw_gid)
    as_prosody = ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--init-groups", "--"]
    for name in users:
        subprocess.run(
            [*as_prosody, prosodyctl, "--config", str(config), "register", name, domain, PASSWORD],
            check=True, timeout=30, capture_output=True, cwd=run_dir,
        )
    process = subprocess.Popen(
        [*as_prosody, binary, "--config", str(config), "-F"],
        cwd=run_dir, stdin=subprocess.DEVNULL,
        stdout=open(run_dir / "stdout.log", "wb"), stderr=subprocess.STDOUT,  # noqa: SIM115
    )
    server = Prosody(domain, address, int(values["C2S_PORT"]), int(values["S2S_PORT"]), run_dir, process)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            out = (run_dir / "stdout.log").read_text(errors="replace")
            server.stop()
            raise RuntimeError(f"prosody exited: {out}")
        if _listening(address, server.s2s_port) and _listening(address, server.c2s_port):
            return server
        time.sleep(0.1)
    server.stop()
    raise RuntimeError("prosody did not start listening")
