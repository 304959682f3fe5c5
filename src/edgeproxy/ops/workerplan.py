"""What the supervisor of edge workers decides without doing any I/O (sans-IO).

* ``worker_count``: ``[edge] workers`` (or ``serve --workers``) as a number: ``"auto"`` is one
  worker per CPU this process may run on (``os.sched_getaffinity``, which honours a cgroup or
  ``taskset`` restriction, unlike ``os.cpu_count``).
* ``worker_channel_addresses``: worker *i*'s loopback channel listens on ``[edge]
  internal-listen``'s port + *i* (23456, 23457, …), so that a gateway run apart (``serve --role
  gateway`` with the same ``[edge] workers``) finds every worker; port 0 gives each a free port
  (tests), which the supervisor reuses when it restarts that worker.
* ``RestartPause``: a worker that exits without being asked is started again after a pause that
  doubles with each quick failure (``RESTART_FIRST_PAUSE`` up to ``RESTART_LONGEST_PAUSE``), and
  starts again from the first pause once a worker has run ``RESTART_RESET_AFTER`` seconds: a
  crash loop does not spin the CPU, a rare crash costs half a second.
* ``worker_argv``: the command line of a worker: this same program (the one-file executable or
  ``python -m edgeproxy``) with ``serve`` and the worker's own hidden options.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from edgeproxy.config import MAX_WORKERS
from edgeproxy.errors import ConfigError
from edgeproxy.names import listen_address

#: Seconds before the first restart of a worker that exited without being asked.
RESTART_FIRST_PAUSE = 0.5
#: The longest pause between two restarts of a worker that keeps failing.
RESTART_LONGEST_PAUSE = 30.0
#: A worker that ran this long (seconds) before exiting is restarted after the first pause again.
RESTART_RESET_AFTER = 60.0


def worker_count(setting: int | Literal["auto"], cpus: int | None = None) -> int:
    """The number of edge workers ``setting`` asks for (``cpus``: the usable CPUs, for tests)."""
    if setting != "auto":
        return setting
    if cpus is None:
        try:
            cpus = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            cpus = os.cpu_count() or 1
    return max(1, min(cpus, MAX_WORKERS))


def worker_channel_addresses(internal_listen: str, count: int) -> list[tuple[str, int]]:
    """Each worker's loopback channel address (see the module docstring); ConfigError when the
    ports would run past 65535."""
    host, port = listen_address(internal_listen)
    if port == 0:
        return [(host, 0)] * count
    last = port + count - 1
    if last > 65535:
        raise ConfigError(
            f"[edge] internal-listen {internal_listen}: {count} workers need ports {port}-{last},"
            " past 65535; choose a lower port"
        )
    return [(host, port + index) for index in range(count)]


@dataclass
class RestartPause:
    """The pause before a worker's next restart (see the module docstring)."""

    first: float = RESTART_FIRST_PAUSE
    longest: float = RESTART_LONGEST_PAUSE
    reset_after: float = RESTART_RESET_AFTER
    _next: float = field(default=0.0, init=False)

    def after_exit(self, ran_for: float) -> float:
        """The pause before restarting a worker that ran ``ran_for`` seconds and exited."""
        if ran_for >= self.reset_after or self._next == 0.0:
            self._next = self.first
        pause = self._next
        self._next = min(self._next * 2, self.longest)
        return pause


def program() -> list[str]:
    """How to run this edgeproxy again: the one-file executable itself, or this Python with
    ``-m edgeproxy``."""
    if getattr(sys, "frozen", False):
        return [sys.executable]
    return [sys.executable, "-m", "edgeproxy"]


def worker_argv(
    *,
    config: str | None,
    appliance: bool,
    index: int,
    listen_fds: Sequence[int],
    report_fd: int,
    channel: tuple[str, int],
    parent: int,
) -> list[str]:
    """The command line of worker ``index`` (its options are hidden from ``serve --help``)."""
    host, port = channel
    argv = [*program(), "serve", "--role", "edge"]
    if config is not None:
        argv += ["--config", config]
    if appliance:
        argv.append("--appliance")
    bracketed = f"[{host}]" if ":" in host else host
    argv += [
        "--worker-index", str(index),
        "--worker-listen-fds", ",".join(str(fd) for fd in listen_fds),
        "--worker-report-fd", str(report_fd),
        "--worker-channel", f"{bracketed}:{port}",
        "--worker-parent", str(parent),
    ]
    return argv
