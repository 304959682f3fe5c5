"""Helpers shared by the policy tests (imported by name: tests/policy is on sys.path)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


class CliResult:
    def __init__(self, code: int, out: str, err: str) -> None:
        self.code, self.out, self.err = code, out, err

    def __repr__(self) -> str:
        return f"CliResult(code={self.code}, out={self.out!r}, err={self.err!r})"


def write_config(directory: Path, domains: tuple[str, ...] = ("contoso.test",)) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "edgeproxy.toml"
    listed = ", ".join(f'"{d}"' for d in domains)
    path.write_text(f'[edge]\ndomains = [{listed}]\nstate-dir = "state"\n', encoding="utf-8")
    return path


def run_cli_subprocess(config_path: Path, *args: str) -> CliResult:
    """Run the real ``edgeproxy`` command in a child process."""
    proc = subprocess.run(
        [sys.executable, "-m", "edgeproxy", *args, "--config", str(config_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return CliResult(proc.returncode, proc.stdout, proc.stderr)
