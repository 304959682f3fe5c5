"""run_pool in one trio program: a primary and a member on 127.0.0.x, each with its own state dir.

What a pool does end to end — a change on the primary reaches the member's store at once, the
member refuses changes of its own, a wrong secret or certificate is refused with its event, a
broken or oversized frame closes that connection only — checked on the real listener and the
real connection code, with the events captured from the event log.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from edgeproxy.config import EdgeConfig, load_config
from edgeproxy.errors import ConfigError
from edgeproxy.ops.events import EventLog
from edgeproxy.ops.telemetry import Telemetry
from edgeproxy.policy import operations as ops
from edgeproxy.policy.model import Partner
from edgeproxy.policy.store import ReplicaWriteRefused, Store
from edgeproxy.pool import protocol
from edgeproxy.pool.protocol import LENGTH_BYTES, MAX_HANDSHAKE_FRAME, NONCE_BYTES, Hello
from edgeproxy.pool.service import run_pool
from edgeproxy.pool.syncstate import read_sync_state
from fixtures.ports import free_port
from fixtures.private_ca import PrivateCa

OURS = ("contoso.test",)
PRIMARY_HOST, MEMBER_HOST = "127.0.0.1", "127.0.0.2"
#: The longest a change may take to reach the member (measured from the write's return).
PROPAGATION_BOUND = 2.0


class Events:
    """The events one side wrote (JSON lines on an in-memory stream)."""

    def __init__(self) -> None:
        self.stream = io.StringIO()
        self.log = EventLog(self.stream, output="json")
        self.telemetry = Telemetry(event_log=self.log)

    def records(self) -> list[dict[str, object]]:
        self.log.flush()
        return [json.loads(line) for line in self.stream.getvalue().splitlines()]

    def ids(self) -> list[object]:
        return [r["id"] for r in self.records()]

    async def wait_for(self, event_id: str, timeout: float = 5.0) -> dict[str, object]:
        with trio.fail_after(timeout):
            while True:
                found = [r for r in self.records() if r["id"] == event_id]
                if found:
                    return found[-1]
                await trio.sleep(0.02)


def write_config(directory: Path, pool: str, tls: str = "") -> EdgeConfig:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "edgeproxy.toml"
    path.write_text(
        f'[edge]\ndomains = ["contoso.test"]\nstate-dir = "state"\n{tls}\n[pool]\n{pool}\n',
        encoding="utf-8",
    )
    return load_config(path)


def pool_pair(tmp_path: Path, *, tls: bool = False, secret: str | None = None
              ) -> tuple[EdgeConfig, EdgeConfig]:
    """A primary on 127.0.0.1 and a member of it on 127.0.0.2 (the primary's secret copied, or
    ``secret`` written instead)."""
    port = free_port(PRIMARY_HOST)
    tls_table = ""
    if tls:
        ca = PrivateCa(tmp_path / "pki")
        ca.directory.mkdir(parents=True)
        ca.write_ca()
        ca.write_leaf("primary", PRIMARY_HOST)
        ca.write_leaf("member", MEMBER_HOST)
    flag = "tls = true" if tls else ""
    primary = write_config(
        tmp_path / "primary", f'role = "primary"\nlisten = "{PRIMARY_HOST}:{port}"\n{flag}',
        _tls_table(tmp_path, "primary") if tls else tls_table,
    )
    member = write_config(
        tmp_path / "member", f'role = "member"\nprimary = "{PRIMARY_HOST}:{port}"\ninterval = 0.2\n{flag}',
        _tls_table(tmp_path, "member") if tls else tls_table,
    )
    from edgeproxy.pool.secret import load_pool_secret

    shared = load_pool_secret(primary, create=True).decode()
    path = member.pool.secret_path(member)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text((secret if secret is not None else shared) + "\n")
    path.chmod(0o600)
    return primary, member


def _tls_table(tmp_path: Path, name: str) -> str:
    pki = tmp_path / "pki"
    return f'[tls]\ncertificate = "{pki / name}.pem"\nkey = "{pki / name}.key"\ntrust = "{pki / "ca.pem"}"\n'


@asynccontextmanager
async def running(config: EdgeConfig, events: Events, **kw: object) -> AsyncIterator[None]:
    async with trio.open_nursery() as nursery:
        await nursery.start(lambda task_status: run_pool(config, events.telemetry, task_status=task_status, **kw))
        yield
        nursery.cancel_scope.cancel()


def partners(config: EdgeConfig) -> list[str]:
    with Store.open(config.state_dir) as store:
        return [p.domain for p in store.read()[1].partners]


async def until(condition: Callable[[], bool], timeout: float) -> float:
    """Seconds until ``condition()`` held (polled every 10 ms); fails after ``timeout``."""
    start = time.monotonic()
    with trio.fail_after(timeout):
        while not condition():
            await trio.sleep(0.01)
    return time.monotonic() - start


async def test_a_change_on_the_primary_reaches_the_member_within_two_seconds(tmp_path: Path) -> None:
    primary, member = pool_pair(tmp_path)
    primary_events, member_events = Events(), Events()
    applied: list[int] = []

    async def on_applied() -> None:
        applied.append(1)

    async with running(primary, primary_events), running(member, member_events, on_applied=on_applied):
        assert "EP8501" in primary_events.ids()
        with Store.open(primary.state_dir) as store:
            ops.new_partner(store, OURS, Partner(domain="fabrikam.com"))
        took = await until(lambda: partners(member) == ["fabrikam.com"], timeout=PROPAGATION_BOUND)
        assert took < PROPAGATION_BOUND
        await until(lambda: bool(applied), timeout=1)
        record = await member_events.wait_for("EP8502")
        assert record["primary"] == str(member.pool.primary)
        with Store.open(member.state_dir) as store:
            replica = store.replica()
            assert replica is not None and replica.primary_generation == Store.open(primary.state_dir).generation()
            # The member's own change is refused, naming the primary; nothing is stored.
            with pytest.raises(ReplicaWriteRefused, match=member.pool.primary):
                ops.new_partner(store, OURS, Partner(domain="adatum.com"))
        assert partners(member) == ["fabrikam.com"]
        state = read_sync_state(member.state_dir)
        assert state is not None and state.last_applied is not None and state.error == ""


async def test_a_member_without_its_primary_serves_its_copy_and_catches_up(tmp_path: Path) -> None:
    primary, member = pool_pair(tmp_path)
    member_events = Events()
    with Store.open(primary.state_dir) as store:
        ops.new_partner(store, OURS, Partner(domain="fabrikam.com"))
    async with running(primary, Events()), running(member, Events()):
        await until(lambda: partners(member) == ["fabrikam.com"], timeout=PROPAGATION_BOUND)
    # The primary is down: the member starts anyway, keeps its copy, says so once.
    with Store.open(primary.state_dir) as store:
        ops.new_partner(store, OURS, Partner(domain="adatum.com"))
    async with running(member, member_events):
        record = await member_events.wait_for("EP8503")
        assert record["generation"] != "none"
        assert partners(member) == ["fabrikam.com"]
        await trio.sleep(0.6)  # several retries, one event
        assert member_events.ids().count("EP8503") == 1
        state = read_sync_state(member.state_dir)
        assert state is not None and state.error
        # The primary comes back: the member catches up without being restarted.
        async with running(primary, Events()):
            await until(lambda: partners(member) == ["adatum.com", "fabrikam.com"], timeout=3)


async def test_a_wrong_pool_secret_is_refused_on_both_sides_and_nothing_is_copied(tmp_path: Path) -> None:
    primary, member = pool_pair(tmp_path, secret="not-the-pool-secret")
    primary_events, member_events = Events(), Events()
    with Store.open(primary.state_dir) as store:
        ops.new_partner(store, OURS, Partner(domain="fabrikam.com"))
    async with running(primary, primary_events), running(member, member_events):
        refused = await primary_events.wait_for("EP8504")
        assert refused["direction"] == "from" and "wrong pool secret" in str(refused["reason"])
        told = await member_events.wait_for("EP8504")
        assert told["direction"] == "to" and "pool authentication failed" in str(told["reason"])
    assert partners(member) == []


async def test_mutual_tls_copies_the_store_and_refuses_a_certificate_of_another_ca(tmp_path: Path) -> None:
    primary, member = pool_pair(tmp_path, tls=True)
    primary_events = Events()
    with Store.open(primary.state_dir) as store:
        ops.new_partner(store, OURS, Partner(domain="fabrikam.com"))
    async with running(primary, primary_events):
        assert "mutual TLS" in str((await primary_events.wait_for("EP8501"))["security"])
        async with running(member, Events()):
            await until(lambda: partners(member) == ["fabrikam.com"], timeout=PROPAGATION_BOUND)
        # The same member with a certificate from an unrelated CA: refused by the TLS handshake.
        PrivateCa(tmp_path / "pki").write_leaf("member", MEMBER_HOST, rogue=True)
        rogue_events = Events()
        async with running(member, rogue_events):
            refused = await primary_events.wait_for("EP8504")
            assert "TLS handshake failed" in str(refused["reason"])
            await rogue_events.wait_for("EP8503")


async def raw_connection(config: EdgeConfig) -> trio.SocketStream:
    host, port = config.pool.listen.rsplit(":", 1)
    return await trio.open_tcp_stream(host, int(port))


async def test_a_malformed_or_oversized_frame_closes_that_connection_and_the_primary_goes_on(
    tmp_path: Path,
) -> None:
    primary, member = pool_pair(tmp_path)
    primary_events = Events()
    async with running(primary, primary_events):
        # Not MessagePack at all.
        stream = await raw_connection(primary)
        await stream.send_all(len(b"\xc1junk").to_bytes(LENGTH_BYTES, "big") + b"\xc1junk")
        assert await stream.receive_some(100) == b""  # closed by the primary
        malformed = await primary_events.wait_for("EP8505")
        assert "malformed frame" in str(malformed["reason"])
        # A length prefix above the limit: refused before anything of it is read.
        stream = await raw_connection(primary)
        await stream.send_all((MAX_HANDSHAKE_FRAME + 1).to_bytes(LENGTH_BYTES, "big"))
        assert await stream.receive_some(100) == b""
        await until(lambda: any("above the limit" in str(r.get("reason")) for r in primary_events.records()), 5)
        # A Fetch before any proof: out of turn.
        stream = await raw_connection(primary)
        await stream.send_all(protocol.encode(protocol.Fetch(have=-1, wait=1.0)))
        assert await stream.receive_some(100) == b""
        # The primary still serves a real member.
        with Store.open(primary.state_dir) as store:
            ops.new_partner(store, OURS, Partner(domain="fabrikam.com"))
        async with running(member, Events()):
            await until(lambda: partners(member) == ["fabrikam.com"], timeout=PROPAGATION_BOUND)


async def test_a_fake_primary_sending_an_oversized_snapshot_is_dropped_by_the_member(tmp_path: Path) -> None:
    """The member reads a frame above MAX_STORE_BYTES from its primary no further."""
    primary, member = pool_pair(tmp_path)
    secret = primary.pool.secret_path(primary).read_text().strip().encode()
    host, port = member.pool.primary.rsplit(":", 1)
    listeners = await trio.open_tcp_listeners(int(port), host=host)
    sent_prefix = trio.Event()

    async def fake_primary(stream: trio.SocketStream) -> None:
        link = protocol.FrameReader()
        frames: list[bytes] = []
        while len(frames) < 1:
            frames += link.feed(await stream.receive_some(4096))
        hello = protocol.decode(frames.pop())
        assert isinstance(hello, Hello)
        mine = Hello("primary", b"\x01" * NONCE_BYTES)
        await stream.send_all(protocol.encode(mine))
        while len(frames) < 1:
            frames += link.feed(await stream.receive_some(4096))
        await stream.send_all(protocol.encode(protocol.Proof(protocol.proof(secret, "primary", hello, mine))))
        while len(frames) < 2:
            frames += link.feed(await stream.receive_some(4096))
        await stream.send_all((protocol.MAX_STORE_BYTES + 1).to_bytes(LENGTH_BYTES, "big") + b"\x00" * 1024)
        sent_prefix.set()
        await trio.sleep_forever()

    member_events = Events()
    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, fake_primary, listeners)
        async with running(member, member_events):
            record = await member_events.wait_for("EP8505")
            assert "above the limit" in str(record["reason"]) and record["direction"] == "to"
            assert sent_prefix.is_set()
        nursery.cancel_scope.cancel()
    assert partners(member) == []


async def test_a_member_needs_the_pool_secret_from_its_primary(tmp_path: Path) -> None:
    _primary, member = pool_pair(tmp_path)
    member.pool.secret_path(member).unlink()
    with pytest.raises(ConfigError, match="copy it from the primary"):
        await run_pool(member, Events().telemetry)


async def test_a_standalone_or_primary_start_makes_a_former_replica_writable(tmp_path: Path) -> None:
    primary, _member = pool_pair(tmp_path)
    with Store.open(primary.state_dir) as store:
        store.join_pool("127.0.0.9:1")
    async with running(primary, Events()):
        with Store.open(primary.state_dir) as store:
            assert store.replica() is None


async def test_a_member_starts_at_once_with_a_current_copy_and_soon_with_a_silent_primary(
    tmp_path: Path,
) -> None:
    """``edgeproxy serve`` waits for the member's first attempt: it must not wait a long poll."""
    from edgeproxy.pool.member import FIRST_ATTEMPT_TIMEOUT, LONG_POLL

    primary, member = pool_pair(tmp_path)
    async with running(primary, Events()):
        async with running(member, Events()):
            pass  # the first copy
        start = time.monotonic()
        async with running(member, Events()):  # restarted, its copy current
            assert time.monotonic() - start < 1.0 < LONG_POLL
    # A primary that accepts and never answers: the start waits FIRST_ATTEMPT_TIMEOUT at most.
    host, port = member.pool.primary.rsplit(":", 1)
    listeners = await trio.open_tcp_listeners(int(port), host=host)
    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, lambda stream: trio.sleep_forever(), listeners)
        start = time.monotonic()
        events = Events()
        async with running(member, events):
            assert time.monotonic() - start < FIRST_ATTEMPT_TIMEOUT + 1.0
            assert partners(member) == []
            await events.wait_for("EP8503")
        nursery.cancel_scope.cancel()


