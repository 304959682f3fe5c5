"""A server under test may be several processes (``serve --workers N``): its figures are the tree's."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from edgeproxy.loadtest.procstats import _one, descendants, sample

BUSY_CHILD = "import time\nx = bytearray(64 * 1024 * 1024)\nt = time.process_time()\n" \
             "while time.process_time() - t < 0.3: pass\nprint('ready', flush=True)\ntime.sleep(30)\n"


def test_a_sample_adds_up_the_process_and_its_descendants() -> None:
    child = subprocess.Popen([sys.executable, "-c", BUSY_CHILD], stdout=subprocess.PIPE)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == b"ready"
        assert child.pid in descendants(os.getpid())
        alone, whole = _one(os.getpid(), Path("/proc")), sample(os.getpid())
        assert whole.rss_kib - alone.rss_kib >= 64 * 1024  # the child's 64 MiB
        assert whole.cpu_seconds - alone.cpu_seconds >= 0.3 - 0.02  # the child's busy loop
    finally:
        child.kill()
        child.wait()
    time.sleep(0.05)
    assert child.pid not in descendants(os.getpid())
