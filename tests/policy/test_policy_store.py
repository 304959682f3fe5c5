"""The SQLite store: WAL, durability settings, migrations, refused changes, crash safety."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _policy_helpers import run_cli_subprocess

from edgeproxy.policy import operations as ops
from edgeproxy.policy.model import AccessPolicy, GatewaySettings, Partner, User
from edgeproxy.policy.store import MIGRATIONS, STORE_FILE, Store
from edgeproxy.policy.validation import ChangeRefused

HELPER = Path(__file__).with_name("_store_writer.py")
OURS = ("contoso.test",)


def dump(path: Path) -> list[str]:
    """The store's content, statement by statement, read through a separate connection."""
    conn = sqlite3.connect(path)
    try:
        return list(conn.iterdump())
    finally:
        conn.close()


def test_store_is_created_in_wal_mode_with_full_sync_and_a_busy_timeout(tmp_path):
    state = tmp_path / "new" / "state"
    with Store.open(state) as store:
        conn = store._conn
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert conn.execute("PRAGMA busy_timeout").fetchone()[0] >= 5000
        assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        assert store.schema_version() == len(MIGRATIONS)
    other = sqlite3.connect(state / STORE_FILE)
    assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"  # persistent
    other.close()


def test_new_store_has_spec_defaults_global_policy_and_a_random_secret(tmp_path):
    with Store.open(tmp_path / "a") as a, Store.open(tmp_path / "b") as b:
        _, config_a = a.read()
        _, config_b = b.read()
    g = config_a.gateway
    assert (g.connection_limit, g.partner_connection_limit, g.keepalive_interval) == (1000, 20, 300)
    assert (g.stream_establishment_timeout, g.stream_inactivity_timeout) == (60, 600)
    assert (g.subscription_refresh_interval, g.log_message_bodies) == (28800, False)
    assert len(g.dialback_secret) >= 32
    assert g.dialback_secret != config_b.gateway.dialback_secret
    assert config_a.policies == (AccessPolicy("global"),)
    assert config_a.partners == () and config_a.users == ()


def test_reopening_keeps_the_schema_and_the_secret(tmp_path):
    with Store.open(tmp_path) as store:
        _, first = store.read()
        ops.new_partner(store, OURS, Partner("fabrikam.com"))
    with Store.open(tmp_path) as store:
        _, second = store.read()
        assert store.schema_version() == len(MIGRATIONS)
    assert second.gateway.dialback_secret == first.gateway.dialback_secret
    assert [p.domain for p in second.partners] == ["fabrikam.com"]


def test_store_from_a_newer_edgeproxy_is_not_opened(tmp_path):
    Store.open(tmp_path).close()
    conn = sqlite3.connect(tmp_path / STORE_FILE)
    conn.execute("UPDATE schema_version SET version = 99")
    conn.commit()
    conn.close()
    with pytest.raises(OSError, match="newer"):
        Store.open(tmp_path)


REFUSED_CHANGES = [
    (
        "domain of another partner",
        lambda s: ops.new_partner(
            s, OURS, Partner("other.example", additional_domains=("CORP.fabrikam.com",))
        ),
    ),
    ("primary domain exists", lambda s: ops.new_partner(s, OURS, Partner("Fabrikam.com"))),
    (
        "refused matrix row",
        lambda s: ops.set_partner(
            s,
            OURS,
            "fabrikam.com",
            lambda p: Partner(p.domain, tls="not-supported", dialback=False),
        ),
    ),
    ("our own domain", lambda s: ops.new_partner(s, OURS, Partner("contoso.test"))),
    ("remove global policy", lambda s: ops.remove_policy(s, "global")),
    ("granted policy", lambda s: ops.remove_policy(s, "gold")),
    ("unknown policy granted", lambda s: ops.grant_policy(s, OURS, "alice@contoso.test", "nope")),
    ("user outside our domains", lambda s: ops.new_user(s, OURS, User("sip:eve@evil.example"))),
    (
        "short secret",
        lambda s: ops.set_gateway(s, lambda g: GatewaySettings(dialback_secret="short")),
    ),
    (
        "zero limit",
        lambda s: ops.set_gateway(
            s, lambda g: GatewaySettings(dialback_secret=g.dialback_secret, connection_limit=0)
        ),
    ),
]


