"""``[pool]`` in the configuration and ``edgeproxy pool secret|status``, over the real command line."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from pathlib import Path

import pytest


def edgeproxy(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgeproxy", *args, "--config", str(config)],
        capture_output=True, text=True, timeout=60,
    )


def config_file(tmp_path: Path, pool: str, tls: str = "") -> Path:
    path = tmp_path / "edgeproxy.toml"
    path.write_text(f'[edge]\ndomains = ["contoso.test"]\nstate-dir = "state"\n{tls}[pool]\n{pool}\n')
    return path


@pytest.mark.parametrize(
    ("pool", "refusal"),
    [
        ('role = "primary"', 'pool.listen is required with pool.role = "primary"'),
        ('role = "member"', 'pool.primary is required with pool.role = "member"'),
        ('role = "member"\nprimary = "127.0.0.1:5270"\nlisten = "127.0.0.1:5271"',
         'pool.listen is set but pool.role is "member": it is used only by a primary'),
        ('listen = "127.0.0.1:5270"', 'pool.listen is set but pool.role is "standalone"'),
        ('role = "primary"\nlisten = "10.0.0.1:5270"',
         "pool.listen 10.0.0.1:5270 is not a loopback address: set pool.tls = true"),
        ('role = "member"\nprimary = "edge1.contoso.test:5270"',
         "pool.primary edge1.contoso.test:5270 is not a loopback address: set pool.tls = true"),
        ('role = "member"\nprimary = "127.0.0.1"', "pool.primary '127.0.0.1' is not HOST:PORT"),
        ('role = "member"\nprimary = "127.0.0.1:0"', "pool.primary 127.0.0.1:0: the port must be 1-65535"),
        ('role = "leader"', '[pool] role: must be one of "standalone", "primary" or "member"'),
        ('role = "member"\nprimary = "127.0.0.1:5270"\ninterval = 0', "[pool] interval: must be a number > 0"),
    ],
)
def test_a_pool_setting_that_breaks_a_rule_is_refused_in_words(tmp_path: Path, pool: str, refusal: str) -> None:
    result = edgeproxy(config_file(tmp_path, pool), "config", "validate")
    assert result.returncode == 1
    assert refusal in result.stderr and result.stderr.startswith("edgeproxy: ")


def test_pool_tls_needs_trust_anchors_and_then_allows_a_remote_primary(tmp_path: Path) -> None:
    pool = 'role = "member"\nprimary = "edge1.contoso.test:5270"\ntls = true'
    untrusted = edgeproxy(config_file(tmp_path, pool, '[tls]\ntrust = ""\n'), "config", "validate")
    assert untrusted.returncode == 1 and "pool.tls needs trust anchors in tls.trust" in untrusted.stderr
    assert edgeproxy(config_file(tmp_path, pool), "config", "validate").returncode == 0


def test_pool_secret_is_created_once_on_a_primary_private_and_printed(tmp_path: Path) -> None:
    config = config_file(tmp_path, 'role = "primary"\nlisten = "127.0.0.1:5270"')
    first = json.loads(edgeproxy(config, "pool", "secret", "--json").stdout)
    path = Path(first["path"])
    assert first["created"] is True and path == tmp_path / "state" / "pool.secret"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text().strip() == first["secret"] and len(first["secret"]) >= 40
    again = edgeproxy(config, "pool", "secret")
    assert again.returncode == 0 and again.stdout.splitlines()[-1] == first["secret"]
    assert json.loads(edgeproxy(config, "pool", "secret", "--json").stdout)["created"] is False


def test_a_member_never_makes_a_pool_secret_of_its_own(tmp_path: Path) -> None:
    config = config_file(tmp_path, 'role = "member"\nprimary = "127.0.0.1:5270"')
    result = edgeproxy(config, "pool", "secret")
    assert result.returncode == 1 and result.stdout == ""
    assert "copy it from the primary" in result.stderr and result.stderr.startswith("edgeproxy: ")
    assert not (tmp_path / "state" / "pool.secret").exists()


def test_a_pool_secret_others_can_read_is_refused(tmp_path: Path) -> None:
    config = config_file(tmp_path, 'role = "member"\nprimary = "127.0.0.1:5270"\nsecret-file = "pool.secret"')
    secret = tmp_path / "pool.secret"
    secret.write_text("s3cret\n")
    secret.chmod(0o644)
    result = edgeproxy(config, "pool", "secret")
    assert result.returncode == 1 and f"chmod 0600 {secret}" in result.stderr


def test_pool_status_of_a_standalone_edge_and_of_a_member_not_started_yet(tmp_path: Path) -> None:
    standalone = edgeproxy(config_file(tmp_path, ""), "pool", "status")
    assert standalone.returncode == 0 and "role: standalone" in standalone.stdout
    member = config_file(tmp_path, 'role = "member"\nprimary = "127.0.0.1:5270"')
    status = json.loads(edgeproxy(member, "pool", "status", "--json").stdout)
    assert status == {
        "role": "member", "listen": None, "primary": "127.0.0.1:5270", "replica": False,
        "generation": status["generation"], "primary-generation": None, "last-answer": None,
        "last-applied": None, "error": "", "error-since": None,
    }
    text = edgeproxy(member, "pool", "status").stdout
    assert "primary-generation: none (no copy received yet)" in text
    assert "not a replica yet" in text
