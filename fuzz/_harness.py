"""Shared plumbing of the atheris harnesses in ``fuzz/`` (see docs/fuzzing.md).

Every harness module defines ``TestOneInput(data: bytes)`` (the libFuzzer entry point), built
with :func:`harness`: the wrapped function may raise the harness's *expected* exceptions (the
errors the production entry point documents); anything else is a **finding**.

What happens to a finding depends on the environment:

* ``FUZZ_FINDINGS_DIR`` set (``fuzz/run.py`` sets it): the finding is recorded there — one
  ``new-<signature>.txt`` (traceback, input as a Python bytes literal) and ``.bin`` (the input)
  per distinct signature, the shortest input kept — and fuzzing goes on, so one run collects
  every distinct finding instead of stopping at the first;
* otherwise it is re-raised, and libFuzzer stops and writes ``crash-<sha1>`` as usual.

**Known findings** (``Known``): open bugs that already have a strict-xfail regression test in
``tests/fuzz/test_fuzz_regressions.py``. They are matched narrowly (exception type *and* the
file and function of the innermost frame), recorded as ``known-<signature>`` and never fail a
run, so the smoke in ``make test`` stays green while their owners fix them; when a fix lands the
xfail test flips to XPASS (a failure under ``strict=True``) and the entry here is removed. With
``FUZZ_STRICT=1`` known findings count as new ones.

A signature is ``<ExceptionType>@<file>:<function>:<line>`` of the innermost frame, followed by
``<-`` and the signature of the exception's ``__cause__`` when there is one.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"
if str(SRC) not in sys.path:  # a plain checkout: edgeproxy importable without installing
    sys.path.insert(0, str(SRC))


class Finding(AssertionError):
    """A harness invariant was broken (e.g. the result depends on the chunking)."""


@dataclass(frozen=True)
class Known:
    """An open finding: ``exc`` raised with the innermost frame in ``file``:``function``."""

    exc: type[BaseException]
    file: str
    function: str
    test: str  # the xfail regression test in tests/fuzz/test_fuzz_regressions.py
    match: str = ""  # a substring the exception's message must contain, if given


def innermost(exc: BaseException) -> traceback.FrameSummary | None:
    frames = traceback.extract_tb(exc.__traceback__)
    return frames[-1] if frames else None


def signature(exc: BaseException) -> str:
    """``Type@file:function:line`` of the innermost frame, then ``<-`` the cause's, if any."""
    frame = innermost(exc)
    where = f"{Path(frame.filename).name}:{frame.name}:{frame.lineno}" if frame else "?"
    sig = f"{type(exc).__name__}@{where}"
    if exc.__cause__ is not None:
        sig += f"<-{signature(exc.__cause__)}"
    return sig


def is_known(exc: BaseException, known: tuple[Known, ...]) -> Known | None:
    if os.environ.get("FUZZ_STRICT", "") not in ("", "0"):
        return None
    frame = innermost(exc)
    if frame is None:
        return None
    for k in known:
        if (
            isinstance(exc, k.exc)
            and frame.filename.replace(os.sep, "/").endswith(k.file)
            and frame.name == k.function
            and k.match in str(exc)
        ):
            return k
    return None


def _record(directory: Path, kind: str, exc: BaseException, data: bytes) -> None:
    sig = signature(exc)
    stem = f"{kind}-{re.sub(r'[^A-Za-z0-9_.@-]+', '_', sig)}"
    blob = directory / f"{stem}.bin"
    if blob.exists() and len(blob.read_bytes()) <= len(data):
        return
    directory.mkdir(parents=True, exist_ok=True)
    blob.write_bytes(data)
    text = "".join(traceback.format_exception(exc))
    (directory / f"{stem}.txt").write_text(
        f"signature: {sig}\nsha1: {hashlib.sha1(data).hexdigest()}\n"
        f"input ({len(data)} bytes): {data!r}\n\n{text}",
        encoding="utf-8",
    )


def harness(
    expected: tuple[type[BaseException], ...], known: tuple[Known, ...] = ()
) -> Callable[[Callable[[bytes], None]], Callable[[bytes], None]]:
    """Turn ``fn(data)`` into a libFuzzer entry point with the finding policy above."""

    def wrap(fn: Callable[[bytes], None]) -> Callable[[bytes], None]:
        def TestOneInput(data: bytes) -> None:  # noqa: N802 (libFuzzer's name)
            try:
                fn(data)
            except expected:
                pass
            except Exception as exc:
                hit = is_known(exc, known)
                out = os.environ.get("FUZZ_FINDINGS_DIR")
                if hit is not None:
                    if out:
                        _record(Path(out), "known", exc, data)
                    return
                if out:
                    _record(Path(out), "new", exc, data)
                    return
                raise

        TestOneInput.check = fn  # type: ignore[attr-defined]  # the raw check, for tests
        TestOneInput.expected = expected  # type: ignore[attr-defined]
        TestOneInput.known = known  # type: ignore[attr-defined]
        return TestOneInput

    return wrap


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(max(c, 0), len(data)) for c in cuts})
    pieces, last = [], 0
    for p in points:
        pieces.append(data[last:p])
        last = p
    pieces.append(data[last:])
    return pieces


def random_cuts(data: bytes, seed: int) -> list[int]:
    """Deterministic random cut points for ``data`` (a function of ``seed`` and the length)."""
    import random

    rng = random.Random(seed * 1_000_003 + len(data))
    if not data:
        return []
    n = rng.randint(0, min(len(data), 24))
    return [rng.randint(0, len(data)) for _ in range(n)]
