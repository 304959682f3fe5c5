"""The documentation stands alone: README.md and every ``docs/*.md`` make sense to someone who has
only this repository.

A user never sees the team's private references (``../shared/``: a SPEC, a DESIGN, issue notes),
so the documents must not send them there: no ``../shared``, no "SPEC §N" or "DESIGN" citation,
no "issue N"; the behaviour is cited as ``docs/spec.md §N`` and the design as ``docs/design.md``.
Every relative link must lead to a file of the repository (and, with a ``#fragment``, to a heading
of that file), every ``docs/NAME.md`` and every repository path in a code span (`` `tests/…` ``)
mentioned must exist, and the README links to every file in ``docs/``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS_DIR = ROOT / "docs"

# Documents another engineer is still cleaning of private references. Each is expected to fail
# (strict xfail): once its file is clean the test passes, the xfail turns into a failure, and the
# file comes off this list. The list should end up empty.
PENDING: frozenset[str] = frozenset(
    {
    }
)

#: What a document must not contain, with what to write instead.
FORBIDDEN: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"\.\./shared"), "a private path: describe the thing itself"),
    (re.compile(r"/work/shared"), "a private path: describe the thing itself"),
    (re.compile(r"\bSPEC\b"), "cite docs/spec.md §N instead"),
    (re.compile(r"\bDESIGN\b"), "cite docs/design.md instead"),
    (re.compile(r"\bissues? \d+", re.IGNORECASE), "say the thing itself, not the issue number"),
)

_FENCE = re.compile(r"^\s*(```|~~~)")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_LINK = re.compile(r"(?<!!)\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_DOCS_MENTION = re.compile(r"(?<![\w/.-])docs/[\w.-]+\.md\b")
#: A repository path in a code span: ``src/edgeproxy/…``, ``tests/…``, ``bench/…`` …
_PATH_MENTION = re.compile(r"`((?:src|tests|bench|packaging|fuzz|tools|\.ci)/[\w./-]*)`")
#: A path segment that stands for any name (``fuzz/seeds/NAME/``).
_PLACEHOLDER = re.compile(r"^[A-Z]+$")
_EXTERNAL = re.compile(r"^[a-z][a-z0-9+.-]*:", re.IGNORECASE)


def documents() -> list[Path]:
    """README.md and every Markdown file in docs/."""
    return [ROOT / "README.md", *sorted(DOCS_DIR.glob("*.md"))]


def _name(path: Path, root: Path = ROOT) -> str:
    return path.relative_to(root).as_posix()


def _prose_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) for every line outside fenced code blocks."""
    lines = []
    fenced = False
    for number, line in enumerate(text.splitlines(), 1):
        if _FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            lines.append((number, line))
    return lines


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every anchor of a Markdown file's headings (a repeated heading gets ``-1``, ``-2`` …)."""
    seen: dict[str, int] = {}
    result: set[str] = set()
    for _, line in _prose_lines(path.read_text(encoding="utf-8")):
        match = _HEADING.match(line)
        if match is None:
            continue
        base = slug(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        result.add(base if count == 0 else f"{base}-{count}")
    return result


def problems(path: Path, root: Path = ROOT) -> list[str]:
    """Everything that keeps one document (under ``root``) from standing alone, one line each."""
    found: list[str] = []
    name = _name(path, root)
    text = path.read_text(encoding="utf-8")
    for number, line in enumerate(text.splitlines(), 1):
        for pattern, advice in FORBIDDEN:
            for match in pattern.finditer(line):
                found.append(f"{name}:{number}: {match.group(0)!r} — {advice}")
        for match in _DOCS_MENTION.finditer(line):
            if not (root / match.group(0)).is_file():
                found.append(f"{name}:{number}: {match.group(0)} does not exist")
        for match in _PATH_MENTION.finditer(line):
            mentioned = match.group(1)
            if any(_PLACEHOLDER.match(part) for part in mentioned.split("/")):
                continue
            if not (root / mentioned).exists():
                found.append(f"{name}:{number}: {mentioned} does not exist")
    for number, line in _prose_lines(text):
        for match in _LINK.finditer(line):
            target = match.group(1)
            if _EXTERNAL.match(target):
                continue
            file_part, _, fragment = target.partition("#")
            linked = (path.parent / file_part).resolve() if file_part else path
            if not linked.exists():
                found.append(f"{name}:{number}: link {target} leads to no file")
            elif fragment and linked.suffix == ".md" and fragment not in anchors(linked):
                found.append(f"{name}:{number}: link {target}: no heading #{fragment}")
    return found


def _params() -> list[object]:
    params: list[object] = []
    for path in documents():
        name = _name(path)
        marks = (
            [pytest.mark.xfail(strict=True, reason="another engineer is cleaning this file")]
            if name in PENDING
            else []
        )
        params.append(pytest.param(path, id=name, marks=marks))
    return params


@pytest.mark.parametrize("path", _params())
def test_document_stands_alone(path: Path) -> None:
    assert problems(path) == []


def test_pending_files_exist() -> None:
    """A file on the pending list that is gone (renamed, removed) must leave the list too."""
    missing = sorted(name for name in PENDING if not (ROOT / name).is_file())
    assert missing == []


def test_readme_links_every_file_in_docs() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    linked = {
        (ROOT / target.partition("#")[0]).resolve()
        for target in _LINK.findall(readme)
        if not _EXTERNAL.match(target)
    }
    files = [p for p in DOCS_DIR.iterdir() if p.is_file() and not p.name.startswith(".")]
    unlinked = sorted(_name(p) for p in files if p.resolve() not in linked)
    assert unlinked == []


def test_checker_finds_each_kind_of_problem(tmp_path: Path) -> None:
    """The checks above can fail: a document with one problem of each kind yields each."""
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "other.md").write_text("# Other\n\n## 2. Partners\n", encoding="utf-8")
    bad = tmp_path / "docs" / "bad.md"
    bad.write_text(
        "# Bad\n\n"
        "See ../shared/SPEC.md and SPEC §2, DESIGN principle 1, issue 14.\n"
        "[gone](missing.md) [fine](other.md#2-partners) [no anchor](other.md#3-nothing)\n"
        "`docs/nowhere.md` `tests/nowhere.py` `fuzz/seeds/NAME/`\n"
        "```\n[in code](not-checked.md)\n```\n",
        encoding="utf-8",
    )
    found = "\n".join(problems(bad, root=tmp_path))
    for expected in (
        "'../shared'",
        "'SPEC'",
        "'DESIGN'",
        "'issue 14'",
        "link missing.md leads to no file",
        "no heading #3-nothing",
        "docs/nowhere.md does not exist",
        "tests/nowhere.py does not exist",
    ):
        assert expected in found
    assert "other.md#2-partners" not in found
    assert "not-checked.md" not in found
    assert "NAME" not in found


