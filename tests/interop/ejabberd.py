"""A real ejabberd 23.01 for the interop tests (see ../shared/lab/README.md for the why).

ejabberd resolves SRV with Erlang's ``inet_res`` (pinned to the test's dnsmasq by ``inetrc``,
``resolv_conf ""`` so that it is not replaced) but A/AAAA with libc, so the node starts inside a
private mount namespace (``unshare --mount``) where ``/etc/hosts`` is the test's own. The Erlang
node uses a fixed loopback distribution port and a private cookie: no epmd is started. It is
stopped with ``ejabberdctl stop`` and then, if still alive, by the PID from its pid file.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from prosody import PASSWORD, _listening, free_port

from fixtures.tools import require_tool

TEMPLATE = Path(__file__).parent / "templates" / "ejabberd.yml.tmpl"


@dataclass
class Ejabberd:
    domain: str
    address: str
    c2s_port: int
    s2s_port: int
    run_dir: Path
    ctl: list[str]

    def log_text(self) -> str:
        try:
            return (self.run_dir / "log" / "ejabberd.log").read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        pid_file = self.run_dir / "ejabberd.pid"
        pid = int(pid_file.read_text().strip()) if pid_file.exists() else None
        subprocess.run([*self.ctl, "stop"], capture_output=True, timeout=30)
        deadline = time.monotonic() + 15
        while pid is not None and time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        else:
            if pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, 9)  # the node we started, by its PID
        shutil.rmtree(self.run_dir, ignore_errors=True)


def start_ejabberd(
    domain: str,
    address: str,
    dns: tuple[str, int],
    hosts: dict[str, str],
    *,
    mode: str = "plain",
    users: tuple[str, ...] = ("alice",),
    c2s_port: int | None = None,
    s2s_port: int | None = None,
    certs: tuple[Path, Path, Path] | None = None,
) -> Ejabberd:
    ctl_binary = require_tool("ejabberdctl", "ejabberd")
    user = pwd.getpwnam("ejabberd")
    run_dir = Path(tempfile.mkdtemp(prefix="edgeproxy-ejabberd-"))
    etc = run_dir / "etc"
    for d in (etc, run_dir / "log", run_dir / "spool"):
        d.mkdir()
    certfiles = s2s_cafile = ""
    if certs is not None:
        cert, key, ca = certs
        pem = run_dir / f"{domain}.pem"
        pem.write_bytes(cert.read_bytes() + key.read_bytes())
        certfiles = f'certfiles:\n  - "{pem}"'
        if mode == "secure":
            shutil.copy(ca, run_dir / "ca.crt")
            s2s_cafile = f's2s_cafile: "{run_dir / "ca.crt"}"'
    values = {
        "DOMAIN": domain, "MODE": mode, "ADDR": address,
        "C2S_PORT": str(c2s_port or free_port(address)),
        "S2S_PORT": str(s2s_port or free_port(address)),
        "CERTFILES": certfiles, "S2S_CAFILE": s2s_cafile,
        "S2S_STARTTLS": "false" if mode == "plain" else "required",
        "DIALBACK": "" if mode == "secure" else "  mod_s2s_dialback: {}",
    }
    text = TEMPLATE.read_text()
    for key, value in values.items():
        text = text.replace("{{" + key + "}}", value)
    (etc / "ejabberd.yml").write_text(text)
    node = f"edgeproxy{secrets.token_hex(4)}@localhost"
    (etc / "ejabberdctl.cfg").write_text(
        f"ERLANG_NODE={node}\nERL_DIST_PORT={free_port('127.0.0.1')}\nINET_DIST_INTERFACE=127.0.0.1\n"
        f'ERL_OPTIONS="-setcookie {secrets.token_hex(16)}"\nEJABBERD_PID_PATH={run_dir}/ejabberd.pid\n'
        "EJABBERD_BYPASS_WARNINGS=true\n"
    )
    dns_tuple = "{" + dns[0].replace(".", ",") + "}"
    (etc / "inetrc").write_text(f'{{resolv_conf, ""}}.\n{{nameserver, {dns_tuple}, {dns[1]}}}.\n')
    (run_dir / "hosts").write_text(
        "127.0.0.1 localhost\n" + "".join(f"{ip} {name}\n" for name, ip in hosts.items())
    )
    (run_dir / "resolv.conf").write_text(f"nameserver {dns[0]}\n")
    for path in [run_dir, *run_dir.rglob("*")]:
        os.chown(path, user.pw_uid, user.pw_gid)
        os.chmod(path, 0o755 if path.is_dir() else 0o644)
    ctl = [
        ctl_binary, "--config-dir", str(etc), "--config", str(etc / "ejabberd.yml"),
        "--ctl-config", str(etc / "ejabberdctl.cfg"), "--logs", str(run_dir / "log"),
        "--spool", str(run_dir / "spool"), "--node", node,
    ]
    in_ns = [
        "unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-c",
        'mount --bind "$1" /etc/hosts && mount --bind "$2" /etc/resolv.conf && shift 2 && exec "$@"',
        "sh", str(run_dir / "hosts"), str(run_dir / "resolv.conf"),
    ]
    server = Ejabberd(domain, address, int(values["C2S_PORT"]), int(values["S2S_PORT"]), run_dir, ctl)
    subprocess.run([*in_ns, *ctl, "start"], check=True, timeout=30, capture_output=True)
    started = subprocess.run([*ctl, "started"], timeout=60, capture_output=True)
    deadline = time.monotonic() + 30
    while not (_listening(address, server.s2s_port) and _listening(address, server.c2s_port)):
        if time.monotonic() > deadline or started.returncode != 0:
            log = server.log_text()
            server.stop()
            raise RuntimeError(f"ejabberd did not start: {started.stdout!r} {log[-3000:]}")
        time.sleep(0.2)
    for name in users:
        subprocess.run([*ctl, "register", name, domain, PASSWORD], check=True, timeout=30,
                       capture_output=True)
    return server
