import sys
from pathlib import Path

# This directory (prosody.py, c2s.py) and tests/ (the shared helper package `fixtures`).
sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent))
