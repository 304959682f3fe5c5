"""A bounded smoke of every fuzz harness (fuzz/run.py): a few seconds each, under 60 s in all.

Each harness runs in its own subprocess (atheris + libFuzzer) from its seeds; the test fails on
any new finding (an exception outside the harness's expected tuple, a broken invariant) or a
libFuzzer artifact (crash, timeout, out-of-memory). Known findings — open bugs that have a strict
xfail test in test_fuzz_regressions.py — are reported but do not fail it (fuzz/_harness.py).

Without atheris the test is skipped on a developer machine and fails under CI (``CI=true``):
atheris is in the ``test`` extra.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

from fixtures.tools import unavailable

REPO = Path(__file__).resolve().parents[2]
RUNNER = REPO / "fuzz" / "run.py"
#: The smoke is repeatable: a fixed libFuzzer seed and a fixed number of inputs per harness (the
#: same inputs on every run of the same code, so a CI verdict never depends on luck or machine
#: speed; `make fuzz` explores freely). 10,000 inputs take 1-5 s per harness here; the seconds
#: are only a cap, and 6 harnesses plus start-up stay well under the 60 s budget.
SEED = 1
RUNS_EACH = 10_000
SECONDS_EACH = 8
BUDGET = 60


def test_every_fuzz_harness_runs_clean_for_a_few_seconds(tmp_path: Path) -> None:
    if importlib.util.find_spec("atheris") is None:
        unavailable("atheris is not installed (pip install -e '.[test]')")
    report = tmp_path / "fuzz.json"
    started = time.monotonic()
    proc = subprocess.run(
        [
            sys.executable,
            str(RUNNER),
            "all",
            "-t",
            str(SECONDS_EACH),
            "--seed",
            str(SEED),
            "--runs",
            str(RUNS_EACH),
            "--workdir",
            str(tmp_path / "work"),
            "--json",
            str(report),
        ],
        capture_output=True,
        text=True,
        timeout=BUDGET + 60,
    )
    elapsed = time.monotonic() - started
    print(proc.stdout)
    assert report.exists(), proc.stdout + proc.stderr
    results = json.loads(report.read_text())
    assert [r["harness"] for r in results] == [
        "tokenizer",
        "s2s",
        "sip",
        "loopback",
        "pidf",
        "certs",
    ]
    for r in results:
        assert r["executions"] > 0, f"{r['harness']} did not run: {r['tail']}"
        assert not r["new_findings"], (
            f"{r['harness']}: new findings {r['new_findings']} ({r['log']})"
        )
        assert not r["artifacts"], (
            f"{r['harness']}: libFuzzer artifacts {r['artifacts']}: {r['tail']}"
        )
        assert r["returncode"] == 0, f"{r['harness']}: exit {r['returncode']}: {r['tail']}"
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert elapsed < BUDGET, f"the fuzz smoke took {elapsed:.1f} s (budget {BUDGET} s)"
