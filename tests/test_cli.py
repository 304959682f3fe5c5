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