def test_slug_follows_github() -> None:
    assert slug("7. XMPP ⇄ SIP translation") == "7-xmpp--sip-translation"
    assert slug("13.3 Who may send requests") == "133-who-may-send-requests"
    assert slug("The `[limits]` section") == "the-limits-section"


#: Quick-start commands that change the store or write files, and need no running server.
_OFFLINE_COMMANDS = frozenset({"policy", "partner", "gateway", "user", "cert", "config"})


def quick_start_commands() -> list[list[str]]:
    """The ``$E …`` lines of the README's quick start that run without a server, as argv."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    commands = []
    for line in section.splitlines():
        if line.startswith("$E "):
            argv = line.split("#", 1)[0].split()[1:]
            if argv[0] in _OFFLINE_COMMANDS:
                commands.append(argv)
    return commands


def test_readme_quick_start_commands_work_on_the_embedded_default(tmp_path: Path) -> None:
    """What the quick start tells a user to type is accepted by today's CLI: the embedded default
    configuration (no --config, no $EDGEPROXY_CONFIG), state and certificates under the current
    directory."""
    commands = quick_start_commands()
    assert [argv[0] for argv in commands] == ["policy", "partner", "cert"]
    env = {k: v for k, v in os.environ.items() if k != "EDGEPROXY_CONFIG"}
    for argv in commands:
        done = subprocess.run(
            [sys.executable, "-m", "edgeproxy", *argv],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
        )
        assert done.returncode == 0, (argv, done.stderr)
    assert (tmp_path / "var" / "policy.sqlite3").is_file()
    assert (tmp_path / "certs" / "edge.pem").is_file()
