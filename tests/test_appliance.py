"""Appliance mode: a read-only root, every write under the state dir, the override file, logs on
stderr only, an unprivileged process.

The configuration tests run the real CLI (``edgeproxy config validate``). The appliance test
runs ``edgeproxy serve --appliance`` in a private mount namespace where ``/`` is read-only and
only the state dir is writable (see :func:`read_only_root_script`), as ``nobody``.
"""

from __future__ import annotations

import functools
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pytest
import trio

import edgeproxy
from edgeproxy.config import OVERRIDE_FILE, load_config
from edgeproxy.ops.events import EventLog
from fixtures.ports import free_port
from fixtures.tools import unavailable
from test_embedding import DOMAIN, PEER_DOMAIN, Peer, write_edge_config

PYTHON = sys.executable
CLI_SECONDS = 60


def edgeproxy_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PYTHON, "-m", "edgeproxy", *args], capture_output=True, text=True,
                          timeout=CLI_SECONDS, env={**os.environ, **(env or {})})


def appliance_config(directory: Path, state_dir: Path, *, appliance_key: bool = True, extra: str = "") -> Path:
    """A read-only-style configuration (in ``directory``) whose state lives in ``state_dir``."""
    path = directory / "edgeproxy.toml"
    key = "appliance = true\n" if appliance_key else ""
    path.write_text(
        f'[edge]\ndomains = ["contoso.test"]\nstate-dir = "{state_dir}"\n{key}'
        '[admin]\nlisten = "127.0.0.1:9269"\n'
        f"{extra}"
    )
    return path


# -- the override file ---------------------------------------------------------------------------


