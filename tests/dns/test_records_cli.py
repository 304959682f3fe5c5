"""``edgeproxy dns records`` and ``dns check`` over the real command line: names checked by the
one rule, the SRV port from ``[edge] listen``, warnings for addresses partners cannot reach,
``--json``, and the ``[dns] resolver`` key with its environment override."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import dns.rdataclass
import dns.rdatatype
import dns.rrset
import pytest

from fixtures.configs import write_config
from fixtures.dnsmasq import host, srv


def cli(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m edgeproxy ARGV``; the resolver override is unset unless ``env`` sets it."""
    environ = {k: v for k, v in os.environ.items() if k != "EDGEPROXY_DNS_RESOLVER"} | (env or {})
    return subprocess.run(
        [sys.executable, "-m", "edgeproxy", *argv], capture_output=True, text=True, timeout=120, env=environ
    )


def records(config: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return cli("dns", "records", "--config", str(config), *extra)


def record_lines(stdout: str) -> list[str]:
    return [line for line in stdout.splitlines() if line and not line.startswith(";")]


# -- names -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pool", "rule"),
    [
        ("bad host:10", '--pool "bad host": a DNS label may contain only letters, digits and hyphens (RFC 1035 §2.3.1)'),
        ("192.0.2.1:10", '--pool "192.0.2.1": an IP address is not a domain name'),
        ("edge-.contoso.test:10", '--pool "edge-.contoso.test": a DNS label cannot begin or end with a hyphen'),
        ("edge.contoso.test:70000", '--pool "edge.contoso.test:70000": must be FQDN:PRIORITY with a priority from 0 to 65535'),
    ],
)
def test_a_pool_that_breaks_a_rule_is_a_usage_error_and_prints_no_zone(tmp_path, pool, rule):
    result = records(write_config(tmp_path), "--pool", pool)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith(f"edgeproxy: {rule}")
    assert result.stderr.count("\n") == 1


def test_a_pool_name_is_written_as_its_a_label(tmp_path):
    result = records(write_config(tmp_path, domains=["contoso.test"]), "--pool", "Edge-Bücher.Contoso.TEST:20",
                     "--pool", "access.contoso.test:10")
    assert result.returncode == 0, result.stderr
    assert "_xmpp-server._tcp.contoso.test.\t3600\tIN\tSRV\t20 10 5269 xn--edge-bcher-feb.contoso.test." in result.stdout


def test_a_partner_that_is_an_ip_address_is_refused_by_dns_check(tmp_path):
    result = cli("dns", "check", "--config", str(write_config(tmp_path)), "--partner", "1.2.3.4",
                 "--resolver", "127.0.0.1:9", "--timeout", "0.1")
    assert result.returncode == 2
    assert result.stderr == 'edgeproxy: --partner "1.2.3.4": an IP address is not a domain name: give the DNS name\n'


# -- the zone lines -----------------------------------------------------------------------------


def test_every_record_line_is_one_dnspython_reads_back_unchanged(tmp_path):
    config = write_config(tmp_path, listen=["127.0.0.10:5269", "[2001:db8::10]:5269"])
    result = records(config, "--pool", "edge-b.contoso.test:20", "--pool", "access.contoso.test:10", "--ttl", "600")
    assert result.returncode == 0, result.stderr
    lines = record_lines(result.stdout)
    assert len(lines) == 2 * 2 + 2  # two domains x two pools, A and AAAA
    for line in lines:
        name, ttl, rdclass, rdtype, data = line.split("\t")
        rrset = dns.rrset.from_text(name, int(ttl), rdclass, rdtype, data)
        assert rrset.rdclass == dns.rdataclass.IN and rrset.ttl == 600
        (rdata,) = rrset
        assert rdata.to_text() == data
    srv_data = [line.split("\t")[4] for line in lines if "\tSRV\t" in line]
    assert srv_data[:2] == ["10 10 5269 access.contoso.test.", "20 10 5269 edge-b.contoso.test."]


def test_the_srv_port_is_the_port_of_the_external_listener(tmp_path):
    result = records(write_config(tmp_path, domains=["contoso.test"], listen=["127.0.0.10:5270"]))
    assert result.returncode == 0, result.stderr
    assert record_lines(result.stdout)[0] == "_xmpp-server._tcp.contoso.test.\t3600\tIN\tSRV\t10 10 5270 access.contoso.test."


def test_listeners_on_two_ports_publish_the_first_with_a_warning(tmp_path):
    result = records(write_config(tmp_path, domains=["contoso.test"], listen=["9.9.9.9:5270", "9.9.9.9:5271"]))
    assert result.returncode == 0
    assert "\tSRV\t10 10 5270 access.contoso.test." in result.stdout
    assert result.stderr == (
        "edgeproxy: warning: [edge] listen has ports 5270, 5271: the SRV records name the first, 5270\n"
    )


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("127.0.0.10", "a loopback address"),
        ("[::1]", "a loopback address"),
        ("10.1.2.3", "not a public address"),
        ("192.168.1.20", "not a public address"),
        ("[fd00::20]", "not a public address"),
    ],
)
def test_an_address_partners_cannot_reach_is_published_with_a_warning(tmp_path, address, kind):
    result = records(write_config(tmp_path, listen=[f"{address}:5269"]))
    assert result.returncode == 0
    plain = address.strip("[]")
    rtype = "AAAA" if ":" in plain else "A"
    assert f"access.contoso.test.\t3600\tIN\t{rtype}\t{plain}" in result.stdout
    assert result.stderr.startswith(
        f"edgeproxy: warning: the {rtype} record of access.contoso.test would publish {plain}, {kind}"
    )
    assert "partners on the internet cannot reach it" in result.stderr


