"""The test-infrastructure promises: tools are required in CI, dnsmasq is stopped by its PID."""

import pytest

from edgeproxy.dns.resolver import Lookup, parse_resolver
from fixtures import tools
from fixtures.dnsmasq import host, start_dnsmasq


def test_missing_tool_fails_in_ci_and_skips_locally(monkeypatch):
    monkeypatch.setattr(tools.shutil, "which", lambda *a, **k: None)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="required in CI"):
        tools.require_tool("dnsmasq", "dnsmasq-base")
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="apt-get install dnsmasq-base"):
        tools.require_tool("dnsmasq", "dnsmasq-base")


def test_dnsmasq_serves_given_records_and_stops_by_pid(tmp_path):
    server = start_dnsmasq(tmp_path, [host("access.contoso.test", "127.0.0.10")])
    try:
        answer = Lookup(parse_resolver(server.resolver)).addresses("access.contoso.test")
        assert answer.values == ("127.0.0.10",)
        assert (tmp_path / "dnsmasq.log").exists()
    finally:
        server.stop()
    assert server.process.returncode is not None


@pytest.mark.parametrize(
    ("text", "expected"),
    [("127.0.0.153", ("127.0.0.153", 53)), ("127.0.0.153:5353", ("127.0.0.153", 5353)), ("[::1]:53", ("::1", 53))],
)
def test_resolver_option_parses_ip_and_port(text, expected):
    assert parse_resolver(text) == expected


def test_resolver_option_refuses_a_host_name():
    with pytest.raises(ValueError):
        parse_resolver("dns.example:53")


async def test_async_lookup_under_trio_gets_the_same_answers(tmp_path):
    from edgeproxy.dns.resolver import AsyncLookup
    from edgeproxy.dns.srv import SrvRecord
    from fixtures.dnsmasq import srv

    server = start_dnsmasq(tmp_path, [
        srv("_xmpp-server._tcp.fabrikam.test", "xmpp.fabrikam.test", priority=5),
        host("xmpp.fabrikam.test", "127.0.0.2"),
    ])
    try:
        lookup = AsyncLookup(parse_resolver(server.resolver))
        answer = await lookup.srv("fabrikam.test")
        assert answer.records == (SrvRecord(5, 10, 5269, "xmpp.fabrikam.test"),)
        assert (await lookup.addresses("xmpp.fabrikam.test")).values == ("127.0.0.2",)
        assert (await lookup.srv("litware.test")).outcome == "nxdomain"
    finally:
        server.stop()
