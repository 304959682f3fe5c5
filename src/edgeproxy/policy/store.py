"""The policy store: SQLite in WAL mode under the state directory (SPEC §2–§5, DESIGN principle 5).

Theory of operation
-------------------
* One file, ``<state-dir>/policy.sqlite3``, in WAL mode with ``synchronous=FULL``: a committed
  change survives a crash or SIGKILL of the writer; a crash loses at most the write in progress.
* Every write is one ``BEGIN IMMEDIATE`` transaction (``Store.write()``): the write lock is taken
  up front, so two admin commands never interleave read-modify-write cycles; the other waits
  (``busy_timeout``). Callers validate inside the transaction, against the state they will
  replace, and raise to refuse: the transaction is rolled back and the stored content is exactly
  what it was. Each committed write also bumps ``meta.generation``.
* Readers (``Store.read()``) take one read transaction, so a snapshot is never half of a change.
  A running server notices commits cheaply with ``PRAGMA data_version`` (see ``holder``).
* File modes (issue 14, secrets at rest): the state dir is created ``0750`` and the database
  file ``0600`` (``edgeproxy.secretfiles``) before SQLite opens it, whatever the umask; SQLite
  gives the ``-wal`` and ``-shm`` files it creates the database file's mode, so all three are
  readable by the service account only. An existing file's mode is left alone here:
  ``edgeproxy serve`` refuses to start with one that others can read (EP8007).
* ``schema_version`` records how many of ``MIGRATIONS`` have been applied; opening the store
  applies the missing ones in one write transaction. Migration 1 creates the tables, the gateway
  row (with a random dialback secret, SPEC §3) and the global policy (SPEC §5), which a trigger
  keeps from being deleted. Migration 2 (issue 14) adds ``credentials``: a user's SIP digest
  hashes (``SipCredential``), at most one per algorithm and realm, removed with the user; a
  store of schema 1 opens with every user's credentials empty.
* Before an upgrade (a store whose ``schema_version`` is below ``len(MIGRATIONS)``, not a new
  one) the store as it was is copied, with SQLite's online backup API, to
  ``<state-dir>/policy.sqlite3.bak-v<old version>-<UTC time>`` (``0600``, one self-contained file
  in rollback-journal mode): the copy is taken by a second connection while the first holds the
  write lock, so it is exactly the state the migrations start from, and two processes opening the
  old store at once upgrade (and back up) once. ``Store.upgrade`` then says what happened
  (``SchemaUpgrade``), and ``Store.open``'s ``on_upgrade`` is told; without one, a log record
  (WARNING) says where the copy is, which a command line prints as ``edgeproxy: …`` and
  ``edgeproxy serve`` writes as an event. To go back to the previous edgeproxy, stop every
  process using the store and copy the backup over ``policy.sqlite3`` (removing its ``-wal`` and
  ``-shm``).
* Edge pools (``docs/pool.md``): migration 3 adds ``replica``, one row on a pool *member*
  naming its primary and the primary's generation its content copies. While that row exists the
  store is a replica: ``Store.write()`` refuses (``ReplicaWriteRefused``, a ``ChangeRefused``
  naming the primary) any transaction that changes what the primary replicates — partners,
  gateway settings, policies, users and their credentials — and lets through one that changes
  only the per-member state, the users' contact and pending lists (each member's gateway records
  its own). The check compares the replicated content at the start and at the end of the
  transaction, so every writer (the command line, the Control Panel, the gateway) meets it
  without knowing about pools. The replicator's own write is ``Store.apply_replica``: one
  transaction replacing the replicated tables, keeping the contact and pending lists of the users
  that remain, and recording the primary's generation. ``Store.leave_pool()`` removes the row
  (a promoted member, or a host taken out of its pool).
* A store of a newer schema than this code knows is refused (``SchemaTooNew``): nothing in it is
  changed.
* Credentials are secrets: the store holds only the HA1 hashes, never a password; but an HA1
  is enough to answer a digest challenge as its user, so ``policy.sqlite3`` (which already held
  the dialback secret) must stay readable by the service account only.
"""

from __future__ import annotations

import logging
import secrets
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from msgspec.structs import replace

