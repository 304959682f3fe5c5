"""End-to-end tests: a real Prosody, edgeproxy (edge + gateway in one process) and SIP UAs.

Puts this directory (``harness``), ``tests/gateway`` (``_sipp``) and ``tests`` (the shared
helper package ``fixtures``: Prosody, the c2s client, dnsmasq) on the import path.
"""

import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
for _path in (_HERE.parent, _HERE.parent / "gateway", _HERE):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))
