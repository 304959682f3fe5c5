"""`edgeproxy dns check` against a real dnsmasq serving a good zone and a broken one."""

import socket

from edgeproxy.cli import main
from fixtures.configs import write_config
from fixtures.dnsmasq import host, srv

GOOD_ZONE = [
    srv("_xmpp-server._tcp.contoso.test", "access.contoso.test"),
    srv("_xmpp-server._tcp.northwind.test", "access.contoso.test"),
    host("access.contoso.test", "127.0.0.10"),
    # partner with SRV, partner without (A fallback)
    srv("_xmpp-server._tcp.fabrikam.test", "xmpp.fabrikam.test"),
    host("xmpp.fabrikam.test", "127.0.0.2"),
    host("litware.test", "127.0.0.3"),
]

BROKEN_ZONE = [
    srv("_xmpp-server._tcp.contoso.test", "evil.example.test"),  # SRV to the wrong host
    host("evil.example.test", "127.0.0.66"),
    srv("_xmpp-server._tcp.northwind.test", "access.contoso.test", port=5270),  # wrong port
    # tailspin.test: no SRV at all
    host("access.contoso.test", "127.0.0.10"),
    srv("_xmpp-server._tcp.fabrikam.test", "xmpp.fabrikam.test"),
    host("xmpp.fabrikam.test", "127.0.0.2"),
]


def _check(capsys, config, server, *extra):
    status = main(["dns", "check", "--config", str(config), "--resolver", server.resolver, *extra])
    lines = capsys.readouterr().out.splitlines()
    return status, lines


def _add_partner(config, domain, *extra):
    assert main(["partner", "new", domain, "--config", str(config), *extra]) == 0


def test_good_zone_every_check_ok(tmp_path, dnsmasq, capsys):
    server = dnsmasq(GOOD_ZONE)
    config = write_config(tmp_path)
    _add_partner(config, "fabrikam.test")
    _add_partner(config, "litware.test")
    capsys.readouterr()
    status, lines = _check(capsys, config, server)
    assert status == 0, lines
    assert lines == [
        "OK dns _xmpp-server._tcp.contoso.test: 10 10 5269 access.contoso.test",
        "OK dns _xmpp-server._tcp.northwind.test: 10 10 5269 access.contoso.test",
        "OK dns access.contoso.test: resolves to 127.0.0.10",
        "OK dns partner fabrikam.test: SRV: xmpp.fabrikam.test:5269 (127.0.0.2)",
        "OK dns partner litware.test: no SRV record: A/AAAA fallback (RFC 6120 §3.2.1): litware.test:5269 (127.0.0.3)",
    ]


def test_broken_zone_reports_exactly_wrong_host_wrong_port_and_missing_srv(tmp_path, dnsmasq, capsys):
    server = dnsmasq(BROKEN_ZONE)
    config = write_config(tmp_path, domains=["contoso.test", "northwind.test", "tailspin.test"])
    status, lines = _check(capsys, config, server, "--partner", "fabrikam.test")
    assert status == 1
    fails = [line for line in lines if line.startswith("FAIL")]
    assert len(fails) == 3, lines
    contoso, northwind, tailspin = fails
    assert contoso.startswith("FAIL dns _xmpp-server._tcp.contoso.test: target evil.example.test is not this edge")
    assert "port" not in contoso.split("[records")[0]
    assert northwind.startswith(
        "FAIL dns _xmpp-server._tcp.northwind.test: target access.contoso.test has port 5270, expected 5269"
    )
    assert "not this edge" not in northwind
    assert tailspin.startswith("FAIL dns _xmpp-server._tcp.tailspin.test: missing SRV record")
    assert "hint: publish the records printed by `edgeproxy dns records`" in tailspin
    assert [line for line in lines if not line.startswith("FAIL")] == [
        "OK dns access.contoso.test: resolves to 127.0.0.10",
        "OK dns partner fabrikam.test: SRV: xmpp.fabrikam.test:5269 (127.0.0.2)",
    ]


def test_a_record_not_matching_our_listen_address_fails(tmp_path, dnsmasq, capsys):
    server = dnsmasq([*GOOD_ZONE[:2], host("access.contoso.test", "127.0.0.99")])
    config = write_config(tmp_path)
    status, lines = _check(capsys, config, server)
    assert status == 1
    assert "FAIL dns access.contoso.test: resolves to 127.0.0.99, but this edge listens on 127.0.0.10" in lines[2]


