#!/usr/bin/env python3
"""Run the atheris harnesses in ``fuzz/``: one or all, each in its own subprocess, for a budget.

    .venv/bin/python fuzz/run.py                    # every harness, 60 s each
    .venv/bin/python fuzz/run.py tokenizer sip -t 300
    .venv/bin/python fuzz/run.py all -t 600 --workdir /tmp/fuzz   # what `make fuzz` does

Per harness: a fresh working corpus in ``--workdir/<name>/corpus`` seeded from the harness's
``SEEDS``, the small committed ``fuzz/seeds/<name>/`` and (tokenizer) the small files of
the shared adversarial corpus when present; then ``python fuzz/run.py --child <name> --
<libFuzzer flags>``, i.e. ``atheris.Setup`` + ``atheris.Fuzz`` with ``-max_total_time``,
``-rss_limit_mb``, ``-timeout``, ``-max_len``, ``-print_final_stats=1`` and
``-artifact_prefix``. Findings go to ``--workdir/<name>/findings`` (see fuzz/_harness.py: new and
known findings per distinct signature; fuzzing goes on after one) and libFuzzer's own crash /
timeout / oom artifacts to ``--workdir/<name>/artifacts``.

Prints, per harness, the executions (libFuzzer's ``stat::number_of_executed_units``), the new
and known findings and the artifacts; ``--json FILE`` writes the same as JSON. Exit status 1 if
any harness has a new finding or an artifact (or did not run), else 0.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FUZZ_DIR = Path(__file__).resolve().parent
REPO = FUZZ_DIR.parent
HARNESSES = ("tokenizer", "s2s", "sip", "loopback", "pidf", "certs")
SHARED_ADVERSARIAL = Path("/work/shared/corpus/adversarial")


def _import_harness(name: str, *, instrument: bool):
    sys.path.insert(0, str(FUZZ_DIR))
    if not instrument:
        return importlib.import_module(f"fuzz_{name}")
    import atheris

    # atheris instruments Python bytecode of the modules imported in this block: edgeproxy
    # and the harness itself (the compiled _fastxml is native code: no coverage feedback from
    # inside it; the harness's own branches on tokens and error conditions are a weak proxy).
    with atheris.instrument_imports(include=["edgeproxy", f"fuzz_{name}"]):
        return importlib.import_module(f"fuzz_{name}")


def child(name: str, libfuzzer_args: list[str]) -> None:
    import atheris

    module = _import_harness(name, instrument=True)
    atheris.Setup([sys.argv[0], *libfuzzer_args], module.TestOneInput)
    atheris.Fuzz()


def seed_corpus(name: str, corpus: Path) -> int:
    corpus.mkdir(parents=True, exist_ok=True)
    module = _import_harness(name, instrument=False)
    seeds: list[bytes] = list(getattr(module, "SEEDS", []))
    make = getattr(module, "generated_seeds", None)
    if make is not None:
        seeds += make()
    committed = FUZZ_DIR / "seeds" / name
    if committed.is_dir():
        seeds += [p.read_bytes() for p in sorted(committed.iterdir()) if p.is_file()]
    if name == "tokenizer" and SHARED_ADVERSARIAL.is_dir():
        for p in sorted(SHARED_ADVERSARIAL.glob("*.xml")):
            if p.stat().st_size <= 2048:
                seeds.append(b"\x00\x00" + p.read_bytes())
    for i, seed in enumerate(seeds):
        (corpus / f"seed-{i:03d}").write_bytes(seed)
    return len(seeds)


_EXECS = re.compile(r"stat::number_of_executed_units:\s*(\d+)")
_PROGRESS = re.compile(r"^#(\d+)\s", re.M)
_DONE = re.compile(r"Done (\d+) runs in")


def executions(output: str) -> int:
    for pattern in (_EXECS, _DONE):
        found = pattern.findall(output)
        if found:
            return int(found[-1])
    progress = _PROGRESS.findall(output)
    return int(progress[-1]) if progress else 0


def run_one(
    name: str, seconds: int, workdir: Path, rss_limit_mb: int, timeout: int,
    seed: int | None = None, runs: int | None = None,
) -> dict:
    base = workdir / name
    shutil.rmtree(base, ignore_errors=True)
    corpus, findings, artifacts = base / "corpus", base / "findings", base / "artifacts"
    findings.mkdir(parents=True)
    artifacts.mkdir(parents=True)
    n_seeds = seed_corpus(name, corpus)
    module = _import_harness(name, instrument=False)
    flags = [
        f"-max_total_time={seconds}",
        f"-rss_limit_mb={rss_limit_mb}",
        f"-timeout={timeout}",
        f"-max_len={getattr(module, 'MAX_LEN', 4096)}",
        "-print_final_stats=1",
        f"-artifact_prefix={artifacts}/",
        *([f"-seed={seed}"] if seed is not None else []),
        *([f"-runs={runs}"] if runs is not None else []),
        str(corpus),
    ]
    dictionary = FUZZ_DIR / "dicts" / f"{name}.dict"
    if dictionary.exists():
        flags.insert(0, f"-dict={dictionary}")
    env = dict(os.environ, FUZZ_FINDINGS_DIR=str(findings), PYTHONHASHSEED="0")
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO / "src"), env.get("PYTHONPATH", "")) if p
    )
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", name, "--", *flags]
    started = time.monotonic()
    proc = subprocess.run(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace"
    )
    elapsed = time.monotonic() - started
    (base / "libfuzzer.log").write_text(proc.stdout)
    new = sorted(p.name[:-4] for p in findings.glob("new-*.txt"))
    known = sorted(p.name[:-4] for p in findings.glob("known-*.txt"))
    crashes = sorted(p.name for p in artifacts.iterdir())
    execs = executions(proc.stdout)
    return {
        "harness": name,
        "seconds": seconds,
        "elapsed": round(elapsed, 1),
        "returncode": proc.returncode,
        "executions": execs,
        "seeds": n_seeds,
        "corpus": len(list(corpus.iterdir())),
        "new_findings": new,
        "known_findings": known,
        "artifacts": crashes,
        "ok": not new and not crashes and proc.returncode == 0 and execs > 0,
        "log": str(base / "libfuzzer.log"),
        "tail": proc.stdout[-3000:] if proc.returncode != 0 or not execs else "",
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        name, rest = argv[1], argv[2:]
        child(name, rest[1:] if rest[:1] == ["--"] else rest)
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", default=["all"], help=f"all or any of {HARNESSES}")
    parser.add_argument("-t", "--seconds", type=int, default=60, help="budget per harness")
    parser.add_argument("--workdir", type=Path, help="default: a fresh temporary directory")
    parser.add_argument("--rss-limit-mb", type=int, default=2048)
    parser.add_argument("--timeout", type=int, default=10, help="libFuzzer -timeout per input")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--seed", type=int, help="libFuzzer -seed (with --runs: a repeatable run)")
    parser.add_argument("--runs", type=int, help="libFuzzer -runs: stop after this many inputs")
    args = parser.parse_args(argv)
    names = list(HARNESSES) if args.names in ([], ["all"]) else args.names
    unknown = [n for n in names if n not in HARNESSES]
    if unknown:
        parser.error(f"unknown harness {unknown}; choose from {HARNESSES}")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="edgeproxy-fuzz-"))
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"fuzz: {dt.datetime.now().isoformat(timespec='seconds')} workdir {workdir}", flush=True)
    results = []
    for name in names:
        r = run_one(name, args.seconds, workdir, args.rss_limit_mb, args.timeout, args.seed, args.runs)
        results.append(r)
        status = "ok" if r["ok"] else "FAIL"
        print(
            f"{status:4} {name:10} {r['executions']:>10} execs in {r['elapsed']:>6}s  "
            f"new findings {len(r['new_findings'])}  known {len(r['known_findings'])}  "
            f"artifacts {len(r['artifacts'])}  corpus {r['corpus']}",
            flush=True,
        )
        for item in r["new_findings"] + r["artifacts"]:
            print(f"     {item}  ({workdir / name})", flush=True)
        if r["tail"]:
            print(r["tail"], flush=True)
    total = sum(r["executions"] for r in results)
    print(f"fuzz: {total} executions in total; results in {workdir}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
