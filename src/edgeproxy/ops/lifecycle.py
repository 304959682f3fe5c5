"""Service lifecycle: what "reload" and "stop" mean to the server, and the signals that ask for them.

The server implements ``Control``. Both the admin endpoint (``POST /reload``, ``POST /stop``) and
the signal handler (SIGHUP; SIGTERM and SIGINT) call it, so the two ways in behave identically
(SPEC §10, issue 7 *Lifecycle*):

* ``request_stop()`` begins a graceful shutdown and returns at once: stop accepting, drain the
  queues, flush the gateway channel, close streams with ``system-shutdown``, all within
  ``DRAIN_BOUND_SECONDS``; what is still queued then is bounced. A second request may end the drain
  early. It must be idempotent.
* ``reload()`` re-reads the configuration, the certificates and the store and applies them without
  dropping streams that are still allowed (a removed partner's streams close with
  ``policy-violation``). It returns a ``ReloadOutcome``; a refused reload leaves everything as it
  was. Implementations serialise concurrent reloads themselves.

Start: before anything else is opened, ``refuse_unusable_state_dir`` makes sure the state dir
can hold the store and the secrets — created ``0750`` if missing, writable (a temporary file is
made and removed), and not under ``/etc`` (``FORBIDDEN_STATE_ROOTS``): a relative ``state-dir``
is resolved against the configuration file's directory, so ``state-dir = "var"`` in
``/etc/edgeproxy/edgeproxy.toml`` would put the store in ``/etc/edgeproxy/var``, which the
systemd unit keeps read-only (``ProtectSystem=strict``). A state dir that cannot be used is one
``EP8011 state-dir-unusable`` event and ``StartupFailed`` (exit status 12).

Appliance mode (``[edge] appliance``): after that check, ``enter_appliance_mode`` points every
temporary file of the process — Python's ``tempfile``, SQLite's temporary files, child processes
— at ``<state-dir>/tmp`` (``TMPDIR``, created ``0700``) and stops Python from writing bytecode
caches next to the package, so that nothing is written outside the state dir on a read-only
root; ``EP8016 appliance-mode`` says so (``docs/appliance.md``).
"""

from __future__ import annotations

import gc
import os
import signal
import sys
import tempfile
from pathlib import Path
from typing import Protocol, runtime_checkable

import msgspec
import trio

from edgeproxy.config import OVERRIDE_FILE, EdgeConfig
from edgeproxy.ops import events
from edgeproxy.ops.exitcodes import ExitCode, StartupFailed
from edgeproxy.ops.telemetry import Telemetry
from edgeproxy.secretfiles import ensure_private_dir

DRAIN_BOUND_SECONDS = 30.0
"""How long a graceful shutdown may drain before the rest is bounced; the systemd unit's
``TimeoutStopSec`` (45 s) leaves a margin above it."""


class ReloadOutcome(msgspec.Struct, frozen=True, kw_only=True):
    """What a reload did; served as JSON by ``POST /reload`` and printed by ``edgeproxy reload``."""

    ok: bool
    message: str = ""
    partners_added: tuple[str, ...] = ()
    partners_removed: tuple[str, ...] = ()
    streams_closed: int = 0


@runtime_checkable
class Control(Protocol):
    """What the server implements for ``reload`` and ``stop``."""

    async def reload(self) -> ReloadOutcome:
        """Re-read configuration, certificates and store; never raises for a refused change."""
        ...

    def request_stop(self) -> None:
        """Begin the graceful shutdown; returns immediately; idempotent."""
        ...


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
RELOAD_SIGNALS = (signal.SIGHUP,)