async def test_idle_strangers_cannot_keep_a_member_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With every slot held by connections that never authenticate, a member still gets in: it
    evicts the oldest of them."""
    from edgeproxy.pool import primary as primary_module
    from edgeproxy.pool import service as service_module

    monkeypatch.setattr(service_module, "Admission", lambda: primary_module.Admission(3))
    primary, member = pool_pair(tmp_path)
    primary_events = Events()
    with Store.open(primary.state_dir) as store:
        ops.new_partner(store, OURS, Partner(domain="fabrikam.com"))
    async with running(primary, primary_events):
        strangers = [await raw_connection(primary) for _ in range(3)]
        await trio.sleep(0.1)
        async with running(member, Events()):
            await until(lambda: partners(member) == ["fabrikam.com"], timeout=PROPAGATION_BOUND)
        evicted = await primary_events.wait_for("EP8504")
        assert "closed before it authenticated: all 3 connections were taken" in str(evicted["reason"])
        assert await strangers[0].receive_some(100) == b""  # the oldest was closed
        for stream in strangers:
            await stream.aclose()


async def test_admission_refuses_only_when_every_slot_holds_an_authenticated_member() -> None:
    from edgeproxy.pool.primary import Admission

    admission = Admission(2)
    first, second, third = trio.CancelScope(), trio.CancelScope(), trio.CancelScope()
    assert admission.admit(first) and admission.admit(second)
    admission.authenticated(first)
    assert admission.admit(third)  # evicts the unauthenticated second
    assert second.cancel_called and not first.cancel_called and admission.open == 2
    admission.authenticated(third)
    assert not admission.admit(trio.CancelScope())
    admission.release(second)  # the evicted one ends: its slot was handed over already
    assert admission.open == 2
    admission.release(first)
    assert admission.open == 1 and admission.admit(trio.CancelScope())
