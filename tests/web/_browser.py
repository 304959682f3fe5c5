"""Headless Debian Chromium driven by Selenium (chromium-driver), and a real ``edgeproxy serve``
with the Control Panel on, for the browser tests.

Missing Chromium or chromedriver skips the browser tests on a workstation and fails them under
CI (``CI=true``), where ``.ci/run`` installs both. Selenium never downloads a browser or driver
itself: the binaries are named explicitly."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from edgeproxy.policy.model import Configuration
from fixtures.ports import free_port
from fixtures.serve import DOMAIN, EdgeCertificates, ServeProcess, write_store
from fixtures.tools import unavailable

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
#: The desktop and phone widths the pages are checked at (CSS pixels).
DESKTOP = (1280, 900)
PHONE = (390, 844)


def require_browser() -> None:
    """Skip (or, under CI, fail) when Chromium or chromedriver is not installed."""
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not (os.path.exists(p) or shutil.which(p))]
    if missing:
        message = f"the browser tests need {' and '.join(missing)} (Debian: chromium, chromium-driver)"
        unavailable(message)


def new_driver(download_dir: Path):  # type: ignore[no-untyped-def]
    """A headless Chromium with its own empty profile, downloads going to ``download_dir``."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="edgeproxy-chromium-")
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={profile}", f"--window-size={DESKTOP[0]},{DESKTOP[1]}"):
        options.add_argument(flag)
    options.add_experimental_option("prefs", {
        "download.default_directory": str(download_dir), "download.prompt_for_download": False,
        "safebrowsing.enabled": False})
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    driver.execute_cdp_cmd("Page.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(download_dir)})
    driver.profile_dir = profile  # removed by the fixture
    return driver


def start_panel_serve(workdir: Path, address: str, *, resolver: str | None = None,
                      store: Configuration | None = None, s2s: int | None = None) -> ServeProcess:
    """``edgeproxy serve`` (role both) on ``address`` with ``[admin] ui = true`` and a private
    CA's certificate; like ``fixtures.serve.start_serve``, which writes no ``ui`` key. ``resolver``:
    its ``[dns] resolver`` (default: a port nobody answers on, so DNS checks end at their timeout);
    ``store``: what its store holds at start."""
    workdir.mkdir(parents=True, exist_ok=True)
    s2s = s2s or free_port(address)
    internal, admin = free_port(address), free_port(address)
    sip = free_port(address, udp_too=True)
    cert, key, ca = EdgeCertificates(workdir / "pki").files(DOMAIN)
    config = workdir / "edgeproxy.toml"
    config.write_text(
        f'[edge]\ndomains = ["{DOMAIN}"]\nlisten = ["{address}:{s2s}"]\n'
        f'internal-listen = "{address}:{internal}"\nstate-dir = "state"\n'
        f'[tls]\ncertificate = "{cert}"\nkey = "{key}"\ntrust = "{ca}"\n'
        f'[admin]\nlisten = "{address}:{admin}"\nui = true\n'
        f'[gateway]\nsip-listen = ["{address}:{sip}"]\nsip-tls-listen = []\n'
        f'[dns]\nresolver = "{resolver or f"{address}:{free_port(address, udp_too=True)}"}"\n'
    )
    if store is not None:
        write_store(workdir / "state", store)
    events_path = workdir / "events.jsonl"
    with events_path.open("wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "edgeproxy", "serve", "--config", str(config)],
                                stdout=subprocess.DEVNULL, stderr=err, cwd=workdir)
    serve = ServeProcess(proc, workdir, address, s2s, internal, admin, sip, events_path)
    deadline = time.monotonic() + 30
    while True:
        if not serve.alive():
            raise AssertionError(f"edgeproxy serve exited at start:\n{serve.log_tail()}")
        try:
            if serve.http_get("/healthz")[0] == 200:
                break
        except OSError:
            pass
        if time.monotonic() > deadline:
            serve.stop()
            raise AssertionError(f"edgeproxy serve did not start:\n{serve.log_tail()}")
        time.sleep(0.1)
    return serve


def cli(serve: ServeProcess, *args: str) -> subprocess.CompletedProcess[str]:
    """The real CLI on the served configuration."""
    return subprocess.run([sys.executable, "-m", "edgeproxy", *args, "--config", str(serve.workdir / "edgeproxy.toml")],
                          capture_output=True, text=True, timeout=60, check=False)


def cli_json(serve: ServeProcess, *args: str) -> object:
    done = cli(serve, *args, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)
