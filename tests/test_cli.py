import subprocess
import sys

import edgeproxy
from edgeproxy.cli import main


def test_version_flag_prints_package_version(capsys):
    try:
        main(["--version"])
    except SystemExit as exc:
        assert exc.code == 0
    assert edgeproxy.__version__ in capsys.readouterr().out


def test_python_dash_m_help_lists_serve():
    out = subprocess.run(
        [sys.executable, "-m", "edgeproxy", "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert "serve" in out


def test_fastxml_is_a_compiled_extension():
    import importlib.machinery

    from edgeproxy import _fastxml

    assert _fastxml.__file__.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))


def _serve_without_running(monkeypatch, capsys, *argv: str) -> list[dict]:
    """``edgeproxy serve`` up to the point where it would run the server; the JSON event lines
    it wrote on stderr before that."""
    import json

    import trio

    started: list[object] = []
    monkeypatch.setattr(trio, "run", lambda *args: started.append(args))
    capsys.readouterr()
    assert main(["serve", *argv]) == 0
    assert len(started) == 1
    return [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]


def test_first_start_on_the_embedded_default_creates_a_demo_user_and_shows_its_password_once(
    tmp_path, monkeypatch, capsys
):
    from edgeproxy.policy.credentials import password_matches
    from edgeproxy.policy.store import Store

    monkeypatch.chdir(tmp_path)  # the embedded default keeps its state in ./var
    monkeypatch.delenv("EDGEPROXY_CONFIG", raising=False)
    monkeypatch.setenv("EDGEPROXY_LOG_FORMAT", "json")
    lines = _serve_without_running(monkeypatch, capsys)
    created = [line for line in lines if line["event"] == "demo-user-created"]
    assert len(created) == 1 and created[0]["id"] == "EP8008"
    password = created[0]["password"]
    assert created[0]["user"] == "sip:alice@contoso.test" and len(password) >= 16
    assert password in created[0]["message"]
    with Store.open(tmp_path / "var") as store:
        users = store.read()[1].users
    assert [u.sip for u in users] == ["sip:alice@contoso.test"]
    assert [c.algorithm for c in users[0].credentials] == ["MD5", "SHA-256"]
    assert all(password_matches(c, users[0].sip, password) for c in users[0].credentials)

    # The next start finds the store: no new user, the password is not shown again.
    again = _serve_without_running(monkeypatch, capsys)
    assert not [line for line in again if line["event"] == "demo-user-created"]
    with Store.open(tmp_path / "var") as store:
        assert store.read()[1].users == users


def test_an_operators_own_configuration_gets_no_demo_user(tmp_path, monkeypatch, capsys):
    from edgeproxy.config import default_config_text
    from edgeproxy.policy.store import STORE_FILE

    own = tmp_path / "edgeproxy.toml"
    own.write_text(default_config_text())  # even a copy of the embedded default
    monkeypatch.setenv("EDGEPROXY_LOG_FORMAT", "json")
    monkeypatch.setenv("EDGEPROXY_CONFIG", str(own))
    assert not _serve_without_running(monkeypatch, capsys)
    assert not _serve_without_running(monkeypatch, capsys, "--config", str(own))
    assert not (tmp_path / "var" / STORE_FILE).exists()  # serve left the store to the app
