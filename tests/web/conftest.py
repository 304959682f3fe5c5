"""Fixtures for the Control Panel tests; they live in _panel_fixture.py (importable by the test
modules)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _panel_fixture import panel  # noqa: E402, F401 - the fixture
