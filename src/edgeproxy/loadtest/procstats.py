"""CPU seconds and RSS of a process and its descendants, from ``/proc/<pid>/stat`` and
``/proc/<pid>/status`` (Linux).

A server under test may be several processes: ``edgeproxy serve --workers N`` is a supervisor
and N worker processes, ejabberd has its port programs. ``sample`` adds up the process and every
descendant alive at that moment (found through their parent pids), so that CPU per stanza and
memory per stream are the whole server's. (CPU time of a child that exited is not counted.)"""

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


def descendants(pid: int, proc: Path = Path("/proc")) -> list[int]:
    """The pids of ``pid``'s children, their children, and so on (alive now)."""
    children: dict[int, list[int]] = {}
    for stat in proc.glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rpartition(")")[2].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(parent, []).append(int(stat.parent.name))
    found: list[int] = []
    todo = list(children.get(pid, ()))
    while todo:
        child = todo.pop()
        found.append(child)
        todo.extend(children.get(child, ()))
    return found


def sample(pid: int, proc: Path = Path("/proc")) -> ProcSample:
    """Read one sample of ``pid`` and its descendants; raises OSError if ``pid`` is gone."""
    total = _one(pid, proc)
    cpu, rss = total.cpu_seconds, total.rss_kib
    for child in descendants(pid, proc):
        try:
            one = _one(child, proc)
        except (OSError, ValueError, IndexError):
            continue  # ended meanwhile
        cpu, rss = cpu + one.cpu_seconds, rss + one.rss_kib
    return ProcSample(cpu, rss)


def _one(pid: int, proc: Path) -> ProcSample:
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
