"""Write the man page of ``edgeproxy`` (``docs/edgeproxy.1``) from its argument parser.

Every command of ``edgeproxy.cli.build_parser()`` becomes a subsection with its help, its
synopsis and each of its arguments and options with their help, so the page says what
``edgeproxy COMMAND --help`` says. Standard library only; troff with the ``man`` macros.

    python tools/manpage.py --out docs/edgeproxy.1     # regenerate
    python tools/manpage.py --check docs/edgeproxy.1   # exit 1 if the file is not up to date

``tests/test_manpage.py`` checks that the committed page is what this writes, and that groff
formats it without a warning.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path

#: Options every command takes, described once under GLOBAL OPTIONS instead of per command.
COMMON_OPTIONS = frozenset({"--help", "--config"})

HEADER = r""".\" Generated from the argument parser by tools/manpage.py; do not edit by hand.
.TH EDGEPROXY 1 "" "edgeproxy" "User Commands"
"""

EXIT_STATUS = (
    ("0", "success"),
    ("1", "refused by validation (the rule is printed, nothing is saved), a failed check, "
     "something not found, or the server not running"),
    ("2", "usage error"),
)

SEE_ALSO = (
    "docs/cli.md (shell completion and conventions) and docs/cli-json.md (the --json output "
    "of every command) in the edgeproxy source tree."
)


def escape(text: str) -> str:
    """``text`` as troff input: backslashes and hyphens escaped, a character beyond ASCII
    written as ``\\[uXXXX]`` (the page is ASCII, whatever groff takes its input encoding to be),
    and a line that would start with a control character (``.`` or ``'``) protected by
    ``\\&``."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    text = "".join(c if ord(c) < 128 else f"\\[u{ord(c):04X}]" for c in text)
    lines = [("\\&" + line) if line.startswith((".", "'")) else line for line in text.split("\n")]
    return "\n".join(lines)


def _subparsers(parser: argparse.ArgumentParser) -> argparse._SubParsersAction | None:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    return None


def commands(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = (), help: str | None = None
) -> Iterator[tuple[tuple[str, ...], str | None, argparse.ArgumentParser]]:
    """Every command (a parser without sub-commands) under ``parser``, in help order: its words
    after ``edgeproxy``, its one-line help, and its parser."""
    sub = _subparsers(parser)
    if sub is None:
        yield path, help, parser
        return
    helps = {choice.dest: choice.help for choice in sub._choices_actions}
    for name, child in sub.choices.items():
        yield from commands(child, (*path, name), helps.get(name))


def _invocation(action: argparse.Action, formatter: argparse.HelpFormatter) -> str:
    """How an argument is written: ``\\fB\\-\\-name\\fR \\fITEXT\\fR``, or ``\\fISIP-ADDRESS\\fR``."""
    if not action.option_strings:
        return f"\\fI{escape(formatter._format_args(action, action.dest))}\\fR"
    names = ", ".join(f"\\fB{escape(o)}\\fR" for o in action.option_strings)
    if action.nargs == 0:
        return names
    args = formatter._format_args(action, action.dest.upper())
    return f"{names} \\fI{escape(args)}\\fR"


def _help(action: argparse.Action, formatter: argparse.HelpFormatter) -> str:
    return escape(formatter._expand_help(action)) if action.help else ""


def _arguments(parser: argparse.ArgumentParser, *, skip: frozenset[str]) -> list[argparse.Action]:
    return [
        a
        for a in parser._actions
        if a.help != argparse.SUPPRESS
        and not isinstance(a, argparse._SubParsersAction)
        and not skip.intersection(a.option_strings)
    ]


def _synopsis(words: tuple[str, ...], parser: argparse.ArgumentParser) -> str:
    formatter = parser._get_formatter()
    parts = [f"\\fBedgeproxy {escape(' '.join(words))}\\fR"]
    if any(a.option_strings for a in _arguments(parser, skip=frozenset())):
        parts.append("[\\fIoptions\\fR]")
    for action in _arguments(parser, skip=frozenset()):
        if not action.option_strings:
            parts.append(f"\\fI{escape(formatter._format_args(action, action.dest))}\\fR")
    return " ".join(parts)


def _items(parser: argparse.ArgumentParser, actions: list[argparse.Action]) -> list[str]:
    formatter = parser._get_formatter()
    lines: list[str] = []
    for action in actions:
        lines += [".TP", _invocation(action, formatter), _help(action, formatter) or "\\&"]
    return lines


def render(parser: argparse.ArgumentParser) -> str:
    """The whole man page of ``parser`` (the root ``edgeproxy`` parser)."""
    lines = [HEADER.rstrip("\n"), ".SH NAME", "edgeproxy \\- " + escape(_first_sentence(parser))]
    lines += [
        ".SH SYNOPSIS",
        "\\fBedgeproxy\\fR [\\fB\\-\\-config\\fR \\fIPATH\\fR] \\fICOMMAND\\fR [\\fIargs\\fR]",
        ".br",
        "\\fBedgeproxy\\fR \\fICOMMAND\\fR \\fB\\-\\-help\\fR",
        ".SH DESCRIPTION",
        escape(parser.description or ""),
        ".PP",
        "Every command also takes \\fB\\-\\-config\\fR \\fIPATH\\fR after its name, and "
        "\\fB\\-h\\fR, \\fB\\-\\-help\\fR to show its options.",
    ]
    if parser.epilog:
        lines += [".PP", escape(parser.epilog)]
    lines += [".SH GLOBAL OPTIONS", *_items(parser, _arguments(parser, skip=frozenset()))]
    lines.append(".SH COMMANDS")
    for words, help, command in commands(parser):
        lines += [f'.SS "{escape(" ".join(words))}"', escape(help or ""), ".PP", _synopsis(words, command)]
        if command.description:
            lines += [".PP", escape(command.description)]
        lines += _items(command, _arguments(command, skip=COMMON_OPTIONS))
    lines.append(".SH EXIT STATUS")
    for status, meaning in EXIT_STATUS:
        lines += [".TP", f"\\fB{status}\\fR", escape(meaning)]
    lines += [
        ".SH ENVIRONMENT",
        ".TP",
        "\\fBEDGEPROXY_CONFIG\\fR",
        "the configuration file when \\fB\\-\\-config\\fR is not given (else the embedded "
        "default configuration, which \\fBedgeproxy config show\\-default\\fR prints)",
        ".SH SEE ALSO",
        escape(SEE_ALSO),
    ]
    return "\n".join(lines) + "\n"


def _first_sentence(parser: argparse.ArgumentParser) -> str:
    text = parser.description or "edgeproxy"
    return text.split(": ", 1)[0] if ": " in text else text.rstrip(".")


def main(argv: list[str] | None = None) -> int:
    """Write the page (``--out``, default standard output) or ``--check`` a file against it."""
    cli = argparse.ArgumentParser(description="Write the edgeproxy man page from its parser.")
    what = cli.add_mutually_exclusive_group()
    what.add_argument("--out", metavar="FILE", help="write the page to FILE (default: stdout)")
    what.add_argument(
        "--check", metavar="FILE", help="exit 1 if FILE differs from the page the parser gives"
    )
    args = cli.parse_args(argv)
    from edgeproxy.cli import build_parser

    page = render(build_parser())
    if args.check:
        if Path(args.check).read_text(encoding="utf-8") != page:
            print(f"{args.check} is out of date: run python tools/manpage.py --out {args.check}",
                  file=sys.stderr)
            return 1
        return 0
    if args.out:
        Path(args.out).write_text(page, encoding="utf-8")
    else:
        sys.stdout.write(page)
    return 0


if __name__ == "__main__":
    sys.exit(main())
