"""`edgeproxy check` on the embedded default and on broken configurations."""

import datetime as dt
import re
import socket

import pytest

from edgeproxy.cli import main
from edgeproxy.commands.checks import run_checks
from edgeproxy.config import CONFIG_ENV_VAR, load_config
from edgeproxy.dns.partners import PartnerInfo, PartnerList
from edgeproxy.errors import ConfigError
from fixtures import dnsmasq as dnsmasq_fixtures
from fixtures.configs import write_config
from fixtures.dnsmasq import host, srv
from fixtures.pki import TestPki, write_pem

NOW = dt.datetime.now(dt.UTC)
dnsmasq = dnsmasq_fixtures.dnsmasq  # the fixture (tests/conftest.py is shared; keep ours local)


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """Run in an empty directory with the embedded default configuration."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(CONFIG_ENV_VAR, raising=False)
    return tmp_path


def _run(capsys, *args):
    status = main(["check", *args])
    return status, capsys.readouterr().out.splitlines()


def _line(lines, prefix):
    found = [line for line in lines if re.match(prefix, line)]
    assert len(found) == 1, (prefix, lines)
    return found[0]


def test_embedded_default_reports_missing_certificate_partners_and_dns(in_tmp, dnsmasq, capsys):
    server = dnsmasq([])  # answers, but has none of our records
    status, lines = _run(capsys, "--resolver", server.resolver)
    assert status == 1
    assert lines[0] == "OK config: <embedded default>: domains contoso.test; external FQDN access.contoso.test"
    assert lines[1] == (
        "OK limits: pre-auth connections 20 per IP, 500 in total; dialback 8 pending per stream,"
        " 32 per IP; write timeout 30 s; read rate 16384 B/s before authentication, 8388608 B/s after"
    )
    lines = [lines[0], *lines[2:]]
    assert lines[1] == (
        f"FAIL certificate: {in_tmp}/certs/edge.pem does not exist (hint: `edgeproxy cert self-signed` "
        "for a lab; `edgeproxy cert request` then `edgeproxy cert import` for a public CA)"
    )
    assert lines[2].startswith(f"WARN trust: {in_tmp}/certs/ca.pem does not exist")
    assert re.match(r"(OK|WARN) listener 0\.0\.0\.0:5269: ", lines[3])
    assert re.match(r"(OK|WARN) listener 127\.0\.0\.1:23456: ", lines[4])
    assert lines[5] == f"OK secrets: {in_tmp}/var not created yet (edgeproxy creates it 0750, its secrets 0600/0640)"
    assert lines[6] == (
        "WARN partners: none: no domain can federate (there is no default partner) "
        "(hint: edgeproxy partner new DOMAIN)"
    )
    assert lines[7].startswith("FAIL dns _xmpp-server._tcp.contoso.test: missing SRV record")
    assert lines[8].startswith("FAIL dns access.contoso.test: no A/AAAA record")
    assert len(lines) == 9


def test_limits_that_remove_a_protection_before_authentication_are_a_warning(tmp_path, capsys):
    config = tmp_path / "edgeproxy.toml"
    config.write_text('[edge]\ndomains = ["contoso.test"]\n[limits]\npreauth-rate = 0\n')
    status, lines = _run(capsys, "--config", str(config), "--no-dns")
    (line,) = [x for x in lines if " limits: " in x]
    assert line.startswith("WARN limits: pre-auth connections 20 per IP")
    assert "unauthenticated streams are read at any rate (hint: set [limits] preauth-rate" in line


def test_embedded_default_with_self_signed_certificate_partner_and_records_passes(in_tmp, dnsmasq, capsys):
    assert main(["cert", "self-signed"]) == 0
    assert main(["partner", "new", "fabrikam.test"]) == 0
    server = dnsmasq([
        srv("_xmpp-server._tcp.contoso.test", "access.contoso.test"),
        host("access.contoso.test", "192.0.2.10"),
        srv("_xmpp-server._tcp.fabrikam.test", "xmpp.fabrikam.test"),
        host("xmpp.fabrikam.test", "127.0.0.2"),
    ])
    capsys.readouterr()
    status, lines = _run(capsys, "--resolver", server.resolver)
    assert status == 0, lines
    assert not [line for line in lines if line.startswith("FAIL")]
    assert _line(lines, "OK certificate:").endswith("CN=access.contoso.test, key matches, 0 chain")
    assert _line(lines, "OK certificate names:") == "OK certificate names: covers access.contoso.test, contoso.test"
    assert re.fullmatch(r"OK certificate expiry: 36[45] days left \(until \d{4}-\d\d-\d\d\)", _line(lines, ".* certificate expiry"))
    assert _line(lines, r"\w+ partners:") == "OK partners: 1 partner(s), 1 domain(s)"
    assert _line(lines, ".* dns partner") == "OK dns partner fabrikam.test: SRV: xmpp.fabrikam.test:5269 (127.0.0.2)"
    assert _line(lines, ".* dns access") == "OK dns access.contoso.test: resolves to 192.0.2.10"


def test_unreadable_configuration_is_a_single_fail_line(tmp_path, capsys):
    bad = tmp_path / "edgeproxy.toml"
    bad.write_text('[edge]\nlistn = ["0.0.0.0:5269"]\n')
    status, lines = _run(capsys, "--config", str(bad), "--no-dns")
    assert status == 1
    assert len(lines) == 1
    assert lines[0].startswith(f'FAIL config: {bad}: [edge]: unknown key "listn" (did you mean listen?)')
    assert lines[0].endswith("(hint: edgeproxy config validate; edgeproxy config show-default)")


def test_an_invalid_name_is_a_single_fail_line_naming_the_rule(tmp_path, capsys):
    # The configuration refuses it when it loads (edgeproxy.names): the check stops there.
    config = write_config(tmp_path, domains=["contoso..test"], external_fqdn="edge")
    status, lines = _run(capsys, "--config", str(config), "--no-dns")
    assert status == 1
    assert len(lines) == 1
    assert lines[0].startswith(f'FAIL config: {config}: [edge] domains: "contoso..test": a DNS label cannot be empty')


def test_a_port_clash_fails_the_config_check_and_stops(tmp_path, capsys):
    config = write_config(tmp_path, listen=["127.0.0.1:23456"])
    status, lines = _run(capsys, "--config", str(config), "--no-dns")
    assert status == 1
    assert lines == [
        "FAIL config: edge.listen 127.0.0.1:23456 clashes with edge.internal-listen 127.0.0.1:23456 "
        f"(hint: edit {config})"
    ]


def _free(address="127.0.0.1"):
    with socket.socket() as s:
        s.bind((address, 0))
        return f"{address}:{s.getsockname()[1]}"


def _install(tmp_path, cert, key, *chain):
    certs = tmp_path / "certs"
    certs.mkdir(exist_ok=True)
    write_pem(certs / "edge.pem", cert, *chain)
    write_pem(certs / "edge.key", key)


def _config_findings(tmp_path, **kwargs):
    config = load_config(write_config(tmp_path, listen=[_free()], internal_listen=_free(), **kwargs))
    return [f.line() for f in run_checks(config, lookup=None, partners=PartnerList([PartnerInfo("fabrikam.test")]))]


def test_certificate_missing_a_domain_and_expiring_soon(tmp_path):
    pki = TestPki()
    cert, key = pki.leaf(["access.contoso.test", "contoso.test"], days=10)
    _install(tmp_path, cert, key, pki.intermediate.certificate)
    lines = _config_findings(tmp_path)
    assert _line(lines, "OK certificate:").endswith("key matches, 1 chain")
    assert _line(lines, ".* certificate names").startswith(
        "FAIL certificate names: subjectAltName does not cover northwind.test"
    )
    assert re.match(r"WARN certificate expiry: certificate expires in [89] days", _line(lines, ".* certificate expiry"))


def test_expired_certificate_with_wrong_key_fails(tmp_path):
    pki = TestPki()
    names = ["access.contoso.test", "contoso.test", "northwind.test"]
    cert, _ = pki.leaf(names, not_before=NOW - dt.timedelta(days=100), not_after=NOW - dt.timedelta(days=1))
    _, other_key = pki.leaf(names)
    _install(tmp_path, cert, other_key)
    lines = _config_findings(tmp_path)
    assert "the private key does not match" in _line(lines, "FAIL certificate:")
    assert _line(lines, ".* certificate expiry").startswith("FAIL certificate expiry: certificate expired on")
    assert main(["check", "--config", str(tmp_path / "edgeproxy.toml"), "--no-dns"]) == 1


def test_listener_in_use_warns_and_foreign_address_fails(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        config = load_config(write_config(tmp_path, listen=["192.0.2.1:5269"], internal_listen=f"127.0.0.1:{port}"))
        lines = [f.line() for f in run_checks(config, lookup=None, partners=PartnerList())]
    assert _line(lines, ".* listener 192").startswith("FAIL listener 192.0.2.1:5269: 192.0.2.1 is not an address of this host")
    assert _line(lines, ".* listener 127").startswith(f"WARN listener 127.0.0.1:{port}: in use")


def test_partner_claiming_our_domain_or_routing_to_us_fails(tmp_path):
    config = load_config(write_config(tmp_path, listen=[_free()], internal_listen=_free()))
    partners = PartnerList([
        PartnerInfo("fabrikam.test", ("contoso.test",)),
        PartnerInfo("litware.test", proxy_fqdn="access.contoso.test"),
        PartnerInfo("wingtip.test", proxy_fqdn="access.contoso.test:5270"),
    ])
    lines = [f.line() for f in run_checks(config, lookup=None, partners=partners)]
    line = _line(lines, r"\w+ partners:")
    assert line.startswith("FAIL partners: partner fabrikam.test lists our own domain contoso.test; ")
    assert "partner litware.test has our own FQDN access.contoso.test as proxy FQDN (a loop)" in line
    assert "partner wingtip.test has our own FQDN" in line  # with a port too


def test_internal_listen_off_loopback_without_mutual_tls_is_refused(tmp_path):
    # config.check_rules: refused at load (nothing starts; `edgeproxy check` shows it as FAIL config)
    internal = _free("0.0.0.0")
    with pytest.raises(ConfigError, match=rf"edge.internal-listen {internal} is not a loopback address: set \[edge\] internal-tls"):
        load_config(write_config(tmp_path, listen=[_free()], internal_listen=internal))