async def serve_signals(control: Control, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Turn SIGHUP into ``control.reload()`` and SIGTERM/SIGINT into ``control.request_stop()``.

    Use with ``nursery.start`` (from the main thread, as trio requires for signal handling);
    runs until cancelled, and cancelling it restores the previous signal handlers. Reloads run one
    at a time, in the order the signals arrived; an exception from ``reload`` propagates (a bug in
    the server, not a refused change).
    """
    with trio.open_signal_receiver(*STOP_SIGNALS, *RELOAD_SIGNALS) as signals:
        task_status.started()
        async for signum in signals:
            if signum in RELOAD_SIGNALS:
                await control.reload()
            else:
                control.request_stop()


#: Where a state dir may not be: configuration, not state (read-only under the systemd unit).
FORBIDDEN_STATE_ROOTS = (Path("/etc"),)


def state_dir_problem(state_dir: Path) -> str | None:
    """Why ``state_dir`` cannot hold the store and the secrets, or None when it can (see the
    module docstring). Creates it ``0750`` when missing, and probes that it is writable."""
    resolved = state_dir.resolve()
    for root in FORBIDDEN_STATE_ROOTS:
        if resolved == root or root in resolved.parents:
            return (
                f"it is under {root} (configuration, read-only under the systemd unit); a relative"
                " state-dir is resolved against the configuration file's directory: set an absolute"
                ' one, such as state-dir = "/var/lib/edgeproxy"'
            )
    try:
        ensure_private_dir(state_dir)
        handle, probe = tempfile.mkstemp(prefix=".edgeproxy-write-probe-", dir=state_dir)
        os.close(handle)
        os.unlink(probe)
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def refuse_unusable_state_dir(config: EdgeConfig, telemetry: Telemetry) -> None:
    """The state-dir check at start: one ``EP8011`` event and ``StartupFailed`` (exit status
    12) when ``[edge] state-dir`` cannot be used."""
    problem = state_dir_problem(config.state_dir)
    if problem is not None:
        telemetry.emit(events.STATE_DIR_UNUSABLE, path=str(config.state_dir), error=problem)
        raise StartupFailed(ExitCode.STATE_DIR_UNUSABLE, f"state dir {config.state_dir} cannot be used: {problem}")


#: Temporary files in appliance mode: this directory under the state dir.
APPLIANCE_TMP = "tmp"


def enter_appliance_mode(config: EdgeConfig, telemetry: Telemetry) -> Path:
    """Appliance mode at start (after the state-dir check): ``<state-dir>/tmp`` created ``0700``
    and made the process's temporary directory (``TMPDIR`` for SQLite and child processes,
    ``tempfile.tempdir`` for Python), no bytecode caches written; ``EP8016``. Its directory;
    one that cannot be made is ``EP8011`` and ``StartupFailed`` (exit status 12)."""
    tmp = config.state_dir / APPLIANCE_TMP
    try:
        ensure_private_dir(tmp, 0o700)
        probe_fd, probe = tempfile.mkstemp(prefix=".edgeproxy-write-probe-", dir=tmp)
        os.close(probe_fd)
        os.unlink(probe)
    except OSError as exc:
        problem = exc.strerror or str(exc)
        telemetry.emit(events.STATE_DIR_UNUSABLE, path=str(tmp), error=problem)
        raise StartupFailed(ExitCode.STATE_DIR_UNUSABLE, f"state dir {tmp} cannot be used: {problem}") from exc
    os.environ["TMPDIR"] = str(tmp)
    tempfile.tempdir = str(tmp)
    sys.dont_write_bytecode = True
    os.environ["PYTHONDONTWRITEBYTECODE"] = "1"
    override = config.state_dir / OVERRIDE_FILE
    telemetry.emit(events.APPLIANCE_MODE, state_dir=str(config.state_dir), tmpdir=str(tmp),
                   override=str(override) if override.is_file() else "none")
    return tmp


def freeze_startup_objects() -> None:
    """Move every object made while starting — imported modules, the configuration, templates,
    the first policy snapshot — out of the cyclic garbage collector's view (``gc.freeze``):
    they live as long as the process, and a full collection then scans only what the traffic
    made. Without it a full collection ran every ~2 s under load over ~74,000 objects, pausing
    the server ~45 ms each time (the p99 latency of bench/bench_product.py at half rate); after
    it, ~9,000 objects and 3–5 ms (bench/RESULTS.md, "Latency at half rate")."""
    gc.collect()
    gc.freeze()
