"""Exit statuses of ``edgeproxy``, and the one exception that carries a startup failure.

Theory of operation
-------------------
Every command exits 0 when it did what was asked, 1 when it refused (a rule, a failed check,
something not found) and 2 for a usage error. ``edgeproxy serve`` that cannot start exits with a
status of its own per cause (:class:`ExitCode`, 10 and up), so that a supervisor — or an operator
reading ``systemctl status`` — knows the cause without the log, and so that the systemd unit can
tell a cause that restarting cannot cure (``RestartPreventExitStatus=``, :data:`NO_RESTART`) from
one that may pass (a port another process still holds).

Each startup failure is reported as exactly one event line — its id, the cause and a hint — at
the place that knows the detail (which listener, which file), which then raises
:class:`StartupFailed` with the exit status; ``edgeproxy serve`` exits with it and prints nothing
more (no traceback: the event line is the report). :data:`STARTUP_FAILURES` is the table, and
``docs/exit-codes.md`` shows it (a test keeps the two in step).
"""

from __future__ import annotations

import enum
import errno
import os
import sys
from dataclasses import dataclass
from typing import TypeVar

from edgeproxy.errors import ConfigError

_E = TypeVar("_E", bound=BaseException)


class ExitCode(enum.IntEnum):
    """What the ``edgeproxy`` process exits with (the table: :data:`STARTUP_FAILURES`)."""

    OK = 0
    REFUSED = 1
    USAGE = 2
    CONFIG_UNREADABLE = 10
    CONFIG_INVALID = 11
    STATE_DIR_UNUSABLE = 12
    SECRET_EXPOSED = 13
    STORE_UNAVAILABLE = 14
    STORE_TOO_NEW = 15
    CREDENTIALS_UNUSABLE = 16
    ADDRESS_IN_USE = 20
    ADDRESS_FORBIDDEN = 21
    ADDRESS_UNAVAILABLE = 22


@dataclass(frozen=True, slots=True)
class ExitStatus:
    """One row of the table: the status, the event ids that report it, what it means, whether a
    restart may cure it (a port still held, an address not up yet) or needs the operator."""

    code: ExitCode
    events: tuple[str, ...]
    meaning: str
    restart_may_help: bool


STARTUP_FAILURES: tuple[ExitStatus, ...] = (
    ExitStatus(ExitCode.OK, (), "Done; for `serve`: stopped after a graceful shutdown (EP1004 or EP1005).", False),
    ExitStatus(ExitCode.REFUSED, (), "Any command: refused (a validation rule, a failed check, not found); the reason is on stderr. For `serve`: an unexpected error, shown with a traceback (a bug: please report it).", True),
    ExitStatus(ExitCode.USAGE, (), "A usage error: unknown command or option, bad value.", False),
    ExitStatus(ExitCode.CONFIG_UNREADABLE, ("EP8009",), "The configuration file (--config, $EDGEPROXY_CONFIG) cannot be read: missing, a directory, or no permission.", False),
    ExitStatus(ExitCode.CONFIG_INVALID, ("EP8010", "EP8004"), "The configuration is refused: not TOML, an unknown key, a wrong value or combination of keys, an admin endpoint off loopback without allow-remote; in appliance mode also the override file in the state dir (unreadable, or a key it may not set) and a relative state-dir.", False),
    ExitStatus(ExitCode.STATE_DIR_UNUSABLE, ("EP8011",), "The state dir cannot be created or written (read-only, not a directory), or it lies under /etc; in appliance mode also its tmp/ directory for temporary files.", False),
    ExitStatus(ExitCode.SECRET_EXPOSED, ("EP8007",), "A secret at rest (the state dir, the store, the admin token, the channel secret) grants more than its mode allows; the event gives the chmod.", False),
    ExitStatus(ExitCode.STORE_UNAVAILABLE, ("EP8005",), "The store (policy.sqlite3) cannot be opened or read: not a database, not the service account's (made by a command run as root), disk full.", False),
    ExitStatus(ExitCode.STORE_TOO_NEW, ("EP8012",), "The store was upgraded by a newer edgeproxy; this one does not open it.", False),
    ExitStatus(ExitCode.CREDENTIALS_UNUSABLE, ("EP2003",), "A certificate, key or trust bundle that is configured does not load ([tls], SIP over TLS, the channel's mutual TLS: one of a certificate and its key missing, unreadable, malformed, not matching), or the channel secret or admin token cannot be read.", False),
    ExitStatus(ExitCode.ADDRESS_IN_USE, ("EP1001",), "A listener's address is in use (another edgeproxy, or another server on the port).", True),
    ExitStatus(ExitCode.ADDRESS_FORBIDDEN, ("EP1001",), "A listener may not bind its address: a port below 1024 without CAP_NET_BIND_SERVICE (the event says how to grant it: setcap on the program, or AmbientCapabilities= in the systemd unit), or a security policy.", False),
    ExitStatus(ExitCode.ADDRESS_UNAVAILABLE, ("EP1001",), "A listener's address cannot be bound for another reason: usually an IP address this host does not have (yet).", True),
)

