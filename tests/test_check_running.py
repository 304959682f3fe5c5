"""``edgeproxy check`` while the edge it checks is running, and its check of each stored partner.

The running edge holds its own listener addresses: the check asks its admin endpoint for
``/status`` and reports those addresses as in use by this edgeproxy (OK), while an address some
other process holds is still a warning. Each stored partner row gets its own line: a refused
negotiation row (a store written by an older version) is FAIL, a row with a warning is WARN, a
proxy FQDN is checked as ``host[:port]`` and resolved, a partner without one is looked up by SRV
(with the timeout of ``--timeout``). All through the real CLI, ``--json`` included.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgeproxy.policy.model import (
    AccessPolicy,
    Configuration,
    GatewaySettings,
    Negotiation,
    Partner,
    PartnerType,
)
from edgeproxy.policy.validation import check_negotiation
from fixtures import dnsmasq as dnsmasq_fixtures
from fixtures.dnsmasq import host, srv
from fixtures.ports import free_port
from fixtures.serve import ServeProcess, start_serve, write_store

EDGE_ADDR, DNS_ADDR = "127.0.31.3", "127.0.31.4"
REQ, OPT, NOS = Negotiation.REQUIRED, Negotiation.OPTIONAL, Negotiation.NOT_SUPPORTED
dnsmasq = dnsmasq_fixtures.dnsmasq  # the fixture


def partner(domain: str, tls: Negotiation, sasl: Negotiation, dialback: bool, proxy: str | None = None) -> Partner:
    return Partner(domain=domain, type=PartnerType.FEDERATED, tls=tls, sasl=sasl, dialback=dialback,
                   proxy_fqdn=proxy)


def store(*partners: Partner) -> Configuration:
    return Configuration(
        gateway=GatewaySettings(dialback_secret="check-running-dialback-secret"),
        partners=partners,
        policies=(AccessPolicy(identity="global", xmpp=True, federation=True),),
    )


@pytest.fixture
def edge(tmp_path: Path) -> Iterator[ServeProcess]:
    serve = start_serve(tmp_path / "edge", address=EDGE_ADDR, store=store())
    try:
        yield serve
    finally:
        serve.stop()


def check(config: Path, *args: str) -> tuple[int, list[dict[str, str | None]]]:
    done = subprocess.run([sys.executable, "-m", "edgeproxy", "check", "--config", str(config), "--json", *args],
                          capture_output=True, text=True, timeout=60)
    return done.returncode, json.loads(done.stdout)


def by_check(lines: list[dict[str, str | None]], name: str) -> dict[str, str | None]:
    (found,) = [line for line in lines if line["check"] == name]
    return found


def test_the_running_edges_own_listeners_are_ok(edge: ServeProcess) -> None:
    _, lines = check(edge.workdir / "edgeproxy.toml", "--no-dns")
    for port, role in ((edge.s2s_port, "external"), (edge.internal_port, "internal")):
        line = by_check(lines, f"listener {EDGE_ADDR}:{port}")
        assert line["status"] == "ok", line
        assert line["message"] == f"in use by this edgeproxy (pid {edge.pid}, {role} listener)"
    assert set(lines[0]) == {"check", "status", "message", "hint"}


def test_an_address_another_process_holds_is_still_a_warning(edge: ServeProcess) -> None:
    config = edge.workdir / "edgeproxy.toml"
    with socket.socket() as other:
        other.bind((EDGE_ADDR, 0))
        other.listen()
        port = other.getsockname()[1]
        text = config.read_text().replace(f'listen = ["{EDGE_ADDR}:{edge.s2s_port}"]',
                                          f'listen = ["{EDGE_ADDR}:{port}"]')
        assert text != config.read_text()
        moved = edge.workdir / "moved.toml"
        moved.write_text(text)
        _, lines = check(moved, "--no-dns")
    line = by_check(lines, f"listener {EDGE_ADDR}:{port}")
    assert line["status"] == "warning"
    assert line["message"] == f"in use by another process: the running edgeproxy (pid {edge.pid}) does not listen there"


def test_each_stored_partner_row_is_checked(tmp_path: Path, dnsmasq) -> None:  # type: ignore[no-untyped-def]
    server = dnsmasq([
        host("xmpp.fabrikam.test", "192.0.2.7"),
        srv("_xmpp-server._tcp.northwind.test", "xmpp.northwind.test"),
        host("xmpp.northwind.test", "192.0.2.8"),
    ], address=DNS_ADDR)
    config = tmp_path / "edgeproxy.toml"
    config.write_text(f'[edge]\ndomains = ["contoso.test"]\nlisten = ["{EDGE_ADDR}:{free_port(EDGE_ADDR)}"]\n'
                      f'internal-listen = "127.0.0.1:{free_port("127.0.0.1")}"\nstate-dir = "state"\n'
                      f'[admin]\nlisten = "{EDGE_ADDR}:{free_port(EDGE_ADDR)}"\n'
                      f'[dns]\nresolver = "{server.resolver}"\n')  # the checks ask it: no --resolver
    write_store(tmp_path / "state", store(
        partner("fabrikam.test", REQ, NOS, True, proxy="xmpp.fabrikam.test"),
        partner("sim1.test", NOS, NOS, True, proxy="127.0.31.5:5270"),
        partner("litware.test", OPT, REQ, True, proxy="127.0.31.6"),  # a row with a warning
        partner("wingtip.test", REQ, NOS, True, proxy="nowhere.wingtip.test:5270"),
        partner("broken.test", NOS, NOS, False),  # refused today; only an old store can hold it
        partner("northwind.test", NOS, NOS, True),
    ))
    status, lines = check(config, "--timeout", "1")
    assert status == 1  # broken.test
    fabrikam = by_check(lines, "partner fabrikam.test")
    assert fabrikam["status"] == "ok"
    assert fabrikam["message"] == ("federated, 1 domain(s), TLS dialback; reached by proxy-fqdn xmpp.fabrikam.test "
                                   "(xmpp.fabrikam.test resolves to 192.0.2.7; port 5269)")
    sim = by_check(lines, "partner sim1.test")
    assert sim["status"] == "ok" and sim["message"].endswith(  # type: ignore[union-attr]
        "TCP dialback; reached by proxy-fqdn 127.0.31.5:5270 (an address: no DNS needed)")
    litware = by_check(lines, "partner litware.test")
    (warning,) = check_negotiation(OPT, REQ, True).warnings
    assert litware["status"] == "warning" and litware["message"] == warning.removeprefix("warning: ")
    wingtip = by_check(lines, "partner wingtip.test")
    assert wingtip["status"] == "error"
    assert wingtip["message"] == ("proxy-fqdn nowhere.wingtip.test does not resolve "
                                  "(nowhere.wingtip.test does not exist (NXDOMAIN))")
    broken = by_check(lines, "partner broken.test")
    refusal = check_negotiation(NOS, NOS, False).refusal
    assert broken["status"] == "error" and refusal
    assert broken["message"] == f"negotiation row (tls not-supported, sasl not-supported, dialback off) {refusal}"
    assert broken["hint"] == "edgeproxy partner set broken.test …"
    # DNS: SRV for the partner without a proxy FQDN, none for those with one.
    assert by_check(lines, "dns partner northwind.test")["status"] == "ok"
    assert not [line for line in lines if line["check"] in ("dns partner fabrikam.test", "dns partner sim1.test")]
