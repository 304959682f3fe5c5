"""Secrets at rest (issue 14): the state dir, the store (and its -wal/-shm), the admin token and
the channel secret are created with their modes whatever the umask, and ``edgeproxy serve``
refuses to start — EP8007 naming the file, its mode and the fix, exit status 1 — with one that
others can read; ``edgeproxy check`` says the same. Real ``edgeproxy serve`` children
(``fixtures/serve.py``) on 127.0.0.93–127.0.0.96.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from edgeproxy.cli import main
from edgeproxy.loopback.auth import load_channel_secret
from edgeproxy.ops.admin import ensure_admin_token
from edgeproxy.ops.exitcodes import ExitCode
from edgeproxy.policy.store import STORE_FILE, Store
from edgeproxy.secretfiles import SecretFileError, ensure_secret
from fixtures.ports import free_port
from fixtures.serve import DOMAIN, start_serve

#: What each file of the state dir must be (exactly: created by edgeproxy itself).
EXPECTED_MODES = {
    ".": 0o750,
    STORE_FILE: 0o600,
    f"{STORE_FILE}-wal": 0o600,
    f"{STORE_FILE}-shm": 0o600,
    "admin.token": 0o640,
    "channel.secret": 0o600,
}


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def modes(state: Path) -> dict[str, int]:
    return {name: mode_of(state / name) for name in EXPECTED_MODES if (state / name).exists()}


@pytest.fixture
def umask() -> Iterator[Callable[[int], None]]:
    """Set the process umask for one test (children inherit it); restored afterwards."""
    saved = os.umask(0o022)

    def set_umask(value: int) -> None:
        os.umask(value)

    try:
        yield set_umask
    finally:
        os.umask(saved)


# -- created with their modes ------------------------------------------------------------------


@pytest.mark.parametrize("mask", [0o000, 0o077], ids=["umask-000", "umask-077"])
def test_store_token_and_secret_get_their_modes_whatever_the_umask_and_the_dirs_mode(
    tmp_path: Path, umask: Callable[[int], None], mask: int
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    os.chmod(state, 0o777)  # an existing, careless state dir: the files are still created right
    umask(mask)
    with Store.open(state) as store, store.write():
        load_channel_secret(state)
        ensure_admin_token(state / "admin.token")
        found = modes(state)
    assert {name: mode for name, mode in found.items() if name != "."} == {
        name: mode for name, mode in EXPECTED_MODES.items() if name != "."
    }
    assert oct(mode_of(state)) == oct(0o777)  # left alone here; serve refuses it (below)


@pytest.mark.parametrize(("mask", "address"), [(0o000, "127.0.0.93"), (0o077, "127.0.0.94")],
                         ids=["umask-000", "umask-077"])
def test_serve_creates_the_state_dir_and_every_secret_with_its_mode_whatever_the_umask(
    tmp_path: Path, umask: Callable[[int], None], mask: int, address: str
) -> None:
    umask(mask)  # the child inherits it
    serve = start_serve(tmp_path, address=address)
    try:
        assert {k: oct(v) for k, v in modes(tmp_path / "state").items()} == {
            k: oct(v) for k, v in EXPECTED_MODES.items()
        }  # the -wal and -shm exist while serve holds the store open
        assert not serve.events("EP8007")
    finally:
        serve.stop()


# -- start refuses -------------------------------------------------------------------------------


def write_config(workdir: Path, address: str) -> Path:
    """A configuration like ``fixtures.serve.start_serve`` writes (private ports on ``address``)."""
    s2s, internal, admin = free_port(address), free_port(address), free_port(address)
    sip = free_port(address, udp_too=True)
    config = workdir / "edgeproxy.toml"
    config.write_text(
        f'[edge]\ndomains = ["{DOMAIN}"]\nlisten = ["{address}:{s2s}"]\n'
        f'internal-listen = "{address}:{internal}"\nstate-dir = "state"\n'
        '[tls]\ncertificate = "no/edge.pem"\nkey = "no/edge.key"\n'
        f'[admin]\nlisten = "{address}:{admin}"\n'
        f'[gateway]\nsip-listen = ["{address}:{sip}"]\nsip-tls-listen = []\n'
    )
    return config


def make_state(workdir: Path) -> Path:
    """A state dir as edgeproxy creates it: the store, the admin token, the channel secret."""
    state = workdir / "state"
    with Store.open(state) as store, store.write():
        pass
    ensure_admin_token(state / "admin.token")
    load_channel_secret(state)
    return state


def run_serve(config: Path) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "edgeproxy", "serve", "--config", str(config)],
        cwd=config.parent, capture_output=True, timeout=60,
        env={**os.environ, "EDGEPROXY_LOG_FORMAT": "json"},
    )


def events_of(stderr: bytes) -> list[dict[str, object]]:
    found = []
    for line in stderr.decode(errors="replace").splitlines():
        try:
            found.append(json.loads(line))
        except ValueError:
            continue
    return found


EXPOSED = {
    "store": (STORE_FILE, 0o644, "0600"),
    "admin-token": ("admin.token", 0o644, "0640"),
    "channel-secret": ("channel.secret", 0o644, "0600"),
    "state-dir": (".", 0o777, "0750"),
    "group-writable-state-dir": (".", 0o770, "0750"),
}


@pytest.mark.parametrize("case", list(EXPOSED))
def test_serve_refuses_to_start_with_a_secret_others_can_read_and_the_fix_lets_it_start(
    tmp_path: Path, case: str
) -> None:
    name, wide, allowed = EXPOSED[case]
    config = write_config(tmp_path, "127.0.0.95")
    state = make_state(tmp_path)
    path = (state / name) if name != "." else state
    os.chmod(path, wide)

    done = run_serve(config)

    assert done.returncode == ExitCode.SECRET_EXPOSED, done.stderr.decode()[-2000:]
    records = events_of(done.stderr)
    [event] = [e for e in records if e.get("id") == "EP8007"]
    assert event["event"] == "secret-exposed" and event["severity"] == "error"
    assert event["path"] == str(path)
    assert event["mode"] == f"{wide:04o}" and event["allowed"] == allowed
    assert event["fix"] == f"chmod {allowed} {path}"
    assert f"chmod {allowed} {path}" in str(event["message"])
    assert not [e for e in records if e.get("id") in ("EP1000", "EP5001")]  # nothing started
    assert b"Traceback" not in done.stderr
    assert f"{path} has mode {wide:04o}" in str(event["message"])

    subprocess.run(str(event["fix"]).split(), check=True)  # the fix the event gives
    serve = start_serve(tmp_path, address="127.0.0.96")
    try:
        serve.assert_serving()
        assert not serve.events("EP8007")
    finally:
        serve.stop()


def test_serve_names_every_exposed_file_before_refusing(tmp_path: Path) -> None:
    config = write_config(tmp_path, "127.0.0.95")
    state = make_state(tmp_path)
    os.chmod(state / STORE_FILE, 0o640)  # the group may not read the store either
    os.chmod(state / "channel.secret", 0o604)

    done = run_serve(config)

    assert done.returncode == ExitCode.SECRET_EXPOSED
    exposed = [(e["path"], e["mode"]) for e in events_of(done.stderr) if e.get("id") == "EP8007"]
    assert exposed == [(str(state / STORE_FILE), "0640"), (str(state / "channel.secret"), "0604")]


# -- edgeproxy check -----------------------------------------------------------------------------


def test_check_reports_an_exposed_secret_as_a_fail_line_with_the_fix(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, "127.0.0.95")
    state = make_state(tmp_path)
    status = main(["check", "--no-dns", "--config", str(config)])
    [line] = [x for x in capsys.readouterr().out.splitlines() if x.startswith(("OK secrets", "FAIL secrets"))]
    assert line.startswith("OK secrets: state dir 0750 or stricter, store 0600 or stricter")

    os.chmod(state / "admin.token", 0o644)
    status = main(["check", "--no-dns", "--config", str(config)])
    [line] = [x for x in capsys.readouterr().out.splitlines() if "secrets" in x]
    token = state / "admin.token"
    assert line == (
        f"FAIL secrets: admin token {token} has mode 0644, more than 0640: edgeproxy serve refuses to start"
        f" (hint: chmod 0640 {token})"
    )
    assert status == 1


# -- secretfiles ---------------------------------------------------------------------------------


def test_an_existing_secret_is_read_back_and_refused_once_others_can_read_it(tmp_path: Path) -> None:
    path = tmp_path / "channel.secret"
    first = ensure_secret(path)
    assert ensure_secret(path) == first and mode_of(path) == 0o600
    assert not [p for p in tmp_path.iterdir() if p != path]  # no temporary file left behind
    os.chmod(path, 0o644)
    with pytest.raises(SecretFileError, match=r"has mode 0644.*fix: chmod 0600"):
        ensure_secret(path)