from edgeproxy.policy.model import (
    GATEWAY_INT_SETTINGS,
    GLOBAL_POLICY,
    AccessPolicy,
    Configuration,
    GatewaySettings,
    Negotiation,
    Partner,
    PartnerType,
    SipCredential,
    User,
)
from edgeproxy.policy.validation import ChangeRefused
from edgeproxy.secretfiles import PRIVATE, create_private_file, ensure_private_dir

STORE_FILE = "policy.sqlite3"
BUSY_TIMEOUT_MS = 30_000
#: How many backups of one schema version made within the same second may exist side by side
#: (``-2``, ``-3``, … after the first); beyond it the upgrade is refused rather than overwrite one.
MAX_BACKUP_NAME_TRIES = 100

log = logging.getLogger(__name__)

_SCHEMA_1 = """
CREATE TABLE meta (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    generation INTEGER NOT NULL
);
CREATE TABLE partners (
    domain TEXT PRIMARY KEY,
    description TEXT NOT NULL DEFAULT '',
    type TEXT NOT NULL CHECK (type IN ('federated', 'public-verified', 'public-unverified')),
    tls TEXT NOT NULL CHECK (tls IN ('required', 'optional', 'not-supported')),
    sasl TEXT NOT NULL CHECK (sasl IN ('required', 'optional', 'not-supported')),
    dialback INTEGER NOT NULL CHECK (dialback IN (0, 1)),
    keepalive INTEGER NOT NULL CHECK (keepalive IN (0, 1)),
    connection_limit INTEGER CHECK (connection_limit IS NULL OR connection_limit >= 1),
    proxy_fqdn TEXT
);
-- Every domain of every partner, the primary one included (position 0): the primary key makes
-- "a domain belongs to one partner only" hold in the file itself, not only in validation.
CREATE TABLE partner_domains (
    domain TEXT PRIMARY KEY,
    partner TEXT NOT NULL REFERENCES partners (domain) ON DELETE CASCADE,
    position INTEGER NOT NULL
);
CREATE INDEX partner_domains_by_partner ON partner_domains (partner, position);
CREATE TABLE gateway (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    connection_limit INTEGER NOT NULL CHECK (connection_limit >= 1),
    partner_connection_limit INTEGER NOT NULL CHECK (partner_connection_limit >= 1),
    keepalive_interval INTEGER NOT NULL CHECK (keepalive_interval >= 1),
    stream_establishment_timeout INTEGER NOT NULL CHECK (stream_establishment_timeout >= 1),
    stream_inactivity_timeout INTEGER NOT NULL CHECK (stream_inactivity_timeout >= 1),
    subscription_refresh_interval INTEGER NOT NULL CHECK (subscription_refresh_interval >= 1),
    dialback_secret TEXT NOT NULL,
    log_message_bodies INTEGER NOT NULL CHECK (log_message_bodies IN (0, 1))
);
CREATE TABLE policies (
    identity TEXT PRIMARY KEY,
    xmpp INTEGER NOT NULL CHECK (xmpp IN (0, 1)),
    federation INTEGER NOT NULL CHECK (federation IN (0, 1)),
    public_cloud INTEGER NOT NULL CHECK (public_cloud IN (0, 1)),
    description TEXT NOT NULL DEFAULT ''
);
CREATE TRIGGER global_policy_cannot_be_removed BEFORE DELETE ON policies
    WHEN OLD.identity = 'global'
    BEGIN SELECT RAISE(ABORT, 'the global policy cannot be removed'); END;
CREATE TABLE users (
    sip TEXT PRIMARY KEY,
    name TEXT NOT NULL DEFAULT '',
    site TEXT NOT NULL DEFAULT '',
    sba INTEGER NOT NULL CHECK (sba IN (0, 1)),
    policy TEXT REFERENCES policies (identity)
);
CREATE TABLE contacts (
    user TEXT NOT NULL REFERENCES users (sip) ON DELETE CASCADE,
    jid TEXT NOT NULL,
    PRIMARY KEY (user, jid)
);
CREATE TABLE pending (
    user TEXT NOT NULL REFERENCES users (sip) ON DELETE CASCADE,
    jid TEXT NOT NULL,
    PRIMARY KEY (user, jid)
);
"""


def _migration_1(conn: sqlite3.Connection) -> None:
    for statement in _SCHEMA_1.split(";\n"):
        if statement.strip():
            conn.execute(statement)
    conn.execute("INSERT INTO meta (id, generation) VALUES (1, 0)")
    defaults = GatewaySettings(dialback_secret=secrets.token_hex(32))
    _put_gateway(conn, defaults)
    _put_policy(conn, AccessPolicy(identity=GLOBAL_POLICY))


