"""The admin endpoint's rules, free of any HTTP server: its address, the names it answers to,
its bounds and the admin credentials (token and Control Panel password).

The endpoint itself (``/metrics``, ``/healthz``, ``/status``, POST ``/reload`` and ``/stop``, the
Control Panel under ``/ui/``) is served by :mod:`edgeproxy.web`:

* reads (``GET /metrics``, ``/healthz``, ``/status``) need no token: viewing status is the lesser
  right, and the endpoint listens on loopback only by default;
* writes (``POST /reload``, ``POST /stop``) need ``Authorization: Bearer <token>``, the token in
  ``[admin] token-file`` (default ``<state-dir>/admin.token``, created mode 0640 at start
  whatever the umask, :mod:`edgeproxy.secretfiles`; an existing one that grants more is
  refused), so that only the service account and its group, the admin group — who can read
  that file — can change anything.

Only for its own names (DNS rebinding): a web page can make a browser on this host send
requests to 127.0.0.1 under the page's own name (``evil.example`` resolving to 127.0.0.1); the
browser then lets the page read the answers, ``/status`` included. Such a request carries
``Host: evil.example:9269``. So every request's ``Host`` (and the authority of an absolute-form
target) must name this endpoint — the ``[admin] listen`` host, ``localhost``, ``127.0.0.1`` or
``[::1]`` (any IP address when listening on a wildcard: a page reads only answers from its own
origin, and an IP-literal origin is that address itself, not a name its author can re-point) —
with the bound port, or no port; anything else is answered ``421 Misdirected Request``.

Bounded: at most 16 connections at once and ``MAX_CONNECTIONS_PER_SOURCE`` from one source
address, a request head of ``MAX_HEAD_BYTES``, a body of ``MAX_BODY_BYTES``. A non-loopback
``[admin] listen`` is refused unless ``allow-remote = true``.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import hmac
import ipaddress
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from edgeproxy.config import EdgeConfig
from edgeproxy.errors import ConfigError
from edgeproxy.names import listen_address
from edgeproxy.ops import events
from edgeproxy.ops.events import EventLog
from edgeproxy.secretfiles import (
    GROUP_READABLE,
    PRIVATE,
    check_private,
    ensure_private_dir,
    ensure_secret,
)

#: Connections one source address may hold at once (issue 14): one local user must not hold
#: every one of the ``max_connections`` (16) slots. ``edgeproxy status|reload|stop`` uses one
#: connection at a time and a Prometheus scraper one; 4 leaves room for a retry or a browser tab,
#: and 16 / 4 = at least four sources (local users, the scraper) are always served. A source is
#: an address: on Linux a local user may bind any 127.0.0.0/8 source, so this bounds a careless
#: client more than a determined local one (counting per user would need the peer socket's uid).
MAX_CONNECTIONS_PER_SOURCE = 4
MAX_HEAD_BYTES = 16 * 1024
MAX_BODY_BYTES = 64 * 1024


def join_host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def client_host(host: str) -> str:
    """Where a client on this machine connects for a listener bound to ``host``."""
    return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)


def admin_host_names(listen_host: str, port: int) -> frozenset[str]:
    """The ``Host`` values the admin endpoint answers to (see the module docstring), lower case:
    each name with ``:port`` and without a port; ``*`` stands for any IP address (wildcard)."""
    names = {listen_host.lower(), "localhost", "127.0.0.1", "::1"}
    if listen_host in ("", "0.0.0.0", "::"):
        names.add("*")
    return frozenset(names)


def host_allowed(value: str, names: frozenset[str], port: int) -> bool:
    """Whether the ``Host`` header (or absolute-form authority) ``value`` names this endpoint."""
    value = value.strip().lower()
    if value.startswith("["):
        host, bracket, rest = value[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            return False
        given_port = rest[1:] if rest else None
    elif value.count(":") == 1:
        host, _, given_port = value.partition(":")
    elif ":" in value:  # an unbracketed IPv6 address is not a valid Host
        return False
    else:
        host, given_port = value, None
    if given_port is not None and given_port != str(port):
        return False
    if host in names:
        return True
    if "*" in names:
        try:
            ipaddress.ip_address(host)
        except ValueError:
            return False
        return True
    return False


def admin_token_path(config: EdgeConfig) -> Path:
    """``[admin] token-file``, else ``<state-dir>/admin.token``."""
    if config.admin.token_file:
        return config.path(config.admin.token_file)
    return config.state_dir / "admin.token"


def ensure_admin_token(path: Path) -> str:
    """Read the token, creating it (random, mode 0640 whatever the umask: owner and the admin
    group) when the file does not exist yet; a missing directory is created 0750.

    Raises ``SecretFileError`` when the existing file grants more than 0640, ``OSError`` when it
    cannot be read or created, ``ValueError`` when it is empty.
    """
    ensure_private_dir(path.parent)
    return ensure_secret(path, GROUP_READABLE)


def read_admin_token(path: Path) -> str:
    """The token in ``path`` (first line, stripped). Raises OSError, ValueError if empty."""
    token = path.read_text(encoding="utf-8").strip()
    if not token:
        raise ValueError(f"admin token file {path} is empty")
    return token


@dataclass(frozen=True, slots=True)
class AdminEndpoint:
    """What ``serve_admin`` reports through ``task_status.started``."""

    host: str
    port: int
    token_path: Path

    @property
    def address(self) -> str:
        return join_host_port(self.host, self.port)


def check_listen(config: EdgeConfig, event_log: EventLog | None) -> tuple[str, int]:
    """``[admin] listen`` as (host, port); a non-loopback address without ``allow-remote`` is
    refused (``ConfigError``, event EP8004)."""
    host, port = listen_address(config.admin.listen)
    if not is_loopback(host) and not config.admin.allow_remote:
        if event_log is not None:
            event_log.emit(events.ADMIN_LISTEN_REFUSED, address=config.admin.listen)
        raise ConfigError(
            f"{config.source}: admin.listen {config.admin.listen} is not a loopback address; "
            "set admin.allow-remote = true to serve it there"
        )
    return host, port


# -- Control Panel passwords ---------------------------------------------------------------------


class PanelRole(enum.StrEnum):
    """What a Control Panel login may do: ``admin`` changes things; ``read-only`` sees the
    dashboard and the lists (the status right)."""

    ADMIN = "admin"
    READ_ONLY = "read-only"


#: scrypt cost: N = 2**15, r = 8, p = 1 (32 MiB, about 0.1 s): slow for a guesser, bearable
#: for one login.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**15, 8, 1
SCRYPT_MAXMEM = 64 * 1024 * 1024
#: The shortest Control Panel password ``admin set-password`` accepts.
MIN_PASSWORD_CHARS = 8
#: A password file longer than this is not ours (a hash line is about 120 bytes).
MAX_PASSWORD_FILE_BYTES = 1024


def panel_password_path(config: EdgeConfig, role: PanelRole) -> Path:
    """``<state-dir>/ui-admin.password`` or ``<state-dir>/ui-read-only.password``."""
    return config.state_dir / f"ui-{role.value}.password"


def hash_password(password: str, *, salt: bytes | None = None) -> str:
    """``scrypt$N$r$p$<salt b64>$<hash b64>`` of ``password`` (a random 16-byte salt)."""
    salt = os.urandom(16) if salt is None else salt
    digest = hashlib.scrypt(password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P,
                            maxmem=SCRYPT_MAXMEM, dklen=32)
    b64 = base64.b64encode
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${b64(salt).decode()}${b64(digest).decode()}"


def verify_password(stored: str, password: str) -> bool:
    """Whether ``password`` matches the ``hash_password`` line ``stored`` (False for a line that
    is not one, or costs beyond our bounds)."""
    try:
        scheme, n, r, p, salt, digest = stored.strip().split("$")
        n_, r_, p_ = int(n), int(r), int(p)
        if scheme != "scrypt" or n_ > 2**17 or r_ > 16 or p_ > 4:
            return False
        expected = base64.b64decode(digest, validate=True)
        got = hashlib.scrypt(password.encode(), salt=base64.b64decode(salt, validate=True),
                             n=n_, r=r_, p=p_, maxmem=SCRYPT_MAXMEM * 4, dklen=len(expected))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, expected)


def write_panel_password(path: Path, password: str) -> None:
    """Store the hash of ``password`` in ``path``, mode 0600 whatever the umask (a temporary file
    renamed over the old one)."""
    ensure_private_dir(path.parent)
    line = hash_password(password) + "\n"
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(line)
        os.chmod(tmp, PRIVATE)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def read_panel_password(path: Path) -> str | None:
    """The stored hash line, None when there is no password file. Raises ``SecretFileError`` when
    the file grants more than 0600."""
    try:
        check_private(path)
        with open(path, encoding="ascii", errors="replace") as f:
            return f.read(MAX_PASSWORD_FILE_BYTES).strip() or None
    except FileNotFoundError:
        return None
