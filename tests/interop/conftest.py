import sys
from pathlib import Path

# This directory (_interop_lab.py); tests/conftest.py puts tests/ (the package `fixtures`) there.
sys.path.insert(0, str(Path(__file__).parent))
