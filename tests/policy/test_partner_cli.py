"""``edgeproxy partner new | set | remove`` over the real CLI, as an administrator meets them:
the additional domains edited explicitly (never replaced by surprise), each change shown before
and after, Lync's spellings, ``--proxy-fqdn host:port``, and help with defaults."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from _policy_helpers import CliResult, run_cli_subprocess

from edgeproxy.policy.store import Store


@pytest.fixture
def edgeproxy(config_path: Path):
    def run(*args: str) -> CliResult:
        return run_cli_subprocess(config_path, *args)

    return run


def _stored(edgeproxy, domain: str = "fabrikam.com") -> dict:
    result = edgeproxy("partner", "get", domain, "--json")
    assert result.code == 0, result
    return json.loads(result.out)


def test_additional_domain_on_set_does_not_silently_replace_the_list(edgeproxy):
    assert edgeproxy("partner", "new", "fabrikam.com", "--add-domain", "x1.fabrikam.com",
                     "--add-domain", "x2.fabrikam.com").code == 0

    replaced = edgeproxy("partner", "set", "fabrikam.com", "--additional-domain", "x3.fabrikam.com")

    assert replaced.code == 2
    assert replaced.err.startswith("edgeproxy: --additional-domain on partner set replaces")
    assert "--replace-domains" in replaced.err and "--add-domain" in replaced.err
    assert _stored(edgeproxy)["additional-domains"] == ["x1.fabrikam.com", "x2.fabrikam.com"]


def test_replace_domains_replaces_the_list_and_shows_before_and_after(edgeproxy):
    edgeproxy("partner", "new", "fabrikam.com", "--add-domain", "x1.fabrikam.com")

    result = edgeproxy("partner", "set", "fabrikam.com", "--additional-domain", "x3.fabrikam.com",
                       "--additional-domain", "x4.fabrikam.com", "--replace-domains")

    assert (result.code, result.err) == (0, "")
    assert result.out.splitlines() == [
        "partner fabrikam.com saved",
        "  additional-domains: x1.fabrikam.com → x3.fabrikam.com, x4.fabrikam.com",
    ]
    assert _stored(edgeproxy)["additional-domains"] == ["x3.fabrikam.com", "x4.fabrikam.com"]
    alone = edgeproxy("partner", "set", "fabrikam.com", "--replace-domains")
    assert alone.code == 2 and "--clear-domains" in alone.err


def test_add_remove_and_clear_edit_the_list_one_domain_at_a_time(edgeproxy):
    edgeproxy("partner", "new", "fabrikam.com", "--add-domain", "a.fabrikam.com")

    added = edgeproxy("partner", "set", "fabrikam.com", "--add-domain", "B.Fabrikam.com",
                      "--add-domain", "c.fabrikam.com", "--remove-domain", "a.fabrikam.com")
    assert added.code == 0, added
    assert "  additional-domains: a.fabrikam.com → b.fabrikam.com, c.fabrikam.com" in added.out

    missing = edgeproxy("partner", "set", "fabrikam.com", "--remove-domain", "zzz.fabrikam.com")
    assert missing.code == 1
    assert missing.err == (
        "edgeproxy: refused: zzz.fabrikam.com is not an additional domain of fabrikam.com\n"
    )
    assert _stored(edgeproxy)["additional-domains"] == ["b.fabrikam.com", "c.fabrikam.com"]

    cleared = edgeproxy("partner", "set", "fabrikam.com", "--clear-domains", "--add-domain",
                        "d.fabrikam.com")
    assert cleared.code == 0
    assert _stored(edgeproxy)["additional-domains"] == ["d.fabrikam.com"]


def test_new_prints_the_record_set_only_what_changed_and_remove_what_was_removed(edgeproxy):
    created = edgeproxy("partner", "new", "fabrikam.com", "--type", "Federated")
    assert created.code == 0 and created.err == ""
    lines = created.out.splitlines()
    assert lines[0] == "partner fabrikam.com created"
    assert "  type: federated" in lines and "  tls: required" in lines
    assert "  dialback: true" in lines and "  proxy-fqdn: -" in lines

    changed = edgeproxy("partner", "set", "fabrikam.com", "--description", "Fabrikam, Inc.",
                        "--connection-limit", "5")
    assert changed.out.splitlines() == [
        "partner fabrikam.com saved",
        "  description: - → Fabrikam, Inc.",
        "  connection-limit: - → 5",
    ]
    same = edgeproxy("partner", "set", "fabrikam.com", "--connection-limit", "5")
    assert same.out.splitlines() == ["partner fabrikam.com saved", "  (nothing changed)"]

    removed = edgeproxy("partner", "remove", "fabrikam.com")
    assert removed.code == 0
    lines = removed.out.splitlines()
    assert lines[0] == "partner fabrikam.com removed"
    assert "  description: Fabrikam, Inc." in lines and "  connection-limit: 5" in lines
    assert edgeproxy("partner", "get", "fabrikam.com").code == 1


def test_json_of_new_set_and_remove_is_the_change_with_its_warnings(edgeproxy):
    created = json.loads(edgeproxy("partner", "new", "fabrikam.com", "--json").out)
    assert created["kind"] == "partner" and created["before"] is None
    assert created["after"] == _stored(edgeproxy) and created["warnings"] == []

    result = edgeproxy("partner", "set", "fabrikam.com", "--tls", "Optional", "--json")
    changed = json.loads(result.out)
    assert changed["before"]["tls"] == "required" and changed["after"]["tls"] == "optional"
    (warning,) = changed["warnings"]
    assert warning.startswith("SASL is required, but with TLS optional")
    assert result.err == f"edgeproxy: warning: {warning}\n"

    removed = json.loads(edgeproxy("partner", "remove", "fabrikam.com", "--json").out)
    assert removed["before"] == changed["after"] and removed["after"] is None


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        ("Federated", "federated"),
        ("PUBLICVERIFIED", "public-verified"),
        ("publicUnverified", "public-unverified"),
        ("public-verified", "public-verified"),
    ],
)
def test_lync_spellings_of_the_type_are_read_and_ours_is_written(edgeproxy, given, stored):
    result = edgeproxy("partner", "new", "fabrikam.com", "--type", given, "--tls", "Required",
                       "--sasl", "NotSupported")
    assert result.code == 0, result
    partner = _stored(edgeproxy)
    assert (partner["type"], partner["tls"], partner["sasl"]) == (stored, "required",
                                                                  "not-supported")


def test_an_unknown_type_is_a_usage_error_listing_both_spellings(edgeproxy):
    result = edgeproxy("partner", "new", "fabrikam.com", "--type", "Trusted")
    assert result.code == 2
    assert "federated (Federated)" in result.err and "public-unverified (PublicUnverified)" in (
        result.err
    )
    assert edgeproxy("partner", "get", "--json").out.strip() == "[]"


def test_proxy_fqdn_takes_host_and_port_and_none_clears_it(edgeproxy):
    result = edgeproxy("partner", "new", "fabrikam.com", "--proxy-fqdn", "XMPP.Fabrikam.com:5270")
    assert result.code == 0, result
    assert _stored(edgeproxy)["proxy-fqdn"] == "xmpp.fabrikam.com:5270"
    assert edgeproxy("partner", "set", "fabrikam.com", "--proxy-fqdn", "none").code == 0
    assert _stored(edgeproxy)["proxy-fqdn"] is None
    assert edgeproxy("partner", "set", "fabrikam.com", "--proxy-fqdn", "xmpp.fabrikam.com").code == 0
    assert _stored(edgeproxy)["proxy-fqdn"] == "xmpp.fabrikam.com"


@pytest.mark.parametrize(
    ("value", "said"),
    [
        ("xmpp.fabrikam.com:0", "the port must be a number from 1 to 65535"),
        ("xmpp.fabrikam.com:65536", "the port must be a number from 1 to 65535"),
        ("xmpp.fabrikam.com:http", "the port must be a number from 1 to 65535"),
        ("bad_host.example:5269", "proxy FQDN 'bad_host.example:5269'"),
    ],
)
def test_a_bad_proxy_fqdn_is_refused_and_nothing_stored(edgeproxy, value, said):
    result = edgeproxy("partner", "new", "fabrikam.com", "--proxy-fqdn", value)
    assert result.code == 1
    assert result.err.startswith("edgeproxy: refused: ") and said in result.err
    assert edgeproxy("partner", "get", "--json").out.strip() == "[]"


def test_a_bad_connection_limit_is_refused_in_words(edgeproxy):
    result = edgeproxy("partner", "new", "fabrikam.com", "--connection-limit", "0")
    assert result.code == 1
    assert result.err == "edgeproxy: refused: connection-limit: must be an integer ≥ 1, got 0\n"


@pytest.mark.parametrize("command", ["new", "set"])
def test_help_gives_every_option_its_default_and_cites_no_internal_document(edgeproxy, command):
    text = " ".join(edgeproxy("partner", command, "--help").out.split())
    expected = (
        ["default: public-unverified", "default: required", "default: on", "default: none",
         "default: empty"]
        if command == "new"
        else ["default: unchanged", "--replace-domains", "--remove-domain", "--clear-domains"]
    )
    for words in expected:
        assert words in text, words
    assert "Lync's Federated, PublicVerified, PublicUnverified" in text
    assert "SPEC" not in text


def test_the_stored_proxy_fqdn_reads_back_as_host_and_port(edgeproxy, state_dir):
    edgeproxy("partner", "new", "fabrikam.com", "--proxy-fqdn", "xmpp.fabrikam.com:5270")
    edgeproxy("partner", "new", "gmail.com", "--proxy-fqdn", "xmpp.gmail.com")
    edgeproxy("partner", "new", "northwind.example")
    with Store.open(state_dir) as store:
        partners = {p.domain: p.proxy_address for p in store.read()[1].partners}
    assert partners == {
        "fabrikam.com": ("xmpp.fabrikam.com", 5270),
        "gmail.com": ("xmpp.gmail.com", None),
        "northwind.example": None,
    }
