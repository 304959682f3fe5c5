"""Tests of what `make dist` delivers: the wheels and the one-file executable, as real processes.

Puts this directory (``_distbuild``) on the import path. The build runs once per session through
``make dist``, which rebuilds only when an input changed (``packaging/build_dist.py``) and builds
from nothing in a fresh checkout.
"""

import sys
from pathlib import Path

import pytest

_HERE = Path(__file__).resolve().parent
if str(_HERE) not in sys.path:
    sys.path.insert(0, str(_HERE))

from _distbuild import Dist, build_dist  # noqa: E402


@pytest.fixture(scope="session")
def dist() -> Dist:
    """``dist/`` as `make dist` leaves it (built or found up to date)."""
    return build_dist()
