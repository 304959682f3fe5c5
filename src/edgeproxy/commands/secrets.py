"""Secrets for the store commands, never from the command line.

``ps`` and the shell history would show a secret given as an argument: ``user set-password`` and
``gateway set --dialback-secret-file|--dialback-secret-prompt`` read it from a file (its first
line; ``-`` is standard input) or from a prompt that does not echo and asks twice. The old
argument forms (``--dialback-secret S``, ``--password S``) are usage errors that say so.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from typing import Any

from edgeproxy.policy.validation import ChangeRefused


def read_secret(what: str, path: str | None) -> str:
    """A secret from the first line of ``path`` (``-``: standard input) without its line end, or,
    without a path, typed twice at a prompt that does not echo. Refuses two entries that differ
    and a file that cannot be read; the caller decides whether an empty secret is acceptable."""
    if path is not None:
        try:
            if path == "-":
                line = sys.stdin.readline()
            else:
                with open(path, encoding="utf-8") as f:
                    line = f.readline()
        except OSError as exc:
            raise ChangeRefused(f"refused: cannot read the {what} from {path}: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise ChangeRefused(f"refused: the {what} in {path} is not UTF-8 text") from None
        return line.removesuffix("\n").removesuffix("\r")
    try:
        first = getpass.getpass(f"{what}: ")
        second = getpass.getpass(f"{what} (again): ")
    except EOFError:
        raise ChangeRefused(
            f"refused: no {what} given (no terminal to prompt on? use a file, or - for "
            "standard input)"
        ) from None
    if first != second:
        raise ChangeRefused(f"refused: the two {what}s typed differ; nothing saved")
    return first


class SecretOnArgv(argparse.Action):
    """An option that would take a secret on the command line (``--dialback-secret S``, as
    earlier versions took it, or ``--password S``): a usage error saying how to give it
    instead."""

    def __init__(self, *args: Any, instead: str, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.instead = instead

    def __call__(self, parser: argparse.ArgumentParser, *_args: Any, **_kw: Any) -> None:
        parser.error(
            f"{self.option_strings[0]} would put the secret on the command line, where ps and the "
            f"shell history show it: use {self.instead}"
        )


def add_secret_options(
    parser: argparse.ArgumentParser | argparse._MutuallyExclusiveGroup,
    option: str,
    what: str,
    *,
    prompt: str,
    default: str,
) -> None:
    """``OPTION-file PATH``, reading ``what`` from a file (:func:`read_secret`), and the refused
    ``OPTION S`` (:class:`SecretOnArgv`), which points to the file or to ``prompt``; ``default``
    says what happens without the option (its help text)."""
    parser.add_argument(
        f"{option}-file",
        metavar="PATH",
        help=f"read {what} from the first line of PATH, without its line end ('-': standard "
        f"input; default: {default})",
    )
    parser.add_argument(
        option, nargs="?", action=SecretOnArgv, help=argparse.SUPPRESS,
        instead=f"{option}-file PATH (first line; - for standard input) or {prompt}",
    )
