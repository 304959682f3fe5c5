"""Fixtures for the policy tests: a configuration file with its own state dir, and a CLI runner."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from edgeproxy.cli import main


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


@pytest.fixture
def config_path(tmp_path: Path) -> Path:
    return write_config(tmp_path / "edge")


@pytest.fixture
def state_dir(config_path: Path) -> Path:
    return config_path.parent / "state"


@pytest.fixture
def cli(config_path: Path, capsys: pytest.CaptureFixture[str]) -> Callable[..., CliResult]:
    """Run ``edgeproxy ARGS --config <tmp config>`` in-process; usage errors return 2."""

    def run(*args: str) -> CliResult:
        capsys.readouterr()
        try:
            code = main([*args, "--config", str(config_path)])
        except SystemExit as exc:
            code = int(exc.code or 0)
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


def run_cli_subprocess(config_path: Path, *args: str) -> CliResult:
    """Run the real ``edgeproxy`` command in a child process."""
    proc = subprocess.run(
        [sys.executable, "-m", "edgeproxy", *args, "--config", str(config_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return CliResult(proc.returncode, proc.stdout, proc.stderr)
