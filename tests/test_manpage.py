"""The man page ``docs/edgeproxy.1``: what ``tools/manpage.py`` writes from the parser today
(regenerate with ``python tools/manpage.py --out docs/edgeproxy.1``), every command and option on
it, and groff formats it without a warning."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from edgeproxy.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "edgeproxy.1"
GENERATOR = ROOT / "tools" / "manpage.py"


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("edgeproxy_manpage_tool", GENERATOR)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


manpage = _generator()


def test_the_committed_page_is_what_the_parser_gives_today() -> None:
    expected = manpage.render(build_parser())
    assert PAGE.read_text(encoding="utf-8") == expected, (
        "docs/edgeproxy.1 is out of date: run python tools/manpage.py --out docs/edgeproxy.1"
    )


def test_check_mode_fails_on_a_stale_page_and_passes_on_a_fresh_one(tmp_path: Path) -> None:
    stale = tmp_path / "edgeproxy.1"
    stale.write_text(PAGE.read_text(encoding="utf-8").replace("gateway set", "gateway sett"))
    fresh = tmp_path / "fresh.1"

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, str(GENERATOR), *args], capture_output=True, text=True, timeout=60
        )

    assert run("--out", str(fresh)).returncode == 0
    assert run("--check", str(fresh)).returncode == 0
    failed = run("--check", str(stale))
    assert failed.returncode == 1 and "out of date" in failed.stderr


def test_every_command_and_every_option_is_on_the_page() -> None:
    page = PAGE.read_text(encoding="utf-8")
    for words, _help, parser in manpage.commands(build_parser()):
        assert f'.SS "{manpage.escape(" ".join(words))}"' in page, words
        for action in parser._actions:
            if action.help == "==SUPPRESS==" or "--config" in action.option_strings:
                continue
            for option in action.option_strings:
                if option not in ("-h", "--help"):
                    assert f"\\fB{manpage.escape(option)}\\fR" in page, (words, option)


def test_the_page_is_ascii_whatever_the_help_texts_hold() -> None:
    PAGE.read_bytes().decode("ascii")
    assert manpage.escape("1–65535 ≥ 1") == "1\\[u2013]65535 \\[u2265] 1"


def test_text_that_troff_would_take_for_a_request_is_protected() -> None:
    assert manpage.escape(".hidden\n'quoted") == "\\&.hidden\n\\&'quoted"
    assert manpage.escape("C:\\dir --opt") == "C:\\edir \\-\\-opt"


@pytest.mark.skipif(shutil.which("groff") is None, reason="groff is not installed")
def test_groff_formats_the_page_without_a_warning() -> None:
    result = subprocess.run(
        ["groff", "-man", "-Tutf8", "-ww", "-z", str(PAGE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0 and result.stderr == "", result.stderr


@pytest.mark.skipif(shutil.which("man") is None, reason="man is not installed")
def test_man_shows_the_page_without_a_warning() -> None:
    result = subprocess.run(
        ["man", "--warnings=w", "-l", str(PAGE)],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "MANWIDTH": "80", "LANG": "C.UTF-8"},
    )
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert "edgeproxy user set-password" in result.stdout