_SCHEMA_2 = """
CREATE TABLE credentials (
    user TEXT NOT NULL REFERENCES users (sip) ON DELETE CASCADE,
    algorithm TEXT NOT NULL CHECK (algorithm IN ('MD5', 'SHA-256')),
    realm TEXT NOT NULL,
    ha1 TEXT NOT NULL,
    PRIMARY KEY (user, algorithm, realm)
)
"""


def _migration_2(conn: sqlite3.Connection) -> None:
    """SIP digest credentials of the users (issue 14); existing users start without any."""
    conn.execute(_SCHEMA_2)


_SCHEMA_3 = """
CREATE TABLE replica (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    primary_address TEXT NOT NULL,
    primary_generation INTEGER
)
"""


def _migration_3(conn: sqlite3.Connection) -> None:
    """Edge pools: the row that makes a member's store a replica of its primary's (empty on a
    standalone edge or a primary)."""
    conn.execute(_SCHEMA_3)


#: Schema migrations, applied in order; ``schema_version`` counts the ones applied.
MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [_migration_1, _migration_2, _migration_3]


@dataclass(frozen=True, slots=True)
class Replica:
    """A pool member's store: the primary it copies (``HOST:PORT``) and the primary's
    generation its replicated content is (None until the first copy arrived)."""

    primary_address: str
    primary_generation: int | None


class ReplicaWriteRefused(ChangeRefused):
    """A change to the replicated configuration on a pool member: it is made on the primary."""

    def __init__(self, primary_address: str) -> None:
        self.primary_address = primary_address
        super().__init__(
            "refused: this edge is a member of an edge pool; change the configuration on the"
            f" primary ({primary_address})"
        )


def replicated_part(config: Configuration) -> Configuration:
    """What a primary replicates of ``config``: everything but the per-member state (the users'
    contact and pending lists, which each member keeps for itself)."""
    users = tuple(replace(u, contacts=(), pending=()) for u in config.users)
    return replace(config, users=users)


class SchemaTooNew(OSError):
    """The store was written by a newer edgeproxy (its schema version is above ours): it is not
    opened, and nothing in it is changed. An ``OSError``, like every store that cannot be opened."""

    def __init__(self, path: Path, version: int, known: int) -> None:
        self.path = path
        self.version = version
        self.known = known
        super().__init__(f"{path}: schema version {version} is newer than this edgeproxy ({known})")


@dataclass(frozen=True, slots=True)
class SchemaUpgrade:
    """An upgrade ``Store.open`` made: from which schema version to which, and where the copy of
    the store as it was before is (see the module docstring)."""

    path: Path
    from_version: int
    to_version: int
    backup: Path

    def message(self) -> str:
        """One sentence for the operator (the command-line and log text)."""
        return (
            f"store {self.path} upgraded from schema {self.from_version} to {self.to_version};"
            f" the store as it was is saved in {self.backup}"
        )


