import sys
from pathlib import Path

# tests/ (the shared `fixtures` package) and tests/interop (the Prosody fixture).
sys.path.insert(0, str(Path(__file__).parent.parent))
sys.path.insert(0, str(Path(__file__).parent.parent / "interop"))
