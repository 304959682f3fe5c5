"""Secret files at rest: created with the right mode whatever the umask, refused when others can read.

Theory of operation
-------------------
A secret (the loopback channel's shared secret, the admin token) lives in one file of a few
random bytes, text, one line. :func:`ensure_secret` creates it atomically (``O_CREAT | O_EXCL``,
so two processes starting together agree on one secret) with ``mode`` set by ``fchmod`` — the
umask cannot widen or narrow it — and returns its content; when the file exists it is read, and
:func:`check_private` refuses it if its mode lets anyone beyond ``mode`` read it
(:class:`SecretFileError` names the file, its mode and the fix). Pure file-system code; no trio.
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

#: Owner read/write only: the store, the channel secret.
PRIVATE = 0o600
#: Owner read/write, group read: the admin token (the admin group's right, SPEC §10).
GROUP_READABLE = 0o640


class SecretFileError(Exception):
    """A secret file (or the directory holding it) is readable by more than it should be."""


def check_private(path: Path, mode: int = PRIVATE) -> None:
    """Raise :class:`SecretFileError` if ``path`` grants any permission ``mode`` does not."""
    actual = stat.S_IMODE(path.stat().st_mode)
    extra = actual & ~mode
    if extra:
        raise SecretFileError(
            f"{path} has mode {actual:04o}: it must not grant more than {mode:04o}"
            f" (fix: chmod {mode:04o} {path})"
        )


def ensure_secret(path: Path, mode: int = PRIVATE, nbytes: int = 32) -> str:
    """The secret in ``path``, creating it (random, ``mode``) when it does not exist yet.

    Raises :class:`SecretFileError` for an existing file readable beyond ``mode``, ``OSError``
    when it cannot be read or created, ``ValueError`` when it is empty.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        check_private(path, mode)
        return read_secret(path)
    try:
        os.fchmod(fd, mode)  # whatever the umask
        value = secrets.token_urlsafe(nbytes)
        os.write(fd, (value + "\n").encode("ascii"))
    finally:
        os.close(fd)
    return value


def read_secret(path: Path) -> str:
    """The first line of ``path``, stripped; ``ValueError`` when empty."""
    value = path.read_text(encoding="utf-8").strip().splitlines()
    if not value or not value[0].strip():
        raise ValueError(f"{path} is empty")
    return value[0].strip()
