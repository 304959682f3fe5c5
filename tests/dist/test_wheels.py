"""The manylinux wheels of `make dist`: manylinux-tagged by auditwheel, the compiled tokenizer
inside and none of its sources, and the cp311 wheel working from a fresh virtualenv."""

from __future__ import annotations

import glob
import os
import subprocess
import sys
import tarfile
import venv
import zipfile
from pathlib import Path

from _distbuild import ROOT, Dist, EdgeProcess, machine_has_sse2, serve_config

import edgeproxy

ADDRESS = "127.0.50.1"
#: Hang guard for installing the wheel and its dependencies into a fresh virtualenv.
INSTALL_TIMEOUT = 600


def test_the_wheels_hold_the_compiled_tokenizer_and_the_package_data_but_no_sources(dist: Dist) -> None:
    assert "cp311" in dist.wheels, sorted(p.name for p in ROOT.joinpath("dist").iterdir())
    for tag, wheel in dist.wheels.items():
        names = zipfile.ZipFile(wheel).namelist()
        abi = f"cpython-{tag.removeprefix('cp')}"
        assert [n for n in names if n.startswith(f"edgeproxy/_fastxml.{abi}-") and n.endswith(".so")], names
        assert not [n for n in names if n.endswith((".pyx", ".c"))], wheel.name
        for data in ("edgeproxy/default.toml", "edgeproxy/py.typed", "edgeproxy/web/templates/base.html",
                     "edgeproxy/web/static/panel.css"):
            assert data in names, (wheel.name, data)


def test_the_sdist_keeps_the_tokenizer_sources(dist: Dist) -> None:
    with tarfile.open(dist.sdist) as sdist:
        names = sdist.getnames()
    prefix = f"edgeproxy-{edgeproxy.__version__}/src/edgeproxy/"
    assert prefix + "_fastxml.pyx" in names and prefix + "setup.py" not in names
    assert f"edgeproxy-{edgeproxy.__version__}/setup.py" in names


def test_auditwheel_finds_the_cp311_wheel_consistent_with_its_manylinux_tag(dist: Dist) -> None:
    wheel = dist.wheel("cp311")
    auditwheel = ROOT / "build" / "dist-venv" / "bin" / "auditwheel"
    shown = subprocess.run([auditwheel, "show", wheel], capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0, shown.stderr
    text = " ".join(shown.stdout.split())
    tag = next(part for part in wheel.name.removesuffix(".whl").split("-")[-1].split(".")
               if part.startswith("manylinux_"))
    assert f'is consistent with the following platform tag: "{tag}"' in text, text


def test_the_cp311_wheel_checks_and_serves_from_a_fresh_virtualenv(dist: Dist, tmp_path: Path) -> None:
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    clean_env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    installed = subprocess.run(
        [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", dist.wheel("cp311")],
        capture_output=True, text=True, timeout=INSTALL_TIMEOUT, cwd=tmp_path, env=clean_env,
    )
    assert installed.returncode == 0, installed.stderr[-4000:]
    edgeproxy_cmd = str(env_dir / "bin" / "edgeproxy")

    # The package comes from the virtualenv, not from this source tree, and has no sources there.
    where = subprocess.run([python, "-c", "import edgeproxy; print(edgeproxy.__file__)"],
                           capture_output=True, text=True, timeout=60, cwd=tmp_path, env=clean_env)
    package = Path(where.stdout.strip()).parent
    assert package.is_relative_to(env_dir), where.stdout + where.stderr
    assert list(package.glob("_fastxml*.so")) and not list(package.glob("_fastxml.pyx"))

    shown = subprocess.run([edgeproxy_cmd, "--version"], capture_output=True, text=True, timeout=60,
                           cwd=tmp_path, env=clean_env)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith(f"edgeproxy {edgeproxy.__version__} (tokenizer compiled with Cython ")
    if machine_has_sse2():
        assert "SSE2" in shown.stdout

    edge_config = serve_config(tmp_path / "edge", ADDRESS)
    config = edge_config.path
    checked = subprocess.run([edgeproxy_cmd, "check", "--no-dns", "--config", str(config)],
                             capture_output=True, text=True, timeout=60, cwd=tmp_path, env=clean_env)
    # No certificate yet: the check says so (FAIL) and names everything else it looked at.
    assert "FAIL certificate:" in checked.stdout and "OK config:" in checked.stdout, checked.stdout
    assert checked.returncode == 1, checked.stdout + checked.stderr
    made = subprocess.run([edgeproxy_cmd, "cert", "self-signed", "--config", str(config)],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path, env=clean_env)
    assert made.returncode == 0, made.stderr
    checked = subprocess.run([edgeproxy_cmd, "check", "--no-dns", "--config", str(config)],
                             capture_output=True, text=True, timeout=60, cwd=tmp_path, env=clean_env)
    assert "FAIL" not in checked.stdout and checked.returncode == 0, checked.stdout + checked.stderr

    edge = EdgeProcess([edgeproxy_cmd, "serve", "--config", str(config)], edge_config)
    try:
        assert edge.terminate() == 0, edge.log_text()[-4000:]
    finally:
        edge.kill()
    assert "Traceback" not in edge.log_text()


def test_the_wheels_are_built_for_each_python_found(dist: Dist) -> None:
    """cp311 always; cp312 and cp313 when their interpreters exist on this machine (reported,
    not required, elsewhere)."""
    for version in ("3.12", "3.13"):
        found = bool(glob.glob(os.path.expanduser(f"~/.pyenv/versions/{version}.*/bin/python{version}"))
                     or Path(f"/usr/bin/python{version}").exists())
        tag = "cp" + version.replace(".", "")
        if found:
            assert tag in dist.wheels, (tag, sorted(dist.wheels))
        else:
            print(f"no Python {version} here: no {tag} wheel expected", file=sys.stderr)
