"""An edge pool of real processes: ``edgeproxy serve`` as a primary on 127.0.0.1 and as a member on
127.0.0.2 (each its own state dir and free ports), changed and read with the real command line."""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from edgeproxy.pool.protocol import LENGTH_BYTES, MAX_HANDSHAKE_FRAME
from fixtures.ports import free_port
from fixtures.serve import ServeProcess, start_serve

PRIMARY_HOST, MEMBER_HOST = "127.0.0.1", "127.0.0.2"
#: The longest a change may take to be seen on the member, from the command's return.
PROPAGATION_BOUND = 2.0


def edgeproxy(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgeproxy", *args, "--config", str(config)],
        capture_output=True, text=True, timeout=60,
    )


def write_secret(workdir: Path, secret: str) -> None:
    """The pool secret in ``workdir``'s state dir, as the operator copies it (0600, dir 0750)."""
    state = workdir / "state"
    state.mkdir(parents=True, exist_ok=True)
    state.chmod(0o750)
    path = state / "pool.secret"
    path.write_text(secret + "\n")
    path.chmod(0o600)


@dataclass
class Pool:
    root: Path
    pool_port: int
    secret: str
    primary: ServeProcess | None = None
    member: ServeProcess | None = None

    @property
    def primary_config(self) -> Path:
        return self.root / "primary" / "edgeproxy.toml"

    @property
    def member_config(self) -> Path:
        return self.root / "member" / "edgeproxy.toml"

    @property
    def primary_address(self) -> str:
        return f"{PRIMARY_HOST}:{self.pool_port}"

    def start_primary(self) -> ServeProcess:
        write_secret(self.root / "primary", self.secret)
        self.primary = start_serve(
            self.root / "primary", address=PRIMARY_HOST,
            extra=f'[pool]\nrole = "primary"\nlisten = "{self.primary_address}"\n',
        )
        self.primary.wait_for_event("EP8501")
        return self.primary

    def start_member(self, secret: str | None = None) -> ServeProcess:
        write_secret(self.root / "member", secret or self.secret)
        self.member = start_serve(
            self.root / "member", address=MEMBER_HOST,
            extra=f'[pool]\nrole = "member"\nprimary = "{self.primary_address}"\ninterval = 0.2\n',
        )
        return self.member

    def stop(self) -> None:
        for serve in (self.member, self.primary):
            if serve is not None:
                serve.stop()


def relaunch(serve: ServeProcess, timeout: float = 30) -> ServeProcess:
    """``edgeproxy serve`` again with the same configuration (same ports), its events appended."""
    with serve.events_path.open("ab") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "edgeproxy", "serve", "--config", str(serve.workdir / "edgeproxy.toml")],
            stdout=subprocess.DEVNULL, stderr=err, cwd=serve.workdir, env=dict(os.environ),
        )
    again = ServeProcess(proc, serve.workdir, serve.address, serve.s2s_port, serve.internal_port,
                         serve.admin_port, serve.sip_port, serve.events_path)
    deadline = time.monotonic() + timeout
    while True:
        assert again.alive(), f"edgeproxy serve exited at start:\n{again.log_tail()}"
        try:
            if again.http_get("/healthz")[0] == 200:
                return again
        except OSError:
            pass
        assert time.monotonic() < deadline, again.log_tail()
        time.sleep(0.1)


@pytest.fixture
def pool(tmp_path: Path) -> Iterator[Pool]:
    made = Pool(tmp_path, free_port(PRIMARY_HOST), secrets.token_urlsafe(32))
    try:
        yield made
    finally:
        made.stop()


def seen_on_member(pool: Pool, domain: str, bound: float) -> float:
    """Seconds from now until ``partner get DOMAIN`` on the member succeeded (each try counted to
    its return); fails once ``bound`` seconds passed."""
    start = time.monotonic()
    while True:
        got = edgeproxy(pool.member_config, "partner", "get", domain)
        elapsed = time.monotonic() - start
        if got.returncode == 0:
            return elapsed
        assert elapsed < bound, f"{domain} not on the member after {elapsed:.2f} s: {got.stderr}"
        time.sleep(0.05)


def test_a_partner_new_on_the_primary_is_seen_on_the_member_within_two_seconds(pool: Pool) -> None:
    pool.start_primary()
    pool.start_member()
    made = edgeproxy(pool.primary_config, "partner", "new", "fabrikam.com")
    assert made.returncode == 0, made.stderr
    assert seen_on_member(pool, "fabrikam.com", PROPAGATION_BOUND) < PROPAGATION_BOUND
    assert pool.member is not None
    pool.member.wait_for_event("EP8502")
    status = json.loads(edgeproxy(pool.member_config, "pool", "status", "--json").stdout)
    assert status["role"] == "member" and status["replica"] is True
    assert status["primary"] == pool.primary_address
    primary_status = json.loads(edgeproxy(pool.primary_config, "pool", "status", "--json").stdout)
    assert status["primary-generation"] == primary_status["generation"]
    assert status["last-applied"] is not None and status["error"] == ""


