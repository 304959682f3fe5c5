"""The pool secret: one file, the same on every host of the pool (``[pool] secret-file``, default
``<state-dir>/pool.secret``, mode 0600).

The primary creates it at its first start (or ``edgeproxy pool secret`` does); the operator copies
it to each member. A member never creates one: a secret of its own could never match, so a
missing file is a configuration error that says where the secret comes from.
"""

from __future__ import annotations

from edgeproxy.config import EdgeConfig
from edgeproxy.errors import ConfigError
from edgeproxy.secretfiles import (
    PRIVATE,
    check_private,
    ensure_private_dir,
    ensure_secret,
    read_secret,
)


def load_pool_secret(config: EdgeConfig, *, create: bool) -> bytes:
    """The pool secret as bytes; created (random, 0600) when missing and ``create``. Raises
    ``ConfigError`` (``SecretFileError`` for a file others can read) naming the file."""
    path = config.pool.secret_path(config)
    try:
        if create:
            ensure_private_dir(path.parent)
            return ensure_secret(path, PRIVATE).encode("utf-8")
        if not path.exists():
            raise ConfigError(
                f"the pool secret {path} does not exist: copy it from the primary"
                " (`edgeproxy pool secret` there prints it) and make it mode 0600"
            )
        check_private(path, PRIVATE)
        return read_secret(path).encode("utf-8")
    except ValueError as exc:  # an empty file
        raise ConfigError(f"the pool secret {exc}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read the pool secret {path}: {exc.strerror}") from None
