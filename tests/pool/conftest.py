"""Edge pool tests: puts this directory on the import path (the lab helpers ``_netns_*``)."""

import sys
from pathlib import Path

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)
