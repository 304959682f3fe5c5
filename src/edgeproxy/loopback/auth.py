"""The loopback channel's shared secret (issue 14): one file in the state dir, read by both roles.

``channel_secret_path(state_dir)`` is ``<state-dir>/channel.secret``; ``load_channel_secret``
creates it at first start (random, mode 0600 whatever the umask: :mod:`edgeproxy.secretfiles`)
and refuses one that others can read. How the secret is proven on the channel (an HMAC over
both sides' nonces in the Hello) is in ``endpoint.py``.
"""

from __future__ import annotations

from pathlib import Path

from edgeproxy.secretfiles import PRIVATE, ensure_secret

CHANNEL_SECRET_FILE = "channel.secret"


def channel_secret_path(state_dir: Path) -> Path:
    return state_dir / CHANNEL_SECRET_FILE


def load_channel_secret(state_dir: Path) -> bytes:
    """The channel secret, created at first use; raises ``SecretFileError`` / ``OSError``."""
    state_dir.mkdir(parents=True, exist_ok=True)
    return ensure_secret(channel_secret_path(state_dir), PRIVATE).encode("ascii")
