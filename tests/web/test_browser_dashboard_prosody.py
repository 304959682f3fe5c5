"""The dashboard shows a real Prosody partner's stream within 5 seconds of it connecting.

A lab of its own: dnsmasq on 127.0.40.53 (the S2S SRV and A records of contoso.test and
fabrikam.test), Prosody 0.12 for fabrikam.test on 127.0.40.22 (plain: TCP + dialback), a real
``edgeproxy serve`` for contoso.test on 127.0.40.3 with the Control Panel on and fabrikam.test as
a federated partner (TLS and SASL not supported, dialback on), and headless Chromium on its
dashboard. alice@fabrikam.test writes to bob@contoso.test: Prosody opens a stream to the edge;
from the moment ``/status`` lists it, the open dashboard shows it (by its own refresh) within 5 s.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
import urllib.request
from pathlib import Path

import trio
from _browser import new_driver, require_browser, start_panel_serve

from edgeproxy.policy.model import (
    AccessPolicy,
    Configuration,
    GatewaySettings,
    Negotiation,
    Partner,
    PartnerType,
    User,
)
from fixtures.c2s import Client
from fixtures.dnsmasq import start_dnsmasq, xmpp_server
from fixtures.ports import free_port
from fixtures.xmpp_servers import PASSWORD, start_prosody

EDGE, PROSODY, DNS = "127.0.40.3", "127.0.40.22", "127.0.40.53"
#: From the stream's appearance in /status to its row in the open dashboard (seconds).
SHOWN_WITHIN = 5.0


def streams(address: str, port: int) -> list[dict[str, object]]:
    with urllib.request.urlopen(f"http://{address}:{port}/status", timeout=5) as r:
        return list(json.load(r)["streams"])


async def test_the_dashboard_shows_a_prosody_partners_stream_within_5_seconds(tmp_path: Path) -> None:
    require_browser()
    edge_port, prosody_s2s, prosody_c2s = free_port(EDGE), free_port(PROSODY), free_port(PROSODY)
    dns = start_dnsmasq(tmp_path / "dns", [*xmpp_server("contoso.test", EDGE, edge_port),
                                           *xmpp_server("fabrikam.test", PROSODY, prosody_s2s)], address=DNS)
    prosody = serve = driver = None
    try:
        prosody = start_prosody("fabrikam.test", PROSODY, (dns.address, dns.port), mode="plain",
                                c2s_port=prosody_c2s, s2s_port=prosody_s2s)
        nos = Negotiation.NOT_SUPPORTED
        store = Configuration(
            gateway=GatewaySettings(dialback_secret="control-panel-dialback-secret"),
            partners=(Partner(domain="fabrikam.test", type=PartnerType.FEDERATED, tls=nos, sasl=nos, dialback=True),),
            policies=(AccessPolicy(identity="global", xmpp=True, federation=True),),
            users=(User(sip="sip:bob@contoso.test"),),
        )
        serve = await trio.to_thread.run_sync(lambda: start_panel_serve(
            tmp_path / "edge", EDGE, resolver=dns.resolver, store=store, s2s=edge_port))
        driver = await trio.to_thread.run_sync(lambda: new_driver(tmp_path / "downloads"))
        token = (serve.workdir / "state" / "admin.token").read_text().strip()
        base = f"http://{EDGE}:{serve.admin_port}/ui"

        def open_dashboard() -> None:
            driver.get(base + "/login")
            driver.find_element("id", "secret").send_keys(token)
            driver.find_element("id", "login").click()
            deadline = time.monotonic() + 10
            while "No stream." not in driver.page_source:
                assert time.monotonic() < deadline, driver.page_source[-2000:]
                time.sleep(0.1)

        await trio.to_thread.run_sync(open_dashboard)
        alice = await Client.login(PROSODY, prosody.c2s_port, "alice", "fabrikam.test", PASSWORD)
        await alice.send("<message to='bob@contoso.test' type='chat' id='d1'><body>hello</body></message>")
        with trio.fail_after(30):
            while not any(s["partner"] == "fabrikam.test"
                          for s in await trio.to_thread.run_sync(streams, EDGE, serve.admin_port)):
                await trio.sleep(0.05)
        listed = time.monotonic()

        def shown() -> str:
            from selenium.common.exceptions import (
                NoSuchElementException,
                StaleElementReferenceException,
            )

            rows = ""
            while True:
                # the refresh replaces the table while we read it
                with contextlib.suppress(StaleElementReferenceException, NoSuchElementException):
                    rows = driver.find_element("id", "streams").text
                if "fabrikam.test" in rows:
                    return rows
                assert time.monotonic() - listed < SHOWN_WITHIN, rows
                time.sleep(0.05)

        rows = await trio.to_thread.run_sync(shown)
        assert "inbound" in rows and "tcp-dialback" in rows
        wanted = os.environ.get("EDGEPROXY_UI_SCREENSHOTS")
        if wanted:
            driver.save_screenshot(str(Path(wanted) / "dashboard-prosody.png"))
        await alice.aclose()
    finally:
        if driver is not None:
            driver.quit()
            shutil.rmtree(driver.profile_dir, ignore_errors=True)
        if serve is not None:
            serve.stop()
        if prosody is not None:
            prosody.stop()
        dns.stop()
