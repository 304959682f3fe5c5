"""The Control Panel in a real browser (headless Chromium, Selenium) against a real
``edgeproxy serve`` on 127.0.40.2: log in; create a partner with two additional domains; be
refused SASL required with TLS not supported and dialback off, with nothing stored (the CLI's
``partner get`` says so); edit, then remove; change the gateway settings; create a policy and
grant it; run the certificate wizard and read the downloaded CSR with ``openssl req``.

The tests run in order on one server and one browser. Each page is photographed (1280 px, and
the dashboard at a phone's width) into ``$EDGEPROXY_UI_SCREENSHOTS`` when set (``docs/ui`` to
refresh the documentation's pictures), else into a temporary directory."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from _browser import DESKTOP, PHONE, cli, cli_json, new_driver, require_browser, start_panel_serve

from fixtures.serve import ServeProcess

ADDRESS = "127.0.40.2"


@pytest.fixture(scope="module")
def serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    require_browser()
    process = start_panel_serve(tmp_path_factory.mktemp("panel"), ADDRESS)
    yield process
    process.stop()


@pytest.fixture(scope="module")
def downloads(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("downloads")


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    wanted = os.environ.get("EDGEPROXY_UI_SCREENSHOTS")
    directory = Path(wanted) if wanted else tmp_path_factory.mktemp("screenshots")
    directory.mkdir(parents=True, exist_ok=True)
    return directory


@pytest.fixture(scope="module")
def browser(serve: ServeProcess, downloads: Path):  # type: ignore[no-untyped-def]
    driver = new_driver(downloads)
    yield driver
    driver.quit()
    shutil.rmtree(driver.profile_dir, ignore_errors=True)


def url(serve: ServeProcess, path: str) -> str:
    return f"http://{serve.address}:{serve.admin_port}/ui{path}"


def shot(browser, shots: Path, name: str) -> None:  # type: ignore[no-untyped-def]
    """A full-height picture of the page as it is now."""
    width = browser.get_window_size()["width"]
    height = browser.execute_script("return document.documentElement.scrollHeight")
    browser.set_window_size(width, max(600, min(int(height) + 120, 2400)))
    browser.save_screenshot(str(shots / f"{name}.png"))
    browser.set_window_size(*DESKTOP)


def by_id(browser, element_id: str):  # type: ignore[no-untyped-def]
    from selenium.webdriver.common.by import By

    return browser.find_element(By.ID, element_id)


def live_text(browser) -> str:  # type: ignore[no-untyped-def]
    """The dashboard's live part, read again when its refresh replaced it meanwhile."""
    from selenium.common.exceptions import StaleElementReferenceException

    for _ in range(20):
        try:
            return str(by_id(browser, "live").text)
        except StaleElementReferenceException:
            time.sleep(0.05)
    raise AssertionError("the dashboard kept changing")


