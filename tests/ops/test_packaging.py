"""The systemd unit stays in step with the lifecycle (reload, graceful stop within the drain bound,
no restart for what only the operator can fix), passes ``systemd-analyze verify`` with the
installed path, and the sample configuration it reads is valid and keeps its state where the unit
lets it write."""

from __future__ import annotations

import configparser
import os
import subprocess
import sys
from pathlib import Path

from edgeproxy.config import load_config
from edgeproxy.ops.exitcodes import NO_RESTART, ExitCode
from edgeproxy.ops.lifecycle import DRAIN_BOUND_SECONDS
from fixtures.tools import require_tool

UNIT = Path(__file__).resolve().parents[2] / "packaging" / "edgeproxy.service"


def unit() -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(UNIT.read_text(encoding="utf-8"))
    return parser


def test_unit_runs_serve_and_reloads_with_sighup_or_the_cli():
    service = unit()["Service"]
    assert service["Type"] == "exec"
    assert service["ExecStart"].endswith("edgeproxy serve")
    assert "HUP" in service["ExecReload"] or "edgeproxy reload" in service["ExecReload"]


def test_unit_stops_with_sigterm_after_the_drain_bound_has_a_margin():
    service = unit()["Service"]
    assert service["KillSignal"] == "SIGTERM"
    assert DRAIN_BOUND_SECONDS < float(service["TimeoutStopSec"]) <= DRAIN_BOUND_SECONDS + 30


def test_unit_is_hardened():
    service = unit()["Service"]
    for key, value in {"NoNewPrivileges": "yes", "ProtectSystem": "strict", "PrivateTmp": "yes",
                       "ProtectHome": "yes", "RestrictNamespaces": "yes"}.items():
        assert service[key] == value
    assert service["User"] != "root"


# -- systemd-analyze verify, the documented install path -------------------------------------------

#: Where the unit expects edgeproxy: the documented virtual-environment install in /opt/edgeproxy.
DOCUMENTED_EXECUTABLE = "/opt/edgeproxy/bin/edgeproxy"
SAMPLE_CONFIG = UNIT.parent / "edgeproxy.toml"


def installed_executable() -> Path:
    """The ``edgeproxy`` console script of the environment running the tests (``.venv/bin``)."""
    path = Path(sys.executable).parent / "edgeproxy"
    assert os.access(path, os.X_OK), f"{path}: edgeproxy is not installed in this environment"
    return path


def verify(unit_text: str, directory: Path) -> subprocess.CompletedProcess[str]:
    systemd_analyze = require_tool("systemd-analyze", "systemd")
    copy = directory / "edgeproxy.service"
    copy.write_text(unit_text, encoding="utf-8")
    return subprocess.run([systemd_analyze, "verify", str(copy)], capture_output=True, text=True, timeout=60)


def test_unit_starts_the_documented_venv_install():
    assert unit()["Service"]["ExecStart"] == f"{DOCUMENTED_EXECUTABLE} serve"


def test_unit_passes_systemd_analyze_verify_with_the_installed_path(tmp_path):
    """The unit as shipped, verified with ExecStart pointing at where edgeproxy is installed here
    (a copy with the documented /opt path replaced: the test machine has no /opt install)."""
    text = UNIT.read_text(encoding="utf-8")
    done = verify(text.replace(DOCUMENTED_EXECUTABLE, str(installed_executable())), tmp_path)
    assert done.returncode == 0, done.stderr
    assert "edgeproxy.service" not in done.stderr, done.stderr


def test_systemd_analyze_verify_refuses_an_executable_that_is_not_there(tmp_path):
    text = UNIT.read_text(encoding="utf-8")
    done = verify(text.replace(DOCUMENTED_EXECUTABLE, str(tmp_path / "bin" / "edgeproxy")), tmp_path)
    assert done.returncode != 0 and "is not executable" in done.stderr


def test_unit_does_not_restart_what_only_the_operator_can_fix():
    statuses = {int(s) for s in unit()["Service"]["RestartPreventExitStatus"].split()}
    assert statuses == {int(code) for code in NO_RESTART}
    assert ExitCode.ADDRESS_IN_USE not in statuses  # the old process may still be releasing it


# -- the sample configuration ---------------------------------------------------------------------


def test_sample_configuration_is_valid_for_the_cli(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "edgeproxy", "config", "validate", "--config", str(SAMPLE_CONFIG)],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
        env={**os.environ, "EDGEPROXY_CONFIG": ""},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"configuration {SAMPLE_CONFIG}: OK")


def test_sample_configuration_keeps_its_state_where_the_unit_lets_it_write():
    config = load_config(SAMPLE_CONFIG)
    service = unit()["Service"]
    assert service["Environment"] == "EDGEPROXY_CONFIG=/etc/edgeproxy/edgeproxy.toml"
    state = Path(config.edge.state_dir)
    assert state.is_absolute() and config.state_dir == state  # not resolved against /etc/edgeproxy
    assert state == Path("/var/lib") / service["StateDirectory"]
    assert str(state) in service["ReadWritePaths"].split()
    assert Path("/etc") not in state.parents