@pytest.mark.parametrize(("case", "change"), REFUSED_CHANGES, ids=[c[0] for c in REFUSED_CHANGES])
def test_refused_change_leaves_the_stored_content_exactly_as_it_was(tmp_path, case, change):
    with Store.open(tmp_path) as store:
        ops.new_partner(
            store, OURS, Partner("fabrikam.com", additional_domains=("corp.fabrikam.com",))
        )
        ops.new_policy(store, AccessPolicy("gold", xmpp=True))
        ops.new_user(store, OURS, User("sip:alice@contoso.test", policy="gold"))
        before, generation = dump(store.path), store.generation()
        with pytest.raises(ChangeRefused, match="^refused: "):
            change(store)
        assert dump(store.path) == before
        assert store.generation() == generation


def test_global_policy_cannot_be_deleted_even_by_hand(tmp_path):
    Store.open(tmp_path).close()
    conn = sqlite3.connect(tmp_path / STORE_FILE)
    with pytest.raises(sqlite3.IntegrityError, match="global policy"):
        conn.execute("DELETE FROM policies WHERE identity = 'global'")
    conn.close()


def test_each_committed_write_bumps_the_generation(tmp_path):
    with Store.open(tmp_path) as store:
        g0 = store.generation()
        ops.new_partner(store, OURS, Partner("fabrikam.com"))
        ops.set_partner(store, OURS, "fabrikam.com", lambda p: p)
        assert store.generation() == g0 + 2


def _spawn(config_path: Path, mode: str, prefix: str, count: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(HELPER), str(config_path), mode, prefix, str(count)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_two_cli_processes_writing_at_once_lose_nothing(config_path, state_dir):
    writers = [_spawn(config_path, "cli", prefix, 25) for prefix in ("left", "right")]
    for w in writers:
        out, err = w.communicate(timeout=120)
        assert w.returncode == 0, err
        assert [x for x in out.split() if x.isdigit()] == [str(i) for i in range(25)]
    # And two real `edgeproxy` commands started together.
    both = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "edgeproxy",
                "partner",
                "new",
                domain,
                "--config",
                str(config_path),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for domain in ("one.example", "two.example")
    ]
    for p in both:
        p.communicate(timeout=60)
        assert p.returncode == 0
    with Store.open(state_dir) as store:
        assert store.integrity_check() == "ok"
        _, config = store.read()
    sips = {u.sip for u in config.users}
    assert sips == {f"sip:{side}{i}@contoso.test" for side in ("left", "right") for i in range(25)}
    assert {p.domain for p in config.partners} == {"one.example", "two.example"}


def test_sigkill_during_writes_leaves_an_intact_store_with_every_committed_change(
    config_path, state_dir
):
    run_cli_subprocess(config_path, "partner", "new", "fabrikam.com")  # creates the store
    writer = _spawn(config_path, "bulk", "w", 100_000)
    committed: list[int] = []
    assert writer.stdout is not None
    deadline = time.monotonic() + 60
    while len(committed) < 25 and time.monotonic() < deadline:
        line = writer.stdout.readline()
        if not line:
            break
        committed.append(int(line))
    time.sleep(0.013)  # land somewhere inside a later transaction
    os.kill(writer.pid, signal.SIGKILL)
    rest, _ = writer.communicate(timeout=30)
    committed += [int(x) for x in rest.split()]
    assert writer.returncode == -signal.SIGKILL
    assert len(committed) >= 25

    with Store.open(state_dir) as store:
        assert store.integrity_check() == "ok"
        _, config = store.read()
    users = {u.sip: u for u in config.users}
    for i in committed:  # every write reported as committed survived
        assert len(users[f"sip:w{i}@contoso.test"].contacts) == 200
    for user in users.values():  # the write in progress is all or nothing
        assert len(user.contacts) == 200
    assert [p.domain for p in config.partners] == ["fabrikam.com"]
    assert len(users) <= len(committed) + 1


def test_a_new_migration_is_applied_once_on_the_next_open(tmp_path, monkeypatch):
    from edgeproxy.policy import store as store_module

    Store.open(tmp_path).close()
    calls = []

    def migration_2(conn):
        calls.append(1)
        conn.execute("CREATE TABLE added_later (x INTEGER)")

    monkeypatch.setattr(store_module, "MIGRATIONS", [*MIGRATIONS, migration_2])
    with Store.open(tmp_path) as store:
        assert store.schema_version() == len(MIGRATIONS) + 1
    with Store.open(tmp_path) as store:
        assert store.schema_version() == len(MIGRATIONS) + 1
        _, config = store.read()
    assert calls == [1]
    assert config.policies[0].identity == "global"  # earlier data untouched


def test_commands_find_the_configuration_through_the_environment(config_path, monkeypatch, capsys):
    from edgeproxy.cli import main

    monkeypatch.setenv("EDGEPROXY_CONFIG", str(config_path))
    assert main(["partner", "new", "env.example"]) == 0
    assert (config_path.parent / "state" / STORE_FILE).exists()
