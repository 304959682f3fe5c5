"""Fixtures for the policy tests: a configuration file with its own state dir, and a CLI runner."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from _policy_helpers import CliResult, write_config

from edgeproxy.cli import main


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
