"""Secret files at rest: created with the right mode whatever the umask, refused when others can read.

Theory of operation
-------------------
A secret (the loopback channel's shared secret, the admin token) lives in one file of a few
random bytes, text, one line. :func:`ensure_secret` creates it atomically — written whole under
a temporary name with ``mode`` set by ``fchmod`` (the umask cannot widen or narrow it, nor can a
default ACL or the mode of the directory it is in), then put in place with ``link()``, which
fails if the name exists, so two processes starting together agree on one complete secret — and
returns its content; when the file exists it is read, and :func:`check_private` refuses it
if its mode lets anyone beyond ``mode`` read it (:class:`SecretFileError` names the file, its
mode and the fix). :func:`create_private_file` does the same for a file another library fills
in (the SQLite store: SQLite gives its ``-wal`` and ``-shm`` files the mode of the database
file, so creating that one ``PRIVATE`` first makes all three private).

The directories: the state dir holds the store and the secrets, so it is created
:data:`STATE_DIR` (``0750``: the service account, and its group — the admin group, which reads
the ``0640`` admin token — may enter; others nothing) by :func:`ensure_private_dir`. A mode
stricter than the one asked for (``0700``, ``0400``) is always accepted: only extra
permissions are refused. Pure file-system code; no trio.
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

from edgeproxy.errors import ConfigError

#: Owner read/write only: the store (and its -wal/-shm), the channel secret.
PRIVATE = 0o600
#: Owner read/write, group read: the admin token (the admin group's right, docs/spec.md §10.4).
GROUP_READABLE = 0o640
#: The state dir: owner everything, group enter and list (to read the admin token), others nothing.
STATE_DIR = 0o750

#: The loopback channel's shared secret, in the state dir (``loopback.auth`` proves it).
CHANNEL_SECRET_FILE = "channel.secret"


def channel_secret_path(state_dir: Path) -> Path:
    return state_dir / CHANNEL_SECRET_FILE


class SecretFileError(ConfigError):
    """A secret file (or the directory holding it) is readable by more than it should be.

    A :class:`ConfigError`: the operator fixes it (the message says how) and the command that
    met it exits 1 with the message. ``path``, ``mode`` (the file's) and ``allowed`` say what
    was found; ``fix`` is the command that repairs it.
    """

    def __init__(self, path: Path, mode: int, allowed: int) -> None:
        self.path = path
        self.mode = mode
        self.allowed = allowed
        self.fix = f"chmod {allowed:04o} {path}"
        super().__init__(
            f"{path} has mode {mode:04o}: it must not grant more than {allowed:04o} (fix: {self.fix})"
        )


def exposure(path: Path, mode: int = PRIVATE) -> SecretFileError | None:
    """The problem with ``path`` if it grants any permission ``mode`` does not; None if it
    does not or does not exist (other ``OSError`` exceptions propagate)."""
    try:
        actual = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        return None
    if actual & ~mode:
        return SecretFileError(path, actual, mode)
    return None


def check_private(path: Path, mode: int = PRIVATE) -> None:
    """Raise :class:`SecretFileError` if ``path`` grants any permission ``mode`` does not."""
    actual = stat.S_IMODE(path.stat().st_mode)
    if actual & ~mode:
        raise SecretFileError(path, actual, mode)


def ensure_private_dir(path: Path, mode: int = STATE_DIR) -> bool:
    """Create the directory ``path`` (and missing parents, with default modes) with exactly
    ``mode``, whatever the umask; an existing one is left as it is (the start check judges it).
    True when this call created it."""
    try:
        path.mkdir(mode=mode, parents=True)
    except FileExistsError:
        return False
    os.chmod(path, mode)  # whatever the umask or a default ACL
    return True


def create_private_file(path: Path, mode: int = PRIVATE) -> bool:
    """Create ``path`` empty with exactly ``mode`` unless it exists; True when this call created it."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        return False
    try:
        os.fchmod(fd, mode)  # whatever the umask
    finally:
        os.close(fd)
    return True


def ensure_secret(path: Path, mode: int = PRIVATE, nbytes: int = 32) -> str:
    """The secret in ``path``, creating it (random, ``mode``) when it does not exist yet.

    Raises :class:`SecretFileError` for an existing file readable beyond ``mode``, ``OSError``
    when it cannot be read or created, ``ValueError`` when it is empty.
    """
    if not path.exists():
        value = secrets.token_urlsafe(nbytes)
        # Written whole under a private temporary name, then linked into place: link() fails if
        # the name exists, so of two starters one wins and the other reads a complete secret.
        temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        try:
            try:
                os.fchmod(fd, mode)  # whatever the umask
                os.write(fd, (value + "\n").encode("ascii"))
                os.fsync(fd)
            finally:
                os.close(fd)
            os.link(temporary, path)
            return value
        except FileExistsError:
            pass  # another starter won: read theirs
        finally:
            temporary.unlink(missing_ok=True)
    check_private(path, mode)
    return read_secret(path)


def read_secret(path: Path) -> str:
    """The first line of ``path``, stripped; ``ValueError`` when empty."""
    value = path.read_text(encoding="utf-8").strip().splitlines()
    if not value or not value[0].strip():
        raise ValueError(f"{path} is empty")
    return value[0].strip()