def test_the_override_file_in_the_state_dir_is_merged_over_the_configuration(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    config = appliance_config(tmp_path, state, extra='[gateway]\nmax-queued = 500\nqueue-wait = 10.0\n')
    (state / OVERRIDE_FILE).write_text(
        '[admin]\nlisten = "127.0.0.1:9300"\n[gateway]\nmax-queued = 700\n[tls]\ncertificate = "certs/edge.pem"\n')
    loaded = load_config(config)
    assert loaded.edge.appliance
    assert loaded.admin.listen == "127.0.0.1:9300"  # replaced
    assert (loaded.gateway.max_queued, loaded.gateway.queue_wait) == (700, 10.0)  # merged key by key
    assert loaded.source == str(config)  # a reload reads the file again
    assert loaded.path(loaded.tls.certificate) == state / "certs/edge.pem"  # relative to the state dir


def test_the_override_file_is_ignored_outside_appliance_mode(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / OVERRIDE_FILE).write_text('[admin]\nlisten = "127.0.0.1:9300"\n')
    config = appliance_config(tmp_path, state, appliance_key=False)
    assert load_config(config).admin.listen == "127.0.0.1:9269"
    assert load_config(config, appliance=True).admin.listen == "127.0.0.1:9300"  # serve --appliance


def test_an_override_that_breaks_a_rule_is_refused_naming_both_files(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    config = appliance_config(tmp_path, state)
    (state / OVERRIDE_FILE).write_text("[gateway]\nmax-queued = 0\n")
    done = edgeproxy_cli("config", "validate", "--config", str(config))
    assert done.returncode == 1
    assert f"{config} with {state / OVERRIDE_FILE}: [gateway] max-queued: must be an integer ≥ 1, got 0" in done.stderr


def test_the_override_may_not_move_the_state_dir(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    config = appliance_config(tmp_path, state)
    (state / OVERRIDE_FILE).write_text('[edge]\nstate-dir = "/elsewhere"\n')
    done = edgeproxy_cli("config", "validate", "--config", str(config))
    assert done.returncode == 1
    assert "[edge] state-dir cannot be overridden" in done.stderr


def test_appliance_mode_needs_an_absolute_state_dir(tmp_path: Path) -> None:
    config = tmp_path / "edgeproxy.toml"
    config.write_text('[edge]\nappliance = true\nstate-dir = "var"\n')
    done = edgeproxy_cli("config", "validate", "--config", str(config))
    assert done.returncode == 1
    assert "must be an absolute path in appliance mode" in done.stderr


# -- a read-only root in a private mount namespace ----------------------------------------------

ROOT = Path(__file__).resolve().parents[1]
ONE_FILE = ROOT / "dist" / "edgeproxy"
VENV_EDGEPROXY = Path(sys.executable).parent / "edgeproxy"
EDGE_HOST, PEER_HOST = "127.0.52.1", "127.0.52.2"
PEER_PROXY = "edge.northwind.test"
#: Bounds: the start (the one-file executable unpacks itself first), each command, the stop.
START_SECONDS, STOP_SECONDS = 60, 45
NOBODY_UID, NOGROUP_GID = 65534, 65534
#: What the server may leave in its state dir (the override file is the test's own).
STATE_FILES = {"policy.sqlite3", "policy.sqlite3-wal", "policy.sqlite3-shm", "channel.secret",
               "admin.token", "tmp", OVERRIDE_FILE}

#: Run "$@" in this mount namespace with every mount read-only but /proc, /sys, /dev, /dev/pts and
#: the state dir ($1), as nobody. `--make-rprivate /` first, so that no remount propagates out of
#: the namespace; the state dir is bound onto itself to be a mount of its own that stays writable.
#: $2, when not empty, is bound over /etc/hosts (the partner's host name, in this namespace only).
READ_ONLY_ROOT_SCRIPT = r"""
set -eu
state="$1"; hosts="$2"; shift 2
mount --make-rprivate /
[ -z "$hosts" ] || mount --bind "$hosts" /etc/hosts
[ -z "$state" ] || mount --bind "$state" "$state"
findmnt -rn -o TARGET,OPTIONS | while read -r target options; do
    case "$target" in /proc|/proc/*|/sys|/sys/*|/dev|/dev/pts) continue ;; esac
    [ "$target" = "$state" ] && continue
    case "$options" in rw,*|rw) mount -o remount,bind,ro "$target" ;; esac
done
exec setpriv --reuid=nobody --regid=nogroup --clear-groups "$@"
"""


XMPP_S2S_PORT = 5269


def port_is_free(host: str, port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server's listeners
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def require_namespaces() -> None:
    """Root, util-linux's unshare/nsenter/setpriv/findmnt, and a mount namespace that works;
    else skip — under CI=true (run as root, util-linux installed) a missing tool or a refused
    namespace fails instead."""
    if os.geteuid() != 0:
        unavailable("private mount namespaces need root")
    missing = [tool for tool in ("unshare", "nsenter", "setpriv", "findmnt") if shutil.which(tool) is None]
    reason = None
    if missing:
        reason = f"util-linux tools missing: {', '.join(missing)}"
    elif subprocess.run(["unshare", "--mount", "true"], capture_output=True, timeout=30).returncode != 0:
        reason = "unshare --mount is not permitted here"
    if reason is not None:
        unavailable(reason)


def one_file_built_by_the_suite() -> bool:
    """Under CI, where ``tests/dist`` checks the one-file executable, the suite builds it."""
    return os.environ.get("CI") == "true" and (ROOT / "tests" / "dist" / "_distbuild.py").is_file()


@functools.cache
def one_file_program() -> Path | None:
    """``dist/edgeproxy``: under CI built (or found up to date) by ``make dist`` as ``tests/dist``
    does; elsewhere the one already built, if any."""
    if one_file_built_by_the_suite():
        sys.path.insert(0, str(ROOT / "tests" / "dist"))
        from _distbuild import build_dist

        return build_dist().binary
    return ONE_FILE if ONE_FILE.is_file() else None


@pytest.fixture(params=["virtualenv", "one-file"])
def edgeproxy_program(request: pytest.FixtureRequest) -> list[str]:
    """The program under test: the virtualenv's ``edgeproxy``, or ``dist/edgeproxy`` (built by
    ``make dist``; skipped when absent, except under CI)."""
    if request.param == "virtualenv":
        return [str(VENV_EDGEPROXY)]
    binary = one_file_program()
    if binary is None or not binary.is_file():
        if one_file_built_by_the_suite():
            pytest.fail(f"{ONE_FILE} is missing after `make dist`")
        unavailable(f"{ONE_FILE} not built (`make dist`)")
    return [str(binary)]


@dataclass
class Appliance:
    """A read-only configuration and a state dir owned by nobody, outside pytest's private
    temporary directory (which nobody cannot enter)."""

    workdir: Path
    ports: dict[str, int]

    @property
    def etc(self) -> Path:
        return self.workdir / "etc"

    @property
    def state(self) -> Path:
        return self.workdir / "state"

    @property
    def config(self) -> Path:
        return self.etc / "edgeproxy.toml"

    @classmethod
    def create(cls, *, s2s_port: int | None = None) -> Appliance:
        workdir = Path(tempfile.mkdtemp(prefix="edgeproxy-appliance-"))
        workdir.chmod(0o755)
        ports = {role: free_port(EDGE_HOST) for role in ("external", "internal", "admin")}
        ports["sip"] = free_port(EDGE_HOST, udp_too=True)
        # the standard S2S port when it is free on this address: binding it needs no privilege
        ports["external"] = s2s_port if s2s_port is not None else (
            XMPP_S2S_PORT if port_is_free(EDGE_HOST, XMPP_S2S_PORT) else ports["external"])
        appliance = cls(workdir, ports)
        appliance.etc.mkdir(mode=0o755)
        appliance.state.mkdir(mode=0o750)
        os.chown(appliance.state, NOBODY_UID, NOGROUP_GID)
        appliance.config.write_text(
            f'[edge]\ndomains = ["{DOMAIN}"]\nlisten = ["{EDGE_HOST}:{ports["external"]}"]\n'
            f'internal-listen = "{EDGE_HOST}:{ports["internal"]}"\nstate-dir = "{appliance.state}"\n'
            '[tls]\ncertificate = "no/edge.pem"\nkey = "no/edge.key"\n'
            f'[admin]\nlisten = "{EDGE_HOST}:{ports["admin"]}"\n'
            f'[gateway]\nsip-listen = ["{EDGE_HOST}:{ports["sip"]}"]\nsip-tls-listen = []\nmax-queued = 100\n'
        )
        return appliance

    def environment(self) -> dict[str, str]:
        """An environment of its own (no virtualenv, no Python variables): the one-file executable
        unpacks itself into $TMPDIR before edgeproxy runs, so the unit gives it the state dir's."""
        return {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "EDGEPROXY_LOG_FORMAT": "json",
                "TMPDIR": str(self.state / "tmp")}

    def listing(self, directory: Path) -> dict[str, tuple[int, int]]:
        """Every file below ``directory``: its size and modification time (ns)."""
        return {str(p.relative_to(directory)): (p.stat().st_size, p.stat().st_mtime_ns)
                for p in sorted(directory.rglob("*"))}

    def admin_get(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(f"http://{EDGE_HOST}:{self.ports['admin']}{path}", timeout=5) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()
        except OSError:
            return 0, b""


def in_namespace_of(pid: int, *command: str, as_nobody: bool = True) -> list[str]:
    """``command`` run in the mount namespace of process ``pid`` (as nobody)."""
    drop = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"] if as_nobody else []
    return ["nsenter", f"--mount=/proc/{pid}/ns/mnt", "--", *drop, *command]


def records(path: Path) -> list[dict[str, object]]:
    """The event lines of a serve's stderr; a line that is not JSON fails the test."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


async def test_serve_on_a_read_only_root_writes_only_under_the_state_dir(edgeproxy_program: list[str]) -> None:
    """``edgeproxy serve --appliance`` as nobody where only the state dir is writable: a partner
    federates after it is added with ``partner new`` and ``edgeproxy reload`` (both run in the
    same namespace), SIGTERM stops it with exit status 0, and nothing outside the state dir
    changed — where any write would have failed."""
    require_namespaces()
    appliance = Appliance.create()
    try:
        await _run_appliance_scenario(appliance, edgeproxy_program)
    finally:
        shutil.rmtree(appliance.workdir, ignore_errors=True)


async def _run_appliance_scenario(appliance: Appliance, program: list[str]) -> None:
    (appliance.state / OVERRIDE_FILE).write_text("[gateway]\nmax-queued = 5000\n")
    os.chown(appliance.state / OVERRIDE_FILE, NOBODY_UID, NOGROUP_GID)
    if program[0] != str(VENV_EDGEPROXY):  # it unpacks into $TMPDIR before our code can make it
        (appliance.state / "tmp").mkdir(mode=0o700)
        os.chown(appliance.state / "tmp", NOBODY_UID, NOGROUP_GID)
    # the partner's host name, known in the namespace only (the CLI takes a DNS name for its proxy)
    hosts = appliance.workdir / "hosts"
    hosts.write_text(f"127.0.0.1 localhost\n{PEER_HOST} {PEER_PROXY}\n")
    hosts.chmod(0o644)
    etc_before = appliance.listing(appliance.etc)
    log_path = appliance.workdir / "serve.stderr"
    cli = [*program, "--config", str(appliance.config)]  # `--config` after the command's name
    with log_path.open("wb") as log:
        proc = await trio.lowlevel.open_process(
            ["unshare", "--mount", "--", "sh", "-c", READ_ONLY_ROOT_SCRIPT, "sh", str(appliance.state), str(hosts),
             *program, "serve", "--appliance", "--config", str(appliance.config)],
            stdout=log, stderr=log, cwd=appliance.etc, env=appliance.environment(),
        )
    try:
        async with trio.open_nursery() as nursery:
            peer = Peer(PEER_DOMAIN)
            await peer.start(nursery, PEER_HOST)
            with trio.fail_after(START_SECONDS):
                while (await trio.to_thread.run_sync(appliance.admin_get, "/healthz"))[0] != 200:
                    assert proc.poll() is None, log_path.read_text()[-3000:]
                    await trio.sleep(0.1)

            async def in_namespace(*args: str, as_nobody: bool = True) -> subprocess.CompletedProcess[bytes]:
                return await trio.run_process(in_namespace_of(proc.pid, *args, as_nobody=as_nobody),
                                              capture_stdout=True, capture_stderr=True, check=False,
                                              cwd=appliance.etc, env=appliance.environment())

            # a write outside the state dir fails loudly in this namespace, even for root
            for outside in (appliance.etc / "probe", Path("/tmp/edgeproxy-appliance-probe"),
                            VENV_EDGEPROXY.parent / "probe"):
                refused = await in_namespace("touch", str(outside), as_nobody=False)
                assert refused.returncode != 0 and b"Read-only file system" in refused.stderr, outside

            # a configuration change through the command line, in the namespace, then a reload
            added = await in_namespace(
                *cli[:1], "partner", "new", PEER_DOMAIN, *cli[1:], "--type", "federated",
                "--tls", "not-supported", "--sasl", "not-supported", "--dialback",
                "--proxy-fqdn", f"{PEER_PROXY}:{peer.port}")
            assert added.returncode == 0, added.stderr.decode()
            reloaded = await in_namespace(*cli[:1], "reload", *cli[1:])
            assert reloaded.returncode == 0, reloaded.stderr.decode()

            # the partner federates (TCP dialback both ways)
            peer.federate_with(DOMAIN, f"{EDGE_HOST}:{appliance.ports['external']}")
            await peer.send_message(f"bob@{PEER_DOMAIN}", f"alice@{DOMAIN}")

            def partners() -> set[object]:
                status, body = appliance.admin_get("/status")
                return {s.get("partner") for s in json.loads(body)["streams"]} if status == 200 else set()

            with trio.fail_after(30):
                while PEER_DOMAIN not in await trio.to_thread.run_sync(partners):
                    await trio.sleep(0.1)

            # a clean stop
            proc.send_signal(signal.SIGTERM)
            with trio.fail_after(STOP_SECONDS):
                await proc.wait()
            with trio.fail_after(10):
                while peer.stream_errors_received("system-shutdown") < 1:
                    await trio.sleep(0.05)
            nursery.cancel_scope.cancel()
    finally:
        if proc.returncode is None:
            proc.kill()  # our own child, by handle
            await proc.wait()
    lines = records(log_path)
    assert proc.returncode == 0, log_path.read_text()[-3000:]
    ids = [r["id"] for r in lines]
    assert [r for r in lines if r["severity"] == "error"] == []
    [mode] = [r for r in lines if r["id"] == "EP8016"]
    assert (mode["tmpdir"], mode["override"]) == (str(appliance.state / "tmp"), str(appliance.state / OVERRIDE_FILE))
    assert {"EP1000", "EP8001", "EP1003", "EP1004"} <= set(ids)
    assert any(PEER_DOMAIN in str(r["added"]) for r in lines if r["id"] == "EP8001")  # the reload
    # the writes: only in the state dir, what the contract lists
    assert appliance.listing(appliance.etc) == etc_before
    assert {p.name for p in appliance.state.iterdir()} <= STATE_FILES
    assert {"policy.sqlite3", "channel.secret", "admin.token", "tmp"} <= {p.name for p in appliance.state.iterdir()}
    assert (appliance.state / "tmp").stat().st_mode & 0o777 == 0o700


def test_without_a_writable_state_dir_the_start_fails_loudly() -> None:
    """The same read-only root with the state dir left read-only: the first write the server
    tries is refused and reported (EP8011, exit status 12) — a write elsewhere would be too."""
    require_namespaces()
    appliance = Appliance.create()
    try:
        done = subprocess.run(
            ["unshare", "--mount", "--", "sh", "-c", READ_ONLY_ROOT_SCRIPT, "sh", "", "",
             str(VENV_EDGEPROXY), "serve", "--appliance", "--config", str(appliance.config)],
            capture_output=True, text=True, timeout=START_SECONDS, cwd=appliance.etc,
            env=appliance.environment(),
        )
        [record] = [json.loads(line) for line in done.stderr.splitlines() if line.strip()]
        assert (done.returncode, record["id"]) == (12, "EP8011"), done.stderr
        assert "Read-only file system" in str(record["error"])
    finally:
        shutil.rmtree(appliance.workdir, ignore_errors=True)


def test_a_port_below_1024_says_how_to_grant_the_capability() -> None:
    """As nobody, S2S on port 1023: exit status 21 and the EP1001 line names the setcap command
    for the program that binds and the systemd setting."""
    require_namespaces()
    if int(Path("/proc/sys/net/ipv4/ip_unprivileged_port_start").read_text()) <= 1023:
        unavailable("this host lets anyone bind low ports (ip_unprivileged_port_start)")
    appliance = Appliance.create(s2s_port=1023)
    try:
        done = subprocess.run(
            ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
             str(VENV_EDGEPROXY), "serve", "--appliance", "--config", str(appliance.config)],
            capture_output=True, text=True, timeout=START_SECONDS, cwd=appliance.etc,
            env=appliance.environment(),
        )
        errors = [r for r in (json.loads(line) for line in done.stderr.splitlines() if line.strip())
                  if r["severity"] == "error"]
        assert done.returncode == 21, done.stderr
        [record] = errors
        assert record["id"] == "EP1001"
        # the program to give the capability: the interpreter the script runs (a script cannot hold it)
        named = re.search(r"`setcap 'cap_net_bind_service=\+ep' (\S+)`", str(record["error"]))
        assert named is not None, record["error"]
        interpreter = VENV_EDGEPROXY.read_text().splitlines()[0].removeprefix("#!")
        assert os.path.realpath(named.group(1)) == os.path.realpath(interpreter)
        assert "AmbientCapabilities=CAP_NET_BIND_SERVICE" in str(record["error"])
    finally:
        shutil.rmtree(appliance.workdir, ignore_errors=True)


async def test_a_reload_reads_the_override_file_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """In process (``edgeproxy.run``): an override that breaks a rule refuses the reload, naming
    the file; once fixed, the reload applies. Appliance mode sets the process's temporary
    directory: the test puts it back afterwards."""
    monkeypatch.setattr(tempfile, "tempdir", tempfile.tempdir)
    monkeypatch.setattr(sys, "dont_write_bytecode", sys.dont_write_bytecode)
    for name in ("TMPDIR", "PYTHONDONTWRITEBYTECODE"):
        monkeypatch.setenv(name, os.environ.get(name, ""))
    state = tmp_path / "state"
    config = write_edge_config(tmp_path, "127.0.52.3", state_dir=str(state), extra_edge="appliance = true\n")
    override = state / OVERRIDE_FILE
    async with trio.open_nursery() as host:
        edge = await host.start(partial(edgeproxy.run, config, role="edge", drain_bound=2,
                                        event_log=EventLog(io.StringIO())))
        assert os.environ["TMPDIR"] == tempfile.gettempdir() == str(state / "tmp")
        override.write_text("[limits]\npreauth-per-ip = 0\n")
        refused = await edge.reload()
        assert not refused.ok and f"{config} with {override}: [limits] preauth-per-ip" in refused.message
        override.write_text("[limits]\npreauth-per-ip = 5\n")
        applied = await edge.reload()
        assert applied.ok, applied.message
        assert edge.app.config.limits.preauth_per_ip == 5
        host.cancel_scope.cancel()


def test_appliance_mode_on_the_embedded_default_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    """``serve --appliance`` without a configuration file: the embedded default's state dir is
    relative (the current directory), which appliance mode refuses (exit 11); nothing is made."""
    environment = {k: v for k, v in os.environ.items() if k != "EDGEPROXY_CONFIG"}
    done = subprocess.run([PYTHON, "-m", "edgeproxy", "serve", "--appliance"], capture_output=True, text=True,
                          timeout=CLI_SECONDS, cwd=tmp_path, env={**environment, "EDGEPROXY_LOG_FORMAT": "json"})
    [record] = [json.loads(line) for line in done.stderr.splitlines() if line.strip()]
    assert (done.returncode, record["id"]) == (11, "EP8010")
    assert "must be an absolute path in appliance mode" in str(record["error"])
    assert list(tmp_path.iterdir()) == []
