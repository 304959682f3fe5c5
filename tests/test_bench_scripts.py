"""Every benchmark in bench/ still starts (its imports resolve against this tree): `make bench`
and the figures in bench/RESULTS.md depend on them, and nothing else runs them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.mark.parametrize("script", sorted(p.name for p in BENCH.glob("*.py")))
def test_the_benchmark_script_starts(script: str) -> None:
    result = subprocess.run([sys.executable, str(BENCH / script), "--help"], capture_output=True, timeout=120)
    assert result.returncode == 0, result.stderr.decode()[-800:]
