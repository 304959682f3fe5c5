"""``python -m edgeproxy``: the same command as the ``edgeproxy`` console script."""

import sys

from edgeproxy.cli import main

sys.exit(main())
