"""``edgeproxy admin set-password``: the Control Panel's passwords, read from a file or standard
input, stored as an scrypt hash mode 0600 in the state dir. Run in a child process through the
command's own parser (``commands.admin.register``) until the command line registers the group;
then ``python -m edgeproxy admin set-password`` runs the same code."""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

from edgeproxy.ops.admin import verify_password

RUN = (
    "import argparse, sys\n"
    "from edgeproxy.commands import admin\n"
    "p = argparse.ArgumentParser(prog='edgeproxy'); sub = p.add_subparsers(required=True)\n"
    "admin.register(sub); a = p.parse_args(sys.argv[1:]); sys.exit(a.handler(a))\n"
)


def edgeproxy(tmp_path: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    config = tmp_path / "edgeproxy.toml"
    if not config.exists():
        config.write_text('[edge]\ndomains = ["contoso.test"]\nstate-dir = "state"\n', encoding="utf-8")
    return subprocess.run([sys.executable, "-c", RUN, *args, "--config", str(config)], input=stdin,
                          capture_output=True, text=True, timeout=60, check=False)


def test_a_password_from_standard_input_is_stored_hashed_and_private(tmp_path: Path) -> None:
    done = edgeproxy(tmp_path, "admin", "set-password", "--password-file", "-", stdin="correct horse\n")
    assert done.returncode == 0, done.stderr
    path = tmp_path / "state" / "ui-admin.password"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    stored = path.read_text()
    assert "correct horse" not in stored and verify_password(stored, "correct horse")


def test_the_read_only_role_has_its_own_password_and_clear_removes_it(tmp_path: Path) -> None:
    done = edgeproxy(tmp_path, "admin", "set-password", "--role", "read-only", "--password-file", "-",
                     stdin="just looking\n")
    assert done.returncode == 0, done.stderr
    path = tmp_path / "state" / "ui-read-only.password"
    assert path.exists() and not (tmp_path / "state" / "ui-admin.password").exists()
    assert edgeproxy(tmp_path, "admin", "set-password", "--role", "read-only", "--clear").returncode == 0
    assert not path.exists()


def test_a_short_password_or_one_on_the_command_line_is_refused(tmp_path: Path) -> None:
    done = edgeproxy(tmp_path, "admin", "set-password", "--password-file", "-", stdin="short\n")
    assert done.returncode == 1 and done.stderr.startswith("edgeproxy: refused: the password has fewer than 8")
    assert not (tmp_path / "state" / "ui-admin.password").exists()
    done = edgeproxy(tmp_path, "admin", "set-password", "--password", "on-the-command-line")
    assert done.returncode == 2 and "command line" in done.stderr


def test_json_says_what_changed_and_never_the_password(tmp_path: Path) -> None:
    import json

    done = edgeproxy(tmp_path, "admin", "set-password", "--password-file", "-", "--json", stdin="correct horse\n")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"kind": "admin-password", "before": {"role": "admin", "password-set": False},
                                       "after": {"role": "admin", "password-set": True}, "warnings": []}
    assert "correct horse" not in done.stdout and "scrypt" not in done.stdout
    done = edgeproxy(tmp_path, "admin", "set-password", "--clear", "--json")
    assert json.loads(done.stdout)["after"] == {"role": "admin", "password-set": False}
