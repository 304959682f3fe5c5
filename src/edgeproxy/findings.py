"""One line of a check report: ``OK|WARN|FAIL <check>: <detail> (hint: …)``.

Shared by ``edgeproxy check``, ``edgeproxy dns check`` and anything else that diagnoses; the
exit status of a report is non-zero when any line is FAIL.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

Level = Literal["OK", "WARN", "FAIL"]


@dataclass(frozen=True)
class Finding:
    level: Level
    check: str
    detail: str
    hint: str | None = None

    def line(self) -> str:
        text = f"{self.level} {self.check}: {self.detail}"
        if self.hint and self.level != "OK":
            text += f" (hint: {self.hint})"
        return text


def ok(check: str, detail: str) -> Finding:
    return Finding("OK", check, detail)


def warn(check: str, detail: str, hint: str | None = None) -> Finding:
    return Finding("WARN", check, detail, hint)


def fail(check: str, detail: str, hint: str | None = None) -> Finding:
    return Finding("FAIL", check, detail, hint)


def exit_status(findings: Iterable[Finding]) -> int:
    return 1 if any(f.level == "FAIL" for f in findings) else 0