def test_a_partner_new_on_the_member_is_refused_naming_the_primary_and_nothing_is_stored(pool: Pool) -> None:
    pool.start_primary()
    pool.start_member()
    before = json.loads(edgeproxy(pool.member_config, "pool", "status", "--json").stdout)
    refused = edgeproxy(pool.member_config, "partner", "new", "fabrikam.com")
    assert refused.returncode == 1
    assert refused.stderr == (
        "edgeproxy: refused: this edge is a member of an edge pool; change the configuration on"
        f" the primary ({pool.primary_address})\n"
    )
    assert edgeproxy(pool.member_config, "partner", "get", "fabrikam.com").returncode == 1
    gateway = edgeproxy(pool.member_config, "gateway", "set", "--keepalive-interval", "7")
    assert gateway.returncode == 1 and pool.primary_address in gateway.stderr
    after = json.loads(edgeproxy(pool.member_config, "pool", "status", "--json").stdout)
    assert after["generation"] == before["generation"]  # nothing committed
    # The primary's own change still arrives.
    assert edgeproxy(pool.primary_config, "partner", "new", "fabrikam.com").returncode == 0
    seen_on_member(pool, "fabrikam.com", PROPAGATION_BOUND)


def test_a_member_started_while_the_primary_is_down_serves_its_copy_and_catches_up(pool: Pool) -> None:
    primary = pool.start_primary()
    assert edgeproxy(pool.primary_config, "partner", "new", "fabrikam.com").returncode == 0
    member = pool.start_member()
    seen_on_member(pool, "fabrikam.com", PROPAGATION_BOUND)
    member.stop()
    primary.stop()
    # Changed while nobody serves it; the member starts without its primary.
    assert edgeproxy(pool.primary_config, "partner", "new", "adatum.com").returncode == 0
    pool.member = member = relaunch(member)
    member.wait_for_event("EP8503")
    member.assert_serving()
    assert edgeproxy(pool.member_config, "partner", "get", "fabrikam.com").returncode == 0
    assert edgeproxy(pool.member_config, "partner", "get", "adatum.com").returncode == 1
    status = json.loads(edgeproxy(pool.member_config, "pool", "status", "--json").stdout)
    assert status["error"] and status["error-since"] is not None
    # The primary comes back on the same address: the member catches up by itself.
    pool.primary = relaunch(primary)
    seen_on_member(pool, "adatum.com", 10)
    assert json.loads(edgeproxy(pool.member_config, "pool", "status", "--json").stdout)["error"] == ""


def test_a_wrong_pool_secret_is_refused_with_its_event_on_both_sides(pool: Pool) -> None:
    primary = pool.start_primary()
    assert edgeproxy(pool.primary_config, "partner", "new", "fabrikam.com").returncode == 0
    member = pool.start_member(secret="not-the-pool-secret")
    refused = primary.wait_for_event("EP8504")
    assert refused["direction"] == "from" and "wrong pool secret" in str(refused["reason"])
    told = member.wait_for_event("EP8504")
    assert told["direction"] == "to" and told["peer"] == pool.primary_address
    assert edgeproxy(pool.member_config, "partner", "get", "fabrikam.com").returncode == 1


def raw(address: str) -> socket.socket:
    host, port = address.rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=5)


def test_a_malformed_or_oversized_frame_closes_that_connection_and_the_primary_goes_on(pool: Pool) -> None:
    primary = pool.start_primary()
    with raw(pool.primary_address) as s:
        s.sendall((5).to_bytes(LENGTH_BYTES, "big") + b"\xc1junk")
        assert s.recv(100) == b""  # closed by the primary
    record = primary.wait_for_event("EP8505")
    assert "malformed frame" in str(record["reason"]) and record["direction"] == "from"
    with raw(pool.primary_address) as s:
        s.sendall((MAX_HANDSHAKE_FRAME + 1).to_bytes(LENGTH_BYTES, "big"))
        assert s.recv(100) == b""
    deadline = time.monotonic() + 5
    while not any("above the limit" in str(r["reason"]) for r in primary.events("EP8505")):
        assert time.monotonic() < deadline, primary.log_tail()
        time.sleep(0.05)
    # The primary goes on: a real member still gets its store.
    primary.assert_serving()
    assert edgeproxy(pool.primary_config, "partner", "new", "fabrikam.com").returncode == 0
    pool.start_member()
    seen_on_member(pool, "fabrikam.com", PROPAGATION_BOUND)
    assert not [r for r in primary.events() if r.get("severity") == "error"]
