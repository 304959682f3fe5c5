"""The sans-IO cores of the channel and the gateway never import trio (DESIGN: dependency direction)."""

from __future__ import annotations

import subprocess
import sys

import pytest

PURE = [
    "edgeproxy.loopback.frames",
    "edgeproxy.loopback.reliable",
    "edgeproxy.gateway.translate",
    "edgeproxy.gateway.sip.lexical",
    "edgeproxy.gateway.sip.message",
    "edgeproxy.gateway.sip.uri",
    "edgeproxy.gateway.sip.transaction",
    "edgeproxy.gateway.sip.registrar",
    "edgeproxy.gateway.sip.digest",
]


@pytest.mark.parametrize("module", PURE)
def test_pure_module_does_not_import_trio(module: str) -> None:
    code = f"import sys, {module}; sys.exit(1 if 'trio' in sys.modules else 0)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60)
    assert result.returncode == 0, f"{module} imports trio: {result.stderr.decode()[-300:]}"
