import pytest

from edgeproxy.cli import main
from edgeproxy.config import load_config
from edgeproxy.dns.records import Pool, parse_pool, zone_lines
from fixtures.configs import write_config


def test_default_records_one_srv_per_domain_to_external_fqdn_and_a_from_listen(tmp_path, capsys):
    config = write_config(tmp_path, listen=["127.0.0.10:5269", "[2001:db8::10]:5269"])
    assert main(["dns", "records", "--config", str(config)]) == 0
    records = [line.split("\t") for line in capsys.readouterr().out.splitlines() if not line.startswith(";")]
    assert records == [
        ["_xmpp-server._tcp.contoso.test.", "3600", "IN", "SRV", "10 10 5269 access.contoso.test."],
        ["_xmpp-server._tcp.northwind.test.", "3600", "IN", "SRV", "10 10 5269 access.contoso.test."],
        ["access.contoso.test.", "3600", "IN", "A", "127.0.0.10"],
        ["access.contoso.test.", "3600", "IN", "AAAA", "2001:db8::10"],
    ]


def test_wildcard_listen_gives_a_placeholder_comment_not_a_record():
    lines = zone_lines(load_config(None))  # embedded default listens on 0.0.0.0
    assert not [line for line in lines if not line.startswith(";") and "\tA\t" in line]
    assert any("<public IPv4 address" in line for line in lines)


def test_pools_get_one_srv_each_with_their_own_priority(tmp_path):
    config = load_config(write_config(tmp_path, domains=["contoso.test"]))
    lines = zone_lines(config, [Pool("edge-b.contoso.test", 20), Pool("access.contoso.test", 10)])
    srv = [line.split("\t")[-1] for line in lines if "\tSRV\t" in line]
    assert srv == ["10 10 5269 access.contoso.test.", "20 10 5269 edge-b.contoso.test."]
    assert any(line.startswith("; edge-b.contoso.test.") for line in lines)


def test_pools_sharing_a_priority_are_a_usage_error(tmp_path, capsys):
    config = write_config(tmp_path)
    status = main(["dns", "records", "--config", str(config), "--pool", "a.contoso.test:10", "--pool", "b.contoso.test:10"])
    assert status == 2
    assert "share priority 10" in capsys.readouterr().err


@pytest.mark.parametrize("text", ["nopriority", "host:", "host:x", "host:70000", ":10"])
def test_bad_pool_syntax_is_refused(text):
    with pytest.raises(ValueError):
        parse_pool(text)
