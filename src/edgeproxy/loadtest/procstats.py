"""CPU seconds and RSS of a process from ``/proc/<pid>/stat`` and ``/proc/<pid>/status`` (Linux)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass(frozen=True)
class ProcSample:
    """User + system CPU seconds and resident set size (KiB) at one moment."""

    cpu_seconds: float
    rss_kib: int


def sample(pid: int, proc: Path = Path("/proc")) -> ProcSample:
    """Read one sample; raises OSError if the process is gone."""
    stat = (proc / str(pid) / "stat").read_text()
    # The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of proc(5)
    rss = 0
    for line in (proc / str(pid) / "status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
            break
    return ProcSample((utime + stime) / _TICKS, rss)


def try_sample(pid: int | None) -> ProcSample | None:
    if pid is None:
        return None
    try:
        return sample(pid)
    except (OSError, ValueError, IndexError):
        return None
