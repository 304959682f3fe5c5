"""Start-up of ``edgeproxy serve`` to listening: the one-file executable beside the virtualenv.

What is measured: the wall time from starting ``serve`` to its S2S port accepting a TCP
connection, ``--starts`` times for each of

* ``venv``: ``.venv/bin/edgeproxy serve`` (the console script of the editable install);
* ``dist``: ``dist/edgeproxy serve`` started as ``env -i dist/edgeproxy serve`` (no environment;
  the executable first unpacks its Python and libraries into a private temporary directory).

The two alternate (venv, dist, venv, dist, …) so that both see the same load of a shared machine.
Each start uses the same configuration (every listener on 127.0.50.9, free ports, a state dir of
its own, no certificate) and is stopped with SIGTERM before the next; a start that exits, does not
start within ``--timeout`` or does not stop cleanly fails the run. Each start is also timed to
its admin endpoint answering ``/healthz``, and only then stopped: serve handles SIGTERM from
then on, not yet when its S2S port first accepts. Reported: min / median / max per variant and
point, and the executable's size. Run ``make dist`` first (the executable is not built
here); goal: the executable listening within 1 s.
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ADDRESS = "127.0.50.9"
#: The start-up goal of the one-file executable, in seconds.
GOAL_SECONDS = 1.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind((ADDRESS, 0))
        return int(s.getsockname()[1])


def accepts(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex((ADDRESS, port)) == 0


def healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://{ADDRESS}:{port}/healthz", timeout=2) as answer:
            return bool(answer.status == 200)
    except OSError:
        return False


def write_config(workdir: Path) -> tuple[Path, int, int]:
    """An ``edgeproxy.toml`` in ``workdir`` (see the module docstring); returns it, the S2S port
    and the admin port."""
    s2s, admin = free_port(), free_port()
    config = workdir / "edgeproxy.toml"
    config.write_text(
        f'[edge]\ndomains = ["contoso.test"]\nlisten = ["{ADDRESS}:{s2s}"]\n'
        f'internal-listen = "{ADDRESS}:{free_port()}"\nstate-dir = "state"\n'
        '[tls]\ncertificate = "no/edge.pem"\nkey = "no/edge.key"\n'
        f'[admin]\nlisten = "{ADDRESS}:{admin}"\n'
        f'[gateway]\nsip-listen = ["{ADDRESS}:{free_port()}"]\nsip-tls-listen = []\n'
    )
    return config, s2s, admin


def one_start(command: list[str], workdir: Path, timeout: float) -> tuple[float, float]:
    """Seconds from starting ``command … serve --config`` to its S2S port accepting, and to its
    admin endpoint answering ``/healthz`` (serve handles SIGTERM from then on)."""
    workdir.mkdir(parents=True)
    config, s2s, admin = write_config(workdir)
    log = workdir / "serve.log"
    with log.open("wb") as out:
        started = time.perf_counter()
        proc = subprocess.Popen([*command, "serve", "--config", str(config)], cwd=workdir,
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
    try:
        elapsed = []
        for ready in (lambda: accepts(s2s), lambda: healthy(admin)):
            while not ready():
                if proc.poll() is not None:
                    raise SystemExit(f"{command[-1]} serve exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
                if time.perf_counter() - started > timeout:
                    raise SystemExit(f"{command[-1]} serve did not start within {timeout} s")
                time.sleep(0.005)
            elapsed.append(time.perf_counter() - started)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            status = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
            raise SystemExit(f"{command[-1]} serve did not stop on SIGTERM") from None
    if status != 0:
        raise SystemExit(f"{command[-1]} serve stopped with status {status}:\n{log.read_text()[-3000:]}")
    return elapsed[0], elapsed[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--starts", type=int, default=10, help="starts per variant (default: 10)")
    parser.add_argument("--timeout", type=float, default=30, help="seconds one start may take at most (default: 30)")
    parser.add_argument("--binary", type=Path, default=ROOT / "dist" / "edgeproxy",
                        help="the one-file executable (default: dist/edgeproxy)")
    parser.add_argument("--venv-command", type=Path, default=ROOT / ".venv" / "bin" / "edgeproxy",
                        help="the virtualenv's console script (default: .venv/bin/edgeproxy)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON instead of a table")
    args = parser.parse_args()
    if not args.binary.exists():
        parser.error(f"{args.binary} does not exist: run `make dist` first")
    variants = {
        "venv": [str(args.venv_command)],
        "dist": ["/usr/bin/env", "-i", str(args.binary)],
    }
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}
    with tempfile.TemporaryDirectory(prefix="edgeproxy-startup-") as tmp:
        for i in range(args.starts):
            for name, command in variants.items():
                times[name].append(one_start(command, Path(tmp) / f"{name}-{i}", args.timeout))
    size = args.binary.stat().st_size
    figures = {
        f"{name} {what}": {"min": min(t), "median": statistics.median(t), "max": max(t), "starts": len(t)}
        for name, pairs in times.items()
        for what, t in (("listening", [p[0] for p in pairs]), ("/healthz", [p[1] for p in pairs]))
    }
    if args.json:
        print(json.dumps({"binary_bytes": size, "startup_seconds": figures}))
        return 0
    print(f"dist/edgeproxy: {size:,} bytes ({size / 2**20:.1f} MiB)")
    print("| variant, until | starts | min | median | max |")
    print("|---|---|---|---|---|")
    for name, f in figures.items():
        print(f"| {name} | {f['starts']} | {f['min']:.3f} s | {f['median']:.3f} s | {f['max']:.3f} s |")
    verdict = "met" if figures["dist listening"]["median"] <= GOAL_SECONDS else "NOT met"
    print(f"goal (dist median ≤ {GOAL_SECONDS:.0f} s): {verdict}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
