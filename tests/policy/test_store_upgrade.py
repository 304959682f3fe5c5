"""Opening a store of an older schema backs it up (SQLite backup API, 0600) before upgrading it,
and says where the backup is; a current or new store is never copied."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

from edgeproxy.policy import store as store_module
from edgeproxy.policy.store import MIGRATIONS, STORE_FILE, SchemaUpgrade, Store

OLD_USER = "sip:bob@contoso.test"


def make_schema_1_store(state_dir: Path) -> Path:
    """A store as edgeproxy wrote it at schema 1 (before the credentials table), with one user,
    built with a plain SQLite connection."""
    state_dir.mkdir(mode=0o750)
    path = state_dir / STORE_FILE
    path.touch(mode=0o600)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("BEGIN")
    conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    conn.execute("INSERT INTO schema_version (version) VALUES (1)")
    MIGRATIONS[0](conn)  # schema 1 exactly as its migration made it
    conn.execute("INSERT INTO users (sip, name, site, sba, policy) VALUES (?, 'Bob', '', 0, NULL)", (OLD_USER,))
    conn.execute("COMMIT")
    conn.close()
    return path


def tables(path: Path) -> set[str]:
    conn = sqlite3.connect(path)
    try:
        return {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    finally:
        conn.close()


def backups(state_dir: Path) -> list[Path]:
    return sorted(state_dir.glob(f"{STORE_FILE}.bak-*"))


def test_an_older_schema_is_backed_up_then_upgraded(tmp_path: Path) -> None:
    state = tmp_path / "state"
    make_schema_1_store(state)
    told: list[SchemaUpgrade] = []

    with Store.open(state, on_upgrade=told.append) as store:
        assert store.schema_version() == len(MIGRATIONS) == 3
        assert [u.sip for u in store.read()[1].users] == [OLD_USER]
        upgrade = store.upgrade

    [backup] = backups(state)
    assert told == [upgrade] and upgrade is not None
    assert (upgrade.from_version, upgrade.to_version, upgrade.backup) == (1, 3, backup)
    assert backup.name.startswith(f"{STORE_FILE}.bak-v1-")
    assert backup.stat().st_mode & 0o777 == 0o600
    assert str(backup) in upgrade.message() and "from schema 1 to 3" in upgrade.message()
    # The backup is the store as it was: schema 1, no credentials table, the user; one file.
    assert "credentials" not in tables(backup) and "credentials" in tables(state / STORE_FILE)
    conn = sqlite3.connect(backup)
    assert conn.execute("SELECT version FROM schema_version").fetchone() == (1,)
    assert conn.execute("SELECT sip FROM users").fetchall() == [(OLD_USER,)]
    assert conn.execute("PRAGMA journal_mode").fetchone() == ("delete",)
    conn.close()
    assert not Path(f"{backup}-wal").exists()


def test_a_current_store_and_a_new_store_are_not_copied(tmp_path: Path) -> None:
    told: list[SchemaUpgrade] = []
    with Store.open(tmp_path, on_upgrade=told.append) as store:  # new
        assert store.upgrade is None
    with Store.open(tmp_path, on_upgrade=told.append) as store:  # current
        assert store.upgrade is None
    assert told == [] and backups(tmp_path) == []


def test_a_second_opening_does_not_back_up_again(tmp_path: Path) -> None:
    state = tmp_path / "state"
    make_schema_1_store(state)
    Store.open(state, on_upgrade=lambda _u: None).close()
    Store.open(state, on_upgrade=lambda _u: None).close()
    assert len(backups(state)) == 1


def test_backups_made_in_the_same_second_get_distinct_names(tmp_path: Path) -> None:
    state = tmp_path / "state"
    path = make_schema_1_store(state)
    first = store_module.backup_store(path, 1, now=1_800_000_000)
    second = store_module.backup_store(path, 1, now=1_800_000_000)
    assert first != second and first.exists() and second.exists()
    assert first.name == f"{STORE_FILE}.bak-v1-20270115T080000Z"
    assert second.name == f"{first.name}-2"


def test_a_failed_backup_leaves_the_store_at_its_old_schema(tmp_path: Path, monkeypatch) -> None:
    state = tmp_path / "state"
    path = make_schema_1_store(state)

    def no_room(store: Path, version: int, **_kw: object) -> Path:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(store_module, "backup_store", no_room)
    try:
        Store.open(state)
    except OSError as exc:
        assert exc.errno == 28
    else:
        raise AssertionError("the store was upgraded without a backup")
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT version FROM schema_version").fetchone() == (1,)
    conn.close()


def test_a_command_says_where_the_backup_is(tmp_path: Path) -> None:
    state = tmp_path / "state"
    make_schema_1_store(state)
    config = tmp_path / "edgeproxy.toml"
    config.write_text('[edge]\ndomains = ["contoso.test"]\nstate-dir = "state"\n')
    done = subprocess.run(
        [sys.executable, "-m", "edgeproxy", "user", "get", "--json", "--config", str(config)],
        capture_output=True, text=True, timeout=60, env={**os.environ, "EDGEPROXY_CONFIG": ""},
    )
    assert done.returncode == 0, done.stderr
    [backup] = backups(state)
    assert done.stderr == (
        f"edgeproxy: store {state / STORE_FILE} upgraded from schema 1 to 3;"
        f" the store as it was is saved in {backup}\n"
    )
    assert OLD_USER in done.stdout