#: Statuses a restart cannot cure: the systemd unit lists them in ``RestartPreventExitStatus=``.
NO_RESTART: tuple[ExitCode, ...] = tuple(
    s.code for s in STARTUP_FAILURES if s.code >= ExitCode.CONFIG_UNREADABLE and not s.restart_may_help
)


class StartupFailed(ConfigError):
    """``edgeproxy serve`` cannot start: the event saying why has been emitted already, and
    ``exit_code`` is the status to exit with. A ``ConfigError`` (the message names the cause), so
    an in-process caller that does not know this class still sees a refusal it can print."""

    def __init__(self, exit_code: ExitCode, message: str) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def bind_failure_code(exc: OSError) -> ExitCode:
    """The status of a listener that could not bind, by the error's errno."""
    if exc.errno == errno.EADDRINUSE:
        return ExitCode.ADDRESS_IN_USE
    if exc.errno in (errno.EACCES, errno.EPERM):
        return ExitCode.ADDRESS_FORBIDDEN
    return ExitCode.ADDRESS_UNAVAILABLE


#: Ports below this one need CAP_NET_BIND_SERVICE (or root) to be bound on Linux.
PRIVILEGED_PORT_LIMIT = 1024


def capability_target() -> str:
    """The program to give CAP_NET_BIND_SERVICE with ``setcap``: the one-file executable itself,
    or the Python interpreter that runs ``edgeproxy`` (a script cannot hold file capabilities)."""
    return os.path.realpath(sys.executable)


def privileged_port_fix(address: str, exc: OSError) -> str | None:
    """How to grant the capability when ``address`` (``HOST:PORT``, or several joined by
    ``", "``) holds a port below 1024 that may not be bound (EACCES, EPERM); else None."""
    if exc.errno not in (errno.EACCES, errno.EPERM):
        return None
    ports = [part.rpartition(":")[2] for part in address.split(", ")]
    if not any(p.isdigit() and 0 < int(p) < PRIVILEGED_PORT_LIMIT for p in ports):
        return None
    return (
        "ports below 1024 need CAP_NET_BIND_SERVICE: grant it with"
        f" `setcap 'cap_net_bind_service=+ep' {capability_target()}`, or under systemd with"
        " AmbientCapabilities=CAP_NET_BIND_SERVICE (and CapabilityBoundingSet=CAP_NET_BIND_SERVICE);"
        " or listen on a port from 1024 up (5269 needs no privilege)"
    )


def is_bind_failure(exc: BaseException) -> bool:
    """True for the errors a socket's ``bind`` raises when its address cannot be had (a file
    that cannot be opened names itself in ``filename``: an EACCES there is no bind failure)."""
    return isinstance(exc, OSError) and exc.filename is None and exc.errno in (
        errno.EADDRINUSE, errno.EACCES, errno.EPERM, errno.EADDRNOTAVAIL,
    )


def leaf(exc: BaseException, kind: type[_E]) -> _E | None:
    """The first exception of ``kind`` that ``exc`` is or holds (trio reports a task's error
    inside exception groups, nested one per nursery it crossed), else None."""
    if isinstance(exc, kind):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = leaf(inner, kind)
            if found is not None:
                return found
    return None


def exit_codes_markdown() -> str:
    """The table as kept in ``docs/exit-codes.md``."""
    rows = ["| status | name | events | meaning | restart may help |", "|---|---|---|---|---|"]
    for s in STARTUP_FAILURES:
        events = ", ".join(f"`{e}`" for e in s.events) or "–"
        name = s.code.name.lower().replace("_", "-")
        restart = "–" if s.code < ExitCode.CONFIG_UNREADABLE else ("yes" if s.restart_may_help else "no")
        rows.append(f"| {int(s.code)} | {name} | {events} | {s.meaning} | {restart} |")
    return "\n".join(rows) + "\n"
