"""What a member last heard from its primary, for ``edgeproxy pool status``:
``<state-dir>/pool-sync.json`` (the generation copied is in the store itself, with the content).

Kept out of the store on purpose: the member records every answer of the primary (one at least
every long poll) and a store commit would make every edge process reread its snapshot.
Written whole under a temporary name, then renamed (a reader sees the old or the new file).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final

import msgspec

SYNC_FILE: Final = "pool-sync.json"


class SyncState(msgspec.Struct, frozen=True, rename="kebab"):
    """The last contact with the primary: when it last answered (Unix time; None never), when a
    copy was last applied, and the last error (empty while the primary answers)."""

    primary: str
    last_answer: float | None = None
    last_applied: float | None = None
    error: str = ""
    error_since: float | None = None


def sync_state_path(state_dir: Path) -> Path:
    return state_dir / SYNC_FILE


def read_sync_state(state_dir: Path) -> SyncState | None:
    """The recorded state; None when there is none or it does not decode (it is only a report)."""
    try:
        return msgspec.json.decode(sync_state_path(state_dir).read_bytes(), type=SyncState)
    except (OSError, msgspec.DecodeError, msgspec.ValidationError):
        return None


def write_sync_state(state_dir: Path, state: SyncState) -> None:
    """Replace the recorded state (atomically; mode 0600 like the store beside it)."""
    path = sync_state_path(state_dir)
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, msgspec.json.encode(state))
    finally:
        os.close(fd)
    os.replace(temporary, path)
