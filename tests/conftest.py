"""Suite-wide test settings.

Under CI (``CI=true``) Hypothesis runs derandomized: the same examples on every run, so a CI
verdict never depends on which random inputs were drawn. Developers' runs keep exploring new
inputs (and Hypothesis' local example database replays any failure found).
"""

import os
import sys
from pathlib import Path

from hypothesis import settings

# tests/ holds the shared helper package `fixtures` (tools required in CI, dnsmasq, PKI)
sys.path.insert(0, str(Path(__file__).resolve().parent))

settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI") == "true":
    settings.load_profile("ci")
