"""The command line as a whole, walked from ``edgeproxy.cli.build_parser()``: every command and
every argument has a help text and none cites a document the user does not have; every command
that prints a result takes ``--json`` and is documented in ``docs/cli-json.md``; a change command's
``--json`` is ``{"kind", "before", "after", "warnings"}`` with its records as ``get --json`` shows
them; every message on stderr starts with ``edgeproxy: ``; shell completion answers."""

from __future__ import annotations

import argparse
import ast
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgeproxy.cli import build_parser, main

ROOT = Path(__file__).resolve().parent.parent
CLI_JSON_DOC = ROOT / "docs" / "cli-json.md"

#: Commands that print a result yet take no ``--json``, and why.
NO_JSON = {
    "serve": "runs the server in the foreground; what it writes is the event log "
    "(EDGEPROXY_LOG_FORMAT=json makes that JSON)",
    "stop": "its result is its exit status; it prints only progress (stopping, stopped)",
    "config show-default": "prints the default configuration file itself (TOML), to be "
    "redirected to a file and edited",
    "config export": "its output is always JSON (the export document)",
}

#: Text no help may contain: references to documents a user of this repository does not have.
FORBIDDEN = (
    re.compile(r"\bSPEC\b"),
    re.compile(r"\bissue\s+\d", re.IGNORECASE),
    re.compile(r"\.\./shared"),
    re.compile(r"DESIGN\.md"),
)

#: The keys of a change printed with ``--json`` (``commands.common.change_json``).
CHANGE_KEYS = {"kind", "before", "after", "warnings"}


def _subparsers(parser: argparse.ArgumentParser) -> argparse._SubParsersAction | None:
    return next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)


def _walk(
    parser: argparse.ArgumentParser, words: tuple[str, ...] = (), help: str | None = None
) -> Iterator[tuple[str, str | None, argparse.ArgumentParser]]:
    sub = _subparsers(parser)
    if sub is None:
        yield " ".join(words), help, parser
        return
    helps = {choice.dest: choice.help for choice in sub._choices_actions}
    for name, child in sub.choices.items():
        yield from _walk(child, (*words, name), helps.get(name))


COMMANDS = {name: (help, parser) for name, help, parser in _walk(build_parser())}


def _group_helps(
    parser: argparse.ArgumentParser, words: tuple[str, ...] = ()
) -> Iterator[tuple[str, str | None]]:
    """The help line of every command group (``user``, ``user contact``, …)."""
    sub = _subparsers(parser)
    if sub is None:
        return
    helps = {choice.dest: choice.help for choice in sub._choices_actions}
    for name, child in sub.choices.items():
        if _subparsers(child) is not None:
            yield " ".join((*words, name)), helps.get(name)
            yield from _group_helps(child, (*words, name))


GROUPS = dict(_group_helps(build_parser()))


