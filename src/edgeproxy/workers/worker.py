"""One edge worker process: an ``EdgeApp`` on its share of the external listeners.

Started by the supervisor (``workers.supervisor``) as ``edgeproxy serve --role edge`` with hidden
options: the file descriptors of its listening sockets (inherited), the one to report on, its
loopback channel's address and the supervisor's pid. It

1. watches the supervisor's process (``pidfd_open(2)``; where there is none, its pid is
   looked at every ``PARENT_POLL`` seconds) and stops gracefully when it ends, so that a
   supervisor killed with SIGKILL leaves no worker serving on; it exits at once if the
   supervisor is already gone. (Not ``PR_SET_PDEATHSIG``: it fires when the parent *thread*
   ends, and trio starts processes from a thread of its cache, which ends after a few idle
   seconds. A pid also holds when a launcher stands between them, as the one-file
   executable's bootloader does.)
2. runs the edge with the configuration's own settings except: the external listeners are the
   inherited sockets, the channel listens on its own address, and the admin endpoint on a free
   loopback port without the Control Panel (the supervisor reads its ``/status`` and
   ``/metrics``, and asks it to ``/reload``; operators use the supervisor's);
3. once every listener is bound, writes one JSON line on the report descriptor — its pid, its
   channel's and its admin endpoint's addresses — and closes it: the supervisor's "ready".

SIGTERM/SIGINT (from the supervisor) is the edge's graceful stop; SIGHUP a reload.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Sequence

import msgspec
import trio

from edgeproxy.app import EdgeApp
from edgeproxy.config import AdminSection, EdgeConfig
from edgeproxy.ops.events import EventLog
from edgeproxy.ops.lifecycle import freeze_startup_objects
from edgeproxy.ops.metrics import Metrics

#: Seconds between two looks at the supervisor's pid where pidfd_open(2) is not available.
PARENT_POLL = 1.0
#: Where a worker's admin endpoint listens (any free port; loopback only).
WORKER_ADMIN_LISTEN = "127.0.0.1:0"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, another user's
    return True


def die_with_parent(parent: int) -> None:
    """Exit now if the supervisor ``parent`` is gone already (``_follow_supervisor`` then
    watches it)."""
    if not _alive(parent):
        raise SystemExit(0)


async def _follow_supervisor(parent: int, app: EdgeApp) -> None:
    """Stop the edge gracefully when the supervisor's process ends."""
    try:
        handle = os.pidfd_open(parent)
    except ProcessLookupError:
        app.request_stop()
        return
    except (AttributeError, OSError):
        while _alive(parent):  # no pidfd (an old kernel): look every PARENT_POLL seconds
            await trio.sleep(PARENT_POLL)
    else:
        try:
            await trio.lowlevel.wait_readable(handle)
        finally:
            os.close(handle)
    app.request_stop()


def worker_config(config: EdgeConfig, channel: str) -> EdgeConfig:
    """The worker's configuration: the channel on ``channel``, a private admin endpoint."""
    return msgspec.structs.replace(
        config,
        edge=msgspec.structs.replace(config.edge, internal_listen=channel, workers=1),
        admin=AdminSection(listen=WORKER_ADMIN_LISTEN, token_file=config.admin.token_file, ui=False),
    )


async def run_worker(
    config: EdgeConfig,
    *,
    index: int,
    listen_fds: Sequence[int],
    report_fd: int,
    channel: str,
    parent: int,
    event_log: EventLog,
    metrics: Metrics,
) -> None:
    """Run worker ``index`` until stopped (see the module docstring)."""
    sockets = [socket.socket(fileno=fd) for fd in listen_fds]
    app = EdgeApp(worker_config(config, channel), event_log=event_log, metrics=metrics, channel=True,
                  announce=False, listen_sockets=sockets)
    async with trio.open_nursery() as nursery:
        await nursery.start(app.run)
        assert app.admin_endpoint is not None
        ready = {"index": index, "pid": os.getpid(), "channel": app.internal_address,
                 "admin": app.admin_endpoint.address}
        try:
            os.write(report_fd, json.dumps(ready).encode() + b"\n")
        finally:
            os.close(report_fd)
        freeze_startup_objects()
        nursery.start_soon(_follow_supervisor, parent, app)
        await app.stopped.wait()
        nursery.cancel_scope.cancel()
