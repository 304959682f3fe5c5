"""Entry point of the one-file executable ``dist/edgeproxy`` (PyInstaller runs this script).

The same command as the ``edgeproxy`` console script and ``python -m edgeproxy``.
"""

import sys

from edgeproxy.cli import main

if __name__ == "__main__":
    sys.exit(main())