def _arguments(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """The arguments a user sees in ``--help`` (not ``-h`` itself, not suppressed ones)."""
    return [
        a
        for a in parser._actions
        if a.help != argparse.SUPPRESS
        and not isinstance(a, argparse._HelpAction | argparse._SubParsersAction)
    ]


def _texts(parser: argparse.ArgumentParser) -> Iterator[str]:
    """Every user-visible text of one parser: description, epilog, each argument's help."""
    formatter = parser._get_formatter()
    yield from (t for t in (parser.description, parser.epilog) if t)
    for action in _arguments(parser):
        if action.help:
            yield formatter._expand_help(action)


def test_the_walk_finds_every_command_group() -> None:
    groups = {name.split()[0] for name in COMMANDS}
    assert {"serve", "config", "user", "policy", "gateway", "partner", "status"} <= groups
    assert "user contact add" in COMMANDS and "user" not in COMMANDS
    assert {"user", "user contact", "policy"} <= set(GROUPS)


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_has_a_help_line(command: str) -> None:
    help, _parser = COMMANDS[command]
    assert help and help.strip(), f"edgeproxy {command} has no help line in 'edgeproxy --help'"


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_argument_of_every_command_has_a_help_text(command: str) -> None:
    _help, parser = COMMANDS[command]
    missing = [
        "/".join(a.option_strings) or a.metavar or a.dest
        for a in _arguments(parser)
        if not (a.help and a.help.strip())
    ]
    assert not missing, f"edgeproxy {command}: no help for {', '.join(map(str, missing))}"


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_no_help_text_cites_a_document_the_user_does_not_have(command: str) -> None:
    help, parser = COMMANDS[command]
    texts = [help or "", *_texts(parser)]
    cited = [t for t in texts for pattern in FORBIDDEN if pattern.search(t)]
    assert not cited, f"edgeproxy {command}: {cited}"


@pytest.mark.parametrize("group", sorted(GROUPS))
def test_every_command_group_has_a_help_line_citing_no_internal_document(group: str) -> None:
    help = GROUPS[group]
    assert help and help.strip(), f"edgeproxy {group} has no help line"
    assert not [p for p in FORBIDDEN if p.search(help)], f"edgeproxy {group}: {help}"


def test_the_top_level_help_cites_no_internal_document() -> None:
    parser = build_parser()
    texts = list(_texts(parser))
    assert texts and not [t for t in texts for p in FORBIDDEN if p.search(t)]


def test_the_forbidden_patterns_catch_what_they_are_for() -> None:
    bad = ["see SPEC §2.1", "as in issue 14", "../shared/SPEC.md", "DESIGN.md says"]
    good = ["an issued certificate", "RFC 3261 §22.4", "a specific domain"]
    assert all(any(p.search(t) for p in FORBIDDEN) for t in bad)
    assert not any(p.search(t) for t in good for p in FORBIDDEN)


def _takes_json(parser: argparse.ArgumentParser) -> bool:
    return any("--json" in a.option_strings for a in parser._actions)


@pytest.mark.parametrize("command", sorted(set(COMMANDS) - set(NO_JSON)))
def test_every_command_that_prints_a_result_takes_json(command: str) -> None:
    assert _takes_json(COMMANDS[command][1]), f"edgeproxy {command} has no --json"


def test_the_exceptions_name_real_commands_that_indeed_have_no_json() -> None:
    assert set(NO_JSON) <= set(COMMANDS)
    assert not [c for c in NO_JSON if _takes_json(COMMANDS[c][1])]


@pytest.mark.parametrize(
    "command", sorted(c for c in COMMANDS if _takes_json(COMMANDS[c][1]))
)
def test_every_json_output_is_documented(command: str) -> None:
    doc = CLI_JSON_DOC.read_text(encoding="utf-8")
    assert f"`{command}" in doc, f"docs/cli-json.md has no row for edgeproxy {command} --json"


# -- the real CLI ------------------------------------------------------------------------------

ALICE = "sip:alice@contoso.test"


@pytest.fixture
def config_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A configuration whose state is under ``tmp_path``, the working directory of the in-process
    and child commands alike (``--password-file password`` is read from there)."""
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "edgeproxy.toml"
    path.write_text('[edge]\ndomains = ["contoso.test"]\nstate-dir = "state"\n', encoding="utf-8")
    (tmp_path / "password").write_text("correct horse battery\n", encoding="utf-8")
    return path


def _run(config_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``edgeproxy ARGS --config CONFIG`` in a child process."""
    return subprocess.run(
        [sys.executable, "-m", "edgeproxy", *args, "--config", str(config_path)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=config_path.parent,
    )


def _inproc(capsys: pytest.CaptureFixture[str], config_path: Path, *args: str) -> tuple[int, str]:
    """The same command run in this process (for the setup and the reads around a change)."""
    capsys.readouterr()
    try:
        code = main([*args, "--config", str(config_path)])
    except SystemExit as exc:
        code = int(exc.code or 0)
    return code, capsys.readouterr().out


def _get(capsys: pytest.CaptureFixture[str], config_path: Path, get: tuple[str, ...]) -> object:
    """What ``get --json`` shows, or None when the record does not exist."""
    code, out = _inproc(capsys, config_path, *get, "--json")
    return json.loads(out) if code == 0 else None


#: (setup commands, the change with --json, its kind, the get that shows its record).
CHANGES = {
    "user new": ((), ("user", "new", ALICE, "--name", "Alice"), "user", ("user", "get", ALICE)),
    "user set": (
        (("user", "new", ALICE),),
        ("user", "set", ALICE, "--site", "Tokyo", "--sba"),
        "user",
        ("user", "get", ALICE),
    ),
    "user remove": ((("user", "new", ALICE),), ("user", "remove", ALICE), "user", ("user", "get", ALICE)),
    "user set-password": (
        (("user", "new", ALICE),),
        ("user", "set-password", ALICE, "--password-file", "password"),
        "user",
        ("user", "get", ALICE),
    ),
    "user clear-password": (
        (("user", "new", ALICE), ("user", "set-password", ALICE, "--password-file", "password")),
        ("user", "clear-password", ALICE),
        "user",
        ("user", "get", ALICE),
    ),
    "user contact add": (
        (("user", "new", ALICE),),
        ("user", "contact", "add", ALICE, "bob@example.org"),
        "user",
        ("user", "get", ALICE),
    ),
    "user contact remove": (
        (("user", "new", ALICE), ("user", "contact", "add", ALICE, "bob@example.org")),
        ("user", "contact", "remove", ALICE, "bob@example.org"),
        "user",
        ("user", "get", ALICE),
    ),
    "policy new": ((), ("policy", "new", "gold", "--xmpp"), "policy", ("policy", "get", "gold")),
    "policy set": (
        (("policy", "new", "gold"),),
        ("policy", "set", "gold", "--xmpp", "--description", "the gold users"),
        "policy",
        ("policy", "get", "gold"),
    ),
    "policy remove": ((("policy", "new", "gold"),), ("policy", "remove", "gold"), "policy", ("policy", "get", "gold")),
    "policy grant": (
        (("policy", "new", "gold"), ("user", "new", ALICE)),
        ("policy", "grant", ALICE, "gold"),
        "user",
        ("user", "get", ALICE),
    ),
    "gateway set": ((), ("gateway", "set", "--connection-limit", "500"), "gateway", ("gateway", "get")),
    "partner new": ((), ("partner", "new", "fabrikam.com"), "partner", ("partner", "get", "fabrikam.com")),
    "partner set": (
        (("partner", "new", "fabrikam.com"),),
        ("partner", "set", "fabrikam.com", "--description", "Fabrikam"),
        "partner",
        ("partner", "get", "fabrikam.com"),
    ),
    "partner remove": (
        (("partner", "new", "fabrikam.com"),),
        ("partner", "remove", "fabrikam.com"),
        "partner",
        ("partner", "get", "fabrikam.com"),
    ),
}


@pytest.mark.parametrize("command", sorted(CHANGES))
def test_a_change_with_json_prints_kind_before_after_and_warnings_as_get_shows_them(
    command: str, config_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    setup, change, kind, get = CHANGES[command]
    for argv in setup:
        assert _inproc(capsys, config_path, *argv)[0] == 0, argv
    before = _get(capsys, config_path, get)

    result = _run(config_path, *change, "--json")

    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    assert set(printed) == CHANGE_KEYS
    assert printed["kind"] == kind
    assert printed["before"] == before
    assert printed["after"] == _get(capsys, config_path, get)
    assert printed["warnings"] == []
    if command.endswith(" new"):
        assert printed["before"] is None and printed["after"] is not None
    if command.endswith(" remove") and not command.startswith("user contact"):
        assert printed["before"] is not None and printed["after"] is None


def test_change_commands_cover_every_new_set_and_remove_of_the_store() -> None:
    store_groups = ("user", "policy", "gateway", "partner")
    changes = {
        c for c in COMMANDS if c.split()[0] in store_groups and c.split()[-1] in {"new", "set", "remove"}
    }
    assert changes <= set(CHANGES)


def test_a_partner_change_with_a_matrix_warning_lists_it_without_the_warning_prefix(
    config_path: Path,
) -> None:
    result = _run(config_path, "partner", "new", "fabrikam.com", "--tls", "optional", "--json")
    assert result.returncode == 0, result.stderr
    warnings = json.loads(result.stdout)["warnings"]
    assert warnings and not [w for w in warnings if w.startswith("warning:")]
    assert result.stderr.startswith("edgeproxy: warning: ")


def test_a_change_in_text_shows_each_changed_field_before_and_after(
    config_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _inproc(capsys, config_path, "user", "new", ALICE, "--name", "Alice")[0] == 0

    result = _run(config_path, "user", "set", ALICE, "--site", "Tokyo", "--name", "Alice")

    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [f"user {ALICE} saved", "  site: - → Tokyo"]


def test_a_gateway_change_in_text_hides_the_dialback_secret(config_path: Path) -> None:
    secret = config_path.parent / "secret"
    secret.write_text("s3cret-s3cret-s3cret-s3cret\n", encoding="utf-8")

    result = _run(config_path, "gateway", "set", "--dialback-secret-file", str(secret))

    assert result.returncode == 0, result.stderr
    assert "s3cret" not in result.stdout
    assert "  dialback-secret: (changed, hidden; see --json)" in result.stdout.splitlines()


def test_a_change_that_changes_nothing_says_so(
    config_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _inproc(capsys, config_path, "policy", "new", "gold", "--xmpp")[0] == 0
    result = _run(config_path, "policy", "set", "gold", "--xmpp")
    assert result.stdout.splitlines() == ["policy gold saved", "  (nothing changed)"]


def _stderr_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    """The messages on stderr, without argparse's usage lines."""
    lines = result.stderr.splitlines()
    return [line for line in lines if line and not line.startswith(("usage:", " "))]


@pytest.mark.parametrize(
    "argv",
    [
        ("user", "new"),  # a usage error from the parser
        ("user", "set-password", ALICE, "--password", "x"),  # a secret on the command line
        ("policy", "grant", ALICE),  # neither POLICY nor --none
        ("policy", "remove", "global"),  # refused by validation
        ("user", "remove", ALICE),  # not found
        ("no-such-command",),
    ],
    ids=lambda argv: " ".join(argv),
)
def test_every_error_on_stderr_starts_with_edgeproxy(argv: tuple[str, ...], config_path: Path) -> None:
    result = _run(config_path, *argv)
    assert result.returncode in (1, 2)
    lines = _stderr_lines(result)
    assert lines and all(line.startswith("edgeproxy: ") for line in lines), result.stderr
    assert not [line for line in lines if line.startswith(("edgeproxy: error:", "edgeproxy user"))]


def _complete(line: str, cwd: Path) -> list[str]:
    """What ``edgeproxy`` offers for Tab at the end of ``line`` (argcomplete's protocol)."""
    out = cwd / ".completions"
    env = {
        **os.environ,
        "_ARGCOMPLETE": "1",
        "_ARGCOMPLETE_IFS": "\n",
        "_ARGCOMPLETE_STDOUT_FILENAME": str(out),
        "COMP_LINE": line,
        "COMP_POINT": str(len(line)),
    }
    env.pop("EDGEPROXY_CONFIG", None)
    result = subprocess.run(
        [sys.executable, "-m", "edgeproxy"], env=env, capture_output=True, text=True, timeout=60,
        cwd=cwd,
    )
    assert result.returncode == 0, result.stderr
    offered = out.read_text(encoding="utf-8").split()
    out.unlink()
    return offered


def test_completion_answers_a_shell_request(tmp_path: Path) -> None:
    assert set(_complete("edgeproxy user se", tmp_path)) == {"set", "set-password"}


def test_completion_offers_the_stored_users_and_user_policies(
    config_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for argv in (("user", "new", ALICE), ("policy", "new", "gold"), ("policy", "new", "site:Tokyo")):
        assert _inproc(capsys, config_path, *argv)[0] == 0
    cwd = config_path.parent
    config = f"--config {config_path} "

    assert "alice@contoso.test" in _complete(f"edgeproxy user set {config}", cwd)
    assert _complete(f"edgeproxy user set {config}sip:a", cwd) == [ALICE]
    offered = _complete(f"edgeproxy policy grant {config}alice@contoso.test ", cwd)
    assert "gold" in offered and "site:Tokyo" not in offered and "global" not in offered


def test_completion_creates_no_store_where_there_is_none(tmp_path: Path) -> None:
    assert _complete("edgeproxy user set a", tmp_path) == []
    assert list(tmp_path.iterdir()) == []  # the embedded default would keep its store in ./var


def test_the_cli_module_carries_the_completion_marker_argcomplete_looks_for() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "argcomplete._check_module", "edgeproxy.cli"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


def test_a_state_directory_that_cannot_be_made_is_an_error_line_not_a_traceback(
    tmp_path: Path,
) -> None:
    (tmp_path / "file").write_text("not a directory\n", encoding="utf-8")
    config = tmp_path / "edgeproxy.toml"
    config.write_text('[edge]\ndomains = ["contoso.test"]\nstate-dir = "file/state"\n', encoding="utf-8")

    result = _run(config, "user", "get")

    assert result.returncode == 1
    assert result.stderr.startswith("edgeproxy: ") and "Traceback" not in result.stderr
    assert "file/state" in result.stderr


# -- one error prefix, read from the source ----------------------------------------------------

COMMAND_SOURCES = sorted((ROOT / "src" / "edgeproxy" / "commands").glob("*.py")) + [
    ROOT / "src" / "edgeproxy" / "cli.py"
]


def _leading_text(node: ast.expr) -> str | None:
    """The literal text a printed expression starts with, when the source says it."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr) and node.values:
        first = node.values[0]
        if isinstance(first, ast.Constant) and isinstance(first.value, str):
            return first.value
    return None


def _is_stderr(node: ast.expr) -> bool:
    return isinstance(node, ast.Attribute) and node.attr == "stderr"


def stderr_writes_without_the_prefix(source: str, name: str) -> list[str]:
    """``print(…, file=sys.stderr)`` and ``sys.stderr.write(…)`` calls whose text does not
    visibly start with ``edgeproxy: `` (``common.error``/``refused``/``warning`` do)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        printed: ast.expr | None = None
        if isinstance(func, ast.Name) and func.id == "print":
            if any(k.arg == "file" and _is_stderr(k.value) for k in node.keywords) and node.args:
                printed = node.args[0]
        elif isinstance(func, ast.Attribute) and func.attr == "write" and _is_stderr(func.value):
            printed = node.args[0] if node.args else None
        if printed is None:
            continue
        text = _leading_text(printed)
        if text is None or not text.startswith("edgeproxy: "):
            found.append(f"{name}:{node.lineno}: {ast.unparse(printed)[:70]}")
    return found


def test_the_source_scan_finds_a_message_without_the_prefix() -> None:
    source = (
        "import sys\n"
        "print(f'edgeproxy: {x}', file=sys.stderr)\n"
        "print('warning: bad', file=sys.stderr)\n"
        "sys.stderr.write(message)\n"
        "print('result')\n"
    )
    assert stderr_writes_without_the_prefix(source, "m.py") == [
        "m.py:3: 'warning: bad'",
        "m.py:4: message",
    ]


@pytest.mark.parametrize("path", COMMAND_SOURCES, ids=lambda p: p.name)
def test_every_message_a_command_writes_on_stderr_starts_with_edgeproxy(path: Path) -> None:
    found = stderr_writes_without_the_prefix(path.read_text(encoding="utf-8"), path.name)
    assert not found, "write them with commands.common.error/refused/warning:\n" + "\n".join(found)