def test_missing_a_record_and_unresolvable_partner_fail(tmp_path, dnsmasq, capsys):
    server = dnsmasq([*GOOD_ZONE[:2], srv("_xmpp-server._tcp.fabrikam.test", "gone.fabrikam.test")])
    config = write_config(tmp_path)
    _add_partner(config, "fabrikam.test")
    _add_partner(config, "adatum.test", "--proxy-fqdn", "edge.adatum.test")
    capsys.readouterr()
    status, lines = _check(capsys, config, server)
    assert status == 1
    assert lines[2].startswith("FAIL dns access.contoso.test: no A/AAAA record")
    assert lines[3].startswith("FAIL dns partner adatum.test: proxy FQDN: no target resolves: edge.adatum.test")
    assert lines[4].startswith("FAIL dns partner fabrikam.test: SRV: no target resolves: gone.fabrikam.test")


def test_pool_option_accepts_srv_records_of_both_pools(tmp_path, dnsmasq, capsys):
    server = dnsmasq([
        srv("_xmpp-server._tcp.contoso.test", "access.contoso.test", priority=10),
        srv("_xmpp-server._tcp.contoso.test", "edge-b.contoso.test", priority=20),
        host("access.contoso.test", "127.0.0.10"),
    ])
    config = write_config(tmp_path, domains=["contoso.test"])
    pools = ["--pool", "access.contoso.test:10", "--pool", "edge-b.contoso.test:20"]
    status, lines = _check(capsys, config, server, *pools)
    assert status == 0, lines
    status, lines = _check(capsys, config, server)  # edge-b is not us unless declared
    assert status == 1 and "target edge-b.contoso.test is not this edge" in lines[0]


def test_unreachable_resolver_warns_instead_of_blaming_the_records(tmp_path, capsys):
    config = write_config(tmp_path, domains=["contoso.test"])
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))  # bound, never answers
        port = s.getsockname()[1]
        status = main(["dns", "check", "--config", str(config), "--resolver", f"127.0.0.1:{port}", "--timeout", "0.3"])
    lines = capsys.readouterr().out.splitlines()
    assert status == 0
    assert all(line.startswith("WARN") and "timeout" in line for line in lines), lines


def test_reach_connects_to_partner_target_and_reports_refused_own_port(tmp_path, dnsmasq, capsys):
    with socket.socket() as listener:
        listener.bind(("127.0.0.212", 0))
        listener.listen()
        port = listener.getsockname()[1]
        server = dnsmasq([
            srv("_xmpp-server._tcp.contoso.test", "access.contoso.test"),
            host("access.contoso.test", "127.0.0.211"),  # nothing listens on 127.0.0.211:5269
            srv("_xmpp-server._tcp.fabrikam.test", "xmpp.fabrikam.test", port=port),
            host("xmpp.fabrikam.test", "127.0.0.212"),
        ])
        config = write_config(tmp_path, domains=["contoso.test"], listen=["127.0.0.211:5269"])
        status, lines = _check(capsys, config, server, "--partner", "fabrikam.test", "--reach")
    assert status == 1
    assert lines[1] == "OK dns access.contoso.test: resolves to 127.0.0.211"
    assert lines[2].startswith("FAIL reach access.contoso.test: cannot connect to access.contoso.test port 5269")
    assert lines[4] == f"OK reach partner fabrikam.test: TCP connect to xmpp.fabrikam.test (127.0.0.212) port {port} succeeded"


def test_a_proxy_fqdn_with_a_port_is_looked_up_by_its_host_and_reached_on_its_port(tmp_path, dnsmasq, capsys):
    server = dnsmasq([*GOOD_ZONE[:3], host("edge.adatum.test", "127.0.0.4")])
    config = write_config(tmp_path)
    _add_partner(config, "adatum.test", "--proxy-fqdn", "edge.adatum.test:5270")
    capsys.readouterr()
    status, lines = _check(capsys, config, server)
    assert status == 0, lines
    assert "OK dns partner adatum.test: proxy FQDN: edge.adatum.test:5270 (127.0.0.4)" in lines
