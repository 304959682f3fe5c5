import sys
from pathlib import Path

# tests/ holds the shared helper package `fixtures` (no __init__.py in tests/: see pytest's
# prepend import mode); make it importable from this sub-directory.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fixtures.dnsmasq import dnsmasq  # noqa: E402, F401  (the fixture)