def _backup_path(store: Path, version: int, now: float) -> Path:
    """A new file next to ``store`` for its backup at schema ``version``, created empty ``0600``
    (a name another process took meanwhile is skipped; never overwritten)."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
    base = f"{store.name}.bak-v{version}-{stamp}"
    for attempt in range(1, MAX_BACKUP_NAME_TRIES + 1):
        candidate = store.with_name(base if attempt == 1 else f"{base}-{attempt}")
        if create_private_file(candidate, PRIVATE):
            return candidate
    raise OSError(f"{store}: cannot name a backup: {base} and {MAX_BACKUP_NAME_TRIES - 1} more exist")


def backup_store(store: Path, version: int, *, now: float | None = None) -> Path:
    """Copy the committed state of the store at ``store`` into a new ``0600`` file beside it
    (``<name>.bak-v<version>-<UTC time>``) with SQLite's online backup API; return its path.

    Reads through a connection of its own, so it may run while another connection holds the
    write lock (WAL: readers are not blocked) and then copies exactly what that writer is about
    to change. The copy is switched to rollback-journal mode: one self-contained file."""
    target = _backup_path(store, version, time.time() if now is None else now)
    try:
        source = sqlite3.connect(store, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
        try:
            copy = sqlite3.connect(target, isolation_level=None)
            try:
                source.backup(copy)
                copy.execute("PRAGMA journal_mode = DELETE")
            finally:
                copy.close()
        finally:
            source.close()
    except BaseException:
        target.unlink(missing_ok=True)
        raise
    return target


class Store:
    """The SQLite policy store. Use ``Store.open(state_dir)``; close it (or use ``with``).

    ``upgrade`` is the ``SchemaUpgrade`` this opening made (None when the schema was current or
    the store new); ``on_upgrade`` is called with it, else it is logged (module docstring).
    """

    def __init__(self, path: Path, *, on_upgrade: Callable[[SchemaUpgrade], None] | None = None) -> None:
        self.path = path
        self.upgrade: SchemaUpgrade | None = None
        # 0600 before SQLite creates it with 0644 & ~umask; -wal/-shm inherit this mode.
        create_private_file(path, PRIVATE)
        self._conn = sqlite3.connect(
            path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False
        )
        conn = self._conn
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":  # pragma: no cover - only on filesystems without WAL
            raise OSError(f"{path}: cannot switch the store to WAL mode (got {mode})")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA foreign_keys = ON")
        try:
            self._migrate()
        except BaseException:
            conn.close()
            raise
        if self.upgrade is not None:
            if on_upgrade is not None:
                on_upgrade(self.upgrade)
            else:
                log.warning("edgeproxy: %s", self.upgrade.message())

    @classmethod
    def open(
        cls, state_dir: Path | str, *, on_upgrade: Callable[[SchemaUpgrade], None] | None = None
    ) -> Store:
        """Open (creating the directory and the schema if needed) the store in ``state_dir``;
        an older schema is backed up, then upgraded (module docstring). Raises ``SchemaTooNew``
        for a store of a newer edgeproxy, ``sqlite3.Error``/``OSError`` for one that cannot be
        opened."""
        directory = Path(state_dir)
        ensure_private_dir(directory)  # 0750 whatever the umask; an existing one is left alone
        return cls(directory / STORE_FILE, on_upgrade=on_upgrade)

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- schema -------------------------------------------------------------------------------

    def _migrate(self) -> None:
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            has_table = conn.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"
            ).fetchone()
            if not has_table:
                conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
                conn.execute("INSERT INTO schema_version (version) VALUES (0)")
            version = conn.execute("SELECT version FROM schema_version").fetchone()[0]
            if version > len(MIGRATIONS):
                raise SchemaTooNew(self.path, version, len(MIGRATIONS))
            if version == len(MIGRATIONS):
                conn.execute("COMMIT")
                return
            backup = None
            if version > 0:  # an existing store, not a new one: keep it as it was first
                # We hold the write lock: no other process commits before the copy is taken.
                backup = backup_store(self.path, version)
            for migration in MIGRATIONS[version:]:
                migration(conn)
            conn.execute("UPDATE schema_version SET version = ?", (len(MIGRATIONS),))
            conn.execute("COMMIT")
            if backup is not None:
                self.upgrade = SchemaUpgrade(self.path, version, len(MIGRATIONS), backup)
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def schema_version(self) -> int:
        return int(self._conn.execute("SELECT version FROM schema_version").fetchone()[0])

    # -- reading ------------------------------------------------------------------------------

    def generation(self) -> int:
        """The count of committed writes (persistent; bumps once per write transaction)."""
        return int(self._conn.execute("SELECT generation FROM meta").fetchone()[0])

    def data_version(self) -> int:
        """``PRAGMA data_version``: changes when another connection commits (cheap to poll)."""
        return int(self._conn.execute("PRAGMA data_version").fetchone()[0])

    def read(self) -> tuple[int, Configuration]:
        """The generation and the whole configuration, from one consistent read transaction."""
        conn = self._conn
        conn.execute("BEGIN")
        try:
            generation = int(conn.execute("SELECT generation FROM meta").fetchone()[0])
            config = _read_configuration(conn)
        finally:
            conn.execute("COMMIT")
        return generation, config

    def replica(self) -> Replica | None:
        """The primary this store is a replica of, or None (a standalone edge or a primary)."""
        return _read_replica(self._conn)

    def integrity_check(self) -> str:
        return str(self._conn.execute("PRAGMA integrity_check").fetchone()[0])

    # -- writing ------------------------------------------------------------------------------

    @contextmanager
    def write(self) -> Iterator[WriteTransaction]:
        """One ``BEGIN IMMEDIATE`` transaction: committed if the block ends, else rolled back.

        On a replica (a pool member) a transaction that changed the replicated content is
        refused at its end with ``ReplicaWriteRefused`` (module docstring)."""
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            replica = _read_replica(conn)
            before = _replicated_content(conn) if replica is not None else None
            yield WriteTransaction(conn)
            if replica is not None and _replicated_content(conn) != before:
                raise ReplicaWriteRefused(replica.primary_address)
            conn.execute("UPDATE meta SET generation = generation + 1")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def join_pool(self, primary_address: str) -> Replica:
        """Make this store a replica of the primary at ``primary_address`` (a member's start).
        A store that copied another primary forgets that primary's generation, so the first
        copy from the new one is taken whatever its number. Returns the replica state."""
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            current = _read_replica(conn)
            if current is None or current.primary_address != primary_address:
                conn.execute(
                    "INSERT OR REPLACE INTO replica (id, primary_address, primary_generation) "
                    "VALUES (1, ?, NULL)",
                    (primary_address,),
                )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        state = _read_replica(conn)
        assert state is not None
        return state

    def leave_pool(self) -> bool:
        """Make this store writable again (a promoted member, a host out of its pool); True when
        it was a replica."""
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            removed = conn.execute("DELETE FROM replica").rowcount > 0
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return removed

    def apply_replica(self, primary_generation: int, config: Configuration) -> None:
        """Replace the replicated content with the primary's ``config`` at ``primary_generation``,
        in one transaction: the contact and pending lists of the users that remain are kept (per
        member); the generation copied is recorded. Only on a replica (``join_pool``); a row
        the store's constraints refuse raises ``sqlite3.Error`` and nothing changes."""
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            if _read_replica(conn) is None:
                raise ChangeRefused("refused: this store is not a pool member's replica")
            kept = {t: conn.execute(f"SELECT user, jid FROM {t}").fetchall() for t in _MEMBER_TABLES}
            WriteTransaction(conn).replace_all(replicated_part(config))
            for table, rows in kept.items():
                conn.executemany(
                    f"INSERT OR IGNORE INTO {table} (user, jid) "
                    "SELECT ?, ? WHERE EXISTS (SELECT 1 FROM users WHERE sip = ?)",
                    [(user, jid, user) for user, jid in rows],
                )
            conn.execute("UPDATE replica SET primary_generation = ?", (primary_generation,))
            conn.execute("UPDATE meta SET generation = generation + 1")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise


class WriteTransaction:
    """Read and write access to the store inside one write transaction."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def configuration(self) -> Configuration:
        return _read_configuration(self._conn)

    def partners(self) -> list[Partner]:
        return _read_partners(self._conn)

    def partner(self, domain: str) -> Partner | None:
        return next((p for p in _read_partners(self._conn, domain) if p.domain == domain), None)

    def put_partner(self, partner: Partner) -> None:
        _put_partner(self._conn, partner)

    def remove_partner(self, domain: str) -> bool:
        return self._conn.execute("DELETE FROM partners WHERE domain = ?", (domain,)).rowcount > 0

    def gateway(self) -> GatewaySettings:
        return _read_gateway(self._conn)

    def put_gateway(self, settings: GatewaySettings) -> None:
        _put_gateway(self._conn, settings)

    def policies(self) -> list[AccessPolicy]:
        return _read_policies(self._conn)

    def policy(self, identity: str) -> AccessPolicy | None:
        return next((p for p in _read_policies(self._conn) if p.identity == identity), None)

    def put_policy(self, policy: AccessPolicy) -> None:
        _put_policy(self._conn, policy)

    def remove_policy(self, identity: str) -> bool:
        return (
            self._conn.execute("DELETE FROM policies WHERE identity = ?", (identity,)).rowcount > 0
        )

    def users_granted(self, identity: str) -> list[str]:
        rows = self._conn.execute(
            "SELECT sip FROM users WHERE policy = ? ORDER BY sip", (identity,)
        )
        return [r[0] for r in rows]

    def user(self, sip: str) -> User | None:
        users = _read_users(self._conn, sip)
        return users[0] if users else None

    def put_user(self, user: User) -> None:
        _put_user(self._conn, user)

    def remove_user(self, sip: str) -> bool:
        return self._conn.execute("DELETE FROM users WHERE sip = ?", (sip,)).rowcount > 0

    def replace_all(self, config: Configuration) -> None:
        """Replace the whole configuration (``config import``)."""
        conn = self._conn
        for table in ("credentials", "pending", "contacts", "users", "partner_domains", "partners"):
            conn.execute(f"DELETE FROM {table}")
        conn.execute("DELETE FROM policies WHERE identity <> ?", (GLOBAL_POLICY,))
        _put_gateway(conn, config.gateway)
        for policy in config.policies:
            _put_policy(conn, policy)
        for partner in config.partners:
            _put_partner(conn, partner)
        for user in config.users:
            _put_user(conn, user)


# -- row mapping (module-private) -------------------------------------------------------------

#: The per-member tables of a pool: kept by ``apply_replica``, writable on a replica.
_MEMBER_TABLES = ("contacts", "pending")


def _read_replica(conn: sqlite3.Connection) -> Replica | None:
    """The replica row; None without one, or in a store opened at an older schema (a test's)."""
    try:
        row = conn.execute("SELECT primary_address, primary_generation FROM replica").fetchone()
    except sqlite3.OperationalError:  # no such table: schema below 3
        return None
    return None if row is None else Replica(row[0], row[1])


def _replicated_content(conn: sqlite3.Connection) -> Configuration:
    return replicated_part(_read_configuration(conn))


def _read_configuration(conn: sqlite3.Connection) -> Configuration:
    return Configuration(
        gateway=_read_gateway(conn),
        partners=tuple(_read_partners(conn)),
        policies=tuple(_read_policies(conn)),
        users=tuple(_read_users(conn)),
    )


def _read_partners(conn: sqlite3.Connection, only: str | None = None) -> list[Partner]:
    where, params = ("WHERE domain = ?", (only,)) if only is not None else ("", ())
    extra: dict[str, list[str]] = {}
    domain_where = (
        "WHERE partner = ? AND position > 0" if only is not None else "WHERE position > 0"
    )
    for partner, domain in conn.execute(
        f"SELECT partner, domain FROM partner_domains {domain_where} ORDER BY partner, position",
        params,
    ):
        extra.setdefault(partner, []).append(domain)
    rows = conn.execute(
        "SELECT domain, description, type, tls, sasl, dialback, keepalive, connection_limit, "
        f"proxy_fqdn FROM partners {where} ORDER BY domain",
        params,
    )
    return [
        Partner(
            domain=d,
            description=desc,
            additional_domains=tuple(extra.get(d, ())),
            type=PartnerType(kind),
            tls=Negotiation(tls),
            sasl=Negotiation(sasl),
            dialback=bool(db),
            keepalive=bool(ka),
            connection_limit=limit,
            proxy_fqdn=proxy,
        )
        for d, desc, kind, tls, sasl, db, ka, limit, proxy in rows
    ]


def _put_partner(conn: sqlite3.Connection, p: Partner) -> None:
    conn.execute("DELETE FROM partner_domains WHERE partner = ?", (p.domain,))
    conn.execute(
        "INSERT INTO partners (domain, description, type, tls, sasl, dialback, keepalive, "
        "connection_limit, proxy_fqdn) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
        "ON CONFLICT (domain) DO UPDATE SET description = excluded.description, "
        "type = excluded.type, tls = excluded.tls, sasl = excluded.sasl, "
        "dialback = excluded.dialback, keepalive = excluded.keepalive, "
        "connection_limit = excluded.connection_limit, proxy_fqdn = excluded.proxy_fqdn",
        (
            p.domain,
            p.description,
            p.type.value,
            p.tls.value,
            p.sasl.value,
            int(p.dialback),
            int(p.keepalive),
            p.connection_limit,
            p.proxy_fqdn,
        ),
    )
    conn.executemany(
        "INSERT INTO partner_domains (domain, partner, position) VALUES (?, ?, ?)",
        [(d, p.domain, i) for i, d in enumerate(p.domains)],
    )


_GATEWAY_COLUMNS = (*GATEWAY_INT_SETTINGS, "dialback_secret", "log_message_bodies")


def _read_gateway(conn: sqlite3.Connection) -> GatewaySettings:
    row = conn.execute(f"SELECT {', '.join(_GATEWAY_COLUMNS)} FROM gateway WHERE id = 1").fetchone()
    values = dict(zip(_GATEWAY_COLUMNS, row, strict=True))
    values["log_message_bodies"] = bool(values["log_message_bodies"])
    return GatewaySettings(**values)


def _put_gateway(conn: sqlite3.Connection, g: GatewaySettings) -> None:
    values = [getattr(g, c) for c in _GATEWAY_COLUMNS]
    values[-1] = int(values[-1])
    conn.execute(
        f"INSERT OR REPLACE INTO gateway (id, {', '.join(_GATEWAY_COLUMNS)}) "
        f"VALUES (1, {', '.join('?' * len(_GATEWAY_COLUMNS))})",
        values,
    )


def _read_policies(conn: sqlite3.Connection) -> list[AccessPolicy]:
    rows = conn.execute(
        "SELECT identity, xmpp, federation, public_cloud, description FROM policies "
        "ORDER BY identity <> 'global', identity"
    )
    return [
        AccessPolicy(
            identity=i, xmpp=bool(x), federation=bool(f), public_cloud=bool(c), description=d
        )
        for i, x, f, c, d in rows
    ]


def _put_policy(conn: sqlite3.Connection, p: AccessPolicy) -> None:
    conn.execute(
        "INSERT INTO policies (identity, xmpp, federation, public_cloud, description) "
        "VALUES (?, ?, ?, ?, ?) ON CONFLICT (identity) DO UPDATE SET xmpp = excluded.xmpp, "
        "federation = excluded.federation, public_cloud = excluded.public_cloud, "
        "description = excluded.description",
        (p.identity, int(p.xmpp), int(p.federation), int(p.public_cloud), p.description),
    )


def _read_users(conn: sqlite3.Connection, only: str | None = None) -> list[User]:
    # One row per user: contact and pending lists come back joined (JIDs cannot contain U+001F),
    # which keeps a 10,000-user read well inside the snapshot rebuild budget.
    where, params = ("WHERE u.sip = ?", (only,)) if only is not None else ("", ())
    credentials: dict[str, list[SipCredential]] = {}
    for sip, algorithm, realm, ha1 in conn.execute(
        "SELECT user, algorithm, realm, ha1 FROM credentials "
        f"{'WHERE user = ?' if only is not None else ''} ORDER BY user, realm, algorithm",
        params,
    ):
        credentials.setdefault(sip, []).append(
            SipCredential(algorithm=algorithm, realm=realm, ha1=ha1)
        )
    rows = conn.execute(
        "SELECT u.sip, u.name, u.site, u.sba, u.policy, "
        "(SELECT group_concat(jid, char(31)) FROM contacts WHERE user = u.sip), "
        "(SELECT group_concat(jid, char(31)) FROM pending WHERE user = u.sip) "
        f"FROM users AS u {where} ORDER BY u.sip",
        params,
    )
    return [
        User(
            sip=sip,
            name=name,
            site=site,
            sba=bool(sba),
            policy=policy,
            contacts=tuple(sorted(contacts.split("\x1f"))) if contacts else (),
            pending=tuple(sorted(pending.split("\x1f"))) if pending else (),
            credentials=tuple(credentials.get(sip, ())),
        )
        for sip, name, site, sba, policy, contacts, pending in rows
    ]


def _put_user(conn: sqlite3.Connection, u: User) -> None:
    conn.execute(
        "INSERT INTO users (sip, name, site, sba, policy) VALUES (?, ?, ?, ?, ?) "
        "ON CONFLICT (sip) DO UPDATE SET name = excluded.name, site = excluded.site, "
        "sba = excluded.sba, policy = excluded.policy",
        (u.sip, u.name, u.site, int(u.sba), u.policy),
    )
    for table, jids in (("contacts", u.contacts), ("pending", u.pending)):
        conn.execute(f"DELETE FROM {table} WHERE user = ?", (u.sip,))
        conn.executemany(
            f"INSERT INTO {table} (user, jid) VALUES (?, ?)", [(u.sip, j) for j in jids]
        )
    conn.execute("DELETE FROM credentials WHERE user = ?", (u.sip,))
    conn.executemany(
        "INSERT INTO credentials (user, algorithm, realm, ha1) VALUES (?, ?, ?, ?)",
        [(u.sip, c.algorithm, c.realm, c.ha1) for c in u.credentials],
    )
