"""The embedding API: ``edgeproxy.run``, the edge as one task of another trio program.

An appliance's own trio program runs the edge in its nursery and stops it by cancelling::

    async with trio.open_nursery() as nursery:
        edge = await nursery.start(edgeproxy.run, "/etc/edgeproxy/edgeproxy.toml")
        ...                       # edge.listeners(), edge.status(), await edge.reload()
        nursery.cancel_scope.cancel()   # a clean stop, as SIGTERM would give

Theory of operation
-------------------
``run`` is ``edgeproxy serve`` (``app.run_app``) without the process around it: no signal
handlers (the host program owns its signals), the event log on stderr unless the caller gives
one, start failures raised as ``StartupFailed`` (a ``ConfigError`` carrying the exit status
``edgeproxy serve`` would have used, ``docs/exit-codes.md``) after their one event.

Cancellation is the stop request. Once the edge is started it runs inside a cancel scope that
is shielded from the caller's cancellation; a watcher task, outside the shield, waits for that
cancellation and turns it into ``EdgeApp.request_stop()``: the graceful shutdown of ``edgeproxy
stop`` (stop accepting, flush the loopback channel to the gateway, drain the outbound queues,
close every stream with ``<system-shutdown/>``, bounce what is left). ``run`` returns (and the
caller's cancelled scope absorbs its ``Cancelled``) once that shutdown is complete, within
``drain_bound`` seconds plus :data:`STOP_MARGIN_SECONDS`; past that, whatever still runs is
cancelled outright. A cancellation during the start abandons the start (nothing is listening
yet to drain). The edge stopping by itself (``edgeproxy stop``, ``POST /stop``) makes ``run``
return normally.

This module is on the composition root's floor (it imports ``edgeproxy.app``); the package root
provides ``edgeproxy.run`` through a module-level ``__getattr__`` that imports this module on
first use, so ``import edgeproxy`` stays as light as before (no trio, no server).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from functools import partial

import trio

from edgeproxy.app import ROLES, EdgeApp, run_app
from edgeproxy.config import EdgeConfig, load_config
from edgeproxy.ops.events import EventLog
from edgeproxy.ops.exitcodes import StartupFailed, leaf
from edgeproxy.ops.lifecycle import DRAIN_BOUND_SECONDS, ReloadOutcome
from edgeproxy.ops.metrics import Metrics
from edgeproxy.ops.status import EdgeStatus

__all__ = ["STOP_MARGIN_SECONDS", "RunningEdge", "run"]

#: Seconds past the drain bound a cancelled ``run`` waits for the graceful shutdown to finish
#: before it cancels what is left (the shutdown itself keeps to the bound: this is a backstop).
STOP_MARGIN_SECONDS = 5.0


@dataclass(frozen=True)
class RunningEdge:
    """What ``run`` reports to ``nursery.start`` once every listener is bound.

    ``role``: ``both``, ``edge`` or ``gateway``. ``app``: the running ``EdgeApp`` (None for role
    ``gateway``, which has no edge)."""

    role: str
    app: EdgeApp | None

    def _edge(self) -> EdgeApp:
        if self.app is None:
            raise RuntimeError("role gateway runs no edge: it has no status, reload or stop of its own")
        return self.app

    def status(self) -> EdgeStatus:
        """The running edge's status (what ``GET /status`` serves); call it from the trio thread."""
        return self._edge().status()

    def listeners(self) -> dict[str, list[str]]:
        """The bound addresses by listener role: ``external`` (S2S), ``internal`` (the loopback
        channel), ``admin``, ``sip`` (role both: the gateway's UDP/TCP and TLS addresses)."""
        found: dict[str, list[str]] = {}
        for listener in self.status().listeners:
            found.setdefault(str(listener.role), []).append(listener.address)
        return found

    async def reload(self) -> ReloadOutcome:
        """Re-read the configuration, certificates and store (as SIGHUP or ``edgeproxy reload``)."""
        return await self._edge().reload()

    def request_stop(self) -> None:
        """Begin the graceful shutdown without cancelling (``run`` then returns normally)."""
        self._edge().request_stop()


async def run(
    config: EdgeConfig | str | os.PathLike[str],
    *,
    role: str = "both",
    event_log: EventLog | None = None,
    metrics: Metrics | None = None,
    drain_bound: float = DRAIN_BOUND_SECONDS,
    task_status: trio.TaskStatus[RunningEdge] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the edge (role ``both``: edge and gateway; ``edge``; ``gateway``) until cancelled or
    stopped; see the module docstring.

    ``config``: an ``EdgeConfig`` (``edgeproxy.config.load_config``) or the path of an
    ``edgeproxy.toml`` (read here; ``[edge] appliance = true`` applies the override file from the
    state dir). ``event_log``: where events go (default: a new one on stderr, closed on return).
    ``task_status`` gets a :class:`RunningEdge`. Raises ``ConfigError`` for a configuration that
    is refused and ``StartupFailed`` (a ``ConfigError``) for a start that fails.
    """
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}, expected one of {', '.join(ROLES)}")
    edge_config = config if isinstance(config, EdgeConfig) else load_config(config)
    log = event_log if event_log is not None else EventLog(sys.stderr)
    try:
        await _run(edge_config, role, log, metrics, drain_bound, task_status)
    except BaseExceptionGroup as group:
        # A start failure reaches here wrapped once per nursery it crossed: the caller gets the
        # StartupFailed itself when nothing else failed with it.
        failed, rest = group.split(StartupFailed)
        if failed is None or rest is not None:
            raise
        first = leaf(failed, StartupFailed)
        assert first is not None
        raise first from None
    finally:
        if event_log is None:
            log.close()


async def _run(
    config: EdgeConfig,
    role: str,
    event_log: EventLog,
    metrics: Metrics | None,
    drain_bound: float,
    task_status: trio.TaskStatus[RunningEdge],
) -> None:
    """``run`` after its arguments are checked: the shielded server and the watcher that turns
    the caller's cancellation into a graceful stop."""
    started: list[EdgeApp | None] = []
    serving = trio.CancelScope()

    async def stop_when_cancelled() -> None:
        try:
            await trio.sleep_forever()
        finally:
            app = started[0] if started else None
            if app is not None and not app.stopped.is_set():
                app.request_stop()
                with trio.CancelScope(shield=True), trio.move_on_after(drain_bound + STOP_MARGIN_SECONDS):
                    await app.stopped.wait()
            serving.cancel()  # what is left: the gateway alone, or a shutdown past its bound

    async with trio.open_nursery() as watch:
        watch.start_soon(stop_when_cancelled)
        with serving:
            async with trio.open_nursery() as inner:
                app = await inner.start(partial(
                    run_app, config, role=role, event_log=event_log, metrics=metrics, signals=False,
                    drain_bound=drain_bound,
                ))
                # From here on only the watcher stops the edge: no checkpoint since the start.
                serving.shield = app is not None
                started.append(app)
                task_status.started(RunningEdge(role, app))
        watch.cancel_scope.cancel()
