"""``edgeproxy serve`` that cannot start: one event line naming the cause (its id and hint), the
exit status of that cause (docs/exit-codes.md), nothing else on stderr — no traceback. A normal
start writes no warning lines, and Python's warnings go through the event log.

Every case runs the real command line (``python -m edgeproxy serve --config FILE``) on loopback
ports that are free, or held by the test to make them busy.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from edgeproxy.commands.serve import events_on_stderr
from edgeproxy.ops.events import CATALOGUE, EventLog
from edgeproxy.ops.exitcodes import (
    STARTUP_FAILURES,
    ExitCode,
    bind_failure_code,
    exit_codes_markdown,
    is_bind_failure,
)
from edgeproxy.policy.store import MIGRATIONS, STORE_FILE, Store
from fixtures.ports import free_port
from fixtures.serve import EdgeCertificates, start_serve
from fixtures.tools import require_tool, unavailable

HOST = "127.0.0.1"
START_TIMEOUT = 60


def write_config(tmp_path: Path, *, certificates: bool = False, trust: str | None = None,
                 sip_tls: bool = False, edge: str = "", admin_listen: str | None = None,
                 listen: str | None = None, state_dir: str = "state") -> tuple[Path, dict[str, int]]:
    """An ``edgeproxy.toml`` in ``tmp_path`` with every listener on a free loopback port (the
    ports by listener role); ``certificates``: a private CA and an edge certificate, trusted
    through ``[tls] trust`` (``trust`` overrides the path)."""
    ports = {role: free_port(HOST) for role in ("external", "internal", "admin", "sip-tls")}
    ports["sip"] = free_port(HOST, udp_too=True)
    if certificates:
        cert, key, ca = EdgeCertificates(tmp_path / "certs").files("contoso.test")
        tls = f'[tls]\ncertificate = "{cert}"\nkey = "{key}"\ntrust = "{trust or ca}"\n'
    else:
        tls = '[tls]\ncertificate = "no/edge.pem"\nkey = "no/edge.key"\n'
    at = {role: f"{HOST}:{port}" for role, port in ports.items()}
    sip_tls_listen = f'["{at["sip-tls"]}"]' if sip_tls else "[]"
    config = tmp_path / "edgeproxy.toml"
    config.write_text(
        f'[edge]\ndomains = ["contoso.test"]\nlisten = ["{listen or at["external"]}"]\n'
        f'internal-listen = "{at["internal"]}"\nstate-dir = "{state_dir}"\n{edge}'
        f"{tls}"
        f'[admin]\nlisten = "{admin_listen or at["admin"]}"\n'
        f'[gateway]\nsip-listen = ["{at["sip"]}"]\nsip-tls-listen = {sip_tls_listen}\n'
    )
    return config, ports


def run_serve(config: Path | str, *extra: str) -> subprocess.CompletedProcess[str]:
    """``edgeproxy serve`` that is expected to give up at its start (bounded in time)."""
    return subprocess.run(
        [sys.executable, "-m", "edgeproxy", "serve", "--config", str(config), *extra],
        capture_output=True, text=True, timeout=START_TIMEOUT,
        env={**os.environ, "EDGEPROXY_LOG_FORMAT": "json"},
    )


def the_one_event(done: subprocess.CompletedProcess[str], exit_code: ExitCode, event_id: str) -> dict[str, object]:
    """The failed start's report: exit status ``exit_code``, stderr exactly one JSON event of
    ``event_id`` with its catalogue hint, no traceback, nothing on stdout."""
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    record = json.loads(lines[0])
    assert (done.returncode, record["id"]) == (int(exit_code), event_id), done.stderr
    assert record["severity"] == "error"
    assert record["hint"] == CATALOGUE[event_id].hint
    assert done.stdout == ""
    return record


@contextmanager
def holding(kind: socket.SocketKind, port: int) -> Iterator[None]:
    """Another program on ``HOST:port``: a listening TCP socket, or a bound UDP one."""
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind((HOST, port))
        if kind == socket.SOCK_STREAM:
            sock.listen()
        yield


# -- listeners ---------------------------------------------------------------------------------


def test_a_second_serve_on_the_same_ports_is_one_bind_failed_line_and_exit_20(tmp_path: Path) -> None:
    first = start_serve(tmp_path, certificates=EdgeCertificates(tmp_path / "certs"))
    try:
        done = run_serve(tmp_path / "edgeproxy.toml")
        first.assert_serving()  # the first one is undisturbed
    finally:
        first.stop()
    record = the_one_event(done, ExitCode.ADDRESS_IN_USE, "EP1001")
    address = f"{HOST}:{first.s2s_port}"
    assert (record["event"], record["role"], record["address"]) == ("bind-failed", "external", address)
    assert record["message"] == f"cannot bind external listener on {address}: OSError: [Errno 98] Address already in use"


@pytest.mark.parametrize(("role", "kind", "port_of"), [
    ("internal", socket.SOCK_STREAM, "internal"),
    ("admin", socket.SOCK_STREAM, "admin"),
    ("sip-udp", socket.SOCK_DGRAM, "sip"),
    ("sip-tcp", socket.SOCK_STREAM, "sip"),
    ("sip-tls", socket.SOCK_STREAM, "sip-tls"),
])
def test_each_listener_in_use_is_named_in_its_bind_failed_line(
    tmp_path: Path, role: str, kind: socket.SocketKind, port_of: str
) -> None:
    config, ports = write_config(tmp_path, certificates=True, sip_tls=role == "sip-tls")
    with holding(kind, ports[port_of]):
        done = run_serve(config)
    record = the_one_event(done, ExitCode.ADDRESS_IN_USE, "EP1001")
    assert (record["role"], record["address"]) == (role, f"{HOST}:{ports[port_of]}")


def test_an_address_this_host_does_not_have_is_exit_22(tmp_path: Path) -> None:
    config, _ = write_config(tmp_path, certificates=True, listen="192.0.2.1:5269")  # TEST-NET-1
    record = the_one_event(run_serve(config), ExitCode.ADDRESS_UNAVAILABLE, "EP1001")
    assert (record["role"], record["address"]) == ("external", "192.0.2.1:5269")


NOBODY = 65534
PRIVILEGED_PORT = 1


def _unprivileged_ports_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_unprivileged_port_start").read_text())
    except (OSError, ValueError):
        return 1024


@pytest.fixture
def unprivileged() -> Iterator[tuple[Path, list[str]]]:
    """A directory of its own (outside pytest's private temporary one) and the command that runs
    ``edgeproxy serve`` as an unprivileged account there: the test's own when it is not root,
    else nobody under ``setpriv``. ``give_to_nobody`` hands the files over afterwards."""
    command = [sys.executable, "-m", "edgeproxy", "serve"]
    if os.geteuid() == 0:
        setpriv = require_tool("setpriv", "util-linux")
        command = [setpriv, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *command]
        probe = subprocess.run([*command[:-3], "-c", "import edgeproxy.cli"], capture_output=True, timeout=60)
        if probe.returncode != 0:
            unavailable("the unprivileged account cannot read this checkout's environment")
    workdir = Path(tempfile.mkdtemp(prefix="edgeproxy-unprivileged-"))
    try:
        yield workdir, command
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def give_to_nobody(workdir: Path, *keep: Path) -> None:
    """Everything under ``workdir`` owned by nobody (when the tests run as root), but ``keep``."""
    if os.geteuid() == 0:
        for path in (workdir, *workdir.rglob("*")):
            if path not in keep:
                os.chown(path, NOBODY, NOBODY)


def run_unprivileged(command: list[str], workdir: Path, config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*command, "--config", str(config)], capture_output=True, text=True, timeout=START_TIMEOUT,
        cwd=workdir, env={**os.environ, "EDGEPROXY_LOG_FORMAT": "json"},
    )


@pytest.mark.skipif(_unprivileged_ports_start() <= PRIVILEGED_PORT, reason="this host lets anyone bind low ports")
def test_a_port_below_1024_without_the_capability_is_exit_21(unprivileged: tuple[Path, list[str]]) -> None:
    workdir, command = unprivileged
    config, _ = write_config(workdir, certificates=True, listen=f"{HOST}:{PRIVILEGED_PORT}")
    give_to_nobody(workdir)
    record = the_one_event(run_unprivileged(command, workdir, config), ExitCode.ADDRESS_FORBIDDEN, "EP1001")
    assert (record["role"], record["address"]) == ("external", f"{HOST}:{PRIVILEGED_PORT}")
    assert "Permission denied" in str(record["error"])


def test_an_admin_endpoint_off_loopback_is_a_refused_configuration(tmp_path: Path) -> None:
    config, ports = write_config(tmp_path, certificates=True, admin_listen="0.0.0.0:0")
    record = the_one_event(run_serve(config), ExitCode.CONFIG_INVALID, "EP8004")
    assert record["address"] == "0.0.0.0:0"


# -- configuration, state dir, store, certificates ---------------------------------------------


def test_a_configuration_that_cannot_be_read_is_exit_10(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.toml"
    record = the_one_event(run_serve(missing), ExitCode.CONFIG_UNREADABLE, "EP8009")
    assert record["path"] == str(missing) and record["error"] == "No such file or directory"


def test_a_refused_configuration_is_exit_11_naming_the_key(tmp_path: Path) -> None:
    config, _ = write_config(tmp_path, edge="listn = []\n")
    record = the_one_event(run_serve(config), ExitCode.CONFIG_INVALID, "EP8010")
    assert "listn" in str(record["error"]) and record["path"] == str(config)


def test_a_state_dir_that_cannot_be_created_is_exit_12(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("not a directory\n")
    config, _ = write_config(tmp_path, certificates=True, state_dir="a-file/state")
    record = the_one_event(run_serve(config), ExitCode.STATE_DIR_UNUSABLE, "EP8011")
    assert record["path"] == str(tmp_path / "a-file" / "state")


def test_a_state_dir_under_etc_is_refused_before_anything_is_created(tmp_path: Path) -> None:
    state = Path("/etc/edgeproxy-test-does-not-exist") / tmp_path.name / "var"
    config, _ = write_config(tmp_path, certificates=True, state_dir=str(state))
    record = the_one_event(run_serve(config), ExitCode.STATE_DIR_UNUSABLE, "EP8011")
    assert record["path"] == str(state) and "/var/lib/edgeproxy" in str(record["error"])
    assert not state.parent.parent.exists()


def test_a_store_that_is_not_a_database_is_exit_14(tmp_path: Path) -> None:
    config, _ = write_config(tmp_path, certificates=True)
    state = tmp_path / "state"
    state.mkdir(mode=0o750)
    store = state / STORE_FILE
    store.write_bytes(b"this is not an SQLite database, it is a text file" * 100)
    store.chmod(0o600)
    record = the_one_event(run_serve(config), ExitCode.STORE_UNAVAILABLE, "EP8005")
    assert record["path"] == str(store) and "not a database" in str(record["error"])


def test_a_store_made_by_root_that_the_service_account_cannot_open_is_exit_14(
    unprivileged: tuple[Path, list[str]],
) -> None:
    """The usual slip: a command run with sudo made the store; the service account cannot open it."""
    if os.geteuid() != 0:
        unavailable("needs root to make a store the service account cannot open")
    workdir, command = unprivileged
    config, _ = write_config(workdir, certificates=True)
    Store.open(workdir / "state").close()
    store = workdir / "state" / STORE_FILE
    give_to_nobody(workdir, store)
    record = the_one_event(run_unprivileged(command, workdir, config), ExitCode.STORE_UNAVAILABLE, "EP8005")
    assert record["path"] == str(store) and "unable to open" in str(record["error"])
    assert "chown" in str(record["hint"])


def test_a_store_of_a_newer_edgeproxy_is_exit_15_and_left_as_it_is(tmp_path: Path) -> None:
    config, _ = write_config(tmp_path, certificates=True)
    Store.open(tmp_path / "state").close()
    conn = sqlite3.connect(tmp_path / "state" / STORE_FILE)
    conn.execute("UPDATE schema_version SET version = 99")
    conn.commit()
    conn.close()
    record = the_one_event(run_serve(config), ExitCode.STORE_TOO_NEW, "EP8012")
    assert (record["version"], record["known"]) == (99, len(MIGRATIONS))
    conn = sqlite3.connect(tmp_path / "state" / STORE_FILE)
    assert conn.execute("SELECT version FROM schema_version").fetchone() == (99,)
    conn.close()


def test_a_certificate_without_its_key_is_exit_16_not_a_start_without_tls(tmp_path: Path) -> None:
    config, _ = write_config(tmp_path, certificates=True)
    key = tmp_path / "certs" / "contoso.test.key"
    key.unlink()
    record = the_one_event(run_serve(config), ExitCode.CREDENTIALS_UNUSABLE, "EP2003")
    assert record["path"] == str(key) and "does not exist" in str(record["error"])


def test_a_certificate_that_does_not_load_is_exit_16(tmp_path: Path) -> None:
    config, _ = write_config(tmp_path, certificates=True)
    cert = tmp_path / "certs" / "contoso.test.pem"
    cert.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n")
    record = the_one_event(run_serve(config), ExitCode.CREDENTIALS_UNUSABLE, "EP2003")
    assert (record["what"], record["path"]) == ("certificate and key", str(cert))


def test_a_secret_others_can_read_is_exit_13(tmp_path: Path) -> None:
    config, _ = write_config(tmp_path, certificates=True)
    Store.open(tmp_path / "state").close()
    (tmp_path / "state" / STORE_FILE).chmod(0o644)
    record = the_one_event(run_serve(config), ExitCode.SECRET_EXPOSED, "EP8007")
    assert record["fix"] == f"chmod 0600 {tmp_path / 'state' / STORE_FILE}"


# -- a normal start ----------------------------------------------------------------------------


def test_a_normal_start_writes_no_warnings_and_says_where_an_upgraded_stores_copy_is(tmp_path: Path) -> None:
    """Certificates with no trust file: the system trust store is parsed (cryptography used to
    warn about its roots with serial number 0 on stderr); the store is at schema 1."""
    config, ports = write_config(tmp_path, certificates=True, trust=str(tmp_path / "no-ca.pem"))
    state = tmp_path / "state"
    state.mkdir(mode=0o750)
    conn = sqlite3.connect(state / STORE_FILE, isolation_level=None)
    (state / STORE_FILE).chmod(0o600)
    conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    conn.execute("INSERT INTO schema_version (version) VALUES (1)")
    MIGRATIONS[0](conn)
    conn.close()
    errors = tmp_path / "stderr.jsonl"
    with errors.open("w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "edgeproxy", "serve", "--config", str(config)],
            stdout=subprocess.DEVNULL, stderr=err, env={**os.environ, "EDGEPROXY_LOG_FORMAT": "json"},
        )
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while '"EP5001"' not in errors.read_text():
            assert proc.poll() is None, errors.read_text()
            assert time.monotonic() < deadline, errors.read_text()
            time.sleep(0.1)
    finally:
        proc.terminate()
        proc.wait(timeout=45)
    assert proc.returncode == 0
    records = [json.loads(line) for line in errors.read_text().splitlines()]  # every line an event
    assert [r["severity"] for r in records if r["severity"] != "info"] == []
    ids = [r["id"] for r in records]
    assert ids[:3] == ["EP8013", "EP1000", "EP5001"], ids
    [backup] = state.glob(f"{STORE_FILE}.bak-v1-*")
    assert records[0]["backup"] == str(backup) and records[0]["from_version"] == 1
    assert records[1]["sip"] == f"{HOST}:{ports['sip']}"


def test_python_warnings_during_serve_are_event_lines() -> None:
    out = io.StringIO()
    log = EventLog(out, output="json")
    with events_on_stderr(log):
        warnings.warn("an old call", DeprecationWarning, stacklevel=1)
    log.close()
    [record] = [json.loads(line) for line in out.getvalue().splitlines()]
    assert (record["id"], record["logger"]) == ("EP9002", "py.warnings")
    assert "DeprecationWarning: an old call" in str(record["text"])


def test_docs_list_every_exit_status_as_the_code_defines_it() -> None:
    docs = (Path(__file__).resolve().parents[2] / "docs" / "exit-codes.md").read_text(encoding="utf-8")
    assert exit_codes_markdown() in docs
    assert sorted(s.code for s in STARTUP_FAILURES) == sorted(ExitCode)  # one row per status
    for status in STARTUP_FAILURES:
        assert all(event_id in CATALOGUE for event_id in status.events)


@pytest.mark.parametrize(("errno_value", "status"), [
    (98, ExitCode.ADDRESS_IN_USE),  # EADDRINUSE
    (13, ExitCode.ADDRESS_FORBIDDEN),  # EACCES: a port below 1024 without the capability
    (1, ExitCode.ADDRESS_FORBIDDEN),  # EPERM
    (99, ExitCode.ADDRESS_UNAVAILABLE),  # EADDRNOTAVAIL
])
def test_a_bind_error_maps_to_its_status(errno_value: int, status: ExitCode) -> None:
    """The statuses the real-CLI cases above cannot all reach (the tests may run as root)."""
    assert bind_failure_code(OSError(errno_value, os.strerror(errno_value))) is status


def test_a_file_that_cannot_be_opened_is_no_bind_failure() -> None:
    assert is_bind_failure(OSError(13, "Permission denied"))
    assert not is_bind_failure(PermissionError(13, "Permission denied", "/var/lib/edgeproxy/channel.secret"))
    assert not is_bind_failure(OSError(2, "No such file or directory"))
