"""Secrets at rest (issue 14): which files are secret, the mode each may have, the start check.

Theory of operation
-------------------
The state dir holds everything that lets someone act as this server: the store
(``policy.sqlite3`` with the dialback secret and the users' SIP digest hashes, and its ``-wal``
and ``-shm`` files, which hold recent pages of it), the admin token and the loopback channel
secret. :func:`secret_files` lists them with the widest mode each may have:

* the state dir ``0750`` (:data:`~edgeproxy.secretfiles.STATE_DIR`): the service account, and
  its group — the admin group — may enter it, because the admin token is the admin group's
  right (SPEC §10); others may not even list it. The systemd unit says the same
  (``StateDirectoryMode=0750``);
* the store and its ``-wal``/``-shm``, the channel secret ``0600``: the service account only;
* the admin token (``[admin] token-file``, by default in the state dir) ``0640``.

Stricter is always fine; any permission beyond these is an exposure. Each file is *created*
with its mode whatever the umask (``edgeproxy.secretfiles``, ``policy.store``,
``loopback.auth``, ``ops.admin``), so an exposure comes from outside: a copy or restore that
lost the modes, a hand-made state dir, a ``chmod``. :func:`refuse_exposed_secrets` is the start
check of ``edgeproxy serve`` (``app.run_app``): it creates a missing state dir ``0750``, then
emits ``EP8007 secret-exposed`` for every exposed file that exists — naming the file, its mode
and the ``chmod`` that fixes it — and raises the first as :class:`SecretFileError` (a
``ConfigError``: the command exits 1). A file not created yet is no exposure: it will be
created with its mode. ``edgeproxy check`` reports the same list as its ``secrets`` line.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgeproxy.config import EdgeConfig
from edgeproxy.ops import events
from edgeproxy.ops.admin import admin_token_path
from edgeproxy.ops.telemetry import Telemetry
from edgeproxy.policy.store import STORE_FILE
from edgeproxy.secretfiles import (
    GROUP_READABLE,
    PRIVATE,
    STATE_DIR,
    SecretFileError,
    channel_secret_path,
    ensure_private_dir,
    exposure,
)


@dataclass(frozen=True, slots=True)
class SecretFile:
    """One secret at rest: what it is (for the operator), where, the widest mode it may have."""

    what: str
    path: Path
    mode: int


def secret_files(config: EdgeConfig) -> list[SecretFile]:
    """Every secret at rest of this configuration, the state dir first."""
    state = config.state_dir
    store = state / STORE_FILE
    return [
        SecretFile("state dir", state, STATE_DIR),
        SecretFile("store", store, PRIVATE),
        SecretFile("store WAL", store.with_name(store.name + "-wal"), PRIVATE),
        SecretFile("store shared memory", store.with_name(store.name + "-shm"), PRIVATE),
        SecretFile("admin token", admin_token_path(config), GROUP_READABLE),
        SecretFile("channel secret", channel_secret_path(state), PRIVATE),
    ]


def exposed_secrets(config: EdgeConfig) -> list[tuple[SecretFile, SecretFileError]]:
    """The secret files that exist and grant more than their mode, with the error for each."""
    found = []
    for secret in secret_files(config):
        problem = exposure(secret.path, secret.mode)
        if problem is not None:
            found.append((secret, problem))
    return found


def refuse_exposed_secrets(config: EdgeConfig, telemetry: Telemetry) -> None:
    """The start check (see the module docstring): EP8007 per exposed file, then raise the first.

    Raises :class:`SecretFileError` (a ``ConfigError``) for an exposure, ``OSError`` when the
    state dir cannot be created or a file cannot be examined.
    """
    ensure_private_dir(config.state_dir)
    found = exposed_secrets(config)
    for secret, problem in found:
        telemetry.emit(events.SECRET_EXPOSED, what=secret.what, path=str(secret.path),
                       mode=f"{problem.mode:04o}", allowed=f"{problem.allowed:04o}", fix=problem.fix)
    if found:
        raise found[0][1]
