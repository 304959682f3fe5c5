"""Appliance mode: a read-only root, every write under the state dir, the override file, logs on
stderr only, an unprivileged process.

The configuration tests run the real CLI (``edgeproxy config validate``). The appliance test
runs ``edgeproxy serve --appliance`` in a private mount namespace where ``/`` is read-only and
only the state dir is writable (see :func:`read_only_root_script`), as ``nobody``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from edgeproxy.config import OVERRIDE_FILE, load_config

PYTHON = sys.executable
CLI_SECONDS = 60


def edgeproxy_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PYTHON, "-m", "edgeproxy", *args], capture_output=True, text=True,
                          timeout=CLI_SECONDS, env={**os.environ, **(env or {})})


def appliance_config(directory: Path, state_dir: Path, *, appliance_key: bool = True, extra: str = "") -> Path:
    """A read-only-style configuration (in ``directory``) whose state lives in ``state_dir``."""
    path = directory / "edgeproxy.toml"
    key = "appliance = true\n" if appliance_key else ""
    path.write_text(
        f'[edge]\ndomains = ["contoso.test"]\nstate-dir = "{state_dir}"\n{key}'
        '[admin]\nlisten = "127.0.0.1:9269"\n'
        f"{extra}"
    )
    return path


# -- the override file ---------------------------------------------------------------------------


def test_the_override_file_in_the_state_dir_is_merged_over_the_configuration(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    config = appliance_config(tmp_path, state, extra='[gateway]\nmax-queued = 500\nqueue-wait = 10.0\n')
    (state / OVERRIDE_FILE).write_text(
        '[admin]\nlisten = "127.0.0.1:9300"\n[gateway]\nmax-queued = 700\n[tls]\ncertificate = "certs/edge.pem"\n')
    loaded = load_config(config)
    assert loaded.edge.appliance
    assert loaded.admin.listen == "127.0.0.1:9300"  # replaced
    assert (loaded.gateway.max_queued, loaded.gateway.queue_wait) == (700, 10.0)  # merged key by key
    assert loaded.source == str(config)  # a reload reads the file again
    assert loaded.path(loaded.tls.certificate) == state / "certs/edge.pem"  # relative to the state dir


def test_the_override_file_is_ignored_outside_appliance_mode(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / OVERRIDE_FILE).write_text('[admin]\nlisten = "127.0.0.1:9300"\n')
    config = appliance_config(tmp_path, state, appliance_key=False)
    assert load_config(config).admin.listen == "127.0.0.1:9269"
    assert load_config(config, appliance=True).admin.listen == "127.0.0.1:9300"  # serve --appliance


def test_an_override_that_breaks_a_rule_is_refused_naming_both_files(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    config = appliance_config(tmp_path, state)
    (state / OVERRIDE_FILE).write_text("[gateway]\nmax-queued = 0\n")
    done = edgeproxy_cli("config", "validate", "--config", str(config))
    assert done.returncode == 1
    assert f"{config} with {state / OVERRIDE_FILE}: [gateway] max-queued: must be an integer ≥ 1, got 0" in done.stderr


def test_the_override_may_not_move_the_state_dir(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    config = appliance_config(tmp_path, state)
    (state / OVERRIDE_FILE).write_text('[edge]\nstate-dir = "/elsewhere"\n')
    done = edgeproxy_cli("config", "validate", "--config", str(config))
    assert done.returncode == 1
    assert "[edge] state-dir cannot be overridden" in done.stderr


def test_appliance_mode_needs_an_absolute_state_dir(tmp_path: Path) -> None:
    config = tmp_path / "edgeproxy.toml"
    config.write_text('[edge]\nappliance = true\nstate-dir = "var"\n')
    done = edgeproxy_cli("config", "validate", "--config", str(config))
    assert done.returncode == 1
    assert "must be an absolute path in appliance mode" in done.stderr
