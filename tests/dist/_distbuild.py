"""`make dist` for the tests, and running what it built: ``build_dist()`` and ``EdgeProcess``.

``build_dist()`` runs ``make dist`` (cached by a hash of its inputs, so usually seconds; a build
from nothing takes a minute or two) and returns where the outputs are. ``serve_config`` writes an
``edgeproxy.toml`` with every listener on one loopback address; ``EdgeProcess`` starts
``edgeproxy serve`` from a given command (the one-file executable under ``env -i``, a wheel's
console script in a fresh virtualenv), waits until its S2S port accepts and its admin endpoint
answers ``/healthz`` (only then does it handle SIGTERM), and stops it with SIGTERM — our own
child, by PID.
"""

from __future__ import annotations

import platform
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

import edgeproxy
from fixtures.ports import accepts, free_port

ROOT = Path(__file__).resolve().parents[2]
DIST = ROOT / "dist"
#: Hang guard for `make dist` from nothing (measured: about 80 s on 2 cores).
BUILD_TIMEOUT = 1200
#: Hang guard for the start of `edgeproxy serve` (the one-file executable unpacks itself first).
START_TIMEOUT = 30
#: How long a clean stop after SIGTERM may take.
STOP_TIMEOUT = 20


@dataclass(frozen=True)
class Dist:
    """The outputs of `make dist`."""

    binary: Path
    sdist: Path
    wheels: dict[str, Path]  # "cp311" → the manylinux wheel
    build_seconds: float

    def wheel(self, tag: str) -> Path:
        return self.wheels[tag]


def build_dist() -> Dist:
    """Run `make dist` (see the module docstring); a failed build fails the test."""
    make = shutil.which("make")
    if make is None:
        pytest.fail("make not found: `make dist` builds what these tests check")
    started = time.monotonic()
    result = subprocess.run([make, "-C", str(ROOT), "dist", f"PYTHON={python_311()}"],
                            capture_output=True, text=True, timeout=BUILD_TIMEOUT)
    seconds = time.monotonic() - started
    if result.returncode != 0:
        pytest.fail(f"make dist failed ({result.returncode}):\n{result.stdout[-4000:]}\n"
                    f"{result.stderr[-8000:]}")
    print(f"make dist: {seconds:.0f} s", file=sys.stderr)
    version = edgeproxy.__version__
    wheels = {}
    for wheel in DIST.glob(f"edgeproxy-{version}-cp3*-manylinux*.whl"):
        wheels[wheel.name.split("-")[2]] = wheel
    return Dist(DIST / "edgeproxy", DIST / f"edgeproxy-{version}.tar.gz", wheels, seconds)


def python_311() -> str:
    """The interpreter the test run uses (under the virtualenv: the one it was made from)."""
    return str(Path(getattr(sys, "_base_executable", sys.executable)))


def machine_has_sse2() -> bool:
    return platform.machine() in ("x86_64", "AMD64")


@dataclass(frozen=True)
class EdgeConfig:
    """A written ``edgeproxy.toml`` and the ports it names."""

    path: Path
    address: str
    s2s_port: int
    admin_port: int


def serve_config(
    workdir: Path,
    address: str,
    *,
    s2s_port: int | None = None,
    tls: tuple[Path, Path, Path] | None = None,
    admin_extra: str = "",
    extra: str = "",
) -> EdgeConfig:
    """``workdir/edgeproxy.toml``: listeners on ``address`` (``s2s_port`` for S2S, free ports
    for the rest), state in ``workdir/state``, the edge certificate, key and trusted CA ``tls``
    (without: none, plain TCP with dialback only); ``admin_extra`` goes inside ``[admin]``,
    ``extra`` at the end (whole sections)."""
    workdir.mkdir(parents=True, exist_ok=True)
    s2s, admin = s2s_port or free_port(address), free_port(address)
    if tls is None:
        tls_section = '[tls]\ncertificate = "no/edge.pem"\nkey = "no/edge.key"\n'
    else:
        tls_section = f'[tls]\ncertificate = "{tls[0]}"\nkey = "{tls[1]}"\ntrust = "{tls[2]}"\n'
    config = workdir / "edgeproxy.toml"
    config.write_text(
        f'[edge]\ndomains = ["contoso.test"]\nlisten = ["{address}:{s2s}"]\n'
        f'internal-listen = "{address}:{free_port(address)}"\nstate-dir = "state"\n'
        f"{tls_section}"
        f'[admin]\nlisten = "{address}:{admin}"\n{admin_extra}'
        f'[gateway]\nsip-listen = ["{address}:{free_port(address, udp_too=True)}"]\n'
        "sip-tls-listen = []\n"
        f"{extra}"
    )
    return EdgeConfig(config, address, s2s, admin)


class EdgeProcess:
    """``edgeproxy serve`` as our child (see the module docstring)."""

    def __init__(self, command: list[str], config: EdgeConfig) -> None:
        self.config, self.workdir = config, config.path.parent
        self.log_path = self.workdir / "serve.log"
        self.started = time.monotonic()
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, cwd=self.workdir)
        self.listening_after = self._wait(lambda: accepts(config.address, config.s2s_port), "listen")
        # The S2S port accepts before serve handles signals; /healthz answers only after.
        self.ready_after = self._wait(self._healthy, "answer /healthz")

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def admin_get(self, path: str) -> tuple[int, bytes]:
        """``GET path`` on the admin listener: the status and the body (0 when unreachable)."""
        url = f"http://{self.config.address}:{self.config.admin_port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=5) as answer:
                return int(answer.status), answer.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()
        except OSError:
            return 0, b""

    def _healthy(self) -> bool:
        return self.admin_get("/healthz")[0] == 200

    def _wait(self, ready: Callable[[], bool], what: str) -> float:
        """Seconds since the start until ``ready()``; fails if serve exits or takes too long."""
        deadline = self.started + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"edgeproxy serve exited ({self.proc.returncode}):\n{self.log_text()[-6000:]}")
            if ready():
                return time.monotonic() - self.started
            time.sleep(0.02)
        self.kill()
        raise AssertionError(f"edgeproxy serve did not {what} within {START_TIMEOUT} s:\n{self.log_text()[-6000:]}")

    def terminate(self) -> int:
        """SIGTERM, then the exit status (SIGKILL and a failure if it does not stop in time)."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"edgeproxy serve did not stop on SIGTERM:\n{self.log_text()[-6000:]}") from None

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