def test_a_public_address_or_a_wildcard_gives_no_warning(tmp_path):
    public = records(write_config(tmp_path, listen=["9.9.9.9:5269"]))
    assert public.returncode == 0 and public.stderr == ""
    assert "access.contoso.test.\t3600\tIN\tA\t9.9.9.9" in public.stdout
    wildcard = records(write_config(tmp_path, listen=["0.0.0.0:5269"]))
    assert wildcard.returncode == 0 and wildcard.stderr == ""
    assert not [line for line in record_lines(wildcard.stdout) if "\tA\t" in line]


# -- --json ------------------------------------------------------------------------------------


def test_records_json_has_every_record_with_its_fields(tmp_path):
    config = write_config(tmp_path, domains=["contoso.test"], listen=["127.0.0.10:5270"])
    result = records(config, "--json")
    assert result.returncode == 0
    assert result.stderr.startswith("edgeproxy: warning: the A record of access.contoso.test")
    document = json.loads(result.stdout)
    assert document == {
        "fqdn": "access.contoso.test",
        "port": 5270,
        "ttl": 3600,
        "records": [
            {"name": "_xmpp-server._tcp.contoso.test.", "ttl": 3600, "class": "IN", "type": "SRV",
             "data": "10 10 5270 access.contoso.test.", "domain": "contoso.test", "priority": 10,
             "weight": 10, "port": 5270, "target": "access.contoso.test."},
            {"name": "access.contoso.test.", "ttl": 3600, "class": "IN", "type": "A", "data": "127.0.0.10",
             "address": "127.0.0.10"},
        ],
        "placeholders": [],
        "other-pools": [],
        "warnings": [
            "the A record of access.contoso.test would publish 127.0.0.10, a loopback address: partners on the"
            " internet cannot reach it; publish the public address (set [edge] listen to it, or fill it in by hand)"
        ],
    }


def test_records_json_with_a_wildcard_listener_lists_the_addresses_to_fill_in(tmp_path):
    document = json.loads(records(write_config(tmp_path, listen=["0.0.0.0:5269"]), "--json").stdout)
    assert [r["type"] for r in document["records"]] == ["SRV", "SRV"]
    assert document["placeholders"] == [
        {"name": "access.contoso.test.", "ttl": 3600, "class": "IN", "type": "A"},
        {"name": "access.contoso.test.", "ttl": 3600, "class": "IN", "type": "AAAA"},
    ]


# -- dns check: --json and the resolver setting ------------------------------------------------

GOOD_ZONE = [
    srv("_xmpp-server._tcp.contoso.test", "access.contoso.test"),
    host("access.contoso.test", "127.0.0.10"),
]


def test_check_json_lists_the_findings_and_the_resolver_asked(tmp_path, dnsmasq):
    server = dnsmasq(GOOD_ZONE)
    config = write_config(tmp_path, domains=["contoso.test"], extra=f'[dns]\nresolver = "{server.resolver}"\n')
    result = cli("dns", "check", "--config", str(config), "--json")
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["resolver"] == server.resolver
    assert document["findings"] == [
        {"level": "OK", "check": "dns _xmpp-server._tcp.contoso.test",
         "detail": "10 10 5269 access.contoso.test", "hint": None},
        {"level": "OK", "check": "dns access.contoso.test", "detail": "resolves to 127.0.0.10", "hint": None},
    ]


def test_the_environment_variable_overrides_the_resolver_key(tmp_path, dnsmasq):
    server = dnsmasq(GOOD_ZONE)
    # the key names a port nobody answers on: without the override every lookup times out
    config = write_config(tmp_path, domains=["contoso.test"], extra='[dns]\nresolver = "127.0.0.1:9"\n')
    without = cli("dns", "check", "--config", str(config), "--timeout", "0.3", "--json")
    assert json.loads(without.stdout)["resolver"] == "127.0.0.1:9"
    assert {f["level"] for f in json.loads(without.stdout)["findings"]} == {"WARN"}
    with_override = cli("dns", "check", "--config", str(config), "--json",
                        env={"EDGEPROXY_DNS_RESOLVER": server.resolver})
    assert with_override.returncode == 0, with_override.stderr
    assert json.loads(with_override.stdout)["resolver"] == server.resolver
    assert {f["level"] for f in json.loads(with_override.stdout)["findings"]} == {"OK"}


def test_check_reports_a_port_other_than_the_listener_port(tmp_path, dnsmasq):
    server = dnsmasq(GOOD_ZONE)  # publishes 5269
    config = write_config(tmp_path, domains=["contoso.test"], listen=["127.0.0.10:5270"])
    result = cli("dns", "check", "--config", str(config), "--resolver", server.resolver)
    assert result.returncode == 1
    assert "has port 5269, expected 5270 ([edge] listen)" in result.stdout


def test_a_bad_resolver_option_names_the_rule(tmp_path):
    result = cli("dns", "check", "--config", str(write_config(tmp_path)), "--resolver", "ns.contoso.test")
    assert result.returncode == 2
    assert result.stderr == (
        'edgeproxy: --resolver "ns.contoso.test": a resolver is an IP address, IP:PORT or [IPv6]:PORT,'
        " not a host name\n"
    )