def submit(browser, element_id: str) -> None:  # type: ignore[no-untyped-def]
    """Click a submit button and wait until the next page has replaced this one."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    page = browser.find_element(By.TAG_NAME, "html")
    by_id(browser, element_id).click()
    WebDriverWait(browser, 15).until(expected_conditions.staleness_of(page))


def fill(browser, element_id: str, text: str) -> None:  # type: ignore[no-untyped-def]
    field = by_id(browser, element_id)
    field.clear()
    field.send_keys(text)


def choose(browser, element_id: str, value: str) -> None:  # type: ignore[no-untyped-def]
    from selenium.webdriver.support.ui import Select

    Select(by_id(browser, element_id)).select_by_value(value)


def set_checkbox(browser, element_id: str, on: bool) -> None:  # type: ignore[no-untyped-def]
    box = by_id(browser, element_id)
    if box.is_selected() != on:
        box.click()


def test_log_in_with_the_admin_token(browser, serve: ServeProcess, shots: Path) -> None:  # type: ignore[no-untyped-def]
    browser.get(url(serve, "/"))
    assert browser.current_url.endswith("/ui/login")
    shot(browser, shots, "login")
    fill(browser, "secret", "not the token")
    submit(browser, "login")
    assert "Wrong token or password" in by_id(browser, "login-error").text
    token = (serve.workdir / "state" / "admin.token").read_text().strip()
    fill(browser, "secret", token)
    submit(browser, "login")
    assert browser.current_url.endswith("/ui/")
    listeners = live_text(browser)
    assert "external" in listeners and "admin" in listeners and "connected" in listeners
    shot(browser, shots, "dashboard")
    browser.set_window_size(*PHONE)
    browser.save_screenshot(str(shots / "dashboard-phone.png"))
    browser.set_window_size(*DESKTOP)


def test_the_dashboard_refreshes_itself(browser, serve: ServeProcess) -> None:  # type: ignore[no-untyped-def]
    import urllib.error
    import urllib.request

    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(url(serve, "/"))
    marker = browser.execute_script("window.notReloaded = true; return window.notReloaded")
    assert marker is True and "POST /stop" not in live_text(browser)
    request = urllib.request.Request(f"http://{serve.address}:{serve.admin_port}/stop", method="POST", data=b"")
    with pytest.raises(urllib.error.HTTPError) as refused:  # no token: EP8003, a recent warning
        urllib.request.urlopen(request, timeout=5)
    assert refused.value.code == 401
    WebDriverWait(browser, 12).until(lambda b: "POST /stop" in live_text(b))
    assert browser.execute_script("return window.notReloaded") is True  # updated in place


def test_create_a_partner_with_two_additional_domains(browser, serve: ServeProcess, shots: Path) -> None:  # type: ignore[no-untyped-def]
    browser.get(url(serve, "/partners"))
    by_id(browser, "new-partner").click()
    fill(browser, "domain", "fabrikam.test")
    fill(browser, "additional_domains", "fabrikam.example\ncorp.fabrikam.test")
    fill(browser, "description", "Fabrikam, Inc.")
    choose(browser, "type", "federated")
    shot(browser, shots, "partner-new")
    submit(browser, "commit")
    assert "Partner fabrikam.test created." in browser.page_source
    partner = cli_json(serve, "partner", "get", "fabrikam.test")
    assert partner["additional-domains"] == ["fabrikam.example", "corp.fabrikam.test"]  # type: ignore[index]
    shot(browser, shots, "partners")


def test_sasl_required_without_tls_and_dialback_is_refused_and_nothing_is_stored(browser, serve: ServeProcess, shots: Path) -> None:  # type: ignore[no-untyped-def]
    browser.get(url(serve, "/partners/new"))
    fill(browser, "domain", "northwind.test")
    choose(browser, "tls", "not-supported")
    choose(browser, "sasl", "required")
    set_checkbox(browser, "dialback", False)
    submit(browser, "commit")
    error = by_id(browser, "error-negotiation").text
    assert error.startswith("SASL needs TLS")
    assert "invalid" in by_id(browser, "negotiation").get_attribute("class")  # the field set is marked
    assert by_id(browser, "matrix-number").text == "6"  # the row the settings land on
    shot(browser, shots, "partner-refused")
    done = cli(serve, "partner", "get", "northwind.test", "--json")
    assert (done.returncode, done.stdout, done.stderr.strip()) == (1, "", "edgeproxy: no partner northwind.test")


def test_edit_then_remove_the_partner(browser, serve: ServeProcess, shots: Path) -> None:  # type: ignore[no-untyped-def]
    browser.get(url(serve, "/partners/fabrikam.test"))
    choose(browser, "tls", "optional")
    fill(browser, "connection_limit", "5")
    submit(browser, "commit")
    notice = browser.page_source
    assert "Partner fabrikam.test saved." in notice and "Warning: SASL is required, but with TLS optional" in notice
    partner = cli_json(serve, "partner", "get", "fabrikam.test")
    assert partner["tls"] == "optional" and partner["connection-limit"] == 5  # type: ignore[index]
    browser.get(url(serve, "/partners/fabrikam.test"))
    shot(browser, shots, "partner-edit")
    browser.get(url(serve, "/partners"))
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    page = browser.find_element(By.TAG_NAME, "html")
    browser.find_element(By.CSS_SELECTOR, 'tr[data-domain="fabrikam.test"] button[name="remove"]').click()
    browser.switch_to.alert.accept()
    WebDriverWait(browser, 15).until(expected_conditions.staleness_of(page))
    assert "Partner fabrikam.test removed." in browser.page_source
    assert cli(serve, "partner", "get", "fabrikam.test", "--json").returncode == 1


def test_change_the_gateway_settings(browser, serve: ServeProcess, shots: Path) -> None:  # type: ignore[no-untyped-def]
    browser.get(url(serve, "/gateway"))
    fill(browser, "partner_connection_limit", "12")
    fill(browser, "keepalive_interval", "240")
    submit(browser, "commit")
    assert "Gateway settings saved." in browser.page_source
    gateway = cli_json(serve, "gateway", "get")
    assert gateway["partner-connection-limit"] == 12 and gateway["keepalive-interval"] == 240  # type: ignore[index]
    shot(browser, shots, "gateway")


def test_create_a_policy_and_grant_it(browser, serve: ServeProcess, shots: Path) -> None:  # type: ignore[no-untyped-def]
    done = cli(serve, "user", "new", "sip:bob@contoso.test", "--name", "Bob")
    assert done.returncode == 0, done.stderr
    browser.get(url(serve, "/policies"))
    fill(browser, "identity", "xmpp-users")
    set_checkbox(browser, "xmpp", True)
    fill(browser, "description", "may talk to XMPP federated users")
    submit(browser, "create-policy")
    assert "Policy xmpp-users created." in browser.page_source
    choose(browser, "sip", "sip:bob@contoso.test")
    choose(browser, "policy", "xmpp-users")
    submit(browser, "grant")
    assert "policy xmpp-users granted" in browser.page_source
    assert cli_json(serve, "user", "get", "sip:bob@contoso.test")["policy"] == "xmpp-users"  # type: ignore[index]
    shot(browser, shots, "policies")
    browser.get(url(serve, "/users"))
    assert "sip:bob@contoso.test" in by_id(browser, "users").text
    shot(browser, shots, "users")


def test_the_certificate_wizard_gives_a_csr_openssl_reads(browser, serve: ServeProcess, downloads: Path, shots: Path) -> None:  # type: ignore[no-untyped-def]
    browser.get(url(serve, "/certificates"))
    fill(browser, "friendly_name", "Edge 2026")
    fill(browser, "organization", "Contoso")
    fill(browser, "country", "US")
    choose(browser, "key_size", "2048")
    submit(browser, "create-request")
    assert "BEGIN CERTIFICATE REQUEST" in by_id(browser, "request-pem").text
    shot(browser, shots, "certificates")
    by_id(browser, "download-csr").click()
    target = downloads / "edgeproxy-request.csr"
    deadline = time.monotonic() + 15
    while not target.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert target.exists(), list(downloads.iterdir())
    text = subprocess.run(["openssl", "req", "-in", str(target), "-text", "-noout"], capture_output=True,
                          text=True, check=True, timeout=30).stdout
    assert "Public-Key: (2048 bit)" in text
    for name in ("sip.contoso.test", "DNS:contoso.test"):
        assert name in text


def test_the_dns_and_check_pages(browser, serve: ServeProcess, shots: Path) -> None:  # type: ignore[no-untyped-def]
    browser.get(url(serve, "/dns?pools=" + "edge1.contoso.test%3A10%0Aedge2.contoso.test%3A20"))
    assert "_xmpp-server._tcp.contoso.test." in by_id(browser, "zone").text
    shot(browser, shots, "dns")
    browser.get(url(serve, "/check?dns=0"))
    findings = by_id(browser, "findings").text
    assert "in use by this edgeproxy" in findings
    shot(browser, shots, "check")


@pytest.mark.parametrize("path", ["/", "/partners", "/partners/new", "/gateway", "/policies", "/users",
                                  "/certificates", "/dns", "/check?dns=0"])
def test_every_page_fits_a_phone_width(browser, serve: ServeProcess, path: str) -> None:  # type: ignore[no-untyped-def]
    browser.set_window_size(*PHONE)
    try:
        browser.get(url(serve, path))
        # read in one script: the dashboard's refresh may replace its heading between two calls
        assert browser.execute_script("const h = document.querySelector('h1'); return !!h && h.offsetWidth > 0")
        overflow = browser.execute_script(
            "return document.documentElement.scrollWidth - document.documentElement.clientWidth")
        assert overflow <= 0, f"{path} is {overflow} px wider than the phone"
    finally:
        browser.set_window_size(*DESKTOP)
