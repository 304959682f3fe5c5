"""Who is logged in to the Control Panel: credentials, server-side sessions and CSRF tokens.

* **Login** with the admin token (``[admin] token-file``: role admin) or a Control Panel password
  set with ``edgeproxy admin set-password`` (``--role admin`` or ``--role read-only``; an scrypt
  hash in the state dir). Failed logins are bounded per source address
  (``MAX_LOGIN_FAILURES`` in ``LOGIN_WINDOW_SECONDS``).
* **Sessions** live in this process only (a restart logs everyone out): a random 256-bit id in a
  ``HttpOnly; SameSite=Strict`` cookie (``Secure`` on a TLS listener), an idle expiry and an
  absolute one, at most ``MAX_SESSIONS`` (the oldest goes first).
* **CSRF**: each session has its own random token; every form carries it and every POST is
  refused (403) without it. The login form, before any session, uses a double-submit cookie.
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from edgeproxy.errors import ConfigError
from edgeproxy.ops.admin import PanelRole, read_panel_password, verify_password

#: The session cookie's name, and the login form's double-submit cookie.
SESSION_COOKIE = "edgeproxy_session"
LOGIN_COOKIE = "edgeproxy_login"
#: A session ends after this many seconds without a request …
IDLE_SECONDS = 30 * 60
#: … and at the latest this many seconds after the login.
ABSOLUTE_SECONDS = 8 * 3600
#: Sessions held at once; a login beyond it ends the oldest.
MAX_SESSIONS = 64
#: Failed logins one source address may make within the window before it must wait.
MAX_LOGIN_FAILURES = 5
LOGIN_WINDOW_SECONDS = 60
#: Source addresses whose failures are remembered (the oldest are forgotten first).
MAX_TRACKED_SOURCES = 256


@dataclass(slots=True)
class Session:
    """One logged-in browser."""

    id: str
    role: PanelRole
    method: str  # "token" or "password"
    peer: str
    csrf: str
    created: float
    seen: float
    #: what the last change said, shown once on the next page
    notice: str = ""

    @property
    def who(self) -> str:
        """How the event log names the person: role, login method and address."""
        return f"{self.role.value} ({self.method}, {self.peer})"

    @property
    def can_change(self) -> bool:
        return self.role is PanelRole.ADMIN


@dataclass
class Sessions:
    """The server-side session table (bounded, expiring)."""

    clock: Callable[[], float] = time.monotonic
    idle: float = IDLE_SECONDS
    absolute: float = ABSOLUTE_SECONDS
    limit: int = MAX_SESSIONS
    _table: OrderedDict[str, Session] = field(default_factory=OrderedDict)

    def create(self, role: PanelRole, method: str, peer: str) -> Session:
        """A new session (a fresh id: a login never reuses an id the browser had)."""
        self._expire()
        while len(self._table) >= self.limit:
            self._table.popitem(last=False)
        now = self.clock()
        session = Session(secrets.token_urlsafe(32), role, method, peer, secrets.token_urlsafe(32), now, now)
        self._table[session.id] = session
        return session

    def get(self, session_id: str | None) -> Session | None:
        """The live session of this id (its idle clock restarts), else None."""
        if not session_id:
            return None
        session = self._table.get(session_id)
        if session is None:
            return None
        now = self.clock()
        if now - session.seen > self.idle or now - session.created > self.absolute:
            del self._table[session_id]
            return None
        session.seen = now
        return session

    def end(self, session_id: str) -> None:
        self._table.pop(session_id, None)

    def __len__(self) -> int:
        return len(self._table)

    def _expire(self) -> None:
        now = self.clock()
        for sid in [s.id for s in self._table.values()
                    if now - s.seen > self.idle or now - s.created > self.absolute]:
            del self._table[sid]


def csrf_ok(expected: str, given: object) -> bool:
    """Whether the form's CSRF field ``given`` is the session's token (constant time)."""
    return isinstance(given, str) and bool(given) and hmac.compare_digest(given.encode(), expected.encode())


@dataclass
class Credentials:
    """Checks a login secret against the admin token and the role passwords."""

    token: str
    password_paths: dict[PanelRole, Path]

    def check(self, secret: str) -> tuple[PanelRole, str] | None:
        """``(role, method)`` for a secret that logs in, else None. Slow on purpose (scrypt):
        call it in a thread."""
        if not secret:
            return None
        if hmac.compare_digest(secret.strip().encode(), self.token.encode()):
            return PanelRole.ADMIN, "token"
        for role in (PanelRole.ADMIN, PanelRole.READ_ONLY):
            try:
                stored = read_panel_password(self.password_paths[role])
            except (OSError, ConfigError):
                continue  # unreadable, or a mode wider than 0600 (SecretFileError): not used
            if stored is not None and verify_password(stored, secret):
                return role, "password"
        return None


@dataclass
class LoginThrottle:
    """Failed logins per source address within a sliding window (bounded memory)."""

    clock: Callable[[], float] = time.monotonic
    limit: int = MAX_LOGIN_FAILURES
    window: float = LOGIN_WINDOW_SECONDS
    _failures: OrderedDict[str, list[float]] = field(default_factory=OrderedDict)

    def blocked(self, source: str) -> bool:
        now = self.clock()
        recent = [t for t in self._failures.get(source, []) if now - t < self.window]
        if recent:
            self._failures[source] = recent
        else:
            self._failures.pop(source, None)
        return len(recent) >= self.limit

    def failed(self, source: str) -> None:
        self._failures.setdefault(source, []).append(self.clock())
        self._failures.move_to_end(source)
        while len(self._failures) > MAX_TRACKED_SOURCES:
            self._failures.popitem(last=False)
